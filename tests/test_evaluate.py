"""``resnet-ffcv evaluate`` through the real CLI on a small real checkpoint and the real .ffcv fixture."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from resnet_ffcv.errors import InputNotFound, InvalidValue, UserError
from resnet_ffcv.tools.evaluate import evaluate, join_list_options

from .helpers import COMPILED, run_cli, trained_checkpoint

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
        env=COMPILED,
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


def test_evaluate_names_a_missing_checkpoint_in_one_line_and_debug_shows_the_traceback(tmp_path, ffcv_dir):
    """The CLI's UserError path, not a local catch: one error line naming the file; the traceback on request."""
    args = ("evaluate", "--ckpt_path", str(tmp_path / "none.ckpt"), "--data_dir", str(ffcv_dir))
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("resnet-ffcv evaluate: error:")]
    assert f"--ckpt_path {tmp_path / 'none.ckpt'}: no such file" in line
    assert "resnet-ffcv fit" in line  # what was expected instead
    debug = run_cli(*args, env={"RESNET_FFCV_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "InputNotFound" in debug.stderr


def _stub_checkpoint(path: Path) -> Path:
    """Enough of a checkpoint to pass the file checks, so that the data checks after them are reached."""
    torch.save({"state_dict": {}, "hyper_parameters": {}}, path)
    return path


@pytest.mark.parametrize(
    ("case", "error", "named"),
    [
        ("ckpt_is_a_folder", InvalidValue, ["--ckpt_path", "is a folder", "last.ckpt"]),
        ("ckpt_is_not_a_checkpoint", InvalidValue, ["--ckpt_path", "notes.ckpt", "not readable as a checkpoint"]),
        ("ckpt_is_a_bare_state_dict", InvalidValue, ["--ckpt_path", "weights.pt", "has no state_dict"]),
        ("no_data_dir", InputNotFound, ["--data_dir", "nowhere", "no such folder", "write-dataset"]),
        ("no_val_file", InputNotFound, ["--data_dir", "has no holdout.ffcv (--val_file)"]),
        ("crop_ratio_above_one", InvalidValue, ["--crop_ratios 1.5", "(0, 1]"]),
        ("resolution_not_a_multiple_of_8", InvalidValue, ["--resolutions=30", "multiple of 8"]),
    ],
)
def test_evaluate_refusals_name_the_option_and_what_was_expected(tmp_path, case, error, named):
    """Each wrong input is a UserError subclass (the CLI's one line) raised before any network is loaded."""
    args = {"ckpt_path": str(_stub_checkpoint(tmp_path / "stub.ckpt")), "data_dir": str(tmp_path)}
    (tmp_path / "val.ffcv").write_bytes(b"")  # existence is all the early data check looks at
    (tmp_path / "classes.json").write_text("[]")
    if case == "ckpt_is_a_folder":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "last.ckpt").write_bytes(b"")
        args["ckpt_path"] = str(tmp_path / "run")
    elif case == "ckpt_is_not_a_checkpoint":
        (tmp_path / "notes.ckpt").write_text("not a checkpoint")
        args["ckpt_path"] = str(tmp_path / "notes.ckpt")
    elif case == "ckpt_is_a_bare_state_dict":
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "weights.pt")
        args["ckpt_path"] = str(tmp_path / "weights.pt")
    elif case == "no_data_dir":
        args["data_dir"] = str(tmp_path / "nowhere")
    elif case == "no_val_file":
        args["val_file"] = "holdout.ffcv"
    elif case == "crop_ratio_above_one":
        args["crop_ratios"] = (0.875, 1.5)
    else:
        args["resolutions"] = (224, 30)
    with pytest.raises(error) as raised:
        evaluate(**args)
    assert isinstance(raised.value, UserError)
    for text in named:
        assert text in str(raised.value), str(raised.value)


def test_list_options_join_into_one_value():
    assert join_list_options(["--resolutions", "224", "256", "--tta", "on"]) == [
        "--resolutions",
        "[224,256]",
        "--tta",
        "on",
    ]
    assert join_list_options(["--crop_ratios", "[1.0]"]) == ["--crop_ratios", "[1.0]"]
    assert join_list_options(["--crop_ratios", "1.0"]) == ["--crop_ratios", "[1.0]"]
