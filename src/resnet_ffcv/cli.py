"""``resnet-ffcv SUBCOMMAND``: a table of subcommands, each run by the module that owns it.

    resnet-ffcv fit --config configs/p4d_78pct.yaml [--model.lr 0.6 --trainer.max_epochs 90 ...]
    resnet-ffcv write-dataset --config configs/write_imagenet.yaml [--source_dir ... --output_dir ...]

Nothing is imported until a subcommand is chosen, so ``resnet-ffcv --help`` answers at once.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import sys
from collections.abc import Callable
from typing import NamedTuple

from resnet_ffcv.errors import DEBUG_ENV, UserError, debug_enabled

PROG = "resnet-ffcv"
DESCRIPTION = "ResNet on ImageNet with PyTorch Lightning + FFCV on spot GPUs, configured by YAML."


class Subcommand(NamedTuple):
    description: str
    target: str = ""  # "module:function"; empty for the Trainer subcommands (LightningCLI)
    own_parser: bool = False  # the function takes argv (its own parser); else jsonargparse builds one from it


SUBCOMMANDS: dict[str, Subcommand] = {
    "fit": Subcommand("train; resumes from the checkpoint directory by itself (exit 75: interrupted, rerun)"),
    "validate": Subcommand("top-1/top-5 of a checkpoint on the validation set"),
    "test": Subcommand("the same evaluation on the test loader (the validation set)"),
    "predict": Subcommand("classify a folder of images, an image or a .ffcv with a checkpoint -> CSV"),
    "write-dataset": Subcommand(
        "ImageFolder or local Hugging Face data -> train.ffcv, val.ffcv, classes.json, manifest",
        "resnet_ffcv.dataset.writer:write_dataset",
    ),
    "make-synthetic": Subcommand(
        "the demo's learnable image set, as real JPEG files",
        "resnet_ffcv.dataset.synthetic:make_synthetic_command",
    ),
    "inspect-dataset": Subcommand(
        "counts, fields, label histogram, size stats and a PNG grid of a .ffcv file",
        "resnet_ffcv.dataset.inspect:inspect_dataset",
    ),
    "doctor": Subcommand(
        "preflight pass/fail lines (GPUs, data, checkpoint dir, resume, W&B) before paying for GPU time",
        "resnet_ffcv.tools.doctor:doctor",
        own_parser=True,
    ),
    "evaluate": Subcommand(
        "top-1/top-5 of a checkpoint, raw and EMA, at several resolutions, crops, with and without flip TTA",
        "resnet_ffcv.tools.evaluate:evaluate_command",
        own_parser=True,
    ),
    "export": Subcommand("checkpoint -> torchvision state_dict or TorchScript", "resnet_ffcv.tools.export:export"),
    "plan": Subcommand(
        "measured images/s per resolution stage -> epoch times, total time and cost",
        "resnet_ffcv.tools.plan:plan_command",
        own_parser=True,
    ),
    "curves": Subcommand(
        "loss, top-1, LR, resolution, images/s of RUN_DIR/metrics.csv (one or two runs) -> PNG",
        "resnet_ffcv.tools.curves:curves_command",
        own_parser=True,
    ),
}


def _load(target: str) -> Callable:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        f"usage: {PROG} SUBCOMMAND [--help] [ARGS ...]",
        "",
        DESCRIPTION,
        "",
        "subcommands (each has its own --help):",
    ]
    lines += [f"  {name:<{width}}  {command.description}" for name, command in SUBCOMMANDS.items()]
    lines += [
        "",
        f"Every option is settable in YAML (--config FILE) and on the command line; {PROG} fit --print_config",
    ]
    lines += ["shows the resolved configuration."]
    lines += [
        "",
        f"A mistake in a config, path or input is one 'error:' paragraph; set {DEBUG_ENV}=1 to see its traceback.",
    ]
    return "\n".join(lines)


def _exit_without_collecting() -> None:
    """Registered first, so it runs last of the exit handlers (W&B's and Lightning's run before it): the objects
    still alive are moved out of the garbage collector's reach, and the interpreter's final collection, which
    walks every one of torch's and Lightning's millions of objects, takes 0.3 s instead of 1.5. Nothing is
    written at that point that has not been written and closed already."""
    gc.freeze()


atexit.register(_exit_without_collecting)  # at import: before torch, Lightning or W&B register theirs


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    name, rest = argv[0], argv[1:]
    command = SUBCOMMANDS.get(name)
    if command is None and not name.startswith("-"):
        print(f"{usage()}\n\n{PROG}: error: unknown subcommand {name!r}", file=sys.stderr)
        sys.exit(2)
    if command is None or not command.target:  # LightningCLI also owns the options before a subcommand
        if name == "fit":  # from here on SIGTERM/SIGINT mean "stop and exit 75", also while torch imports
            from resnet_ffcv.run.stop_signals import STOP

            STOP.install()
        from resnet_ffcv.lightning_cli import run

        run(argv)
    else:
        try:
            if command.own_parser:
                code = _load(command.target)(rest)
                if code is not None:  # doctor's exit status
                    sys.exit(code)
            else:
                from jsonargparse import auto_cli

                auto_cli(_load(command.target), args=rest, as_positional=False, prog=f"{PROG} {name}")
        # Our own refusals (inputs, values, space) and a missing input say it all; any other error is a bug and
        # keeps its traceback.
        except (UserError, FileNotFoundError) as error:
            if debug_enabled():
                raise
            sys.exit(f"{PROG} {name}: error: {error}")


if __name__ == "__main__":
    main()
