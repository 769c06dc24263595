"""Progressive resizing: low resolution early (fast epochs), full resolution at the end (accuracy).

Two forms: FFCV's linear ramp (``min_res`` -> ``max_res`` between ``start_ramp`` and ``end_ramp``, rounded to
a multiple of 32, as in ffcv-imagenet's ``train_imagenet.py``), or an explicit list of stages, each optionally
with its own batch size. Either way the resolution is a pure function of the epoch, so it is identical on all
ranks and after any resume.

Why a schedule handed to the datamodule instead of a plain ``on_train_epoch_start`` hook: Lightning builds the
train loader and creates its iterator before ``on_train_epoch_start`` on the first epoch, after a resume and
after a dataloader reload, so only the datamodule knows the right moment (see
``FFCVDataModule.set_train_schedule``).
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np

from resnet_ffcv.data import check_resolution


@dataclass
class Stage:
    """From ``start_epoch`` to the next stage: ``resolution`` px, and ``batch_size`` per device if set."""

    start_epoch: int
    resolution: int
    batch_size: int | None = None


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


class ProgressiveResolution(L.Callback):
    """Sets the training resolution (and optionally batch size) of every epoch; logs both once per epoch.

    Logs ``train/resolution`` (the side of the batches actually served) and ``train/batch_size`` (the global
    batch: per-device batch x ranks).

    Without ``stages`` and without the four ramp values the schedule is off: every epoch trains at
    ``data.train_resolution``, and the resolution and batch size are still logged. The CLI always adds this
    callback as the ``resolution:`` section of a config, so recipe configs can override single keys.

    Args:
        min_res: ramp start resolution in pixels (a multiple of 8).
        max_res: ramp end resolution in pixels (a multiple of 8).
        start_ramp: last epoch at ``min_res``.
        end_ramp: first epoch at ``max_res``.
        round_to: ramp resolutions are rounded to a multiple of this (32 in FFCV's recipe).
        stages: explicit schedule, used instead of the ramp when given, e.g. ``[{start_epoch: 0, resolution:
            160},
            {start_epoch: 20, resolution: 192}, {start_epoch: 40, resolution: 224, batch_size: 128}]``. The
            first stage starts at epoch 0. A stage without ``batch_size`` keeps ``data.batch_size``; stages
            that change it need ``trainer.reload_dataloaders_every_n_epochs: 1`` (a new batch size means a new
            FFCV loader; epochs that keep it reuse the loader already built).
    """

    def __init__(
        self,
        min_res: int | None = None,
        max_res: int | None = None,
        start_ramp: int | None = None,
        end_ramp: int | None = None,
        round_to: int = 32,
        stages: list[Stage] | None = None,
    ):
        super().__init__()
        self.stages = [stage if isinstance(stage, Stage) else Stage(**stage) for stage in stages or []]
        ramp = {"min_res": min_res, "max_res": max_res, "start_ramp": start_ramp, "end_ramp": end_ramp}
        missing = [key for key, value in ramp.items() if value is None]
        self.active = bool(self.stages) or not missing
        if self.stages:
            self._check_stages()
        elif 0 < len(missing) < len(ramp):
            raise ValueError(
                f"ProgressiveResolution: a ramp needs min_res, max_res, start_ramp and end_ramp; missing {missing}"
            )
        elif self.active:
            check_resolution(min_res, "ProgressiveResolution.min_res")
            check_resolution(max_res, "ProgressiveResolution.max_res")
            check_resolution(round_to, "ProgressiveResolution.round_to")
            if min_res > max_res or start_ramp > end_ramp:
                raise ValueError(
                    f"ProgressiveResolution: expected min_res <= max_res and start_ramp <= end_ramp, got "
                    f"min_res={min_res}, max_res={max_res}, start_ramp={start_ramp}, end_ramp={end_ramp}"
                )
        self.min_res, self.max_res, self.round_to = min_res, max_res, round_to
        self.start_ramp, self.end_ramp = start_ramp, end_ramp
        self._logged_epoch: int | None = None

    def _check_stages(self) -> None:
        if self.stages[0].start_epoch != 0:
            raise ValueError(f"ProgressiveResolution.stages[0].start_epoch={self.stages[0].start_epoch}: expected 0")
        for index, stage in enumerate(self.stages):
            check_resolution(stage.resolution, f"ProgressiveResolution.stages[{index}].resolution")
            if stage.batch_size is not None and stage.batch_size < 1:
                raise ValueError(f"ProgressiveResolution.stages[{index}].batch_size={stage.batch_size}: expected >= 1")
            if index and stage.start_epoch <= self.stages[index - 1].start_epoch:
                raise ValueError(
                    f"ProgressiveResolution.stages[{index}].start_epoch={stage.start_epoch}: expected "
                    "start epochs in increasing order"
                )

    @property
    def changes_batch_size(self) -> bool:
        return any(stage.batch_size is not None for stage in self.stages)

    def at(self, epoch: int) -> tuple[int, int | None]:
        """(resolution, per-device batch size or None) for ``epoch``."""
        if not self.active:
            raise ValueError("ProgressiveResolution: no stages and no ramp configured (the schedule is off)")
        if not self.stages:
            return ramp_resolution(
                epoch, self.min_res, self.max_res, self.start_ramp, self.end_ramp, self.round_to
            ), None
        stage = next(stage for stage in reversed(self.stages) if stage.start_epoch <= epoch)
        return stage.resolution, stage.batch_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._logged_epoch = None
        if not self.active:
            return
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "set_train_schedule"):
            raise TypeError("ProgressiveResolution needs the FFCVDataModule (the datamodule has no set_train_schedule)")
        if self.changes_batch_size:
            if trainer.reload_dataloaders_every_n_epochs != 1:
                raise ValueError(
                    "ProgressiveResolution.stages change the batch size: set "
                    "trainer.reload_dataloaders_every_n_epochs: 1 "
                    f"(now {trainer.reload_dataloaders_every_n_epochs}) so each stage gets its own loader"
                )
            for index, item in enumerate(self.stages):
                if item.batch_size is not None:
                    datamodule.check_train_batch_size(
                        item.batch_size, f"ProgressiveResolution.stages[{index}].batch_size"
                    )
        datamodule.set_train_schedule(self.at)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.datamodule is not None and hasattr(trainer.datamodule, "set_train_schedule"):
            trainer.datamodule.set_train_schedule(None)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # Here rather than in on_train_epoch_start, which a mid-epoch resume skips; and from the batch itself.
        if self._logged_epoch == trainer.current_epoch:
            return
        self._logged_epoch = trainer.current_epoch
        images = batch[0]
        pl_module.log("train/resolution", float(images.shape[-1]), on_step=False, on_epoch=True, batch_size=1)
        global_batch = float(images.shape[0] * trainer.world_size)
        pl_module.log("train/batch_size", global_batch, on_step=False, on_epoch=True, batch_size=1)
