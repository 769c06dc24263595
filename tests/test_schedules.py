"""LR schedules against their references: torch's OneCycleLR itself, and ffcv-imagenet's LR functions."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
import torch

from resnet_ffcv.recipe.schedules import (
    SCHEDULES,
    Schedule,
    ScheduleName,
    cosine,
    linear_warmup_cosine,
    onecycle,
    step,
    triangular,
)


# -- transcriptions of libffcv/ffcv-imagenet train_imagenet.py (commit 606c584), with fastargs' @param removed --
def ffcv_get_step_lr(epoch, lr, step_ratio, step_length, epochs):
    if epoch >= epochs:
        return 0

    num_steps = epoch // step_length
    return step_ratio**num_steps * lr


def ffcv_get_cyclic_lr(epoch, lr, epochs, lr_peak_epoch):
    xs = [0, lr_peak_epoch, epochs]
    ys = [1e-4 * lr, lr, 0]
    return np.interp([epoch], xs, ys)[0]


def ffcv_epoch_lrs(get_lr, epoch: int, iters: int) -> np.ndarray:
    """ImageNetTrainer.train_loop: ``lr_start, lr_end = get_lr(epoch), get_lr(epoch + 1)``, then
    ``np.interp(np.arange(iters), [0, iters], [lr_start, lr_end])``: the LR of each iteration of the epoch."""
    lr_start, lr_end = get_lr(epoch), get_lr(epoch + 1)
    return np.interp(np.arange(iters), [0, iters], [lr_start, lr_end])


@pytest.mark.parametrize(("epochs", "peak", "iters"), [(16, 2, 7), (88, 2, 5), (10, 3, 4)])
def test_triangular_is_ffcv_cyclic_per_iteration(epochs, peak, iters):
    lr = 1.7
    for epoch in range(epochs):
        expected = ffcv_epoch_lrs(lambda e: ffcv_get_cyclic_lr(e, lr, epochs, peak), epoch, iters)
        ours = [lr * triangular(epoch + i / iters, epochs, peak) for i in range(iters)]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(("epochs", "step_length", "iters"), [(88, 30, 3), (16, 5, 4), (7, 3, 6)])
def test_step_is_ffcv_step_per_iteration(epochs, step_length, iters):
    lr, ratio = 0.5, 0.1
    milestones = tuple(range(step_length, epochs + step_length, step_length))
    for epoch in range(epochs):
        expected = ffcv_epoch_lrs(lambda e: ffcv_get_step_lr(e, lr, ratio, step_length, epochs), epoch, iters)
        ours = [lr * step(epoch + i / iters, epochs, milestones, ratio) for i in range(iters)]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    # The drop at a milestone is spread over the epoch before it, and the last epoch runs down to 0.
    assert step(step_length - 0.5, epochs, milestones, ratio) == pytest.approx((1 + ratio) / 2)
    assert step(epochs - 0.5, epochs, milestones, ratio) == pytest.approx(
        0.5 * ffcv_get_step_lr(epochs - 1, 1, ratio, step_length, epochs)
    )


def torch_onecycle(max_epochs: int, warmup_epochs: float, steps_per_epoch: int, lr: float, cycle_momentum: bool):
    """(lr, momentum) of every iteration from torch's OneCycleLR, stepped once per optimizer step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=lr,
        epochs=max_epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=warmup_epochs / max_epochs,
        cycle_momentum=cycle_momentum,
    )
    values = []
    for _ in range(max_epochs * steps_per_epoch):
        group = optimizer.param_groups[0]
        values.append((group["lr"], group["momentum"]))
        optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize(("max_epochs", "warmup", "steps"), [(6, 2, 5), (10, 1.5, 4), (4, 0, 3), (60, 8, 3)])
def test_onecycle_is_torch_onecycle_lr_and_momentum_per_step(max_epochs, warmup, steps):
    lr = 0.8
    reference = torch_onecycle(max_epochs, warmup, steps, lr, cycle_momentum=True)
    schedule = Schedule("onecycle", warmup_epochs=warmup, cycle_momentum=True)
    for index, (torch_lr, torch_momentum) in enumerate(reference):
        epoch = index // steps + (index % steps) / steps  # the model's fractional epoch at this batch
        assert lr * schedule(epoch, max_epochs, steps) == pytest.approx(torch_lr, rel=1e-9, abs=1e-12), index
        assert schedule.momentum(epoch, max_epochs, steps) == pytest.approx(torch_momentum, rel=1e-9), index
    if warmup > 0:  # the cycle itself: 0.95 at the start, ~0.85 at the peak
        assert reference[0][1] == 0.95 and min(m for _, m in reference) == pytest.approx(0.85, abs=0.01)


def test_onecycle_without_momentum_cycling_leaves_momentum_alone():
    schedule = Schedule("onecycle", warmup_epochs=2)
    assert schedule.momentum(1.0, 6, 5) is None
    reference = torch_onecycle(6, 2, 5, 1.0, cycle_momentum=False)
    assert {m for _, m in reference} == {0.9}  # torch leaves SGD's momentum as well
    assert [schedule(i / 5, 6, 5) for i in range(30)] == pytest.approx([r for r, _ in reference], rel=1e-9)


def test_onecycle_warms_up_along_a_cosine_unlike_linear_warmup_cosine():
    lo = 1 / 25
    # Halfway through the warmup a cosine is at the midpoint too, but a quarter in it is below the line.
    assert onecycle(1.0, 60, 8) == pytest.approx(lo + (1 - lo) * 0.5 * (1 - math.cos(math.pi / 8)))
    assert linear_warmup_cosine(1.0, 60, 8) == pytest.approx(lo + (1 - lo) / 8)
    assert onecycle(1.0, 60, 8) < linear_warmup_cosine(1.0, 60, 8)
    for shape in (onecycle, linear_warmup_cosine):
        assert shape(0.0, 60, 8) == pytest.approx(lo)
        assert shape(8.0, 60, 8) == pytest.approx(1.0)
        assert shape(60.0, 60, 8) == pytest.approx(lo / 1e4)
        assert shape(70.0, 60, 8) == pytest.approx(lo / 1e4)


def test_cosine_with_warmup_and_floor():
    assert cosine(0.0, 10, 2) == 0.0
    assert cosine(0.5, 10, 2) == pytest.approx(0.25)
    assert cosine(2.0, 10, 2) == pytest.approx(1.0)
    progress = (7.3 - 2) / 8
    assert cosine(7.3, 10, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    assert cosine(10.0, 10, 2, 0.1) == pytest.approx(0.1)


def test_schedule_dispatches_by_name_and_rejects_unknown():
    assert Schedule("triangular", peak_epoch=2)(2.0, 16) == 1.0
    assert Schedule("constant")(3.3, 16) == 1.0
    assert Schedule("step", milestones=(1,), gamma=0.5)(1.5, 4) == 0.5
    with pytest.raises(ValueError, match="model.scheduler='linear'"):
        Schedule("linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr_peak_epoch"):
        Schedule("triangular", peak_epoch=0)
    with pytest.raises(ValueError, match="model.cycle_momentum=true with model.scheduler='triangular'"):
        Schedule("triangular", cycle_momentum=True)


def test_registry_is_the_list_of_names_a_config_accepts():
    # ScheduleName is what jsonargparse validates model.scheduler against and lists in --help.
    assert get_args(ScheduleName) == tuple(SCHEDULES)
    assert tuple(SCHEDULES) == ("onecycle", "linear_warmup_cosine", "triangular", "cosine", "step", "constant")
    assert Schedule("linear_warmup_cosine", warmup_epochs=8)(4.0, 60) == linear_warmup_cosine(4.0, 60, 8)
    assert Schedule("cosine", warmup_epochs=2, min_ratio=0.1)(7.3, 10) == cosine(7.3, 10, 2, 0.1)


@pytest.mark.parametrize(("clip", "share"), [(1e-6, 1.0), (1e6, 0.0)])
def test_grad_norm_and_clipped_share_logged_on_logging_steps(tmp_path, clip, share):
    """Clipping at ``gradient_clip_val`` cuts the LR of every step whose norm exceeds it: both are logged."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from resnet_ffcv.recipe.module import ImageClassifier
    from resnet_ffcv.tools.throughput import RepeatedBatches, synthetic_batch

    from .helpers import quiet_trainer

    torch.manual_seed(0)
    module = ImageClassifier(arch="resnet18", num_classes=10, blurpool=False, use_ema=False)
    logger = CSVLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(
        max_steps=6, logger=logger, log_every_n_steps=2, gradient_clip_val=clip, limit_val_batches=0
    )
    trainer.fit(module, RepeatedBatches(synthetic_batch(2, 32, 10, torch.device("cpu")), 6))
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["train/grad_norm"]]
    assert [int(row["step"]) for row in rows] == [1, 3, 5]  # every log_every_n_steps, not every step
    assert all(float(row["train/grad_norm"]) > 0 for row in rows)
    assert [float(row["train/clipped_share"]) for row in rows] == [share] * 3
