"""Validation every N epochs and always in the last K, through a real Trainer on the CPU, with the callbacks that
read validation metrics (SpotCheckpoint's best tracking, TargetAccuracyStop) on the epochs without one."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from resnet_ffcv.callbacks import SpotCheckpoint, TargetAccuracyStop
from resnet_ffcv.recipe.module import ImageClassifier
from resnet_ffcv.recipe.validation_schedule import validates
from resnet_ffcv.tools.throughput import RepeatedBatches, synthetic_batch

from .helpers import quiet_trainer


class ValidatedEpochs(L.Callback):
    def __init__(self):
        self.epochs: list[int] = []

    def on_validation_end(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


def test_validated_epochs_rule():
    # p4d: every 5th epoch and the last 10 of 60 -> 10 + 10 validations.
    done = [epoch for epoch in range(60) if validates(epoch, 60, 5, 10)]
    assert done == [*range(4, 50, 5), *range(50, 60)] and len(done) == 20
    assert validates(55, 56, 5, 1) and not validates(55, 56, 5, 0)  # the last epoch, even off the N grid
    assert [epoch for epoch in range(4) if validates(epoch, 4, 1, 0)] == [0, 1, 2, 3]


def _fit(tmp_path, max_epochs: int, every: int, last: int, target: float | None, monitor: str = "val/acc1_ema"):
    torch.manual_seed(0)
    module = ImageClassifier(arch="resnet18", num_classes=3, blurpool=False, ema_decay=0.5, val_last_epochs=last)
    recorder = ValidatedEpochs()
    checkpoint = SpotCheckpoint(dirpath=str(tmp_path / "checkpoints"), monitor="val/acc1_ema", verbose=False)
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        check_val_every_n_epoch=every,
        enable_checkpointing=True,
        callbacks=[checkpoint, TargetAccuracyStop(target, monitor=monitor), recorder],
    )
    train = RepeatedBatches(synthetic_batch(2, 32, 3, torch.device("cpu")), 2)
    val = RepeatedBatches(synthetic_batch(2, 32, 3, torch.device("cpu")), 1)
    trainer.fit(module, train, val)
    return trainer, recorder, checkpoint


def test_every_n_and_the_last_k_epochs_with_best_tracking_on_skipped_epochs(tmp_path):
    # Epochs 2 and 4 have no validation after one ran (val loop `_has_run`): SpotCheckpoint must not raise.
    trainer, recorder, checkpoint = _fit(tmp_path, max_epochs=7, every=2, last=2, target=None)
    assert recorder.epochs == [1, 3, 5, 6]
    assert trainer.current_epoch == 7  # all epochs trained
    assert (tmp_path / "checkpoints" / "best_model.ckpt").is_file()
    assert checkpoint.best_model_score is not None
    assert trainer.callback_metrics["val/seconds"] > 0  # logged by every validation
    assert trainer.check_val_every_n_epoch == 1  # the last stretch; restored to N on earlier epochs
    assert recorder.epochs.count(5) == 1


def test_target_stop_on_a_validated_epoch(tmp_path):
    # Top-"5" of 3 classes is top-3: always 1.0, so the target is met at the first validation (epoch 1).
    trainer, recorder, _ = _fit(tmp_path, max_epochs=6, every=2, last=1, target=1.0, monitor="val/acc5_ema")
    assert recorder.epochs == [1]
    assert trainer.current_epoch == 2  # stopped after epoch 1, the first one validated


def test_negative_last_epochs_is_named():
    with pytest.raises(ValueError, match="model.val_last_epochs=-1"):
        ImageClassifier(arch="resnet18", num_classes=3, val_last_epochs=-1)
