"""Elapsed wall time and dollars so far, across spot restarts; epoch time, GPU memory, console images/s.

Lightning's ThroughputMonitor gives precise images/s to the loggers (it synchronizes CUDA each step); it knows
nothing about money or restarts, so this callback adds those. Its clock is saved in checkpoints, so a resumed run
continues the count. Time between the last checkpoint and an interruption is not seen by the clock: the cost
shown is a lower bound of the bill by that much plus the instance's boot time.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch

from resnet_ffcv.errors import InvalidValue


def images_in_batch(batch: Any) -> int:
    """``batch_size_fn`` for ThroughputMonitor: batches are ``(images, labels)``."""
    return int(batch[0].shape[0])


class CostMonitor(L.Callback):
    """Logs ``cost/elapsed_hours``, ``cost/usd``, ``time/epoch_seconds``, ``gpu/max_memory_gb`` and ``images_per_sec``;
    puts images/s, dollars and the loss on the progress bar every ``log_every_n_steps``.

    Args:
        price_per_hour: instance price in USD per hour (p4d.24xlarge spot was ~$11/h in the seed's notes);
            0 logs the time only. The CLI always adds this callback as the ``cost:`` section of a config.
        instance_type: shown in the logs next to the price.
        log_every_n_steps: how often the step-level figures are logged.
    """

    def __init__(self, price_per_hour: float = 0.0, instance_type: str = "unknown", log_every_n_steps: int = 50):
        if price_per_hour < 0:
            raise InvalidValue(f"CostMonitor.price_per_hour={price_per_hour}: expected a price >= 0 in USD per hour")
        self.price_per_hour = price_per_hour
        self.instance_type = instance_type
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.seconds_before_this_process = 0.0
        self._process_start = time.monotonic()
        self._epoch_start = self._process_start
        self._window_start = self._process_start
        self._window_images = 0

    def elapsed_seconds(self) -> float:
        return self.seconds_before_this_process + time.monotonic() - self._process_start

    def cost_usd(self, elapsed_seconds: float | None = None) -> float:
        elapsed = self.elapsed_seconds() if elapsed_seconds is None else elapsed_seconds
        return elapsed / 3600 * self.price_per_hour

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._process_start = self._window_start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._window_images += images_in_batch(batch) * trainer.world_size
        if (batch_idx + 1) % self.log_every_n_steps:
            return
        now = time.monotonic()
        # Wall time between logging points, no CUDA sync: exact on average, which is what a progress bar needs.
        # Host tensors: a float becomes a device tensor in self.log (a blocking copy), and the progress bar
        # reads every prog_bar value with .item() at each refresh until the epoch ends (a sync per step).
        rate = self._window_images / max(1e-9, now - self._window_start)
        pl_module.log("images_per_sec", torch.tensor(rate), prog_bar=True)
        self._window_start, self._window_images = now, 0
        elapsed = self.elapsed_seconds()  # one reading for both: the hours and the dollars of the same moment
        pl_module.log("cost/elapsed_hours", torch.tensor(elapsed / 3600))
        pl_module.log("cost/usd", torch.tensor(self.cost_usd(elapsed)), prog_bar=True)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # The loss on the console: one device->host copy per log_every_n_steps instead of the per-step sync
            # that logging train/loss with prog_bar=True costs. W&B gets train/loss from the module.
            pl_module.log("loss", loss.detach().float().cpu(), prog_bar=True, logger=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("time/epoch_seconds", time.monotonic() - self._epoch_start)
        elapsed = self.elapsed_seconds()
        pl_module.log("cost/elapsed_hours", elapsed / 3600)
        pl_module.log("cost/usd", self.cost_usd(elapsed))
        if torch.cuda.is_available():
            pl_module.log("gpu/max_memory_gb", torch.cuda.max_memory_allocated() / 1e9)

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_seconds": self.elapsed_seconds()}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.seconds_before_this_process = state_dict["elapsed_seconds"]
        self._process_start = time.monotonic()
