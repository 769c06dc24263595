"""``resnet-ffcv evaluate`` through the real CLI on a small real checkpoint and the real .ffcv fixture."""

from __future__ import annotations

import re

import pytest

from resnet_ffcv.evaluate import join_list_options

from .helpers import run_cli, trained_checkpoint

ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+(yes|no)((?:\s+[\d.]+)+)")


@pytest.mark.slow
def test_evaluate_prints_one_table_of_raw_and_ema_per_protocol(tmp_path, ffcv_dir):
    checkpoint = trained_checkpoint(tmp_path / "tiny.ckpt")
    result = run_cli(
        "evaluate",
        "--ckpt_path",
        str(checkpoint),
        "--data_dir",
        str(ffcv_dir),
        "--resolutions",
        "32",
        "48",
        "--crop_ratios",
        "0.875",
        "1.0",
        "--tta",
        "both",
        "--batch_size",
        "16",
        "--num_workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "(40 images)" in lines[0]  # the whole val.ffcv fixture
    assert lines[1].split() == [
        "res",
        "crop",
        "flip",
        "TTA",
        "raw",
        "top-1",
        "raw",
        "top-5",
        "ema",
        "top-1",
        "ema",
        "top-5",
    ]
    rows = [ROW.match(line) for line in lines[2:]]
    assert all(rows), lines
    keys = [(int(m[1]), float(m[2]), m[3]) for m in rows]
    assert keys == [(r, c, t) for r in (32, 48) for c in (0.875, 1.0) for t in ("no", "yes")]
    numbers = [float(x) for m in rows for x in m[4].split()]
    assert len(numbers) == 8 * 4 and all(0 <= x <= 100 for x in numbers)
    # 40 images: every figure is a whole number of images (multiples of 2.5 %); top-5 >= top-1.
    assert all(abs(x / 2.5 - round(x / 2.5)) < 1e-6 for x in numbers)
    for m in rows:
        raw1, raw5, ema1, ema5 = (float(x) for x in m[4].split())
        assert raw5 >= raw1 and ema5 >= ema1


def test_evaluate_names_a_missing_checkpoint_without_a_traceback(tmp_path, ffcv_dir):
    result = run_cli("evaluate", "--ckpt_path", str(tmp_path / "none.ckpt"), "--data_dir", str(ffcv_dir))
    assert result.returncode != 0
    assert "resnet-ffcv evaluate: error: --ckpt_path" in result.stderr and "none.ckpt" in result.stderr
    assert "Traceback" not in result.stderr


def test_list_options_join_into_one_value():
    assert join_list_options(["--resolutions", "224", "256", "--tta", "on"]) == [
        "--resolutions",
        "[224,256]",
        "--tta",
        "on",
    ]
    assert join_list_options(["--crop_ratios", "[1.0]"]) == ["--crop_ratios", "[1.0]"]
    assert join_list_options(["--crop_ratios", "1.0"]) == ["--crop_ratios", "[1.0]"]
