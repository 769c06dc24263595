"""Validate every N epochs and always in the last K, and log how long each validation took (``val/seconds``).

Lightning's ``trainer.check_val_every_n_epoch`` validates when ``(epoch + 1) % N == 0`` and nothing else: it
cannot say "and every epoch of the last stretch", where a target-accuracy stop and the best checkpoint are
decided. This callback keeps Lightning's own rule and its own key for N, and only sets the attribute to 1 at the
start of each of the last ``last_epochs`` epochs (Lightning 2.6 reads it afresh in ``_should_check_val_epoch``
at every batch, so nothing else changes: no private loop state is touched).

An epoch without validation is safe for the callbacks that read validation metrics: Lightning keeps the last
validated values in ``trainer.callback_metrics``, so SpotCheckpoint sees an unchanged (not better) score and
writes no new ``best_model.ckpt``, and EarlyStopping (our TargetAccuracyStop) checks only after a validation
when N > 1 (its ``_check_on_train_epoch_end`` is false then).
"""

from __future__ import annotations

import time

import lightning as L
import torch

from resnet_ffcv.errors import InvalidValue


def validates(epoch: int, max_epochs: int | None, every_n_epochs: int | None, last_epochs: int) -> bool:
    """Whether epoch ``epoch`` (0-based) ends with a validation under this schedule."""
    if every_n_epochs is None:
        return False  # validation by steps (val_check_interval): not this schedule's business
    if max_epochs is not None and max_epochs > 0 and epoch >= max_epochs - last_epochs:
        return True
    return (epoch + 1) % every_n_epochs == 0


class ValidationSchedule(L.Callback):
    """Every ``trainer.check_val_every_n_epoch`` epochs, and every one of the last ``last_epochs`` epochs.

    Args:
        last_epochs: the final epochs that always validate (1: at least the last epoch; 0: Lightning's rule
            alone).
    """

    def __init__(self, last_epochs: int = 1):
        if last_epochs < 0:
            raise InvalidValue(f"model.val_last_epochs={last_epochs}: expected >= 0")
        self.last_epochs = last_epochs
        self._every: int | None = None  # the configured N, read before this callback first changes it
        self._configured = False
        self._started = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._configured:
            self._every, self._configured = trainer.check_val_every_n_epoch, True
        if self._every is None or self.last_epochs == 0:
            return
        last_stretch = validates(trainer.current_epoch, trainer.max_epochs, self._every, self.last_epochs)
        trainer.check_val_every_n_epoch = 1 if last_stretch else self._every

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # once per validation: the queued kernels belong to its time
        seconds = time.perf_counter() - self._started
        # A host tensor: a float would be copied to the device, and this rank's time is what it measured.
        pl_module.log("val/seconds", torch.tensor(seconds, dtype=torch.float32), on_epoch=True, sync_dist=False)
