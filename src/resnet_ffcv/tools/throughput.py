"""Measuring the training step: synthetic on-device batches, a step clock, and the Trainer run around them.

Shared by ``resnet-ffcv plan`` and ``benchmarks/train_throughput.py`` so both time exactly the same thing.
"""

from __future__ import annotations

import time
from itertools import pairwise

import lightning as L
import torch


class RepeatedBatches:
    """The same on-device batch ``length`` times: measures the training step, not a data loader."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], length: int):
        self.batch, self.length = batch, length
        self.batch_size = int(batch[0].shape[0])  # as a loader has it (the EMA's log line reads it)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return (self.batch for _ in range(self.length))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step (CUDA synchronized at both),
    and the start time of every step in between (``marks``: per-step durations on the CPU, where they are real).
    """

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0
        self.marks: list[float] = []
        self.first_step_seconds = 0.0  # step 0 alone: where torch.compile (and cuDNN autotuning) is paid

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            synchronize(pl_module.device)
            self._first_start = time.perf_counter()
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self.start = time.perf_counter()
        if batch_idx >= self.warmup:
            self.marks.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:
            synchronize(pl_module.device)
            self.first_step_seconds = time.perf_counter() - self._first_start
        if batch_idx + 1 == trainer.num_training_batches:
            synchronize(pl_module.device)
            self.end = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.end:  # stopped before the last batch (max_steps below the loader's length)
            synchronize(pl_module.device)
            self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def step_seconds(self) -> list[float]:
        """Duration of each timed step, from its start to the next one's (the last one to the end)."""
        marks = [*self.marks, self.end]
        return [later - earlier for earlier, later in pairwise(marks)]


def synthetic_batch(
    batch: int, resolution: int, num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW channels_last images and int64 labels, as the FFCV loader hands them over."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, num_classes, (batch,), generator=generator)
    return images.to(device).contiguous(memory_format=torch.channels_last), labels.to(device)


def run_lightning_steps(
    module: L.LightningModule,
    batch: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    warmup: int,
    precision: str,
    device: torch.device,
    **trainer_kwargs,
) -> StepClock:
    """Runs ``steps`` training steps through a real Trainer; the clock holds the timings after ``warmup``.

    ``trainer_kwargs`` override the bare defaults (no logger, no progress bar), e.g. to time the Trainer as a
    real run configures it (progress bar, a logger, ``gradient_clip_val``).
    """
    if not 0 <= warmup < steps:
        raise ValueError(f"warmup={warmup}: expected 0 <= warmup < steps ({steps})")
    clock = StepClock(warmup)
    settings = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **trainer_kwargs,
    }
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        max_steps=steps,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[clock, *settings.pop("callbacks", [])],
        **settings,
    )
    trainer.fit(module, train_dataloaders=RepeatedBatches(batch, steps))
    return clock
