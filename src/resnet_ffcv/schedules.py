"""Learning-rate multipliers as functions of the fractional epoch (epoch + batch / batches_per_epoch).

Defined on epochs, not steps, so a schedule stays right when the batch size (and so the step count) changes
between resolution stages, and after a resume in the middle of an epoch. Each function returns the factor
that multiplies the peak LR. ``SCHEDULES`` maps each ``model.scheduler`` name to its shape; the names a config
may use (``ScheduleName``) are derived from it, so a new shape is one function and one registry entry.
``Schedule`` holds the knobs and looks the shape up by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# torch.optim.lr_scheduler.OneCycleLR's defaults: start at peak / 25, end at peak / (25 * 1e4).
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
# FFCV's get_cyclic_lr starts at 1e-4 * lr rather than exactly 0.
TRIANGULAR_START = 1e-4


def _half_cosine(progress: float, start: float, end: float) -> float:
    progress = min(1.0, max(0.0, progress))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def onecycle(epoch: float, max_epochs: float, warmup_epochs: float) -> float:
    """Warmup then cosine annealing, shaped like ``torch.optim.lr_scheduler.OneCycleLR`` but on epochs.

    Exactly: with ``lo = 1/25`` and ``end = 1/(25 * 1e4)`` (OneCycleLR's ``div_factor`` and
    ``final_div_factor``), the factor rises linearly from ``lo`` at epoch 0 to 1 at ``warmup_epochs``, then
    falls along a half cosine from 1 to ``end`` (4e-6, "about 0") at ``max_epochs``, and stays there.
    """
    lo = 1.0 / ONECYCLE_DIV_FACTOR
    end = lo / ONECYCLE_FINAL_DIV_FACTOR
    if epoch < warmup_epochs:
        return lo + (1.0 - lo) * epoch / warmup_epochs
    return _half_cosine((epoch - warmup_epochs) / max(1e-8, max_epochs - warmup_epochs), 1.0, end)


def triangular(epoch: float, max_epochs: float, peak_epoch: float) -> float:
    """FFCV's cyclic LR (``get_cyclic_lr``): linear from 1e-4 at epoch 0 to 1 at ``peak_epoch``, then
    linear to 0 at ``max_epochs``. FFCV interpolates between epoch boundaries within an epoch, which is
    this same function at the fractional epoch."""
    return float(np.interp(epoch, [0.0, peak_epoch, max_epochs], [TRIANGULAR_START, 1.0, 0.0]))


def cosine(epoch: float, max_epochs: float, warmup_epochs: float, min_ratio: float = 0.0) -> float:
    """Linear 0 -> 1 over ``warmup_epochs``, then a half cosine 1 -> ``min_ratio`` at ``max_epochs``."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    return _half_cosine((epoch - warmup_epochs) / max(1e-8, max_epochs - warmup_epochs), 1.0, min_ratio)


def step(epoch: float, milestones: Sequence[float], gamma: float, warmup_epochs: float = 0.0) -> float:
    """Linear 0 -> 1 over ``warmup_epochs``, then multiplied by ``gamma`` at each milestone epoch passed."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    return gamma ** sum(epoch >= milestone for milestone in milestones)


# name -> shape, called with the knobs: ``SCHEDULES[name](schedule, epoch, max_epochs)``. The order is the one
# ``--help`` lists the choices in.
SCHEDULES: dict[str, Callable[[Schedule, float, float], float]] = {
    "onecycle": lambda s, epoch, max_epochs: onecycle(epoch, max_epochs, s.warmup_epochs),
    "triangular": lambda s, epoch, max_epochs: triangular(epoch, max_epochs, s.peak_epoch),
    "cosine": lambda s, epoch, max_epochs: cosine(epoch, max_epochs, s.warmup_epochs, s.min_ratio),
    "step": lambda s, epoch, max_epochs: step(epoch, s.milestones, s.gamma, s.warmup_epochs),
    "constant": lambda s, epoch, max_epochs: 1.0,
}

# The names a config may use, from the registry: jsonargparse lists them in --help and validates configs by them.
ScheduleName = Literal[tuple(SCHEDULES)]


@dataclass(frozen=True)
class Schedule:
    """The LR shape and its knobs; ``Schedule(...)(epoch, max_epochs)`` is the factor on the peak LR."""

    name: ScheduleName = "onecycle"
    warmup_epochs: float = 8.0
    peak_epoch: float = 2.0
    min_ratio: float = 0.0
    milestones: tuple[float, ...] = field(default=(30.0, 60.0, 80.0))
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise ValueError(f"model.scheduler={self.name!r}: expected one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"model.warmup_epochs={self.warmup_epochs}: expected >= 0")
        if self.name == "triangular" and self.peak_epoch <= 0:
            raise ValueError(f"model.lr_peak_epoch={self.peak_epoch}: expected > 0 for the triangular schedule")

    def __call__(self, epoch: float, max_epochs: float) -> float:
        return SCHEDULES[self.name](self, epoch, max_epochs)
