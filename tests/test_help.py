"""``--help`` as a user runs it: the subcommand list, and doctor's and plan's own options (with --config)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_ffcv.cli import SUBCOMMANDS

REPO = Path(__file__).resolve().parents[1]
EVERY_SUBCOMMAND = (
    "fit",
    "validate",
    "test",
    "predict",
    "write-dataset",
    "make-synthetic",
    "inspect-dataset",
    "doctor",
    "evaluate",
    "curves",
    "export",
    "plan",
)


def resnet_ffcv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnet_ffcv.cli", *args],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("args", [("--help",), ("-h",), ()], ids=["--help", "-h", "no-arguments"])
def test_top_level_help_lists_every_subcommand(args):
    result = resnet_ffcv(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert set(SUBCOMMANDS) == set(EVERY_SUBCOMMAND)
    for name in EVERY_SUBCOMMAND:
        [line] = [line for line in lines if line.split()[:1] == [name]]  # one line each, with its description
        assert len(line.split()) > 3, line
    assert "preflight pass/fail lines" in result.stdout


def test_unknown_subcommand_is_one_clear_error():
    result = resnet_ffcv("fti", "--config", "x.yaml")
    assert result.returncode == 2
    assert "unknown subcommand 'fti'" in result.stderr and "write-dataset" in result.stderr


def test_doctor_help_describes_its_own_options():
    result = resnet_ffcv("doctor", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: resnet-ffcv doctor")
    assert "--config FILE" in out and "a training config, as for `resnet-ffcv fit`" in out
    assert "--ckpt_path" in out and "Preflight checks before paying for GPU time" in out
    assert "--trainer.max_epochs" not in out  # not the fit parser's help


def test_plan_help_describes_its_own_options():
    result = resnet_ffcv("plan", "--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: resnet-ffcv plan")
    assert "--config FILE" in out and "a training config, as for `resnet-ffcv fit`" in out
    assert "training steps measured per stage" in out and "multi-GPU efficiency" in out
