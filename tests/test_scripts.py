"""Operator shell scripts, run for real: tmux in a private tmux server; the AWS CLI faked on PATH (no AWS here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from .helpers import REPO

SCRIPTS = REPO / "scripts"


@pytest.fixture
def tmux_socket():
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: `make install` installs it (apt-get install -y tmux)")
    name = f"resnet-ffcv-test-{os.getpid()}"
    yield name
    subprocess.run(["tmux", "-L", name, "kill-server"], capture_output=True)


def capture(socket: str, window: str) -> str:
    return subprocess.run(
        ["tmux", "-L", socket, "capture-pane", "-p", "-t", f"training:{window}"], capture_output=True, text=True
    ).stdout


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_tmux_layout(tmux_socket, tmp_path):
    env = {
        **os.environ,
        "TMUX_SOCKET": tmux_socket,
        "NO_ATTACH": "1",
        "TRAIN_CMD": "echo training-started; sleep 30",
        "LOG_DIR": str(tmp_path / "logs"),
        "CHECKPOINT_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",  # no nvidia-smi here: the gpu window must say so, not die
    }
    result = subprocess.run(["bash", SCRIPTS / "tmux_training_setup.sh"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    windows = subprocess.run(
        ["tmux", "-L", tmux_socket, "list-windows", "-t", "training", "-F", "#{window_name}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert windows == ["training", "gpu", "logs", "system", "checkpoints"]
    assert wait_for(lambda: "nvidia-smi not found" in capture(tmux_socket, "gpu"))
    assert wait_for(lambda: "training-started" in capture(tmux_socket, "logs"))
    assert (tmp_path / "logs" / "train.log").read_text().startswith("training-started")

    again = subprocess.run(["bash", SCRIPTS / "tmux_training_setup.sh"], env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_tmux_help_and_dry_run_read_the_directories_from_every_config(tmp_path):
    help_text = subprocess.run(["bash", SCRIPTS / "tmux_training_setup.sh", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--dry-run" in help_text.stdout and "CHECKPOINT_DIR" in help_text.stdout

    override = tmp_path / "logs_elsewhere.yaml"  # a second config: only the logger's save_dir changes
    override.write_text(
        "trainer:\n  logger:\n    class_path: lightning.pytorch.loggers.WandbLogger\n"
        f"    init_args:\n      save_dir: {tmp_path / 'my logs'}\n"
    )
    args = ["--config", str(REPO / "configs/demo_cpu.yaml"), "--config", str(override), "--trainer.max_epochs=3"]
    env = {key: value for key, value in os.environ.items() if key not in ("LOG_DIR", "CHECKPOINT_DIR", "TRAIN_CMD")}
    result = subprocess.run(
        ["bash", SCRIPTS / "tmux_training_setup.sh", "--dry-run", *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert f"log dir:        {tmp_path / 'my logs'}" in result.stdout  # from the second config
    assert "checkpoint dir: demo_output/run/checkpoints" in result.stdout  # <run_dir>/checkpoints of the demo
    assert f"spot_training.sh {REPO / 'configs/demo_cpu.yaml'} --config {override} --trainer.max_epochs=3" in (
        result.stdout
    )
    assert not (tmp_path / "my logs").exists()  # a dry run creates nothing

    bad = subprocess.run(
        ["bash", SCRIPTS / "tmux_training_setup.sh", "--dry-run", *args, "--model.lrr=1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "does not parse" in bad.stderr


def test_ebs_verify_existing_data(ffcv_dir):
    env = {**os.environ, "DEVICE": "none", "MOUNT_POINT": str(ffcv_dir), "DATA_DIR": str(ffcv_dir)}
    ok = subprocess.run(
        ["bash", SCRIPTS / "ebs_training.sh"],
        env={**env, "MIN_TRAIN_GB": "0", "MIN_VAL_GB": "0"},
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert f"ok  {ffcv_dir / 'train.ffcv'}" in ok.stdout and "resnet-ffcv doctor" in ok.stdout

    short = subprocess.run(["bash", SCRIPTS / "ebs_training.sh"], env=env, capture_output=True, text=True)
    assert short.returncode == 1
    assert f"{ffcv_dir / 'train.ffcv'} is 0.0 GB, expected >= 100 GB" in short.stderr


FAKE_AWS = """#!/usr/bin/env bash
echo "$*" >> "$AWS_LOG"
case "$2" in
  describe-volumes) printf '%s\\t%s\\n' "$FAKE_VOLUME_AZ" "$FAKE_VOLUME_STATE" ;;
  describe-subnets) echo "$FAKE_SUBNET_AZ" ;;
  describe-spot-price-history) echo "$FAKE_PRICE" ;;
  run-instances) echo i-0fake ;;
  describe-instances) echo ec2-1-2-3-4.compute.amazonaws.com ;;
esac
"""


@pytest.fixture
def fake_aws(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    log = tmp_path / "aws.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "AWS_LOG": str(log),
        "VOLUME_ID": "vol-1",
        "AMI_ID": "ami-1",
        "KEY_NAME": "key",
        "SECURITY_GROUP": "sg-1",
        "MAX_PRICE": "12",
        "FAKE_VOLUME_AZ": "us-east-1a",
        "FAKE_VOLUME_STATE": "available",
        "FAKE_SUBNET_AZ": "us-east-1a",
        "FAKE_PRICE": "11.02",
    }

    def launch(**overrides: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        log.unlink(missing_ok=True)
        result = subprocess.run(
            ["bash", SCRIPTS / "aws_spot_launch.sh"],
            env={**env, **overrides},
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        return result, log.read_text().splitlines() if log.exists() else []

    return launch


def test_spot_launch_checks_then_launches(fake_aws, tmp_path):
    result, calls = fake_aws(SUBNET_ID="subnet-1")
    assert result.returncode == 0, result.stderr
    run = next(call for call in calls if call.startswith("ec2 run-instances"))
    assert "AvailabilityZone=us-east-1a" in run and "MaxPrice=12" in run and "MarketType=spot" in run
    assert any(call.startswith("ec2 attach-volume --volume-id vol-1 --instance-id i-0fake") for call in calls)
    assert (tmp_path / ".last_instance").read_text().strip() == "i-0fake"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"FAKE_PRICE": "13.50"}, "spot price $13.50/h for p4d.24xlarge in us-east-1a is above MAX_PRICE=$12/h"),
        ({"SUBNET_ID": "subnet-1", "FAKE_SUBNET_AZ": "us-east-1b"}, "is in us-east-1b but the volume is in us-east-1a"),
        ({"FAKE_VOLUME_STATE": "in-use"}, "volume vol-1 is 'in-use', not 'available'"),
        ({"KEY_NAME": ""}, "set KEY_NAME"),
    ],
)
def test_spot_launch_refuses_before_launching(fake_aws, overrides, message):
    result, calls = fake_aws(**overrides)
    assert result.returncode == 1
    assert message in result.stderr
    assert not any(call.startswith("ec2 run-instances") for call in calls)


def test_cleanup_terminates_the_last_instance_and_keeps_the_volume(fake_aws, tmp_path):
    result, _ = fake_aws()
    assert result.returncode == 0, result.stderr
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "AWS_LOG": str(tmp_path / "cleanup.log")}
    cleanup = subprocess.run(
        ["bash", SCRIPTS / "aws_cleanup.sh"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert cleanup.returncode == 0, cleanup.stderr
    calls = (tmp_path / "cleanup.log").read_text().splitlines()
    assert calls[0] == "ec2 terminate-instances --instance-ids i-0fake"
    assert not any("delete-volume" in call for call in calls)
    assert not (tmp_path / ".last_instance").exists()
