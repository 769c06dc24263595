"""Shared fixtures: real JPEG files written here, real .ffcv files written by our own writer, once per session.

Plain helper functions (paths, the CLI runner, Trainers, checkpoints) live in ``helpers.py``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from resnet_ffcv.synthetic import make_synthetic_imagefolder
from resnet_ffcv.writer import write_dataset

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
