"""Logs the training resolution and global batch size of each epoch, read from the batches actually served.

The schedule itself is not a callback: it is a :class:`resnet_ffcv.data.resolution.ResolutionSchedule` the
datamodule is given and applies (Lightning builds the train loader and creates its iterator before
``on_train_epoch_start`` on the first epoch and after a resume, so only the datamodule knows the right moment).
"""

from __future__ import annotations

import lightning as L


class ResolutionMonitor(L.Callback):
    """Logs ``train/resolution`` (the side of the served images) and ``train/batch_size`` (per-device batch x
    ranks) once per training epoch. The CLI always adds it, whether or not a schedule is configured."""

    def __init__(self) -> None:
        super().__init__()
        self._logged_epoch: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._logged_epoch = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        # Here rather than in on_train_epoch_start, which a mid-epoch resume skips; and from the batch itself.
        if self._logged_epoch == trainer.current_epoch:
            return
        self._logged_epoch = trainer.current_epoch
        images = batch[0]
        pl_module.log("train/resolution", float(images.shape[-1]), on_step=False, on_epoch=True, batch_size=1)
        global_batch = float(images.shape[0] * trainer.world_size)
        pl_module.log("train/batch_size", global_batch, on_step=False, on_epoch=True, batch_size=1)
