"""The whole recipe learns on the CPU: real .ffcv files of the generated shape set, a real Trainer and
FFCVDataModule, ResNet-18 at 48 px with MixUp/CutMix, EMA, label smoothing and the onecycle schedule on."""

from __future__ import annotations

import lightning as L
import pytest

from resnet_ffcv.data import FFCVDataModule
from resnet_ffcv.model import ImageClassifier
from resnet_ffcv.synthetic import make_synthetic_imagefolder
from resnet_ffcv.writer import write_dataset

from .helpers import quiet_trainer


@pytest.fixture(scope="module")
def learnable_ffcv(tmp_path_factory):
    """300 training and 100 validation images, 10 classes (the session fixture's 80 are too few to learn)."""
    root = tmp_path_factory.mktemp("learnable")
    make_synthetic_imagefolder(root / "images", train_per_class=30, val_per_class=10, seed=1)
    write_dataset(root / "images", root / "ffcv", preset="rn18", num_workers=2)
    return root / "ffcv"


@pytest.mark.slow
def test_full_recipe_reaches_far_above_chance(learnable_ffcv):
    L.seed_everything(0, verbose=False)
    data = FFCVDataModule(
        data_dir=str(learnable_ffcv),
        batch_size=32,
        num_workers=2,
        train_resolution=48,
        val_resolution=48,
        scale=(0.35, 1.0),
    )
    model = ImageClassifier(
        arch="resnet18",
        num_classes=data.num_classes,
        lr=0.1,
        weight_decay=5e-5,
        label_smoothing=0.1,
        scheduler="onecycle",
        warmup_epochs=1,
        cutmix_prob=0.3,
        mixup_alpha=0.2,
        use_ema=True,
        ema_decay=0.9,
        blurpool=True,
        zero_init_residual=True,
    )
    trainer = quiet_trainer(max_epochs=4)
    trainer.fit(model, data)
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    print({key: round(value, 3) for key, value in metrics.items() if key.startswith("val/")})
    # 10 classes: chance is 0.1 top-1. Both the raw and the EMA weights are reported, and both learned.
    assert metrics["val/acc1"] > 0.4
    assert metrics["val/acc1_ema"] > 0.4
    assert 0.0 <= metrics["val/acc5"] <= 1.0 and metrics["val/acc5_ema"] >= metrics["val/acc1_ema"]
    assert metrics["train/lr"] < 0.01  # onecycle annealed to about 0 by the last batch
