"""CostMonitor: elapsed time and dollars logged during a real CPU fit, and carried across a resume."""

from __future__ import annotations

import lightning as L
import pytest

from resnet_ffcv.callbacks.cost import CostMonitor
from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.recipe.module import ImageClassifier

from .helpers import load_checkpoint, quiet_trainer


def tiny_fit(ffcv_dir, tmp_path, monitor: CostMonitor, max_epochs: int, ckpt_path=None) -> L.Trainer:
    data = FFCVDataModule(data_dir=str(ffcv_dir), batch_size=8, num_workers=1, train_resolution=32, val_resolution=32)
    model = ImageClassifier(arch="resnet18", num_classes=data.num_classes, lr=0.01, warmup_epochs=0)
    trainer = quiet_trainer(
        max_epochs=max_epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        callbacks=[monitor],
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer


def test_cost_is_logged_and_survives_a_resume(ffcv_dir, tmp_path):
    monitor = CostMonitor(price_per_hour=3600.0, log_every_n_steps=1)  # 1 USD per second: easy to check
    trainer = tiny_fit(ffcv_dir, tmp_path, monitor, max_epochs=1)
    metrics = trainer.callback_metrics
    for key in ("cost/usd", "cost/elapsed_hours", "time/epoch_seconds", "images_per_sec"):
        assert key in metrics, f"{key} not logged"
    assert metrics["cost/usd"].item() == pytest.approx(metrics["cost/elapsed_hours"].item() * 3600.0, rel=1e-3)
    assert metrics["images_per_sec"].item() > 0
    # The console shows the loss (read every log_every_n_steps); the loggers get train/loss from the module.
    assert "loss" in trainer.progress_bar_metrics and "loss" not in trainer.logged_metrics

    checkpoint = tmp_path / "one_epoch.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = load_checkpoint(checkpoint)["callbacks"]
    seconds_at_save = next(state["elapsed_seconds"] for key, state in saved.items() if "CostMonitor" in key)
    assert seconds_at_save > 0

    resumed = CostMonitor(price_per_hour=3600.0, log_every_n_steps=1)
    tiny_fit(ffcv_dir, tmp_path, resumed, max_epochs=2, ckpt_path=checkpoint)
    assert resumed.seconds_before_this_process == pytest.approx(seconds_at_save)
    assert resumed.elapsed_seconds() > seconds_at_save


def test_negative_price_is_refused():
    with pytest.raises(ValueError, match="price_per_hour=-1"):
        CostMonitor(price_per_hour=-1)
