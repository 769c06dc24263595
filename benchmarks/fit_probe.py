"""A callback that ``benchmarks/fit_path.py`` adds to a real ``resnet-ffcv fit``: what the run did, as it ran.

Per process it appends one JSON line to ``report_path``: when fit started, the first training step (where it
started and when it ended: the time to first step), the steady images/s of every epoch (each epoch's first
``skip_batches`` batches in this process left out: loader start, and the torch.compile of a new stage's graph),
each validation's seconds, and the last global step. CUDA is synchronized only where a clock is read: around the
first step, at the edges of an epoch's window and of each validation; a few syncs per epoch, none per step. An
epoch cut short by a stop ends at its last batch's host time instead (unsynchronized: the checkpoint save that
follows must not count), and says so (``to_epoch_end: false``).

At ``announce_step`` it prints one line, so that the driver can send SIGTERM mid-epoch at a known point.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
import torch

ANNOUNCE = "fit-probe: reached step"


def _sync(module: L.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class FitProbe(L.Callback):
    """Images/s per epoch, time to first step and validation seconds of one fit process (rank 0 writes).

    Args:
        report_path: a JSON-lines file; each process appends its record when training ends or is interrupted.
        announce_step: after this global step, print ``fit-probe: reached step N`` (None: never).
        skip_batches: batches at the start of each epoch (in this process) not timed.
    """

    def __init__(self, report_path: str, announce_step: int | None = None, skip_batches: int = 1):
        self.report_path = Path(report_path)
        self.announce_step, self.skip_batches = announce_step, skip_batches
        self.fit_start = 0.0
        self.first_step: dict | None = None
        self.epochs: list[dict] = []
        self.validations: list[float] = []
        self._epoch: dict | None = None
        self._window_start: float | None = None
        self._last_end = 0.0  # host time at the end of the last timed batch
        self._validation_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start = time.time()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch, self._window_start = None, None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.first_step is None:
            _sync(pl_module)
            self.first_step = {"global_step": trainer.global_step, "epoch": trainer.current_epoch}
            self.first_step |= {"batch_idx": batch_idx, "start": time.time()}
        if self._epoch is None:  # this epoch's first batch in this process (a resumed epoch starts mid-way)
            images = batch[0]
            self._epoch = {"epoch": trainer.current_epoch, "first_batch_idx": batch_idx, "resolution": images.shape[-1]}
            self._epoch |= {"batch": images.shape[0], "timed_steps": 0, "images": 0, "seconds": 0.0}
        if batch_idx == self._epoch["first_batch_idx"] + self.skip_batches:
            _sync(pl_module)
            self._window_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if "end" not in self.first_step:
            _sync(pl_module)
            self.first_step["end"] = time.time()
        if self._window_start is not None:
            self._epoch["timed_steps"] += 1
            self._epoch["images"] += int(batch[0].shape[0]) * trainer.world_size
            self._last_end = time.perf_counter()
        if batch_idx + 1 == trainer.num_training_batches:
            self._close_epoch(pl_module, to_epoch_end=True)
        if trainer.global_step == self.announce_step and trainer.is_global_zero:
            where = f"epoch {trainer.current_epoch}, batch {batch_idx + 1}"
            print(f"{ANNOUNCE} {trainer.global_step} ({where})", flush=True)

    def _close_epoch(self, pl_module: L.LightningModule, to_epoch_end: bool) -> None:
        if self._epoch is None:
            return
        if self._window_start is not None and self._epoch["timed_steps"]:
            if to_epoch_end:
                _sync(pl_module)
            end = time.perf_counter() if to_epoch_end else self._last_end
            self._epoch["seconds"] = end - self._window_start
        self._epoch["to_epoch_end"] = to_epoch_end
        self.epochs.append(self._epoch)
        self._epoch, self._window_start = None, None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module)
        self._validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _sync(pl_module)
        self.validations.append(time.perf_counter() - self._validation_start)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, ended: str) -> None:
        self._close_epoch(pl_module, to_epoch_end=False)
        if not trainer.is_global_zero:
            return
        record = {
            "pid": os.getpid(),
            "ended": ended,
            "fit_start": self.fit_start,
            "first_step": self.first_step,
            "epochs": self.epochs,
            "validation_seconds": self.validations,
            "last_global_step": trainer.global_step,
        }
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        with self.report_path.open("a") as report:
            report.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module, "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write(trainer, pl_module, type(exception).__name__)
