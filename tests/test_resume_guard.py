"""Nothing lost by accident: every test runs the real ``resnet-ffcv fit`` over a real checkpoint directory.

One 1-epoch run (module fixture) writes the directory; each test works on a hard-linked copy of it (every change
below replaces a file by a new one, never edits shared bytes in place).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from resnet_ffcv.callbacks.checkpointing import DISK_FULL_ENV, WRITE_PAUSE_ENV
from resnet_ffcv.run.resume import checksum_path, load_checkpoint_header

from .helpers import load_checkpoint as load
from .spot_support import CLIProcess, write_config

STEPS = 20  # 80 images / batch 4: steps per epoch


def fit(config: Path, *args: str, env: dict | None = None) -> CLIProcess:
    process = CLIProcess("fit", "--config", str(config), *args, env=env)
    process.finish(timeout=600)
    return process


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ffcv_dir) -> Path:
    """A finished 1-epoch run: checkpoint_latest, checkpoint_epoch_1, best_model (hard links) and their sums."""
    root = tmp_path_factory.mktemp("trained")
    run = fit(write_config(root, ffcv_dir))
    assert run.process.returncode == 0, run.output
    return root / "checkpoints"


def run_dir(tmp_path: Path, ffcv_dir: Path, trained: Path, **checkpoint_args) -> tuple[Path, Path]:
    """(config, checkpoint dir) of a run continuing a copy of ``trained``."""
    shutil.copytree(trained, tmp_path / "checkpoints", copy_function=os.link, ignore=shutil.ignore_patterns(".lock"))
    return write_config(tmp_path, ffcv_dir, **checkpoint_args), tmp_path / "checkpoints"


def replace_bytes(path: Path, data: bytes) -> None:
    path.unlink()  # a new inode: the other names of the old one keep their bytes
    path.write_bytes(data)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in directory.iterdir() if p.name != ".lock"}


@pytest.mark.slow
def test_unloadable_checkpoints_stop_before_training_and_fresh_start_moves_them_aside(tmp_path, ffcv_dir, trained):
    config, checkpoints = run_dir(tmp_path, ffcv_dir, trained)
    names = ("checkpoint_latest.ckpt", "checkpoint_epoch_1.ckpt", "best_model.ckpt")
    for name in names:
        path = checkpoints / name
        replace_bytes(path, path.read_bytes()[:1000])
    before = snapshot(checkpoints)

    refused = fit(config, "--trainer.max_epochs", "2")
    assert refused.process.returncode == 2, refused.output
    assert "none can be resumed from" in refused.output
    for name in names:
        assert name in refused.output
    assert "--fresh_start true" in refused.output
    assert "starting from scratch" not in refused.output
    assert snapshot(checkpoints) == before  # nothing trained, nothing written

    fresh = fit(config, "--trainer.max_epochs", "1", "--fresh_start", "true")
    assert fresh.process.returncode == 0, fresh.output
    [previous] = checkpoints.glob("previous-*")
    for name in names:  # the old (broken) files are kept, moved aside
        assert (previous / name).stat().st_size == 1000
    assert load(checkpoints / "best_model.ckpt")["global_step"] == STEPS
    load_checkpoint_header(checkpoints / "checkpoint_latest.ckpt")  # a new, verified file


@pytest.mark.slow
def test_finished_rerun_does_nothing_and_other_settings_are_listed(tmp_path, ffcv_dir, trained):
    config, checkpoints = run_dir(tmp_path, ffcv_dir, trained)
    before, wandb_runs = snapshot(checkpoints), set((tmp_path / "logs").glob("wandb/offline-run-*"))

    again = fit(config)  # the same settings: max_epochs 1 is done
    assert again.process.returncode == 0, again.output
    assert "already finished (1 of trainer.max_epochs=1 epochs are done" in again.output
    assert snapshot(checkpoints) == before
    assert set((tmp_path / "logs").glob("wandb/offline-run-*")) == wandb_runs  # no new W&B run

    # The README's "train longer with another LR" over an existing directory: refused, differences listed.
    changed = fit(config, "--model.lr", "0.1", "--trainer.max_epochs", "3")
    assert changed.process.returncode == 2, changed.output
    assert "model.lr: 0.05 in the checkpoint, 0.1 in this config" in changed.output
    assert "--resume_with config" in changed.output
    assert snapshot(checkpoints) == before

    # Raising max_epochs alone continues.
    longer = fit(config, "--trainer.max_epochs", "2")
    assert longer.process.returncode == 0, longer.output
    assert load(checkpoints / "checkpoint_latest.ckpt")["global_step"] == 2 * STEPS

    told = fit(config, "--model.lr", "0.1", "--trainer.max_epochs", "3", "--resume_with", "config")
    assert told.process.returncode == 0, told.output
    final = load(checkpoints / "checkpoint_latest.ckpt")
    assert final["global_step"] == 3 * STEPS and final["hyper_parameters"]["lr"] == 0.1


@pytest.mark.slow
def test_second_fit_on_one_directory_is_refused_and_keeps_the_writers_temp_file(tmp_path, ffcv_dir, trained):
    config, checkpoints = run_dir(tmp_path, ffcv_dir, trained)
    # The first run pauses while overwriting checkpoint_latest.ckpt at the end of epoch 1: a save in flight.
    first = CLIProcess("fit", "--config", str(config), "--trainer.max_epochs", "2", env={WRITE_PAUSE_ENV: "300"})
    try:
        in_flight = lambda: any(checkpoints.glob(".checkpoint_latest.ckpt.*.tmp"))  # noqa: E731
        first.wait_for(in_flight, "a save in flight")
        second = fit(config, "--trainer.max_epochs", "2")
        assert second.process.returncode == 2, second.output
        assert f"in use by another resnet-ffcv fit (pid {first.process.pid} on host" in second.output
        assert in_flight()  # the other writer's temp file is not cleaned up under its feet
    finally:
        first.process.send_signal(signal.SIGKILL)
        first.finish()
    # The dead holder's lock is taken over; its temp file is now stale and cleaned up.
    third = fit(config, "--trainer.max_epochs", "2")
    assert third.process.returncode == 0, third.output
    assert not list(checkpoints.glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("options", ["ro,size=2m", "size=2m"])
def test_unwritable_or_small_directory_is_refused_before_training(tmp_path, ffcv_dir, options):
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        config = write_config(tmp_path, ffcv_dir, dirpath=str(mount))
        refused = fit(config)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert refused.process.returncode == 2, refused.output
    assert f"The checkpoint directory {mount}" in refused.output
    assert ("not writable" in refused.output) if "ro" in options else ("MiB free" in refused.output)
    assert "Traceback" not in refused.output and "Epoch 0" not in refused.output


@pytest.mark.slow
def test_disk_full_during_a_save_exits_74_and_keeps_the_previous_checkpoint(tmp_path, ffcv_dir, trained):
    config, checkpoints = run_dir(tmp_path, ffcv_dir, trained)
    full = fit(config, "--trainer.max_epochs", "2", env={DISK_FULL_ENV: "1"})
    assert full.process.returncode == 74, full.output
    assert f"The disk of the checkpoint directory {checkpoints} is full" in full.output
    assert "MiB free" in full.output and "Traceback" not in full.output
    latest = checkpoints / "checkpoint_latest.ckpt"
    assert load_checkpoint_header(latest)["global_step"] == STEPS  # the previous file, verified
    assert not list(checkpoints.glob(".*.tmp"))


@pytest.mark.slow
def test_bit_flip_falls_back_to_the_periodic_file(tmp_path, ffcv_dir, trained):
    config, checkpoints = run_dir(tmp_path, ffcv_dir, trained)
    latest = checkpoints / "checkpoint_latest.ckpt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside a tensor: torch.load would not notice
    replace_bytes(latest, bytes(data))
    assert checksum_path(latest).is_file()
    resumed = fit(config, "--trainer.max_epochs", "2")
    assert resumed.process.returncode == 0, resumed.output
    assert "checkpoint_latest.ckpt is unreadable (ChecksumMismatch: checksum mismatch" in resumed.output
    assert "Resuming from " in resumed.output and "checkpoint_epoch_1.ckpt:" in resumed.output
    assert load_checkpoint_header(latest)["global_step"] == 2 * STEPS


@pytest.mark.slow
def test_kill_storm_leaves_only_verified_checkpoints_and_finishes(tmp_path, ffcv_dir):
    config = write_config(tmp_path, ffcv_dir, keep_periodic=2)
    checkpoints, args = tmp_path / "checkpoints", ("--trainer.max_epochs", "4")
    rng = random.Random(0)
    for kill in range(3):  # mid-training, during a save, mid-training again
        during_save = kill % 2 == 1  # alternately: mid-training, and while a checkpoint overwrite is in flight
        env = {WRITE_PAUSE_ENV: "300"} if during_save else None
        run = CLIProcess("fit", "--config", str(config), *args, env=env)
        if during_save:
            run.wait_for(lambda: any(checkpoints.glob(".checkpoint_latest.ckpt.*.tmp")), "a save in flight", 600)
        else:  # a random moment of training, or an epoch's end (validation, saves) when the count hits one
            steps = rng.randint(1, STEPS + 5)  # this process's steps (a resumed run has more than that left)
            run.wait_for(lambda: run.output.count(" (batch ") >= steps, f"{steps} steps", 600)  # noqa: B023
        run.process.send_signal(signal.SIGKILL)
        assert run.finish() in (-signal.SIGKILL, 0), run.output
    final = fit(config, *args)
    assert final.process.returncode == 0, final.output
    files = list(checkpoints.glob("*.ckpt"))
    assert files
    for path in files:
        load_checkpoint_header(path)  # loads, and its checksum (when it has one) matches
    assert load(checkpoints / "checkpoint_latest.ckpt")["global_step"] == 4 * STEPS
