"""Shared fixtures: real JPEG files written here, real .ffcv files written by our own writer, once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from resnet_ffcv.synthetic import make_synthetic_imagefolder
from resnet_ffcv.writer import write_dataset

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# W&B never touches the network or waits on a prompt in tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """10 classes of shapes, 8 train and 4 val JPEGs per class, 64-400 px."""
    return make_synthetic_imagefolder(tmp_path_factory.mktemp("images"), train_per_class=8, val_per_class=4)


@pytest.fixture(scope="session")
def ffcv_dir(image_folder, tmp_path_factory) -> Path:
    """train.ffcv (80 images), val.ffcv (40 images) and classes.json from ``image_folder``."""
    out = tmp_path_factory.mktemp("ffcv")
    write_dataset(image_folder, out, preset="rn18", num_workers=2)
    return out


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None, unset: tuple[str, ...] = ()
):
    """``resnet-ffcv ARGS`` in a subprocess, as a user runs it; returns the CompletedProcess (text output)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    for name in unset:
        full_env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "resnet_ffcv.cli", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # nothing may wait on a prompt
    )


@pytest.fixture
def imds():
    """A fake EC2 instance-metadata service (IMDSv2) on 127.0.0.1; ``imds.armed.set()`` serves the notice."""
    from .spot_support import FakeIMDS

    server = FakeIMDS()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def trained_checkpoint(path: Path, batch: int = 4, resolution: int = 32, **model_args) -> Path:
    """A real Lightning checkpoint of a 10-class ResNet-18 after 3 SGD steps on synthetic batches.

    EMA decay 0.5, so after 3 steps the EMA weights clearly differ from the raw ones.
    """
    import lightning as L
    import torch

    from resnet_ffcv.model import ImageClassifier
    from resnet_ffcv.throughput import RepeatedBatches, synthetic_batch

    torch.manual_seed(0)
    module = ImageClassifier(
        **{"arch": "resnet18", "num_classes": 10, "lr": 0.05, "warmup_epochs": 0, "ema_decay": 0.5, **model_args}
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, RepeatedBatches(synthetic_batch(batch, resolution, 10, torch.device("cpu")), 3))
    trainer.save_checkpoint(path)
    return path
