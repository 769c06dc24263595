"""Checkpoints in object storage: a real S3 API (moto's server on 127.0.0.1), real CLI processes, real signals.

Only AWS itself is replaced: s3fs/botocore talk HTTP to the local server exactly as to S3 (``AWS_ENDPOINT_URL``).
A fresh ``RESNET_FFCV_CHECKPOINT_CACHE`` per run plays a new spot instance: nothing local survives, only the bucket.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from resnet_ffcv.run.resume import find_resume_checkpoint
from resnet_ffcv.run.storage import MARKER_SUFFIX, RemoteCheckpointDir

from .helpers import free_port, run_cli
from .spot_support import write_config

BUCKET = "resnet-ffcv-test"
STEPS_PER_EPOCH = 40  # 80 images, batch 2


@pytest.fixture(scope="session")
def s3_env():
    """A local S3 endpoint with one bucket; returns the AWS variables that point a process at it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        if not fs.exists(BUCKET):  # moto keeps its state per process, not per server
            fs.mkdir(BUCKET)
        yield env
    server.stop()


def _remote(url: str, tmp_path: Path, name: str = "mirror") -> RemoteCheckpointDir:
    return RemoteCheckpointDir(url, cache_dir=tmp_path / name)


def _load_remote(remote: RemoteCheckpointDir, name: str) -> dict:
    return torch.load(remote.download(name), map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_truncated_latest_object_falls_back_to_newest_good_periodic(tmp_path, ffcv_dir, s3_env):
    url = f"s3://{BUCKET}/truncated"
    config = write_config(tmp_path, ffcv_dir, dirpath=url, checkpoint_interval=1)
    command = ("fit", "--config", str(config), "--trainer.limit_train_batches", "5", "--trainer.limit_val_batches", "2")
    first = run_cli(*command, "--trainer.max_epochs", "2", env={"RESNET_FFCV_CHECKPOINT_CACHE": str(tmp_path / "a")})
    assert first.returncode == 0, first.stdout + first.stderr
    remote = _remote(url, tmp_path, "inspect")
    assert remote.periodic_names() == ["checkpoint_epoch_2.ckpt", "checkpoint_epoch_1.ckpt"]
    # The latest object is cut short (as a copy tool that died would leave it); its marker still names the size.
    latest = remote.fs.cat_file(remote._remote("checkpoint_latest.ckpt"))
    remote.fs.pipe_file(remote._remote("checkpoint_latest.ckpt"), latest[: len(latest) // 2])
    # And epoch 2's periodic file lost its marker (an upload cut between the two PUTs): also skipped.
    remote.fs.rm_file(remote._remote("checkpoint_epoch_2.ckpt" + MARKER_SUFFIX))

    second = run_cli(*command, "--trainer.max_epochs", "3", env={"RESNET_FFCV_CHECKPOINT_CACHE": str(tmp_path / "b")})
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert "checkpoint_latest.ckpt is " in output and "(truncated or replaced): skipped" in output
    assert "checkpoint_epoch_2.ckpt has no checkpoint_epoch_2.ckpt.sha256" in output
    assert "Resuming from " in output and "checkpoint_epoch_1.ckpt" in output
    assert _load_remote(remote, "checkpoint_latest.ckpt")["global_step"] == 3 * 5  # epochs 1 and 2 trained again


def test_hydrate_replaces_a_stale_mirror_and_retention_keeps_the_newest(tmp_path, s3_env):
    url = f"s3://{BUCKET}/api"
    remote = _remote(url, tmp_path)
    checkpoint = {"state_dict": {}, "loops": {}, "optimizer_states": [], "epoch": 0}
    source = tmp_path / "src" / "checkpoint_latest.ckpt"
    source.parent.mkdir()
    for epoch in (1, 2, 3):
        torch.save({**checkpoint, "epoch": epoch}, source)
        remote.upload(source)
        remote.copy("checkpoint_latest.ckpt", f"checkpoint_epoch_{epoch}.ckpt")
    assert remote.prune_periodic(2) == ["checkpoint_epoch_1.ckpt"]
    assert remote.periodic_names() == ["checkpoint_epoch_3.ckpt", "checkpoint_epoch_2.ckpt"]
    assert json.loads(remote.fs.cat_file(remote._remote("checkpoint_epoch_3.ckpt" + MARKER_SUFFIX)))["bytes"] > 0

    # A mirror left from another run holds a newer-looking file the bucket does not have: it must go.
    (remote.local / "checkpoint_epoch_9.ckpt").parent.mkdir(parents=True, exist_ok=True)
    torch.save({**checkpoint, "epoch": 9}, remote.local / "checkpoint_epoch_9.ckpt")
    remote.hydrate("checkpoint_latest.ckpt")
    path, _ = find_resume_checkpoint(remote.local)
    assert path == remote.local / "checkpoint_latest.ckpt"
    assert torch.load(path, weights_only=False)["epoch"] == 3
    assert not (remote.local / "checkpoint_epoch_9.ckpt").exists()

    # A bucket prefix with nothing in it: an empty mirror, so the run starts from scratch.
    empty = _remote(f"s3://{BUCKET}/nothing", tmp_path, "empty")
    assert empty.hydrate("checkpoint_latest.ckpt") == []
    assert find_resume_checkpoint(empty.local)[0] is None
