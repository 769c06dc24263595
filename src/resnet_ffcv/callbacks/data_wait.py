"""Loader-bound or compute-bound: the share of a run's training time spent waiting for the next batch."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class DataWaitMonitor(L.Callback):
    """How much of the training wall time is spent waiting for the next batch: loader-bound or compute-bound.

    The wait of a step is the host time from the end of the previous training step (``on_train_batch_end``) to
    the start of this one (``on_train_batch_start``): Lightning fetches the next batch in that gap (plus a
    little bookkeeping). Host clock, no CUDA synchronization, so the measurement does not change what it
    measures: while the GPU has work queued, the host runs ahead and blocks in kernel launches (counted as step
    time); when the loader cannot keep up, the host waits in the fetch, and then so does the GPU.

    Lightning's ``SimpleProfiler`` reports the same fetch time but adds its own per-step overhead and prints
    for every hook; this is a two-hook clock with a JSON report, cheap enough to leave on in a real run.

    Args:
        warmup: training steps not counted (pipeline compile, cuDNN autotuning, allocator warm-up); the
            window opens at the end of a step, so at least one.
        report_path: where to write the JSON summary when training ends (rank 0); ``None``: log it only.
    """

    def __init__(self, warmup: int = 10, report_path: str | None = None):
        if warmup < 0:
            raise ValueError(f"warmup={warmup}: expected >= 0")
        self.warmup, self.report_path = warmup, report_path
        self.steps = self.images = 0
        self.wait = self.epoch_start_wait = 0.0
        self.window_start: float | None = None
        self._last_end: float | None = None
        self._step_start = 0.0
        self.step_seconds: list[float] = []  # each counted step, start to end (waits excluded)
        self.wait_seconds: list[float] = []  # each counted step's wait before it

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = self._step_start = time.perf_counter()
        if self.window_start is not None and self._last_end is not None:
            self.wait += now - self._last_end
            self.wait_seconds.append(now - self._last_end)
            if batch_idx == 0:
                self.epoch_start_wait += now - self._last_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.window_start is not None:
            self.steps += 1
            self.step_seconds.append(now - self._step_start)
            self.images += int(batch[0].shape[0]) * trainer.world_size
        self._last_end = now
        if self.window_start is None and trainer.global_step >= max(1, self.warmup):
            self.window_start = now

    def summary(self) -> dict[str, float]:
        seconds = (self._last_end or 0.0) - (self.window_start or 0.0) if self.steps else 0.0
        busy = max(1e-12, seconds - self.epoch_start_wait)
        return {
            "steps": self.steps,
            "images": self.images,
            "seconds": seconds,
            "images_per_s": self.images / seconds if seconds > 0 else 0.0,
            "wait_seconds": self.wait,
            "wait_share": self.wait / seconds if seconds > 0 else 0.0,
            "epoch_start_wait_seconds": self.epoch_start_wait,
            "wait_share_excluding_epoch_starts": (self.wait - self.epoch_start_wait) / busy if seconds > 0 else 0.0,
            # Medians shrug off the spikes of a shared machine; step + wait is a typical iteration.
            "median_step_seconds": statistics.median(self.step_seconds) if self.step_seconds else 0.0,
            "median_wait_seconds": statistics.median(self.wait_seconds) if self.wait_seconds else 0.0,
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        summary = self.summary()
        if self.steps == 0:
            rank_zero_info(f"DataWaitMonitor: no step after the {self.warmup} warm-up steps; nothing measured")
        else:
            rank_zero_info(
                f"DataWaitMonitor: {summary['images_per_s']:.1f} images/s over {self.steps} steps, "
                f"{summary['wait_share']:.1%} of the time waiting for data"
            )
        if self.report_path is not None:
            Path(self.report_path).parent.mkdir(parents=True, exist_ok=True)
            Path(self.report_path).write_text(json.dumps(summary, indent=1))
