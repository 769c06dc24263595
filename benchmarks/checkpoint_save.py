"""Seconds to save a full ResNet-50 training checkpoint: is it small next to the two-minute spot notice?

    python benchmarks/checkpoint_save.py [--directory DIR] [--repeats 3]

Saves what a Lightning checkpoint of this project holds: weights, SGD momentum buffers and, for the EMA row,
one more copy of the weights, through AtomicCheckpointIO (temp file, fsync, rename) and, for comparison,
Lightning's TorchCheckpointIO. DIR should be on the disk the checkpoints will use (it defaults to
./checkpoint_bench).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch
import torchvision
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet_ffcv.callbacks.checkpointing import AtomicCheckpointIO


def training_state(with_ema: bool) -> dict:
    model = torchvision.models.resnet50(weights=None, num_classes=1000)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # creates the momentum buffers
    state = {
        "epoch": 10,
        "global_step": 12345,
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "loops": {},
    }
    if with_ema:
        state["ema_state_dict"] = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9999)).state_dict()
    return state


def time_save(io, state: dict, path: Path, repeats: int) -> tuple[float, float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        io.save_checkpoint(state, path)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", type=Path, default=Path("checkpoint_bench"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for with_ema in (False, True):
            state = training_state(with_ema)
            for name, io in (
                ("AtomicCheckpointIO", AtomicCheckpointIO()),
                ("TorchCheckpointIO", TorchCheckpointIO()),
            ):
                seconds, size_mb = time_save(io, state, args.directory / f"{name}.ckpt", args.repeats)
                contents = "model + optimizer" + (" + EMA" if with_ema else "")
                rows.append((contents, name, seconds, size_mb))
    finally:
        shutil.rmtree(args.directory, ignore_errors=True)
    print(f"ResNet-50 checkpoint save, median of {args.repeats}, torch {torch.__version__}, into {args.directory}")
    print(f"| {'contents':<26} | {'writer':<18} | {'seconds':>7} | {'MB':>6} |")
    print(f"|{'-' * 28}|{'-' * 20}|{'-' * 9}|{'-' * 8}|")
    for contents, name, seconds, size_mb in rows:
        print(f"| {contents:<26} | {name:<18} | {seconds:>7.2f} | {size_mb:>6.0f} |")


if __name__ == "__main__":
    main()
