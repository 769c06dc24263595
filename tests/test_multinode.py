"""Multi-node through Lightning's own machinery: two one-process "nodes" started by torchrun on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import CONFIGS, cli_env, free_port


@pytest.mark.slow
def test_two_nodes_by_torchrun_train_to_the_same_weights(ffcv_dir, tmp_path):
    port = free_port()
    fit = [
        "-m",
        "resnet_ffcv.cli",
        "fit",
        "--config",
        str(CONFIGS / "demo_cpu.yaml"),
        f"--data.data_dir={ffcv_dir}",
        "--trainer.num_nodes=2",
        "--trainer.devices=1",
        "--trainer.strategy=ddp",  # gloo on CPU
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--data.batch_size=8",
        "--data.num_workers=1",
        "--data.train_resolution=32",
        "--resolution.stages=null",
        "--data.val_resolution=32",
        "--trainer.callbacks+=tests.probes.ParameterDigest",
        f"--trainer.callbacks.out_dir={tmp_path / 'ranks'}",
    ]
    nodes = []
    for node_rank in (0, 1):
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node_rank}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
        ]
        nodes.append(
            subprocess.Popen(
                [*torchrun, *fit],
                cwd=tmp_path,
                env=cli_env(),  # the checkout on PYTHONPATH, FFCV's pipelines interpreted (helpers.py)
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]

    reports = [json.loads((tmp_path / "ranks" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["node_rank"] for r in reports] == [0, 1]
    for report in reports:
        assert report["world_size"] == 2 and report["num_nodes"] == 2
        assert report["cluster"] == "TorchElasticEnvironment"  # Lightning's own, from torchrun's variables
        assert report["global_step"] == 3
        assert report["ffcv_distributed"] is True
    assert reports[0]["digest"] == reports[1]["digest"]
