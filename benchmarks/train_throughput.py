"""Training images/s: our LightningModule through the Trainer vs the same step in a plain PyTorch loop.

Both run the same network, optimizer, mixing, EMA, precision, memory format and compile flag on the same
synthetic batches already on the device, in one process, so the ratio isolates what Lightning and our module's
hooks add per step (the question of Lightning issue #14189, where a Lightning + FFCV loop was 4x slower).

    python benchmarks/train_throughput.py --cpu            # small: resnet18, 64 px, a few steps; runs anywhere
    python benchmarks/train_throughput.py                  # GPU: resnet50, 160/192/224 px, bf16, +/- compile

Prints a table; ``--json PATH`` also writes it. Figures are wall time from step ``warmup`` to the last step,
the median of ``--repeats`` interleaved runs of each loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from resnet_ffcv.model import ImageClassifier
from resnet_ffcv.throughput import synchronize, synthetic_batch, time_lightning_steps

# Training FLOPs per image of ResNet-50 (about 3x the forward pass), for the fraction of the compute ceiling.
RESNET50_TRAIN_GFLOP = {224: 24.5, 192: 24.5 * (192 / 224) ** 2, 160: 12.5}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense tensor-core peaks


@dataclass
class Row:
    loop: str
    arch: str
    resolution: int
    batch: int
    precision: str
    compile: bool
    steps: int
    seconds: float
    images_per_s: float
    fraction_of_peak: float | None = None


def make_module(args, resolution: int, compile_: bool) -> ImageClassifier:
    return ImageClassifier(
        arch=args.arch, num_classes=1000, lr=0.1, warmup_epochs=0, compile=compile_, channels_last=True
    )


def lightning_loop(args, resolution: int, compile_: bool, device: torch.device) -> float:
    module = make_module(args, resolution, compile_)
    batch = synthetic_batch(args.batch, resolution, 1000, device)
    return time_lightning_steps(module, batch, args.steps, args.warmup, args.precision, device)


def plain_loop(args, resolution: int, compile_: bool, device: torch.device) -> float:
    """The module's own pieces (network, mixing, loss, optimizer groups, EMA) in a hand-written loop."""
    module = make_module(args, resolution, compile_).to(device)
    module.train()
    optimizer = module.configure_optimizers()
    images, labels = synthetic_batch(args.batch, resolution, 1000, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")
    max_epochs, start = 1.0, 0.0
    for step in range(args.steps):
        if step == args.warmup:
            synchronize(device)
            start = time.perf_counter()
        lr = module.peak_lr(args.batch) * module.schedule(step / args.steps, max_epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast:
            inputs, targets = module.mix(module.normalize(images), labels, 0)
            logits = module.network(inputs.contiguous(memory_format=module.memory_format))
            loss = F.cross_entropy(logits, targets, label_smoothing=module.hparams.label_smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if module.ema is not None:
            module.ema.update_parameters(module.network)
    synchronize(device)
    return time.perf_counter() - start


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def run(args) -> list[Row]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    torch.backends.cudnn.benchmark = True
    compile_flags = [False, True] if device.type == "cuda" and not args.no_compile else [False]
    peak = peak_tflops(device)
    rows = []
    for resolution in args.resolutions:
        for compile_ in compile_flags:
            # Interleaved repeats, median per loop: background load hits both loops alike.
            times: dict[str, list[float]] = {"plain": [], "lightning": []}
            for _ in range(args.repeats):
                for name, loop in (("plain", plain_loop), ("lightning", lightning_loop)):
                    torch.manual_seed(0)
                    times[name].append(loop(args, resolution, compile_, device))
                    print(f"  {name}: {times[name][-1]:.2f} s", flush=True)
            for name, measurements in times.items():
                seconds = statistics.median(measurements)
                measured = args.steps - args.warmup
                images_per_s = measured * args.batch / seconds
                fraction = None
                if peak and args.arch == "resnet50":
                    gflop = RESNET50_TRAIN_GFLOP.get(resolution, 24.5 * (resolution / 224) ** 2)
                    fraction = images_per_s * gflop / (peak * 1e3)
                rows.append(
                    Row(
                        name,
                        args.arch,
                        resolution,
                        args.batch,
                        args.precision,
                        compile_,
                        measured,
                        seconds,
                        images_per_s,
                        fraction,
                    )
                )
    return rows


def print_table(rows: list[Row], device_name: str) -> None:
    print(f"\ntraining throughput on {device_name} (synthetic on-device batches)")
    print(
        f"{'res':>4} {'compile':>7} {'plain img/s':>12} {'lightning img/s':>16} "
        f"{'time ratio L/plain':>19} {'of peak':>8}"
    )
    for plain, lightning in zip(rows[::2], rows[1::2], strict=True):
        ratio = lightning.seconds / plain.seconds
        peak = f"{lightning.fraction_of_peak:.1%}" if lightning.fraction_of_peak else "-"
        print(
            f"{plain.resolution:>4} {str(plain.compile):>7} {plain.images_per_s:>12.1f} "
            f"{lightning.images_per_s:>16.1f} {ratio:>19.3f} {peak:>8}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="small CPU mode: resnet18, 64 px, batch 16")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--resolutions", type=int, nargs="+", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per loop, warmup included")
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded from the timing")
    parser.add_argument("--precision", default=None, help="Trainer precision (bf16-mixed on GPU, 32-true on CPU)")
    parser.add_argument("--no-compile", action="store_true", help="GPU: skip the torch.compile rows")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each loop; the median counts")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    small = args.cpu or not torch.cuda.is_available()
    defaults = (
        {"arch": "resnet18", "resolutions": [64], "batch": 16, "steps": 12, "warmup": 2, "precision": "32-true"}
        if small
        else {
            "arch": "resnet50",
            "resolutions": [160, 192, 224],
            "batch": 256,
            "steps": 60,
            "warmup": 15,
            "precision": "bf16-mixed",
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup {args.warmup}: expected 0 <= warmup < steps ({args.steps})")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    rows = run(args)
    device_name = (
        torch.cuda.get_device_name()
        if rows and torch.cuda.is_available() and not args.cpu
        else (f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    )
    print_table(rows, device_name)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_name, "rows": [asdict(row) for row in rows]}, handle, indent=1)
    return rows


if __name__ == "__main__":
    main()
