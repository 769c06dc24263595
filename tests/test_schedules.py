"""LR schedules against their closed forms at chosen fractional epochs."""

from __future__ import annotations

import math
from typing import get_args

import pytest

from resnet_ffcv.schedules import SCHEDULES, Schedule, ScheduleName, cosine, onecycle, step, triangular


def test_triangular_matches_ffcv_at_start_peak_and_end():
    # FFCV's get_cyclic_lr: np.interp(epoch, [0, peak, epochs], [1e-4 * lr, lr, 0]).
    assert triangular(0.0, 88, 2) == pytest.approx(1e-4)
    assert triangular(2.0, 88, 2) == 1.0
    assert triangular(88.0, 88, 2) == 0.0
    assert triangular(1.0, 88, 2) == pytest.approx((1e-4 + 1.0) / 2)
    assert triangular(45.0, 88, 2) == pytest.approx(0.5)  # halfway down: 2 + (88 - 2) / 2
    assert triangular(100.0, 88, 2) == 0.0


def test_onecycle_shape():
    lo, end = 1 / 25, 1 / 25 / 1e4
    assert onecycle(0.0, 60, 8) == pytest.approx(lo)
    assert onecycle(4.0, 60, 8) == pytest.approx(lo + (1 - lo) * 0.5)
    assert onecycle(8.0, 60, 8) == pytest.approx(1.0)
    assert onecycle(34.0, 60, 8) == pytest.approx(end + (1 - end) * 0.5)  # half way through the cosine
    assert onecycle(60.0, 60, 8) == pytest.approx(end)
    assert onecycle(70.0, 60, 8) == pytest.approx(end)


def test_cosine_with_warmup_and_floor():
    assert cosine(0.0, 10, 2) == 0.0
    assert cosine(0.5, 10, 2) == pytest.approx(0.25)
    assert cosine(2.0, 10, 2) == pytest.approx(1.0)
    progress = (7.3 - 2) / 8
    assert cosine(7.3, 10, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert cosine(10.0, 10, 2, 0.1) == pytest.approx(0.1)


def test_step_milestones_and_warmup():
    assert step(0.5, (30, 60), 0.1, warmup_epochs=1) == pytest.approx(0.5)
    assert step(29.99, (30, 60), 0.1, warmup_epochs=1) == 1.0
    assert step(30.0, (30, 60), 0.1, warmup_epochs=1) == pytest.approx(0.1)
    assert step(61.5, (30, 60), 0.1, warmup_epochs=1) == pytest.approx(0.01)


def test_schedule_dispatches_by_name_and_rejects_unknown():
    assert Schedule("triangular", peak_epoch=2)(2.0, 16) == 1.0
    assert Schedule("constant")(3.3, 16) == 1.0
    assert Schedule("step", warmup_epochs=0, milestones=(1,), gamma=0.5)(1.5, 4) == 0.5
    with pytest.raises(ValueError, match="model.scheduler='linear'"):
        Schedule("linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr_peak_epoch"):
        Schedule("triangular", peak_epoch=0)


def test_registry_is_the_list_of_names_a_config_accepts():
    # ScheduleName is what jsonargparse validates model.scheduler against and lists in --help.
    assert get_args(ScheduleName) == tuple(SCHEDULES) == ("onecycle", "triangular", "cosine", "step", "constant")
    assert Schedule("onecycle", warmup_epochs=8)(4.0, 60) == onecycle(4.0, 60, 8)
    assert Schedule("cosine", warmup_epochs=2, min_ratio=0.1)(7.3, 10) == cosine(7.3, 10, 2, 0.1)
