"""Shared fixtures: real JPEG files written here, real .ffcv files written by our own writer, once per session.

The suite never works in the checkout: every test (and every process it starts) runs in a temporary working
directory, with HOME and the caches it fills in a temporary home, and ``checkout_guard`` fails the session if
anything in the checkout appeared or changed anyway. So ``make demo`` and ``make test`` run in either order.
Plain helper functions (paths, the CLI runner, Trainers, checkpoints) live in ``helpers.py``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path

# Before anything imports wandb, matplotlib or torch: where they keep settings and caches (HOME, XDG, inductor).
_HOME = Path(tempfile.mkdtemp(prefix="resnet-ffcv-tests-home-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update(
    HOME=str(_HOME),
    XDG_CACHE_HOME=str(_HOME / ".cache"),
    XDG_CONFIG_HOME=str(_HOME / ".config"),
    XDG_DATA_HOME=str(_HOME / ".local" / "share"),
    TORCHINDUCTOR_CACHE_DIR=str(_HOME / ".cache" / "torchinductor"),
)
# W&B never touches the network or waits on a prompt in tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# numba compiles FFCV's pipelines in every process (several seconds each); the tests decode a few hundred tiny
# images, so LLVM's optimization passes are pure start-up cost there: a fit subprocess starts ~25% sooner.
os.environ.setdefault("NUMBA_OPT", "0")

import pytest  # noqa: E402 - after the environment above

from resnet_ffcv.dataset.synthetic import make_synthetic_imagefolder  # noqa: E402
from resnet_ffcv.dataset.writer import write_dataset  # noqa: E402

from .checkout_guard import pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def session_working_directory(tmp_path_factory):
    """Session and module fixtures run in a temporary directory too (relative paths never reach the checkout)."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("session-cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True)
def working_directory(tmp_path_factory, monkeypatch) -> Path:
    """Each test in a fresh, empty working directory of its own; subprocesses inherit it (helpers.run_cli)."""
    directory = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(directory)
    return directory


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
