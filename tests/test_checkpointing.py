"""The checkpoint dir survives kill -9, falls back past a truncated file, keeps the W&B run, stops at target.

One story in three CLI processes (each ~15-25 s: torch import and an FFCV pipeline compile): A trains epoch 0
and is killed -9 while overwriting checkpoint_latest.ckpt in epoch 1; B finds that file truncated, falls back
to the periodic one, continues the W&B run and stops at the target accuracy; rerun, it stops at once. Then a
checkpoint is refused for another architecture or class count.
"""

from __future__ import annotations

import re
import signal

import pytest

from resnet_ffcv.callbacks.checkpointing import WRITE_PAUSE_ENV
from resnet_ffcv.recipe.module import ImageClassifier
from resnet_ffcv.run.resume import IncompatibleCheckpointError, check_compatible

from .helpers import free_port
from .helpers import load_checkpoint as load
from .spot_support import CLIProcess, write_config


def offline_run_ids(logs) -> set[str]:
    return {run.name.rsplit("-", 1)[-1] for run in (logs / "wandb").glob("offline-run-*")}


@pytest.mark.slow
def test_checkpoint_directory_survives_crashes_and_resumes(tmp_path, ffcv_dir):
    checkpoints, logs = tmp_path / "checkpoints", tmp_path / "logs"
    # A port nobody listens on: the metadata poller must switch itself off.
    spot = {"endpoint": f"http://127.0.0.1:{free_port()}"}
    config = write_config(tmp_path, ffcv_dir, spot=spot, keep_periodic=1)

    # A: from scratch, the seed's layout and a W&B run id beside the checkpoints after epoch 0; then kill -9
    # while epoch 1 overwrites checkpoint_latest.ckpt (the test seam pauses between the bytes and the rename).
    a = CLIProcess("fit", "--config", str(config), "--trainer.max_epochs", "3", env={WRITE_PAUSE_ENV: "120"})
    latest = checkpoints / "checkpoint_latest.ckpt"
    overwriting = lambda: latest.exists() and any(checkpoints.glob(".checkpoint_latest.ckpt.*.tmp"))  # noqa: E731
    a.wait_for(overwriting, "an overwrite of checkpoint_latest.ckpt in flight")
    a.process.send_signal(signal.SIGKILL)
    assert a.finish() == -signal.SIGKILL
    assert "No checkpoint in" in a.output
    assert "spot notice polling is off" in a.output  # no metadata service: training goes on quietly
    names = {p.name for p in checkpoints.iterdir()}
    assert {
        "checkpoint_latest.ckpt",
        "checkpoint_epoch_1.ckpt",
        "best_model.ckpt",
        "wandb_run_id.txt",
    } <= names
    epoch0_step = 20  # 80 images / batch 4
    assert load(checkpoints / "checkpoint_latest.ckpt")["global_step"] == epoch0_step  # epoch 0's file, intact
    assert list(checkpoints.glob(".checkpoint_latest.ckpt.*.tmp"))  # the half-done write is only a temp file
    run_id = (checkpoints / "wandb_run_id.txt").read_text().strip()
    assert offline_run_ids(logs) == {run_id}

    # B: a truncated latest file -> fall back to the newest loadable periodic file, say so, continue the W&B
    # run; the target accuracy (tiny here) is reached after the first validation and training stops before
    # max_epochs.
    half = latest.read_bytes()[: latest.stat().st_size // 2]
    latest.unlink()  # a new file: the old name may be a hard link shared with a periodic checkpoint
    latest.write_bytes(half)
    with_target = write_config(tmp_path, ffcv_dir, spot=spot, name="target.yaml", keep_periodic=1)
    # Top-5 of 10 classes: >= 0.5 for any constant prediction, so 0.01 is surely reached at the first validation.
    # (Top-1 can be exactly 0 on 40 images: FFCV's unseeded augmentations make each run's weights differ.)
    target = ("--trainer.max_epochs", "4", "--target.target_accuracy", "0.01", "--target.monitor", "val/acc5")
    b = CLIProcess("fit", "--config", str(with_target), *target)
    assert b.finish() == 0, b.output
    assert re.search(
        r"Resuming from \S+checkpoint_epoch_1\.ckpt: checkpoint_latest\.ckpt is unreadable \(\w+", b.output
    ), b.output
    assert not list(checkpoints.glob(".*.tmp"))  # the stale temp file was cleaned up
    assert re.search(r"Target accuracy reached: val/acc5 = [\d.]+ >= 0\.01 after epoch 2", b.output), b.output
    final = load(checkpoints / "checkpoint_latest.ckpt")
    assert final["epoch"] == 1 and final["global_step"] == 2 * epoch0_step  # stopped at epoch 1 of 0..3
    assert load(checkpoints / "best_model.ckpt")["global_step"] >= epoch0_step
    periodic = {p.name for p in checkpoints.glob("checkpoint_epoch_*.ckpt")}
    assert periodic == {"checkpoint_epoch_2.ckpt"}  # keep_periodic: 1
    assert f"W&B run id {run_id} (continued" in b.output
    assert offline_run_ids(logs) == {run_id}

    # The same command once more ("just rerun it"): the checkpoint says the target was met; nothing is touched.
    again = CLIProcess("fit", "--config", str(with_target), *target)
    assert again.finish() == 0, again.output
    assert "already finished (the target accuracy was reached (val/acc5, after epoch 2)" in again.output
    assert offline_run_ids(logs) == {run_id}  # no new W&B run
    assert load(checkpoints / "checkpoint_latest.ckpt")["global_step"] == 2 * epoch0_step

    # C (in-process: the check runs before the Trainer, no need for another CLI process): a checkpoint from
    # another architecture stops with a clear error.
    arch = "squeezenet1_1"  # tests/spot_config.yaml's
    with pytest.raises(IncompatibleCheckpointError, match=f"model.arch='{arch}' in the checkpoint, 'resnet34'"):
        check_compatible(checkpoints / "checkpoint_latest.ckpt", ImageClassifier(arch="resnet34", num_classes=10))
    with pytest.raises(IncompatibleCheckpointError, match="model.num_classes=10 in the checkpoint, 5 in this"):
        check_compatible(checkpoints / "checkpoint_latest.ckpt", ImageClassifier(arch=arch, num_classes=5))
    check_compatible(checkpoints / "checkpoint_latest.ckpt", ImageClassifier(arch=arch, num_classes=10))
