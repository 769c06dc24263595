"""Training throughput of the recipe on one GPU: ResNet-50, 160 px, batch 256, bf16-mixed, channels_last,
with and without torch.compile; prints a table of images/s.

Each step is the real one: a Lightning Trainer runs ``ImageClassifier.training_step`` (normalization,
MixUp/CutMix, BlurPool ResNet-50, label-smoothed loss), SGD, the per-batch LR and the EMA update. The batches
are random uint8 images already on the GPU, so the figure is the model side alone, without FFCV decoding.

    python benchmarks/gpu_recipe_check.py                 # on a GPU machine
    python benchmarks/gpu_recipe_check.py --cpu-smoke     # tiny model, 2 timed steps, on the CPU
"""

from __future__ import annotations

import argparse
import platform
import time

import lightning as L
import torch

from resnet_ffcv.model import ImageClassifier


class SameBatch:
    """``length`` times the same (images, labels) batch, created once on ``device``."""

    def __init__(self, batch_size: int, resolution: int, num_classes: int, length: int, device: torch.device):
        images = torch.randint(0, 256, (batch_size, 3, resolution, resolution), dtype=torch.uint8, device=device)
        self.batch = (
            images.contiguous(memory_format=torch.channels_last),
            torch.randint(0, num_classes, (batch_size,), device=device),
        )
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return (self.batch for _ in range(self.length))


class StepTimer(L.Callback):
    """Wall time of the steps after ``warmup`` (synchronized with the GPU at both ends)."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = self.first = 0.0

    def _sync(self, pl_module) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module):
        self.first = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self._sync(pl_module)
        self.end = time.perf_counter()


def measure(args: argparse.Namespace, compile: bool) -> dict[str, float | str]:
    torch._dynamo.reset()
    accelerator = "cpu" if args.cpu_smoke else "gpu"
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = ImageClassifier(
        arch=args.arch,
        num_classes=1000,
        lr=0.8,
        scheduler="onecycle",
        warmup_epochs=1,
        cutmix_prob=0.3,
        mixup_alpha=0.2,
        use_ema=True,
        blurpool=True,
        channels_last=True,
        compile=compile,
    )
    steps = args.warmup + args.steps
    timer = StepTimer(args.warmup)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=args.precision,
        max_steps=steps,
        benchmark=True,  # cudnn autotuning, as in training
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    batches = SameBatch(args.batch_size, args.resolution, 1000, steps, device)
    trainer.fit(model, train_dataloaders=batches)
    seconds = timer.end - timer.start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {
        "compile": str(compile),
        "images/s": args.steps * args.batch_size / seconds,
        "ms/step": 1000 * seconds / args.steps,
        "warmup s": timer.start - timer.first,
        "peak GiB": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--resolution", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--warmup", type=int, default=15, help="untimed steps (compilation, cudnn autotuning)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--no-compile", action="store_true", help="only the eager run")
    parser.add_argument("--cpu-smoke", action="store_true", help="resnet18, 32 px, batch 4, 1 + 2 steps, CPU")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.arch, args.resolution, args.batch_size, args.warmup, args.steps = "resnet18", 32, 4, 1, 2
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --cpu-smoke")

    device_name = "CPU" if args.cpu_smoke else torch.cuda.get_device_name()
    print(
        f"{device_name}, torch {torch.__version__}, python {platform.python_version()}: {args.arch}, "
        f"{args.resolution} px, batch {args.batch_size}, {args.precision}, channels_last, "
        f"{args.warmup} warmup + {args.steps} timed steps"
    )
    rows = [measure(args, compile) for compile in ([False] if args.no_compile else [False, True])]
    print("| compile | images/s | ms/step | warmup s | peak GiB |")
    print("|---------|---------:|--------:|---------:|---------:|")
    for row in rows:
        print(
            f"| {row['compile']:7} | {row['images/s']:8.1f} | {row['ms/step']:7.1f} "
            f"| {row['warmup s']:8.1f} | {row['peak GiB']:8.2f} |"
        )


if __name__ == "__main__":
    main()
