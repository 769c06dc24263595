"""Learning-rate multipliers as functions of the fractional epoch (epoch + batch / batches_per_epoch).

Defined on epochs, not steps, so a schedule stays right when the batch size (and so the step count) changes
between resolution stages, and after a resume in the middle of an epoch.
"""

from __future__ import annotations

import math
from typing import Literal

ScheduleName = Literal["onecycle", "constant"]


def onecycle(epoch: float, max_epochs: float, warmup_epochs: float) -> float:
    """Linear 0 -> 1 over ``warmup_epochs``, then a half cosine 1 -> 0 reaching 0 at ``max_epochs``."""
    if epoch < warmup_epochs:
        return epoch / warmup_epochs
    progress = min(1.0, (epoch - warmup_epochs) / max(1e-8, max_epochs - warmup_epochs))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(name: ScheduleName, epoch: float, max_epochs: float, warmup_epochs: float) -> float:
    if name == "onecycle":
        return onecycle(epoch, max_epochs, warmup_epochs)
    if name == "constant":
        return 1.0
    raise ValueError(f"scheduler={name!r}: expected one of onecycle, constant")
