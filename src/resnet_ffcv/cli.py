"""``resnet-ffcv``: LightningCLI's fit / validate / test / predict, plus the steps around training.

    resnet-ffcv fit --config configs/p4d_78pct.yaml [--model.lr 0.6 --trainer.max_epochs 90 ...]
    resnet-ffcv write-dataset --config configs/write_imagenet.yaml [--source_dir ... --output_dir ...]

Every argument is settable in YAML and overridable on the command line; ``--print_config`` shows the result.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

from jsonargparse import auto_cli
from lightning.pytorch.cli import LightningCLI

from resnet_ffcv.callbacks.resolution import ProgressiveResolution
from resnet_ffcv.data import FFCVDataModule
from resnet_ffcv.model import ImageClassifier
from resnet_ffcv.wandb_setup import fall_back_to_offline_without_credentials


class ResNetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The class count comes from the data (classes.json), never typed twice.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Always present, off unless configured: a recipe config sets single keys (resolution.start_ramp: 41)
        # where a callbacks list could only be replaced whole.
        parser.add_lightning_class_args(ProgressiveResolution, "resolution")

    def before_instantiate_classes(self) -> None:
        logger = self.config[self.subcommand].trainer.logger if self.subcommand else None
        if hasattr(logger, "get") and "Wandb" in str(logger.get("class_path")):
            fall_back_to_offline_without_credentials(logger.get("init_args"))


class _ParseOnlyCLI(ResNetCLI):
    """Parses a fit configuration (files and overrides) exactly as ``fit`` does, and instantiates nothing."""

    def instantiate_classes(self) -> None:
        pass


def parse_config_only(argv: list[str]):
    """The configuration ``resnet-ffcv fit ARGV`` would run with, without building model, data or Trainer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv is not sys.argv here
        return _ParseOnlyCLI(
            ImageClassifier,
            FFCVDataModule,
            run=False,
            args=argv,
            save_config_callback=None,
            auto_configure_optimizers=False,
        ).config


def doctor_command(argv: list[str]) -> None:
    from resnet_ffcv.doctor import doctor

    sys.exit(doctor(argv))


def export_command(argv: list[str]) -> None:
    from resnet_ffcv.export import export

    auto_cli(export, args=argv, as_positional=False, prog="resnet-ffcv export")


def plan_command(argv: list[str]) -> None:
    from resnet_ffcv.plan import plan_command as run_plan

    run_plan(argv)


def write_dataset_command(argv: list[str]) -> None:
    from resnet_ffcv.writer import write_dataset

    auto_cli(write_dataset, args=argv, as_positional=False, prog="resnet-ffcv write-dataset")


def make_synthetic_command(argv: list[str]) -> None:
    from resnet_ffcv.synthetic import make_synthetic_imagefolder

    auto_cli(make_synthetic_imagefolder, args=argv, as_positional=False, prog="resnet-ffcv make-synthetic")


def inspect_dataset_command(argv: list[str]) -> None:
    from resnet_ffcv.inspect_dataset import inspect_dataset

    auto_cli(inspect_dataset, args=argv, as_positional=False, prog="resnet-ffcv inspect-dataset")


# Subcommands that are not Trainer methods: each is a function whose signature is its interface.
TOOLS: dict[str, Callable[[list[str]], None]] = {
    "write-dataset": write_dataset_command,
    "make-synthetic": make_synthetic_command,
    "inspect-dataset": inspect_dataset_command,
    "doctor": doctor_command,
    "export": export_command,
    "plan": plan_command,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        TOOLS[argv[0]](argv[1:])
        return
    ResNetCLI(
        ImageClassifier,
        FFCVDataModule,
        # A spot restart reruns the same command into the same log directory.
        save_config_kwargs={"overwrite": True},
        # The module owns its optimizer (weight-decay groups) and per-batch LR schedule: no --optimizer knobs.
        auto_configure_optimizers=False,
        args=argv,
    )


if __name__ == "__main__":
    main()
