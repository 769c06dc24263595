"""End to end: ``resnet-ffcv fit`` from a generated ImageNet-like ``.ffcv`` for N steps; loader- or compute-bound?

Three measurements with the same model, batch size and resolution, one after the other in one process:

1. loader ceiling: our FFCVDataModule's training loader alone (decode, random-resized crop, flip), images/s;
2. model only: the recipe's LightningModule through a Trainer on one synthetic batch already on the device;
3. end to end: the real ``fit`` path (ResNetCLI with the recipe config, FFCVDataModule, ImageClassifier, a real
   Trainer) for ``--steps`` steps, with :class:`resnet_ffcv.callbacks.DataWaitMonitor` timing the host's wait
   for each next batch.

The verdict: loader-bound when more than ``--bound-threshold`` of the end-to-end time waits for data, else
compute-bound; and how close end to end comes to the lower of (1) and (2). On a CPU machine the loader and the
model share the same cores, so end to end there is near ``1 / (1/loader + 1/model)``, not the minimum.

    python benchmarks/end_to_end.py --cpu      # demo recipe (resnet18), 64 px, batch 16, 300-600 px JPEGs; < 60 s
    python benchmarks/end_to_end.py --smoke    # tiny: checks that the benchmark runs
    python benchmarks/end_to_end.py            # GPU: configs/p4d_78pct.yaml on one device, 160 px, batch 256

The dataset is the synthetic shapes set (``resnet_ffcv.dataset.synthetic``), written by our writer with the rn50 preset
(longest side 500 px, half JPEG); ``--workdir`` keeps it for the next run, ``--data-dir`` uses an existing one.
Validation, checkpointing and the logger are off: every timed second is training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import yaml

from resnet_ffcv.cli import main as cli_main
from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.loading import cores_per_rank
from resnet_ffcv.dataset.synthetic import make_synthetic_imagefolder
from resnet_ffcv.dataset.writer import write_dataset
from resnet_ffcv.lightning_cli import parse_config_only
from resnet_ffcv.recipe.module import ImageClassifier
from resnet_ffcv.tools.throughput import run_lightning_steps, synthetic_batch

REPO = Path(__file__).resolve().parents[1]

MODES = {
    # batch, resolution, steps, warmup, images per class (10 classes), image sides, recipe, precision
    "smoke": dict(batch=8, resolution=32, steps=6, warmup=2, per_class=6, sides=(64, 160), config="demo_cpu"),
    "cpu": dict(batch=16, resolution=64, steps=24, warmup=4, per_class=40, sides=(300, 600), config="demo_cpu"),
    "gpu": dict(batch=256, resolution=160, steps=120, warmup=30, per_class=300, sides=(300, 600), config="p4d_78pct"),
}


def prepare_data(args, root: Path) -> Path:
    """train.ffcv / val.ffcv of the synthetic set, written once into ``root`` (reused when present)."""
    ffcv_dir = root / "ffcv"
    if (ffcv_dir / "train.ffcv").is_file():
        return ffcv_dir
    images = make_synthetic_imagefolder(
        root / "images",
        train_per_class=args.per_class,
        val_per_class=2,
        min_side=args.sides[0],
        max_side=args.sides[1],
    )
    write_dataset(images, ffcv_dir, preset="rn50", num_workers=args.workers, overwrite=True)
    return ffcv_dir


def loader_ceiling(args, data_dir: Path) -> float:
    """Images/s of the training loader alone over ``steps`` batches after ``warmup`` (the first compiles).

    Longer than the fit's timed window: the loader prepares ``batches_ahead`` batches while the clock is
    stopped, which would flatter a short count.
    """
    data = FFCVDataModule(
        str(data_dir), batch_size=args.batch, num_workers=args.workers, train_resolution=args.resolution
    )
    data.setup("fit")
    loader = data.train_dataloader()
    batches, start, images, total = 0, 0.0, 0, args.warmup + args.steps
    while batches < total:
        for _, labels in loader:
            batches += 1
            if batches == args.warmup:
                start = time.perf_counter()
            elif batches > args.warmup:
                images += len(labels)
            if batches == total:
                break
    seconds = time.perf_counter() - start
    data.teardown("fit")
    return images / seconds


def recipe_overrides(args, data_dir: Path, report: Path, workdir: Path) -> Path:
    """A config laid over the recipe: this data, one device, N steps, no validation / checkpoints / logger."""
    overrides = {
        "run_dir": str(workdir / "run"),  # not the recipe's (/data/runs/..., demo_output/ in the cwd)
        "trainer": {
            "devices": 1,
            "num_nodes": 1,
            "strategy": "auto",
            "default_root_dir": str(workdir),  # the CLI's config.yaml goes here, not into the current folder
            "max_steps": args.steps,
            "max_epochs": 1000,  # the LR schedule spans max_epochs: the steps measured are all near its start
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "logger": False,
            "enable_checkpointing": False,
            "callbacks": [
                {
                    "class_path": "resnet_ffcv.callbacks.DataWaitMonitor",
                    "init_args": {"warmup": args.warmup, "report_path": str(report)},
                }
            ],
        },
        "resolution": {"stages": []},
        "target": {"target_accuracy": None},
        "model": {"compile": args.compile},
        "data": {
            "data_dir": str(data_dir),
            "batch_size": args.batch,
            "val_batch_size": args.batch,
            "train_resolution": args.resolution,
            "val_resolution": args.resolution,
            "num_workers": args.workers,
            "os_cache": True,
        },
    }
    if args.precision:
        overrides["trainer"]["precision"] = args.precision
    path = workdir / "end_to_end_overrides.yaml"
    path.write_text(yaml.safe_dump(overrides))
    return path


def model_only(args, config_argv: list[str], num_classes: int, device: torch.device) -> float:
    """Images/s of the same module and Trainer precision on one synthetic on-device batch."""
    config = parse_config_only(config_argv)
    model_args = {key: value for key, value in vars(config.model).items() if not key.startswith("_")}
    model_args["num_classes"] = num_classes
    module = ImageClassifier(**model_args)
    batch = synthetic_batch(args.batch, args.resolution, num_classes, device)
    seconds = run_lightning_steps(module, batch, args.steps, args.warmup, config.trainer.precision, device).seconds
    return (args.steps - args.warmup) * args.batch / seconds


def run(args) -> dict:
    device = torch.device("cuda" if args.mode == "gpu" else "cpu")
    with tempfile.TemporaryDirectory() as temp:
        workdir = Path(args.workdir or temp)
        workdir.mkdir(parents=True, exist_ok=True)
        data_dir = Path(args.data_dir) if args.data_dir else prepare_data(args, workdir)
        num_classes = len(json.loads((data_dir / "classes.json").read_text()))
        report = workdir / "data_wait.json"
        report.unlink(missing_ok=True)
        config = REPO / "configs" / f"{args.config}.yaml"
        config_argv = ["--config", str(config), "--config", str(recipe_overrides(args, data_dir, report, workdir))]

        loader_rate = loader_ceiling(args, data_dir)
        print(f"  loader alone: {loader_rate:.1f} images/s", flush=True)
        model_rate = model_only(args, config_argv, num_classes, device)
        print(f"  model alone: {model_rate:.1f} images/s", flush=True)
        cli_main(["fit", *config_argv])
        if not report.is_file():
            raise RuntimeError(f"{report}: the fit run wrote no DataWaitMonitor report")
        fit = json.loads(report.read_text())
    bound = "loader-bound" if fit["wait_share"] > args.bound_threshold else "compute-bound"
    ceiling = min(loader_rate, model_rate)
    return {
        "device": device_description(device),
        "config": f"configs/{args.config}.yaml",
        "batch": args.batch,
        "resolution": args.resolution,
        "steps": args.steps,
        "warmup": args.warmup,
        "workers": args.workers,
        "loader_images_per_s": loader_rate,
        "model_images_per_s": model_rate,
        "fit": fit,
        "of_ceiling": fit["images_per_s"] / ceiling,
        "serial_bound_images_per_s": 1 / (1 / loader_rate + 1 / model_rate),
        "verdict": bound,
    }


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def format_table(result: dict) -> str:
    fit = result["fit"]
    return "\n".join(
        [
            f"end to end on {result['device']}: {result['config']}, batch {result['batch']}, "
            f"{result['resolution']} px, {result['workers']} loader threads, "
            f"{fit['steps']} timed steps after {result['warmup']}",
            "| loader alone img/s | model alone img/s | fit img/s | fit / min(loader, model) "
            "| waiting for data | same, excl. epoch starts | median step + wait, ms | verdict |",
            "|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {result['loader_images_per_s']:.1f} | {result['model_images_per_s']:.1f} "
            f"| {fit['images_per_s']:.1f} | {result['of_ceiling']:.0%} | {fit['wait_share']:.1%} "
            f"| {fit['wait_share_excluding_epoch_starts']:.1%} "
            f"| {1e3 * fit['median_step_seconds']:.1f} + {1e3 * fit['median_wait_seconds']:.1f} "
            f"| {result['verdict']} |",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="CPU mode, under a minute")
    parser.add_argument("--smoke", action="store_true", help="tiny CPU run: checks that the benchmark runs")
    parser.add_argument("--config", default=None, help="recipe under configs/ (demo_cpu; p4d_78pct on GPU)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None, help="training crop side (multiple of 8)")
    parser.add_argument("--steps", type=int, default=None, help="training steps, warmup included")
    parser.add_argument("--warmup", type=int, default=None, help="steps not counted")
    parser.add_argument("--per-class", type=int, default=None, help="generated train images per class (10)")
    parser.add_argument("--sides", type=int, nargs=2, default=None, help="generated image side range, px")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="FFCV decode threads; FFCV also sets torch's thread count to it (CPU modes: 1; GPU: all cores)",
    )
    parser.add_argument("--precision", default=None, help="Trainer precision; default: the recipe's")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (GPU)")
    parser.add_argument("--bound-threshold", type=float, default=0.10, help="wait share above which: loader")
    parser.add_argument("--workdir", default=None, help="keep the generated data here and reuse it")
    parser.add_argument("--data-dir", default=None, help="an existing folder with train.ffcv + classes.json")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    args.mode = "smoke" if args.smoke else "cpu" if args.cpu or not torch.cuda.is_available() else "gpu"
    if args.workers is None:
        # On a CPU shared with other jobs, one decode thread + one torch thread (FFCV sets torch's count to
        # its own) keeps the two from spinning against each other on 2 cores.
        args.workers = cores_per_rank(1) if args.mode == "gpu" else 1
    for key, value in MODES[args.mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 1 <= args.warmup < args.steps:
        parser.error(f"--warmup {args.warmup}: expected 1 <= warmup < steps ({args.steps})")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print("\n" + format_table(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
