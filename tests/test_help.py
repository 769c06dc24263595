"""``--help`` as a user runs it: the subcommand list, and doctor's and plan's own options (with --config)."""

from __future__ import annotations

import pytest

from resnet_ffcv.cli import SUBCOMMANDS

from .helpers import run_cli

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


WIDE = {"COLUMNS": "200"}  # argparse wraps help at the terminal width: one option per line here


@pytest.mark.parametrize("args", [("--help",), ("-h",), ()], ids=["--help", "-h", "no-arguments"])
def test_top_level_help_lists_every_subcommand(args):
    result = run_cli(*args, env=WIDE)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert set(SUBCOMMANDS) == set(EVERY_SUBCOMMAND)
    for name in EVERY_SUBCOMMAND:
        [line] = [line for line in lines if line.split()[:1] == [name]]  # one line each, with its description
        assert len(line.split()) > 3, line
    assert "preflight pass/fail lines" in result.stdout


def test_unknown_subcommand_is_one_clear_error():
    result = run_cli("fti", "--config", "x.yaml", env=WIDE)
    assert result.returncode == 2
    assert "unknown subcommand 'fti'" in result.stderr and "write-dataset" in result.stderr


def test_doctor_help_describes_its_own_options():
    result = run_cli("doctor", "--help", env=WIDE)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: resnet-ffcv doctor")
    assert "--config FILE" in out and "a training config, as for `resnet-ffcv fit`" in out
    assert "--ckpt_path" in out and "Preflight checks before paying for GPU time" in out
    assert "--trainer.max_epochs" not in out  # not the fit parser's help


def test_plan_help_describes_its_own_options():
    result = run_cli("plan", "--help", env=WIDE)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("usage: resnet-ffcv plan")
    assert "--config FILE" in out and "a training config, as for `resnet-ffcv fit`" in out
    assert "training steps measured per stage" in out and "multi-GPU efficiency" in out
