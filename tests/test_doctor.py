"""``resnet-ffcv doctor``: preflight lines on this machine (no GPU here: that line must fail)."""

from __future__ import annotations

import pytest

from resnet_ffcv.cli import main
from resnet_ffcv.tools.doctor import check_free_disk

from .helpers import CONFIGS

DEMO = str(CONFIGS / "demo_cpu.yaml")


def run_doctor(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["doctor", "--config", DEMO, *args])
    return exit_info.value.code, capsys.readouterr().out


def test_missing_gpus_and_data_fail(capsys, tmp_path):
    code, out = run_doctor(
        capsys, "--trainer.accelerator=gpu", "--trainer.devices=8", f"--data.data_dir={tmp_path / 'nodata'}"
    )
    assert code == 1
    assert "[FAIL] GPUs: config wants 8 per node x 1 node(s); this machine has 0" in out
    assert f"[FAIL] data train.ffcv: {tmp_path / 'nodata' / 'train.ffcv'} is missing" in out
    assert "[PASS] shared memory" in out


def test_cpu_config_with_data_passes(capsys, ffcv_dir):
    code, out = run_doctor(capsys, f"--data.data_dir={ffcv_dir}")
    assert "[PASS] data train.ffcv" in out and "[PASS] data val.ffcv" in out
    assert "[PASS] W&B: offline mode" in out
    assert "[PASS] run safety: checkpoint_latest every epoch, a periodic one every 2; a hang costs at most " in out
    assert code == 0, out


def test_checkpoint_dir_and_free_space(tmp_path):
    assert not check_free_disk(None).ok
    check = check_free_disk(tmp_path / "not" / "yet" / "made")  # measured on the nearest existing parent
    assert "GB free on " + str(tmp_path) in check.detail


def test_checkpoint_dir_on_an_unmounted_volume_fails(capsys, ffcv_dir):
    """/data/... on a machine without /data: the root disk, not the volume; the free-space line is not enough."""
    code, out = run_doctor(
        capsys, f"--data.data_dir={ffcv_dir}", "--checkpoint.dirpath=/nonexistent_mount_xyz/checkpoints"
    )
    assert code == 1
    assert (
        "[FAIL] checkpoint dir mount: /nonexistent_mount_xyz/checkpoints would be created on the root filesystem /: "
        "/nonexistent_mount_xyz does not exist" in out
    ), out
    assert "data dir mount" not in out  # an existing path is not judged
