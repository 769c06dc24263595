"""SkyPilot task files (parsed by SkyPilot itself), their `run` command executed here on the CPU with SkyPilot's
variables set, the data staging script and the disk-speed figures of doctor.

Only the cloud is absent: SkyPilot's own parser checks the task files, the `run` command is the one in the YAML,
S3 is moto's server on 127.0.0.1 (fixture from test_object_store), training is a real CLI process.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from resnet_ffcv.callbacks.spot import INTERRUPTED_EXIT_CODE
from resnet_ffcv.dataset.format import validate_ffcv
from resnet_ffcv.lightning_cli import parse_config_only
from resnet_ffcv.run.stop_signals import STALLED_EXIT_CODE
from resnet_ffcv.run.storage import MARKER_SUFFIX, RemoteCheckpointDir

from .helpers import INTERPRETED, REPO, free_port, run_cli
from .spot_support import write_config
from .test_local_nvme import loop_drives  # noqa: F401 - the fixture
from .test_object_store import BUCKET, STEPS_PER_EPOCH, s3_env  # noqa: F401 - s3_env: the fixture

TASKS = sorted((REPO / "sky").glob("*.yaml"))
REQUIRED = [("DATA_URL", "s3://bucket/imagenet-ffcv"), ("CHECKPOINT_URL", "s3://bucket/checkpoints/run")]
GPU_OF = {"p4d.24xlarge": "A100", "p3.8xlarge": "V100", "g5.12xlarge": "A10G", "g6.12xlarge": "L4"}


SKY_PYTHON = REPO / ".venv-sky" / "bin" / "python"  # `make install` builds it: see tests/sky_load.py


@functools.cache
def _parsed_tasks() -> dict[tuple[str, str], dict]:
    """Every task file with and without DATA_URL, as SkyPilot parses it (one process, in its own venv)."""
    requests = [[str(path), overrides] for path in TASKS for overrides in (REQUIRED, REQUIRED[1:])]
    result = subprocess.run(
        [str(SKY_PYTHON), str(REPO / "tests" / "sky_load.py"), json.dumps(requests)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    return {(path, json.dumps(overrides)): fields for (path, overrides), fields in zip(requests, answers, strict=True)}


def load_task(path: Path, overrides=REQUIRED) -> SimpleNamespace:
    """The task as SkyPilot parses it; ValueError when SkyPilot refuses it."""
    fields = _parsed_tasks()[(str(path), json.dumps([list(pair) for pair in overrides]))]
    if "error" in fields:
        raise ValueError(fields["error"])
    return SimpleNamespace(**fields)


def test_a_task_file_per_instance_config():
    names = {path.stem for path in TASKS}
    assert names >= {"p4d_78pct"} | {path.stem for path in (REPO / "configs" / "instances").glob("*.yaml")}


@pytest.mark.parametrize("path", TASKS, ids=[path.stem for path in TASKS])
def test_task_file_parses_and_matches_its_training_config(path):
    task = load_task(path)
    assert task.use_spot
    recovery = task.job_recovery
    assert recovery["strategy"] in ("EAGER_NEXT_REGION", "FAILOVER")
    # Interrupted: always relaunched; stalled: relaunched, bounded by the run's own count (watchdog.max_restarts).
    assert recovery["recover_on_exit_codes"] == [INTERRUPTED_EXIT_CODE, STALLED_EXIT_CODE]
    assert 0 < recovery["max_restarts_on_errors"] <= 3  # a real failure is not retried forever
    assert task.run.strip() == "bash sky/run.sh" and task.setup.strip() == "make install"
    # The GPUs SkyPilot asks for are the ones the training config uses, per node and in nodes.
    # FIT_CONFIGS are relative to the workdir, which SkyPilot syncs from the repository.
    configs = [str(REPO / name) for name in task.envs["FIT_CONFIGS"].split()]
    config = parse_config_only([arg for name in configs for arg in ("--config", name)])
    [(gpu, count)] = task.accelerators.items()
    assert gpu == GPU_OF[task.instance_type]
    assert count == config.trainer.devices and task.num_nodes == (config.trainer.num_nodes or 1)
    # The storage it needs is named, and required at launch: no silent default bucket.
    with pytest.raises(ValueError, match="DATA_URL"):
        load_task(path, overrides=REQUIRED[1:])
    assert task.envs["CHECKPOINT_URL"].startswith("s3://")
    # A hang ends the run within minutes (not torch's 30-minute collective timeout), and 76 is retried finitely.
    watchdog = config.watchdog
    assert watchdog.enabled and 0 < watchdog.max_restarts <= 5
    assert watchdog.stall_minutes < watchdog.collective_timeout_minutes < 30


def skypilot_workdir(root: Path) -> Path:
    """What SkyPilot syncs to the node as the task's workdir (``~/sky_workdir``): the repository's files, here as
    links into the checkout, so the task runs (and writes whatever it writes relative to it) outside the checkout."""
    workdir = root / "sky_workdir"
    workdir.mkdir(exist_ok=True)
    for name in ("sky", "scripts", "configs", "src", "tests", "Makefile", "pyproject.toml"):
        if not (workdir / name).exists():
            (workdir / name).symlink_to(REPO / name)
    return workdir


def _run_task(path: Path, env: dict) -> subprocess.Popen:
    """The task's `run` command as SkyPilot runs it on a one-node cluster: bash, in the workdir, its envs set."""
    task = load_task(path)
    workdir = skypilot_workdir(Path.cwd())  # the test's own temporary working directory (conftest)
    full_env = {
        **os.environ,
        **task.envs,
        "SKYPILOT_NODE_IPS": "127.0.0.1",
        "SKYPILOT_NODE_RANK": "0",
        "SKYPILOT_NUM_NODES": "1",
        "SKYPILOT_NUM_GPUS_PER_NODE": "0",
        "PYTHON": sys.executable,
        "PYTHONUNBUFFERED": "1",
        "INSTANCE_STORE_DEVICES": "none",  # never this machine's own instance store, if it has one
        **INTERPRETED,  # FFCV's pipelines without the JIT compile (helpers.py)
        **env,
    }
    return subprocess.Popen(
        ["bash", "-c", task.run],
        cwd=workdir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
def test_run_command_stages_data_stops_with_75_and_resumes_from_the_bucket(
    tmp_path,
    ffcv_dir,
    s3_env,  # noqa: F811
    imds,
    loop_drives,  # noqa: F811
):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(ffcv_dir) + "/", f"{BUCKET}/data/", recursive=True)
    spot = {"endpoint": imds.endpoint, "poll_interval": 0.5}
    # The CPU stand-in for configs/p4d_78pct.yaml; a periodic checkpoint every epoch, one kept.
    config = write_config(tmp_path, ffcv_dir, spot=spot, checkpoint_interval=1, keep_periodic=1)
    checkpoint_url = f"s3://{BUCKET}/sky-run"
    env = {
        "FIT_CONFIGS": str(config),
        "DATA_URL": f"s3://{BUCKET}/data",
        "INSTANCE_STORE_DEVICES": " ".join(loop_drives(2)),  # the instance's NVMe drives
        "NVME_MOUNT": str(tmp_path / "nvme"),
        "LOCAL_DATA": str(tmp_path / "root-disk-data"),  # unused: this instance has an instance store
        "CHECKPOINT_URL": checkpoint_url,
        "RESNET_FFCV_CHECKPOINT_CACHE": str(tmp_path / "first-machine"),
    }
    remote = RemoteCheckpointDir(checkpoint_url, cache_dir=tmp_path / "inspect")

    first = _run_task(
        REPO / "sky" / "p4d_78pct.yaml", {**env, "FIT_ARGS": "--data.batch_size 2 --trainer.max_epochs 50"}
    )
    lines: list[str] = []
    for line in first.stdout:  # SIGTERM once epoch 0's files are in the bucket (epoch 1 runs) and the handler is armed
        lines.append(line)
        if "Armed: SIGTERM/SIGINT" in "".join(lines) and remote.problem("checkpoint_epoch_1.ckpt") is None:
            os.killpg(first.pid, signal.SIGTERM)  # what SkyPilot's cancel / the OS shutdown sends the job
            break
    output = "".join(lines) + first.stdout.read()
    assert first.wait(timeout=300) == INTERRUPTED_EXIT_CODE, output
    staged = tmp_path / "nvme" / "ffcv-data"
    assert "copied" in output and f"data: s3://{BUCKET}/data -> {staged}" in output
    assert (staged / "train.ffcv").stat().st_size == (ffcv_dir / "train.ffcv").stat().st_size
    assert not (tmp_path / "root-disk-data").exists()
    assert f"checkpoint dir: {checkpoint_url}: object storage" in output  # doctor's line, via spot_training.sh
    assert "interrupted; checkpoint_latest.ckpt saved" in output and "received SIGTERM: saved" in output
    stopped = torch.load(remote.download("checkpoint_latest.ckpt"), map_location="cpu", weights_only=False)
    assert stopped["global_step"] > STEPS_PER_EPOCH  # saved mid-epoch 1, uploaded before exit 75
    run_id = remote.fs.cat_file(remote._remote("wandb_run_id.txt")).decode().strip()

    # The relaunch: SkyPilot reruns the same `run`; the staged data is kept, training resumes from the bucket.
    env["RESNET_FFCV_CHECKPOINT_CACHE"] = str(tmp_path / "second-machine")
    second = _run_task(
        REPO / "sky" / "p4d_78pct.yaml", {**env, "FIT_ARGS": "--data.batch_size 2 --trainer.max_epochs 2"}
    )
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    assert "already mounted" in output and "already holds this dataset" in output
    assert f"{checkpoint_url}/checkpoint_latest.ckpt -> " in output
    assert f"Resuming from {tmp_path / 'second-machine'}" in output
    assert f"W&B run id {run_id} (continued" in output
    finished = torch.load(remote.download("checkpoint_latest.ckpt"), map_location="cpu", weights_only=False)
    assert finished["global_step"] == 2 * STEPS_PER_EPOCH
    # keep_periodic=1 applies to the bucket: epoch 1's file and its marker are gone, epoch 2's is complete.
    assert remote.periodic_names() == ["checkpoint_epoch_2.ckpt"]
    assert "checkpoint_epoch_1.ckpt" + MARKER_SUFFIX not in remote.names()
    assert remote.problem("checkpoint_epoch_2.ckpt") is None and remote.problem("best_model.ckpt") is None


def _finish_together(nodes: list[subprocess.Popen], timeout: float) -> list[str]:
    """Each node's output, read at once (a full pipe must not stall the rank the others wait for). The first
    node to fail takes the others down: a rank left alone waits for its peers for Lightning's 30-minute timeout."""
    with ThreadPoolExecutor(len(nodes)) as pool:
        futures = {pool.submit(node.communicate, timeout=timeout): node for node in nodes}
        try:
            for future in as_completed(futures):
                if futures[future].returncode != 0:
                    break
        finally:
            for node in nodes:
                if node.poll() is None:
                    os.killpg(node.pid, signal.SIGKILL)
    return [future.result()[0] for future in futures]


@pytest.mark.slow
def test_two_node_task_runs_as_two_lightning_ranks_on_one_host(tmp_path, ffcv_dir):
    """sky/2x_p4d.yaml's `run` on two "nodes" (both 127.0.0.1), as SkyPilot starts it on each: no torchrun, only
    SkyPilot's variables, which sky/run.sh maps to Lightning's; DDP over gloo on the CPU."""
    import torch

    batch_size = 8
    config = write_config(tmp_path, ffcv_dir)  # the CPU stand-in for the p4d recipe + configs/instances/2x_p4d.yaml
    fit_args = [
        f"--data.batch_size {batch_size}",
        "--trainer.num_nodes 2 --trainer.devices 1 --trainer.accelerator cpu --trainer.strategy ddp",  # gloo
        "--trainer.max_epochs 1 --trainer.limit_val_batches 1",
    ]
    cluster = {"SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1", "SKYPILOT_NUM_NODES": "2", "MASTER_PORT": str(free_port())}
    checkpoints = tmp_path / "bucket"
    nodes = [
        _run_task(
            REPO / "sky" / "2x_p4d.yaml",
            {
                **cluster,
                "SKYPILOT_NODE_RANK": str(rank),
                "FIT_CONFIGS": str(config),
                "FIT_ARGS": " ".join(fit_args),
                "DATA_URL": str(ffcv_dir),
                "LOCAL_DATA": str(tmp_path / f"node{rank}-data"),  # each node stages its own copy
                "CHECKPOINT_URL": str(checkpoints),
            },
        )
        for rank in (0, 1)
    ]
    outputs = _finish_together(nodes, timeout=600)
    codes = [node.returncode for node in nodes]
    assert codes == [0, 0], "\n-- node 1 --\n".join(output[-3000:] for output in outputs)
    for rank, output in enumerate(outputs):
        assert f"node {rank} of 2, master 127.0.0.1:{cluster['MASTER_PORT']}" in output
        assert f"Initializing distributed: GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in output, output[-4000:]
        assert (tmp_path / f"node{rank}-data" / "train.ffcv").stat().st_size == (ffcv_dir / "train.ffcv").stat().st_size

    # One epoch of 80 images over 2 ranks of 8: 40 per rank, 5 steps (one rank alone would take 10).
    train_samples = validate_ffcv(ffcv_dir / "train.ffcv", None)  # the fixture's size, from the file itself
    checkpoint = torch.load(checkpoints / "checkpoint_latest.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == train_samples // (2 * batch_size) == 5
    assert checkpoint["epoch"] == 0 and (checkpoints / "checkpoint_epoch_1.ckpt").is_file()


# -- data staging -----------------------------------------------------------------------------------------------
def _stage(source, dest, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stage_data.py"), str(source), str(dest), "--chunk_mb", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_stage_data_copies_verifies_and_skips_a_complete_copy(tmp_path, ffcv_dir):
    dest = tmp_path / "local"
    first = _stage(ffcv_dir, dest)
    assert first.returncode == 0, first.stderr
    for name in ("train.ffcv", "val.ffcv", "classes.json", "manifest.json"):
        assert (dest / name).read_bytes() == (ffcv_dir / name).read_bytes()
    again = _stage(ffcv_dir, dest)
    assert again.returncode == 0 and "nothing copied" in again.stderr

    # A local file cut short (a copy killed before the rename cannot do this, a full disk can): copied again.
    with open(dest / "train.ffcv", "r+b") as f:
        f.truncate(100)
    repaired = _stage(ffcv_dir, dest)
    assert repaired.returncode == 0 and "copied" in repaired.stderr
    assert (dest / "train.ffcv").read_bytes() == (ffcv_dir / "train.ffcv").read_bytes()

    # A source whose file does not match its manifest: refused, naming the file.
    broken = tmp_path / "broken"
    shutil.copytree(ffcv_dir, broken)
    with open(broken / "val.ffcv", "ab") as f:
        f.write(b"extra")
    refused = _stage(broken, tmp_path / "other")
    assert refused.returncode == 2 and "val.ffcv" in refused.stderr and "manifest.json records" in refused.stderr
    incomplete = tmp_path / "incomplete"
    shutil.copytree(ffcv_dir, incomplete)
    manifest = json.loads((incomplete / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    assert "not written to the end" in _stage(incomplete, tmp_path / "third").stderr
    renamed = tmp_path / "renamed"  # a classes.json that is not the one the writer hashed into the manifest
    shutil.copytree(ffcv_dir, renamed)
    entries = json.loads((renamed / "classes.json").read_text())
    (renamed / "classes.json").write_text(json.dumps([{**entries[0], "name": "other"}, *entries[1:]]))
    refused = _stage(renamed, tmp_path / "fourth")
    assert refused.returncode == 2 and "classes.json: its class-map hash" in refused.stderr, refused.stderr


def test_stage_data_without_aws_credentials_is_one_line_not_a_traceback(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    nowhere = str(tmp_path / "none")
    env.update(AWS_SHARED_CREDENTIALS_FILE=nowhere, AWS_CONFIG_FILE=nowhere, AWS_EC2_METADATA_DISABLED="true")
    result = _stage("s3://resnet-ffcv-no-such-bucket/ffcv", tmp_path / "local", env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert "cannot copy s3://resnet-ffcv-no-such-bucket/ffcv to " in result.stderr and "credentials" in result.stderr


# -- disk speed ---------------------------------------------------------------------------------------------------
def test_doctor_reports_the_read_speed_and_the_first_epoch_read_time(tmp_path, ffcv_dir):
    config = write_config(tmp_path, ffcv_dir)
    result = run_cli("doctor", "--config", str(config))
    line = next(line for line in result.stdout.splitlines() if "data read speed" in line)
    assert line.startswith("[PASS]") and " MB/s (" in line and "min in the first epoch" in line, result.stdout


def test_disk_read_adds_to_the_plan_when_slower_than_compute(tmp_path):
    from resnet_ffcv.tools import disk_speed

    path = tmp_path / "train.ffcv"
    path.write_bytes(os.urandom(4 << 20))
    speed = disk_speed.measure_read_speed(path)
    assert speed.bytes_read == 4 << 20 and speed.full_read_seconds > 0
    extra, note = disk_speed.extra_seconds(path, [0.0, 0.0])  # compute that takes no time: the disk is all
    assert extra > 0 and "adds" in note
    assert disk_speed.extra_seconds(path, [1e6, 1e6])[0] == 0  # compute slower than the disk: nothing added
