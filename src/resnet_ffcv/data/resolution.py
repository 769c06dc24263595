"""Progressive resizing as data: low resolution early (fast epochs), full resolution at the end (accuracy).

Two forms: FFCV's linear ramp (``min_res`` -> ``max_res`` between ``start_ramp`` and ``end_ramp``, rounded to
a multiple of 32, as in ffcv-imagenet's ``train_imagenet.py``), or an explicit list of stages, each optionally
with its own batch size. Either way the resolution is a pure function of the epoch, so it is identical on all
ranks and after any resume.

A :class:`ResolutionSchedule` is a plain value: the config's ``resolution:`` section builds one, the CLI hands
it to the datamodule (``data.resolution``), which applies it itself when it builds a train loader and when it
starts an epoch; ``resnet-ffcv plan`` reads the same object (:meth:`ResolutionSchedule.train_shape`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resnet_ffcv.errors import InvalidValue

# FFCV itself takes any crop size (33 px works); multiples of 8 keep channels_last convolutions on tensor-core
# friendly shapes and the ResNet stages' feature maps whole.
RESOLUTION_MULTIPLE = 8


def check_resolution(resolution: int, key: str) -> int:
    """``resolution`` if it is a positive multiple of 8 pixels; else a ValueError naming ``key``."""
    if not isinstance(resolution, int) or resolution <= 0 or resolution % RESOLUTION_MULTIPLE:
        raise InvalidValue(f"{key}={resolution!r}: expected a positive multiple of {RESOLUTION_MULTIPLE} pixels")
    return resolution


def ramp_resolution(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int, round_to: int = 32) -> int:
    """FFCV's ``get_resolution``: ``min_res`` up to ``start_ramp``, ``max_res`` from ``end_ramp``, linear.

    Rounded to a multiple of ``round_to``.
    """
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    interpolated = np.interp([epoch], [start_ramp, end_ramp], [min_res, max_res])[0]
    return int(np.round(interpolated / round_to)) * round_to


@dataclass
class Stage:
    """From ``start_epoch`` to the next stage: ``resolution`` px, and ``batch_size`` per device if set."""

    start_epoch: int
    resolution: int
    batch_size: int | None = None


@dataclass
class ResolutionSchedule:
    """The training resolution (and optionally per-device batch size) of every epoch.

    Without ``stages`` and without the four ramp values the schedule is off (``active`` is False): every epoch
    trains at ``data.train_resolution``.

    Args:
        min_res: ramp start resolution in pixels (a multiple of 8).
        max_res: ramp end resolution in pixels (a multiple of 8).
        start_ramp: last epoch at ``min_res``.
        end_ramp: first epoch at ``max_res``.
        round_to: ramp resolutions are rounded to a multiple of this (32 in FFCV's recipe).
        stages: explicit schedule, used instead of the ramp when given, e.g. ``[{start_epoch: 0, resolution:
            160}, {start_epoch: 20, resolution: 192}, {start_epoch: 40, resolution: 224, batch_size: 128}]``.
            The first stage starts at epoch 0. A stage without ``batch_size`` keeps ``data.batch_size``; stages
            that change it need ``trainer.reload_dataloaders_every_n_epochs: 1`` (a new batch size means a new
            FFCV loader; epochs that keep it reuse the loader already built).
    """

    min_res: int | None = None
    max_res: int | None = None
    start_ramp: int | None = None
    end_ramp: int | None = None
    round_to: int = 32
    stages: list[Stage] | None = None

    def __post_init__(self) -> None:
        self.stages = [stage if isinstance(stage, Stage) else Stage(**stage) for stage in self.stages or []]
        if self.stages:
            self._check_stages()
            return
        ramp = ("min_res", "max_res", "start_ramp", "end_ramp")
        missing = [key for key in ramp if getattr(self, key) is None]
        if 0 < len(missing) < len(ramp):
            raise InvalidValue(f"resolution: a ramp needs min_res, max_res, start_ramp and end_ramp; missing {missing}")
        if not missing:
            self._check_ramp()

    def _check_ramp(self) -> None:
        check_resolution(self.min_res, "resolution.min_res")
        check_resolution(self.max_res, "resolution.max_res")
        check_resolution(self.round_to, "resolution.round_to")
        if self.min_res > self.max_res or self.start_ramp > self.end_ramp:
            raise InvalidValue(
                f"resolution: expected min_res <= max_res and start_ramp <= end_ramp, got min_res={self.min_res}, "
                f"max_res={self.max_res}, start_ramp={self.start_ramp}, end_ramp={self.end_ramp}"
            )

    def _check_stages(self) -> None:
        if self.stages[0].start_epoch != 0:
            raise InvalidValue(f"resolution.stages[0].start_epoch={self.stages[0].start_epoch}: expected 0")
        for index, stage in enumerate(self.stages):
            check_resolution(stage.resolution, f"resolution.stages[{index}].resolution")
            if stage.batch_size is not None and stage.batch_size < 1:
                raise InvalidValue(f"resolution.stages[{index}].batch_size={stage.batch_size}: expected >= 1")
            if index and stage.start_epoch <= self.stages[index - 1].start_epoch:
                raise InvalidValue(
                    f"resolution.stages[{index}].start_epoch={stage.start_epoch}: expected start epochs in "
                    "increasing order"
                )

    @property
    def active(self) -> bool:
        return bool(self.stages) or self.min_res is not None

    def stage_batch_sizes(self) -> dict[str, int]:
        """The batch sizes the stages set, by config key (empty: the schedule never changes the batch size)."""
        return {
            f"resolution.stages[{index}].batch_size": stage.batch_size
            for index, stage in enumerate(self.stages)
            if stage.batch_size is not None
        }

    def train_shape(self, epoch: int, resolution: int, batch_size: int) -> tuple[int, int]:
        """(resolution, per-device batch size) of training epoch ``epoch``: the schedule's, with ``resolution``
        (``data.train_resolution``) where the schedule is off and ``batch_size`` (``data.batch_size``) where a
        stage keeps it. The one place that says it: the datamodule, the compile plan, ``plan`` and the progress
        ETA all ask here."""
        if not self.active:
            return resolution, batch_size
        scheduled, stage_batch = self.at(epoch)
        return scheduled, stage_batch or batch_size

    def at(self, epoch: int) -> tuple[int, int | None]:
        """(resolution, per-device batch size or None for the configured one) for ``epoch``."""
        if not self.active:
            raise InvalidValue("resolution: no stages and no ramp configured (the schedule is off)")
        if not self.stages:
            return ramp_resolution(
                epoch, self.min_res, self.max_res, self.start_ramp, self.end_ramp, self.round_to
            ), None
        stage = next(stage for stage in reversed(self.stages) if stage.start_epoch <= epoch)
        return stage.resolution, stage.batch_size
