"""The whole recipe learns on the CPU: real .ffcv files of the generated shape set, a real Trainer and
FFCVDataModule, ResNet-18 at 48 px with MixUp/CutMix, EMA, label smoothing and the onecycle schedule on: the
recipe of ``benchmarks/recipe_learning_check.py``, which prints the same run epoch by epoch."""

from __future__ import annotations

import lightning as L
import pytest

from .helpers import load_benchmark, quiet_trainer


@pytest.fixture(scope="module")
def learnable_ffcv(tmp_path_factory):
    """300 training and 100 validation images, 10 classes (the session fixture's 80 are too few to learn)."""
    return load_benchmark("recipe_learning_check").write_data(tmp_path_factory.mktemp("learnable"), 30, 10, seed=1)


@pytest.mark.slow
def test_full_recipe_reaches_far_above_chance(learnable_ffcv):
    L.seed_everything(0, verbose=False)
    model, data = load_benchmark("recipe_learning_check").learnable_recipe(learnable_ffcv, resolution=48)
    trainer = quiet_trainer(max_epochs=4)
    trainer.fit(model, data)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    print({key: round(value, 3) for key, value in metrics.items() if key.startswith("val/")})
    # 10 classes: chance is 0.1 top-1. Both the raw and the EMA weights are reported, and both learned.
    assert metrics["val/acc1"] > 0.4
    assert metrics["val/acc1_ema"] > 0.4
    assert 0.0 <= metrics["val/acc5"] <= 1.0 and metrics["val/acc5_ema"] >= metrics["val/acc1_ema"]
    assert metrics["train/lr"] < 0.01  # onecycle annealed to about 0 by the last batch
