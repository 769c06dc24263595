"""Does the whole recipe learn on the CPU? MixUp/CutMix, EMA, label smoothing and the LR schedule all on.

Writes the generated 10-class shape set (``resnet_ffcv.dataset.synthetic``) to .ffcv with the project's writer,
trains a small torchvision ResNet through a real Trainer and FFCVDataModule, and prints validation
top-1/top-5 of the raw and the EMA weights after every epoch (chance: 10% top-1).

    python benchmarks/recipe_learning_check.py --epochs 8 --resolution 48
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L

from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.dataset.synthetic import make_synthetic_imagefolder
from resnet_ffcv.dataset.writer import write_dataset
from resnet_ffcv.recipe.module import ImageClassifier


class EpochTable(L.Callback):
    """One row per validation: epoch, raw and EMA accuracies, wall time since fit started."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")}
        row = {"epoch": trainer.current_epoch, "seconds": time.perf_counter() - self.start, **metrics}
        self.rows.append(row)
        nan = float("nan")
        acc1, acc5 = row["val/acc1"], row["val/acc5"]
        acc1_ema, acc5_ema = row.get("val/acc1_ema", nan), row.get("val/acc5_ema", nan)
        print(
            f"| {row['epoch']:5d} | {acc1:8.3f} | {acc1_ema:12.3f} | {acc5:8.3f} | {acc5_ema:12.3f} "
            f"| {row['seconds']:7.1f} |",
            flush=True,
        )


def write_data(root: Path, train_per_class: int, val_per_class: int, seed: int = 0, **writer_args) -> Path:
    make_synthetic_imagefolder(root / "images", train_per_class, val_per_class, seed=seed)
    write_dataset(root / "images", root / "ffcv", preset="rn18", num_workers=2, **writer_args)
    return root / "ffcv"


def learnable_recipe(
    data_dir: Path,
    resolution: int = 48,
    batch_size: int = 32,
    arch: str = "resnet18",
    lr: float = 0.1,
    ema_decay: float = 0.9,
    **data_args,
) -> tuple[ImageClassifier, FFCVDataModule]:
    """The whole recipe on the shape set: MixUp/CutMix, EMA, label smoothing, onecycle, BlurPool, zero-init (also
    what tests/test_recipe_learns.py trains). ``data_args``: more FFCVDataModule arguments (``order``, ...)."""
    data = FFCVDataModule(
        data_dir=str(data_dir),
        batch_size=batch_size,
        num_workers=2,
        train_resolution=resolution,
        val_resolution=resolution,
        scale=(0.35, 1.0),
        **data_args,
    )
    model = ImageClassifier(
        arch=arch,
        num_classes=data.num_classes,
        lr=lr,
        weight_decay=5e-5,
        label_smoothing=0.1,
        scheduler="onecycle",
        warmup_epochs=1,
        cutmix_prob=0.3,
        mixup_alpha=0.2,
        use_ema=True,
        ema_decay=ema_decay,
        blurpool=True,
        zero_init_residual=True,
    )
    return model, data


def train(
    data_dir: Path,
    epochs: int = 8,
    resolution: int = 48,
    batch_size: int = 32,
    arch: str = "resnet18",
    lr: float = 0.1,
    ema_decay: float = 0.9,
    seed: int = 0,
    **data_args,
) -> list[dict[str, float]]:
    """Fit with the full recipe; returns one row of validation metrics per epoch."""
    L.seed_everything(seed, verbose=False)
    # The data order's seed is the run's seed too.
    model, data = learnable_recipe(data_dir, resolution, batch_size, arch, lr, ema_decay, **{"seed": seed, **data_args})
    table = EpochTable()
    print("| epoch | val/acc1 | val/acc1_ema | val/acc5 | val/acc5_ema | seconds |")
    print("|------:|---------:|-------------:|---------:|-------------:|--------:|")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[table],
    )
    trainer.fit(model, data)
    return table.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--ema-decay", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data_dir = write_data(Path(tmp), args.train_per_class, args.val_per_class)
        print(f"data written in {time.perf_counter() - start:.1f} s")
        train(
            data_dir,
            args.epochs,
            args.resolution,
            args.batch_size,
            args.arch,
            args.lr,
            args.ema_decay,
            args.seed,
        )


if __name__ == "__main__":
    main()
