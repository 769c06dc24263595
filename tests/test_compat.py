"""A run started before the package was regrouped into wings (commit 2f050c5, the flat package) continues with
today's code: the same command with a larger ``max_epochs`` resumes from its checkpoint.

The old code is the repository's own history (``git archive``), run in its own process with its ``src`` first on
``PYTHONPATH``; nothing is committed for it.
"""

from __future__ import annotations

import subprocess
import tarfile
from io import BytesIO

import pytest

from .helpers import REPO, cli_command, cli_env, load_checkpoint
from .spot_support import write_config

FLAT_PACKAGE = "2f050c5"  # the last commit before the wings (issue 24)
STEPS = 4  # of the 20 per epoch of tests/spot_config.yaml (80 images, batch 4): enough to have trained
SMALL = ("--trainer.limit_train_batches", str(STEPS), "--trainer.limit_val_batches", "1")


def old_source(destination):
    archive = subprocess.run(["git", "-C", str(REPO), "archive", FLAT_PACKAGE, "src"], capture_output=True)
    if archive.returncode != 0:  # a shallow clone without that commit: the check needs the history
        pytest.fail(f"git archive {FLAT_PACKAGE} failed ({archive.stderr.decode().strip()}): needs a full clone")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(destination, filter="data")
    return destination / "src"


@pytest.mark.slow
def test_a_checkpoint_of_the_flat_package_resumes_with_todays_code(tmp_path, ffcv_dir):
    config = write_config(tmp_path, ffcv_dir)
    flat = old_source(tmp_path / "flat")
    assert (flat / "resnet_ffcv" / "model.py").is_file()  # it really is the old layout
    old = subprocess.run(
        cli_command("fit", "--config", str(config), *SMALL),
        env=cli_env({"PYTHONPATH": str(flat)}),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert old.returncode == 0, old.stderr[-3000:]
    latest = tmp_path / "checkpoints" / "checkpoint_latest.ckpt"
    assert load_checkpoint(latest)["global_step"] == STEPS

    new = subprocess.run(
        cli_command("fit", "--config", str(config), *SMALL, "--trainer.max_epochs", "2"),
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = new.stdout + new.stderr
    assert new.returncode == 0, output[-3000:]
    assert f"Resuming from {latest}" in output and "differs" not in output
    resumed = load_checkpoint(latest)
    assert resumed["global_step"] == 2 * STEPS and resumed["epoch"] == 1
    assert any(key.startswith("ema.module.") for key in resumed["state_dict"])  # the EMA came through too
