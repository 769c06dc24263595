"""Spot notice and SIGTERM: checkpoint_latest.ckpt saved at a batch boundary, exit code 75, resume continues.

Two CLI processes: the first is stopped by a fake instance-metadata server on 127.0.0.1 (IMDSv2 token flow, a
401 that forces a token refresh, 404s, then the notice); the second resumes from that mid-epoch file with the
same command and is stopped by SIGTERM. Only AWS is faked; the HTTP traffic, signals and checkpoints are real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from resnet_ffcv.callbacks import SpotInterruption
from resnet_ffcv.callbacks.spot import INTERRUPTED_EXIT_CODE
from resnet_ffcv.recipe.schedules import Schedule

from .helpers import REPO
from .helpers import load_checkpoint as load
from .spot_support import CLIProcess, write_config

STEPS_PER_EPOCH = 40  # 80 training images, batch 2: long enough that the notice lands mid-epoch
LR, WARMUP, MAX_EPOCHS = 0.05, 1, 50


def batches_done_in_epoch(checkpoint) -> int:
    return checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]


@pytest.mark.slow
def test_spot_notice_and_sigterm_save_mid_epoch_and_exit_75(tmp_path, ffcv_dir, imds):
    checkpoints = tmp_path / "checkpoints"
    config = write_config(
        tmp_path, ffcv_dir, spot={"endpoint": imds.endpoint, "poll_interval": 0.2}, checkpoint_interval=0
    )
    command = (
        "fit",
        "--config",
        str(config),
        "--trainer.max_epochs",
        str(MAX_EPOCHS),
        "--data.batch_size",
        "2",
    )

    # 1. The notice arrives once epoch 0 is done and saved, i.e. while epoch 1 trains.
    first = CLIProcess(*command)
    first.wait_for(lambda: (checkpoints / "checkpoint_latest.ckpt").exists(), "the epoch-0 checkpoint")
    # Training again (not still in epoch 0's save): a notice before this batch would find nothing new to save.
    first.wait_for_line(f"step {STEPS_PER_EPOCH + 1} (batch 1/")
    imds.armed.set()
    code = first.finish()
    exited_after = time.monotonic() - imds.notice_served_at
    assert code == INTERRUPTED_EXIT_CODE, first.output
    print(f"notice -> exit: {exited_after:.1f} s")
    assert exited_after < 60  # the whole point: well inside AWS's two minutes
    assert imds.token_puts == 2 and imds.rejected_once  # a token, a 401, a refreshed token
    assert imds.notice_gets >= 2  # 404 at least once before the notice
    assert "spot interruption notice: terminate at 2026-11-26T08:00:00Z: saved" in first.output
    noticed = load(checkpoints / "checkpoint_latest.ckpt")
    assert noticed["epoch"] >= 1 and noticed["global_step"] > STEPS_PER_EPOCH
    assert noticed["global_step"] == noticed["epoch"] * STEPS_PER_EPOCH + batches_done_in_epoch(noticed)

    # 2. The same command resumes from that mid-batch state; SIGTERM stops it the same way.
    imds.armed.clear()
    second = CLIProcess(*command)
    second.wait_for_line("Armed: SIGTERM/SIGINT")
    second.process.send_signal(signal.SIGTERM)
    assert second.finish() == INTERRUPTED_EXIT_CODE, second.output
    assert f"Resuming from {checkpoints / 'checkpoint_latest.ckpt'}" in second.output
    assert "received SIGTERM: saved" in second.output
    resumed = load(checkpoints / "checkpoint_latest.ckpt")
    assert resumed["global_step"] > noticed["global_step"]  # the step counter went on from the saved one
    epoch, batch = resumed["epoch"], batches_done_in_epoch(resumed)
    assert resumed["global_step"] == epoch * STEPS_PER_EPOCH + batch
    # The LR of the last step follows the fractional-epoch schedule: batch indices continued after the resume.
    expected_lr = LR * Schedule("onecycle", WARMUP)(epoch + (batch - 1) / STEPS_PER_EPOCH, MAX_EPOCHS, STEPS_PER_EPOCH)
    assert resumed["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(expected_lr)


@pytest.mark.slow
def test_sigterm_with_restated_callbacks_saves_within_one_batch(tmp_path, ffcv_dir):
    """A config restating trainer.callbacks keeps spot handling (a section); one process stops within one batch.

    The spot section keeps its default check_every_n_batches (10): that is the DDP all-reduce period only.
    """
    config = write_config(
        tmp_path,
        ffcv_dir,
        extra_callbacks=[{"class_path": "tests.spot_support.SlowSteps", "init_args": {"seconds": 0.3}}],
        checkpoint_interval=0,
    )
    checkpoints = tmp_path / "checkpoints"
    run = CLIProcess("fit", "--config", str(config), "--trainer.max_epochs", "5", "--data.batch_size", "2")
    run.wait_for_line("step 3 done")
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == INTERRUPTED_EXIT_CODE, run.output
    assert "received SIGTERM: saved" in run.output
    saved = load(checkpoints / "checkpoint_latest.ckpt")
    # Signalled while step 3's sleep or step 4 ran: the stop comes at the end of step 4 (5 at worst), not at 10.
    assert 3 <= saved["global_step"] <= 5, saved["global_step"]
    assert saved["epoch"] == 0 and batches_done_in_epoch(saved) == saved["global_step"]


def test_sigterm_during_start_up_exits_75_with_nothing_saved(tmp_path, ffcv_dir):
    """SIGTERM 1.5 s after start (torch still importing, long before the first batch): exit 75, not 143."""
    config = write_config(tmp_path, ffcv_dir)
    run = CLIProcess("fit", "--config", str(config), "--trainer.max_epochs", "5")
    time.sleep(1.5)
    assert "Armed" not in run.output  # still starting up
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == INTERRUPTED_EXIT_CODE, run.output
    assert "received SIGTERM during start-up: nothing trained" in run.output
    assert not (tmp_path / "checkpoints" / "checkpoint_latest.ckpt").exists()


def test_spot_training_script_checks_before_training(tmp_path, ffcv_dir):
    """The rerun-me script refuses to start when the data is missing, naming the file, with exit code 2."""
    config = write_config(tmp_path, ffcv_dir)
    result = subprocess.run(
        [
            "bash",
            str(REPO / "scripts" / "spot_training.sh"),
            str(config),
            "--data.data_dir",
            str(tmp_path / "none"),
        ],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert f"check failed: data train.ffcv: {tmp_path / 'none' / 'train.ffcv'} is missing" in result.stderr
    assert "starting:" not in result.stderr
    assert f"checkpoint dir: {tmp_path / 'checkpoints'} (to be created in {tmp_path}): writable" in result.stderr
    assert f"No checkpoint in {tmp_path / 'checkpoints'}: starting from scratch" in result.stderr  # the resume line
    assert not (tmp_path / "checkpoints").exists()  # checked, not created: nothing is made before the checks pass


def test_rebalance_recommendation_stops_only_when_asked(imds):
    """In-process poller against the fake server: a rebalance recommendation counts only when configured."""
    imds.rebalance = True
    ignoring = SpotInterruption(endpoint=imds.endpoint, poll_interval=0.05)
    poller = threading.Thread(target=ignoring.poll_until_notice, daemon=True)
    poller.start()
    try:
        deadline = time.monotonic() + 30
        while imds.notice_gets < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert imds.notice_gets >= 3
        assert ignoring.stop_requested is None  # polled (404s on the notice), rebalance ignored
        imds.armed.set()
        poller.join(timeout=30)
        assert ignoring.stop_requested == "spot interruption notice: terminate at 2026-11-26T08:00:00Z"
    finally:
        ignoring._closing.set()  # a failed assertion must not leave the poller running past the fake server

    imds.armed.clear()
    heeding = SpotInterruption(endpoint=imds.endpoint, poll_interval=0.05, stop_on_rebalance=True)
    heeding.poll_until_notice()  # returns once it has a reason to stop
    assert heeding.stop_requested == 'rebalance recommendation: {"noticeTime": "2026-11-26T07:50:00Z"}'
