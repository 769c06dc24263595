"""Learning-rate multipliers as functions of the fractional epoch (epoch + batch / batches_per_epoch).

Defined on epochs, not steps, so a schedule stays right when the batch size (and so the step count) changes
between resolution stages, and after a resume in the middle of an epoch. Each function returns the factor
that multiplies the peak LR. ``SCHEDULES`` maps each ``model.scheduler`` name to its shape; the names a config
may use (``ScheduleName``) are derived from it, so a new shape is one function and one registry entry.
``Schedule`` holds the knobs and looks the shape up by name.

Each shape is named for what it is and reproduces its reference exactly (``tests/test_schedules.py`` checks):

- ``onecycle``: ``torch.optim.lr_scheduler.OneCycleLR`` (two-phase, ``anneal_strategy="cos"``) stepped once per
  optimizer step, with ``pct_start = warmup_epochs / max_epochs``; optionally its momentum cycle too.
- ``linear_warmup_cosine``: what this project called ``onecycle`` before: linear (not cosine) warmup from
  lr/25, half cosine to lr/25e4, momentum fixed.
- ``triangular`` and ``step``: ffcv-imagenet's ``get_cyclic_lr`` and ``get_step_lr`` (train_imagenet.py),
  evaluated at integer epochs and interpolated linearly within each epoch as its ``train_loop`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from resnet_ffcv.errors import InvalidValue

# torch.optim.lr_scheduler.OneCycleLR's defaults: start at peak / 25, end at peak / (25 * 1e4); momentum cycles
# between max_momentum 0.95 (at the start and the end) and base_momentum 0.85 (at the peak LR).
ONECYCLE_DIV_FACTOR = 25.0
ONECYCLE_FINAL_DIV_FACTOR = 1e4
ONECYCLE_MAX_MOMENTUM = 0.95
ONECYCLE_BASE_MOMENTUM = 0.85
# FFCV's get_cyclic_lr starts at 1e-4 * lr rather than exactly 0.
TRIANGULAR_START = 1e-4


def _half_cosine(progress: float, start: float, end: float) -> float:
    """``OneCycleLR._annealing_cos``: ``start`` at progress 0, ``end`` at 1 (clamped to [0, 1])."""
    progress = min(1.0, max(0.0, progress))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _onecycle_phase(epoch: float, max_epochs: float, warmup_epochs: float, steps_per_epoch: float | None):
    """(phase, progress in it) exactly as OneCycleLR.get_lr finds them at step ``epoch * steps_per_epoch``.

    OneCycleLR ends its warmup at step ``pct_start * total_steps - 1`` and its anneal at ``total_steps - 1``:
    one step before the epoch boundaries. In epochs that is ``1 / steps_per_epoch`` earlier (0 when unknown).
    """
    offset = 1.0 / steps_per_epoch if steps_per_epoch else 0.0
    warm_end, end = warmup_epochs - offset, max_epochs - offset
    if warm_end > 0 and epoch <= warm_end:
        return 0, epoch / warm_end
    return 1, (epoch - warm_end) / max(1e-12, end - warm_end)  # pct_start 0: warmup "ends" at step -1


def onecycle(epoch: float, max_epochs: float, warmup_epochs: float, steps_per_epoch: float | None = None) -> float:
    """``torch.optim.lr_scheduler.OneCycleLR``'s LR factor (cosine warmup and anneal, two phases).

    Half cosine from 1/25 to 1 over ``warmup_epochs``, then half cosine from 1 to 1/(25 * 1e4) at ``max_epochs``;
    with ``steps_per_epoch`` it equals OneCycleLR stepped per iteration (``pct_start = warmup / max_epochs``).
    Past ``max_epochs`` it stays at the end value (OneCycleLR would raise).
    """
    lo = 1.0 / ONECYCLE_DIV_FACTOR
    phase, progress = _onecycle_phase(epoch, max_epochs, warmup_epochs, steps_per_epoch)
    if phase == 0:
        return _half_cosine(progress, lo, 1.0)
    return _half_cosine(progress, 1.0, lo / ONECYCLE_FINAL_DIV_FACTOR)


def onecycle_momentum(
    epoch: float, max_epochs: float, warmup_epochs: float, steps_per_epoch: float | None = None
) -> float:
    """OneCycleLR's ``cycle_momentum``: 0.95 -> 0.85 over the warmup (as the LR rises), 0.85 -> 0.95 after."""
    phase, progress = _onecycle_phase(epoch, max_epochs, warmup_epochs, steps_per_epoch)
    if phase == 0:
        return _half_cosine(progress, ONECYCLE_MAX_MOMENTUM, ONECYCLE_BASE_MOMENTUM)
    return _half_cosine(progress, ONECYCLE_BASE_MOMENTUM, ONECYCLE_MAX_MOMENTUM)


def linear_warmup_cosine(epoch: float, max_epochs: float, warmup_epochs: float) -> float:
    """Linear warmup from 1/25 to 1 over ``warmup_epochs``, then a half cosine from 1 to 1/(25 * 1e4) (4e-6,
    "about 0") at ``max_epochs``, and there after. OneCycleLR's end points with a linear warmup; fixed momentum."""
    lo = 1.0 / ONECYCLE_DIV_FACTOR
    end = lo / ONECYCLE_FINAL_DIV_FACTOR
    if epoch < warmup_epochs:
        return lo + (1.0 - lo) * epoch / warmup_epochs
    return _half_cosine((epoch - warmup_epochs) / max(1e-8, max_epochs - warmup_epochs), 1.0, end)


def _ffcv_within_epoch(at_epoch: Callable[[int], float], epoch: float) -> float:
    """FFCV's ``train_loop``: iteration i of n in epoch e gets ``interp(i, [0, n], [lr(e), lr(e + 1)])``, i.e.
    the per-epoch value interpolated linearly at the fractional epoch ``e + i / n``."""
    whole = math.floor(epoch)
    start, end = at_epoch(whole), at_epoch(whole + 1)
    return start + (end - start) * (epoch - whole)


def triangular(epoch: float, max_epochs: float, peak_epoch: float) -> float:
    """FFCV's cyclic LR (``get_cyclic_lr``): ``interp(e, [0, peak_epoch, max_epochs], [1e-4, 1, 0])`` at each
    integer epoch e, linear within an epoch (the same line when ``peak_epoch`` is whole, as FFCV's int is)."""

    def at_epoch(whole: int) -> float:
        return float(np.interp(whole, [0.0, peak_epoch, max_epochs], [TRIANGULAR_START, 1.0, 0.0]))

    return _ffcv_within_epoch(at_epoch, epoch)


def cosine(epoch: float, max_epochs: float, warmup_epochs: float, min_ratio: float = 0.0) -> float:
    """Linear 0 -> 1 over ``warmup_epochs``, then a half cosine 1 -> ``min_ratio`` at ``max_epochs``."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    return _half_cosine((epoch - warmup_epochs) / max(1e-8, max_epochs - warmup_epochs), 1.0, min_ratio)


def step(epoch: float, max_epochs: float, milestones: Sequence[float], gamma: float) -> float:
    """FFCV's step LR (``get_step_lr``): at integer epoch e, 0 from ``max_epochs`` on, else ``gamma`` to the
    number of milestones <= e (FFCV's ``step_length`` L is milestones L, 2L, ...); linear within an epoch, so
    each drop is spread over the epoch before it and the last epoch runs down to 0. No warmup (FFCV has none)."""

    def at_epoch(whole: int) -> float:
        if whole >= max_epochs:
            return 0.0
        return gamma ** sum(whole >= milestone for milestone in milestones)

    return _ffcv_within_epoch(at_epoch, epoch)


# name -> shape, called with the knobs: ``SCHEDULES[name](schedule, epoch, max_epochs, steps_per_epoch)``. The
# order is the one ``--help`` lists the choices in.
SCHEDULES: dict[str, Callable[[Schedule, float, float, float | None], float]] = {
    "onecycle": lambda s, epoch, max_epochs, steps: onecycle(epoch, max_epochs, s.warmup_epochs, steps),
    "linear_warmup_cosine": lambda s, epoch, max_epochs, steps: linear_warmup_cosine(
        epoch, max_epochs, s.warmup_epochs
    ),
    "triangular": lambda s, epoch, max_epochs, steps: triangular(epoch, max_epochs, s.peak_epoch),
    "cosine": lambda s, epoch, max_epochs, steps: cosine(epoch, max_epochs, s.warmup_epochs, s.min_ratio),
    "step": lambda s, epoch, max_epochs, steps: step(epoch, max_epochs, s.milestones, s.gamma),
    "constant": lambda s, epoch, max_epochs, steps: 1.0,
}

# The names a config may use, from the registry: jsonargparse lists them in --help and validates configs by them.
ScheduleName = Literal[tuple(SCHEDULES)]


@dataclass(frozen=True)
class Schedule:
    """The LR shape and its knobs; ``Schedule(...)(epoch, max_epochs)`` is the factor on the peak LR and
    ``momentum(epoch, max_epochs)`` the SGD momentum to set, or None to leave it alone."""

    name: ScheduleName = "onecycle"
    warmup_epochs: float = 8.0
    peak_epoch: float = 2.0
    min_ratio: float = 0.0
    milestones: tuple[float, ...] = field(default=(30.0, 60.0, 80.0))
    gamma: float = 0.1
    cycle_momentum: bool = False

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise InvalidValue(f"model.scheduler={self.name!r}: expected one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0:
            raise InvalidValue(f"model.warmup_epochs={self.warmup_epochs}: expected >= 0")
        if self.name == "triangular" and self.peak_epoch <= 0:
            raise InvalidValue(f"model.lr_peak_epoch={self.peak_epoch}: expected > 0 for the triangular schedule")
        if self.cycle_momentum and self.name != "onecycle":
            raise InvalidValue(
                f"model.cycle_momentum=true with model.scheduler={self.name!r}: only onecycle (torch's OneCycleLR) "
                "cycles the momentum; set model.cycle_momentum: false or model.scheduler: onecycle"
            )

    def __call__(self, epoch: float, max_epochs: float, steps_per_epoch: float | None = None) -> float:
        return SCHEDULES[self.name](self, epoch, max_epochs, steps_per_epoch)

    def momentum(self, epoch: float, max_epochs: float, steps_per_epoch: float | None = None) -> float | None:
        if not self.cycle_momentum:
            return None
        return onecycle_momentum(epoch, max_epochs, self.warmup_epochs, steps_per_epoch)


# -- the LR of every batch, under a Trainer ----------------------------------------------------------------------
def steps_per_epoch(trainer) -> int | None:
    """Optimizer steps in this training epoch (None when the loader has no length)."""
    batches = trainer.num_training_batches
    if not 0 < batches < float("inf"):
        return None
    return math.ceil(batches / trainer.accumulate_grad_batches)


def fractional_epoch(trainer, batch_idx: int) -> float:
    """``current_epoch + batch_idx / batches``: where in the run this batch is, whatever the batch size."""
    batches = trainer.num_training_batches
    return trainer.current_epoch + (batch_idx / batches if 0 < batches < float("inf") else 0.0)


class EpochLR:
    """Sets the LR (and OneCycle's momentum) of every param group on every batch, from the fractional epoch.

    No LRScheduler object: nothing step-counted can drift when batch sizes change between resolution stages or a
    run resumes mid-epoch. The schedule ends at ``trainer.max_epochs`` (or ``max_steps`` in epochs).

    Args:
        schedule: the LR shape.
        lr: peak LR for the actual global batch, unless ``reference_batch`` is set.
        reference_batch: opt-in linear scaling: ``lr`` is then the LR for this global batch.
    """

    def __init__(self, schedule: Schedule, lr: float, reference_batch: int | None = None):
        if reference_batch is not None and reference_batch <= 0:
            raise InvalidValue(f"model.lr_reference_batch={reference_batch}: expected a positive batch size or null")
        self.schedule, self.lr, self.reference_batch = schedule, lr, reference_batch

    def peak_lr(self, global_batch: int) -> float:
        return self.lr if self.reference_batch is None else self.lr * global_batch / self.reference_batch

    def schedule_epochs(self, trainer) -> float:
        """Where the schedule ends: ``max_epochs``, or ``max_steps`` in epochs when only that is set."""
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return float(trainer.max_epochs)
        if trainer.max_steps > 0 and 0 < trainer.num_training_batches < float("inf"):
            return trainer.max_steps / trainer.num_training_batches
        if self.schedule.name == "constant":
            return 1.0
        raise InvalidValue(f"model.scheduler={self.schedule.name}: needs trainer.max_epochs (or max_steps) to end")

    def lr_at(self, trainer, epoch: float, global_batch: int) -> float:
        return self.peak_lr(global_batch) * self.schedule(
            epoch, self.schedule_epochs(trainer), steps_per_epoch(trainer)
        )

    def apply(self, trainer, optimizer, batch_idx: int, global_batch: int) -> float:
        """Sets this batch's LR (and momentum, with ``cycle_momentum``) on ``optimizer``; returns the LR."""
        epoch = fractional_epoch(trainer, batch_idx)
        lr = self.lr_at(trainer, epoch, global_batch)
        momentum = self.schedule.momentum(epoch, self.schedule_epochs(trainer), steps_per_epoch(trainer))
        for group in optimizer.param_groups:
            group["lr"] = lr
            if momentum is not None:
                group["momentum"] = momentum
        return lr
