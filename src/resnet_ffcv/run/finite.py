"""Is every tensor of a state dict finite: the check before any checkpoint is written (a NaN model must never
replace a good ``checkpoint_latest.ckpt``), and the one exception a divergence raises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from resnet_ffcv.errors import UserError


class TrainingDiverged(UserError):
    """The loss or the weights are NaN/Inf: a retry would diverge again, so the run fails (exit 1), one paragraph."""

    exit_code = 1  # not 2 (a check before training refused): training ran, and a rerun would diverge again


def non_finite_tensors(state: Mapping[str, object]) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an Inf (nested dicts are walked).

    One ``isfinite`` reduction per tensor and a single device->host read at the end: a save syncs anyway.
    """
    names, flags = [], []
    stack = [("", state)]
    while stack:
        prefix, mapping = stack.pop()
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                stack.append((f"{name}.", value))
            elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
                names.append(name)
                flags.append(torch.isfinite(value).all())
    if not flags:
        return []
    finite = torch.stack([flag.to(flags[0].device) for flag in flags]).cpu().tolist()
    return [name for name, ok in zip(names, finite, strict=True) if not ok]


def is_finite(value) -> bool:
    """A number or a one-element tensor (already on the host, or read once) is neither NaN nor Inf."""
    return math.isfinite(float(value))
