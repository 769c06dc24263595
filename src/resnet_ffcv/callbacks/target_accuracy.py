"""Stop when validation top-1 reaches the target: paying for epochs after the goal is met buys nothing."""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from resnet_ffcv.errors import InvalidValue

# EarlyStopping stops when metric > threshold; we want >=. Accuracies are counts / N (1/50000 = 2e-5 on
# ImageNet) logged as float32, so a margin far below one sample and above float32 rounding gives ">=".
_AT_LEAST_MARGIN = 1e-6


class TargetAccuracyStop(EarlyStopping):
    """Lightning's EarlyStopping with ``stopping_threshold`` only (no patience), plus a clear closing line.

    The decision is taken after the epoch's validation; SpotCheckpoint writes ``best_model.ckpt`` at that same
    epoch end (Lightning runs checkpoint callbacks' hooks last), so the best checkpoint exists before training
    stops. The closing line is logged at train end, after that write.

    The CLI always adds it as the ``target:`` section of a config; with ``target_accuracy: null`` (the
    default) it does nothing and the run trains to ``max_epochs``.

    Args:
        target_accuracy: stop once ``monitor`` >= this; a fraction (0.78 for 78 % top-1); null: never.
        monitor: ``val/acc1_best`` (the better of the raw and EMA top-1; logged with EMA on or off),
            ``val/acc1`` for the raw weights only, or ``val/acc1_ema`` for the EMA weights (needs
            ``model.use_ema``; ``fit`` stops before training when the config would never log the metric).
    """

    def __init__(self, target_accuracy: float | None = None, monitor: str = "val/acc1_best"):
        if target_accuracy is not None and not 0.0 < target_accuracy <= 1.0:
            raise InvalidValue(
                f"TargetAccuracyStop target_accuracy={target_accuracy}: expected a fraction in (0, 1], "
                "e.g. 0.78 for 78 % top-1"
            )
        super().__init__(
            monitor=monitor,
            mode="max",
            patience=sys.maxsize,
            stopping_threshold=None if target_accuracy is None else target_accuracy - _AT_LEAST_MARGIN,
            check_finite=False,
            strict=True,
            verbose=False,
        )
        self.target_accuracy = target_accuracy

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.target_accuracy is not None:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.target_accuracy is not None:
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Rerunning a finished run (the spot script's "just rerun it") resumes from its last checkpoint, whose
        # restored state says the target was met: stop again before training another epoch.
        if self.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stopping_reason != EarlyStoppingReason.STOPPING_THRESHOLD:
            return
        # best_score is not updated on the stopping epoch (EarlyStopping checks the threshold first), and a
        # rerun that stopped at once has validated nothing: report the metric when this run has it.
        metric = trainer.callback_metrics.get(self.monitor)
        value = f" = {float(metric):.4f}" if metric is not None else ""
        checkpoint = trainer.checkpoint_callback
        best = f"; best checkpoint: {checkpoint.best_model_path}" if checkpoint and checkpoint.best_model_path else ""
        rank_zero_info(
            f"Target accuracy reached: {self.monitor}{value} >= {self.target_accuracy} "
            f"after epoch {self.stopped_epoch + 1}; stopping{best}"
        )
