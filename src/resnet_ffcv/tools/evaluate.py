"""``resnet-ffcv evaluate``: what evaluation resolution, crop ratio and flip TTA are worth on one checkpoint.

    resnet-ffcv evaluate --ckpt_path /data/checkpoints/best_model.ckpt --data_dir /data/ffcv \\
        [--resolutions 224 256 288] [--crop_ratios 0.875 1.0] [--tta both]
    resnet-ffcv evaluate --run /data/runs/p4d_78pct [...]     # the run's best checkpoint and data_dir

None of these cost anything at training time (FixRes: a random-resized-crop-trained network sees objects larger
than a centre crop shows them, so it often scores higher at a test resolution above its last training one), so
they are chosen on a trained checkpoint. The images come from the project's own validation pipeline
(``FFCVDataModule``'s centre-crop loader: same decoder, crop and order as ``val/acc1``), the network from the
checkpoint, normalized by the module itself; one image pass per resolution and crop serves both the plain and the
flip-TTA numbers of both the raw and the EMA weights. One device (the first GPU, else the CPU).
"""

from __future__ import annotations

import contextlib
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from resnet_ffcv.data.resolution import check_resolution
from resnet_ffcv.errors import InputNotFound, InvalidValue
from resnet_ffcv.run.resume import BEST_NAME, LATEST_NAME

Tta = Literal["off", "on", "both"]
Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
LIST_OPTIONS = ("--resolutions", "--crop_ratios")


@dataclass
class Result:
    """Top-1 / top-5 (percent) of one set of weights under one evaluation protocol."""

    resolution: int
    crop_ratio: float
    flip_tta: bool
    weights: str  # "raw" or "ema"
    top1: float
    top5: float
    images: int


def _autocast(device: torch.device, precision: Precision):
    if precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _networks(module) -> dict[str, nn.Module]:
    return {"raw": module.network} | ({"ema": module.ema.module} if module.ema is not None else {})


@torch.inference_mode()
def evaluate_loader(module, loader, device: torch.device, precision: Precision, modes: list[bool]) -> dict:
    """{(weights, flip_tta): (top1 hits, top5 hits)} and the image count; hits summed on the device."""
    top_k = min(5, module.hparams.num_classes)
    hits: dict[tuple[str, bool], torch.Tensor] = {}
    images_seen = 0
    with _autocast(device, precision):
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            inputs = module.normalize(images)
            flipped = inputs.flip(3).contiguous(memory_format=module.memory_format) if True in modes else None
            for name, network in _networks(module).items():
                logits = network(inputs)
                for tta in modes:
                    # TTA as validation does it (model._logits): the sum of both views' logits.
                    scores = logits + network(flipped) if tta else logits
                    correct = scores.topk(top_k, dim=1).indices == labels[:, None]
                    batch = torch.stack([correct[:, 0].sum(), correct.any(dim=1).sum()])
                    hits[name, tta] = hits[name, tta] + batch if (name, tta) in hits else batch
            images_seen += labels.shape[0]
    return {key: value.tolist() for key, value in hits.items()}, images_seen


def format_table(results: list[Result], own: tuple[int, float, bool] | None) -> str:
    """One row per (resolution, crop, TTA); top-1 / top-5 of the raw and the EMA weights side by side."""
    weights = sorted({r.weights for r in results}, key=["raw", "ema"].index)
    header = f"{'res':>4} {'crop':>6} {'flip TTA':>8}" + "".join(
        f" {w + ' top-1':>10} {w + ' top-5':>10}" for w in weights
    )
    lines = [header]
    rows: dict[tuple[int, float, bool], dict[str, Result]] = {}
    for result in results:
        rows.setdefault((result.resolution, result.crop_ratio, result.flip_tta), {})[result.weights] = result
    for key, by_weights in rows.items():
        resolution, crop, tta = key
        cells = "".join(f" {by_weights[w].top1:>10.2f} {by_weights[w].top5:>10.2f}" for w in weights)
        mark = "  <- this checkpoint's validation protocol" if own is not None and key == own else ""
        lines.append(f"{resolution:>4} {crop:>6.3f} {'yes' if tta else 'no':>8}{cells}{mark}")
    return "\n".join(lines)


def _own_protocol(checkpoint: dict, module) -> tuple[int, float, bool] | None:
    """(val_resolution, val_crop_ratio, val_flip_tta) the run validated with, when the checkpoint records it."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if "val_resolution" not in data:
        return None
    return int(data["val_resolution"]), float(data.get("val_crop_ratio", 224 / 256)), bool(module.hparams.val_flip_tta)


def _check_options(
    resolutions: tuple[int, ...], crop_ratios: tuple[float, ...], batch_size: int, num_workers: int | None
) -> None:
    """Values refused here, named by their option, before minutes go into loading a network."""
    if not resolutions or not crop_ratios:
        raise InvalidValue(
            f"--resolutions {list(resolutions)} --crop_ratios {list(crop_ratios)}: expected at least one of each"
        )
    for resolution in resolutions:
        check_resolution(resolution, "--resolutions")
    for crop in crop_ratios:
        if not 0 < crop <= 1:  # FFCV's centre crop takes ratio x the short side: above 1 it leaves the image
            raise InvalidValue(f"--crop_ratios {crop}: expected a ratio in (0, 1] of the short image side")
    if batch_size < 1 or (num_workers is not None and num_workers < 1):
        raise InvalidValue(f"--batch_size {batch_size} --num_workers {num_workers}: expected >= 1")


def _check_data(data_dir: str, val_file: str) -> None:
    """A wrong ``--data_dir`` named with evaluate's own options (the datamodule would say ``data.data_dir``)."""
    folder = Path(data_dir)
    expected = f"the output folder of `resnet-ffcv write-dataset`, holding {val_file} and classes.json"
    if not folder.is_dir():
        raise InputNotFound(f"--data_dir {folder}: no such folder (expected {expected})")
    for name, option in ((val_file, "--val_file"), ("classes.json", "")):
        if not (folder / name).is_file():
            named = f" ({option})" if option else ""
            raise InputNotFound(f"--data_dir {folder}: has no {name}{named}; expected {expected}")


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint, memory-mapped (tensors stay on disk); a missing, foreign or damaged file named as such."""
    wanted = f"a checkpoint written by `resnet-ffcv fit` ({BEST_NAME}, {LATEST_NAME})"
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ckpt"))
        hint = f"; it holds {', '.join(inside[:5])}" if inside else ""
        raise InvalidValue(f"--ckpt_path {path}: is a folder, expected {wanted}{hint}")
    if not path.is_file():
        raise InputNotFound(f"--ckpt_path {path}: no such file (expected {wanted})")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, RuntimeError) as error:
        # torch.load's ways of saying "not a torch.save file": a truncated zip is a RuntimeError from its reader.
        raise InvalidValue(f"--ckpt_path {path}: not readable as a checkpoint ({error}); expected {wanted}") from error
    if not isinstance(checkpoint, dict):
        raise InvalidValue(f"--ckpt_path {path}: holds a {type(checkpoint).__name__}, not a dict; expected {wanted}")
    missing = [key for key in ("state_dict", "hyper_parameters") if key not in checkpoint]
    if missing:
        raise InvalidValue(f"--ckpt_path {path}: has no {' or '.join(missing)}; expected {wanted}")
    return checkpoint


def evaluate(
    ckpt_path: str,
    data_dir: str,
    val_file: str = "val.ffcv",
    resolutions: tuple[int, ...] = (224, 256, 288),
    crop_ratios: tuple[float, ...] = (224 / 256,),
    tta: Tta = "both",
    batch_size: int = 256,
    num_workers: int | None = None,
    precision: Precision | None = None,
) -> list[Result]:
    """Prints one table: top-1 / top-5 of the raw and EMA weights for each resolution, crop ratio and TTA.

    Args:
        ckpt_path: a checkpoint written by ``resnet-ffcv fit`` (``best_model.ckpt``, ``checkpoint_latest.ckpt``).
            Or ``--run RUN_DIR`` (a fit's run_dir) for this, ``--data_dir`` and ``--val_file``: its best
            checkpoint and its config.yaml's data (any of them given as well wins).
        data_dir: the folder holding ``val_file`` and ``classes.json`` (``resnet-ffcv write-dataset``).
        val_file: the split to evaluate, relative to ``data_dir``.
        resolutions: centre-crop sides in pixels (multiples of 8), e.g. ``--resolutions 224 256 288``.
        crop_ratios: crop side / short image side (0.875 = 224/256, the classic protocol; 1.0: no border cut).
        tta: flip test-time augmentation: ``off``, ``on`` (the sum of the image's and its mirror's logits, as
            ``model.val_flip_tta``), or ``both`` (one pass gives both rows).
        batch_size: images per batch.
        num_workers: FFCV decode threads; default: all cores.
        precision: ``bf16-mixed`` (the default on a GPU, as the recipes validate), ``16-mixed`` or ``32-true``
            (the default on the CPU).
    """
    from resnet_ffcv.data.datamodule import FFCVDataModule
    from resnet_ffcv.recipe.module import ImageClassifier

    _check_options(resolutions, crop_ratios, batch_size, num_workers)
    path = Path(ckpt_path)
    checkpoint = _read_checkpoint(path)
    _check_data(data_dir, val_file)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = precision or ("bf16-mixed" if device.type == "cuda" else "32-true")
    try:
        module = ImageClassifier.load_from_checkpoint(path, map_location="cpu", compile=False)
    except (KeyError, TypeError, RuntimeError) as error:
        # Lightning checkpoint of another module: its hyperparameters don't fit ImageClassifier (TypeError) or
        # its weights don't fit the network they build (RuntimeError from load_state_dict).
        raise InvalidValue(f"--ckpt_path {path}: not an ImageClassifier checkpoint ({error})") from error
    module.to(device).eval()
    modes = {"off": [False], "on": [True], "both": [False, True]}[tta]
    results: list[Result] = []
    for resolution in resolutions:
        for crop in crop_ratios:
            data = FFCVDataModule(
                data_dir=data_dir,
                val_file=val_file,
                batch_size=batch_size,
                val_batch_size=batch_size,
                num_workers=num_workers,
                val_resolution=resolution,
                val_crop_ratio=crop,
            )
            if data.num_classes != module.hparams.num_classes:
                raise InvalidValue(
                    f"--data_dir {data_dir}: {data.num_classes} classes in classes.json, but the checkpoint's "
                    f"network has {module.hparams.num_classes}: expected the data set it was trained on"
                )
            data.setup("validate")
            try:
                hits, images = evaluate_loader(module, data.val_dataloader(), device, precision, modes)
            finally:
                data.teardown("validate")
            for (weights, flip), (top1, top5) in hits.items():
                results.append(
                    Result(resolution, crop, flip, weights, 100 * top1 / images, 100 * top5 / images, images)
                )
    results.sort(key=lambda r: (r.resolution, r.crop_ratio, r.flip_tta))
    print(
        f"{path} on {Path(data_dir) / val_file} ({results[0].images:,} images), {precision} on {device}: "
        "top-1 / top-5 in %"
    )
    print(format_table(results, _own_protocol(checkpoint, module)))
    return results


def join_list_options(argv: list[str]) -> list[str]:
    """``--resolutions 224 256`` -> ``--resolutions [224,256]``: jsonargparse takes a list as one value."""
    joined: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        joined.append(arg)
        index += 1
        if arg in LIST_OPTIONS:
            values = []
            while index < len(argv) and not argv[index].startswith("--"):
                values.append(argv[index])
                index += 1
            if len(values) > 1 or (values and not values[0].startswith("[")):
                joined.append(f"[{','.join(values)}]")
            else:
                joined.extend(values)
    return joined


def run_arguments(argv: list[str]) -> list[str]:
    """``--run RUN_DIR``: ``--ckpt_path`` (the run's best checkpoint), ``--data_dir`` and ``--val_file`` from the
    run's config.yaml, ahead of the other arguments (which override them)."""
    from resnet_ffcv.run_dir import run_checkpoint, run_config_value, take_run_option

    run, rest = take_run_option(argv)
    if run is None:
        return argv
    found = {
        option: run_config_value(run, key)
        for option, key in (("--data_dir", "data.data_dir"), ("--val_file", "data.val_file"))
    }
    return [*run_checkpoint(run, rest), *(f"{option}={value}" for option, value in found.items() if value), *rest]


def evaluate_command(argv: list[str]) -> None:
    """``resnet-ffcv evaluate ARGS``; a user's mistake raises a UserError, which the CLI prints as one line.

    ``--run RUN_DIR`` (a fit's run_dir) stands for its best checkpoint and its data: no path retyped."""
    from jsonargparse import auto_cli

    auto_cli(evaluate, args=join_list_options(run_arguments(argv)), as_positional=False, prog="resnet-ffcv evaluate")
