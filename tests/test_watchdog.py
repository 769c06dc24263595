"""A run that cannot make progress ends itself: a hang exits 76 with the stacks on file, a NaN loss exits 1, and no
NaN model is ever saved.

Real processes on the CPU with seconds-scale bounds: the training loader is made to block forever in C code (the
test seam ``RESNET_FFCV_TEST_TRAIN_LOADER_BLOCKS_AFTER``), a DDP rank is frozen with SIGSTOP, the learning rate
is 1e6. Each fit subprocess checks several things, to keep the suite short.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from resnet_ffcv.data.loading import BLOCK_AFTER_ENV
from resnet_ffcv.run.finite import non_finite_tensors
from resnet_ffcv.run.resume import verify_checksum
from resnet_ffcv.run.stall_count import STALL_COUNT_FILE
from resnet_ffcv.run.stop_signals import STALLED_EXIT_CODE

from .helpers import REPO, cli_env, free_port
from .helpers import load_checkpoint as load
from .spot_support import BASE_CONFIG, CLIProcess

STALL_S = 3.0  # the stall bound of these tests: a few steps' time on a loaded 2-core machine


def watchdog_config(
    tmp_path: Path, ffcv_dir: Path, callbacks: list | None = None, stall_s: float = STALL_S, **trainer
) -> Path:
    """The spot tests' tiny run (ResNet-18, 32 px, no logger) with ``run_dir`` and a seconds-scale watchdog."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    config["run_dir"] = str(tmp_path / "run")
    config["checkpoint"] = {"checkpoint_interval": 0}
    config["data"]["data_dir"] = str(ffcv_dir)
    config["trainer"].update(logger=False, limit_val_batches=2, **trainer)
    config["trainer"]["callbacks"] = callbacks or []
    config["watchdog"] = {"stall_minutes": stall_s / 60, "first_step_minutes": 1.0, "max_restarts": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def paced(first: float, then: float) -> dict:
    return {"class_path": "tests.spot_support.PacedSteps", "init_args": {"first": first, "then": then}}


def assert_finite_checkpoint(path: Path) -> dict:
    checkpoint = load(path)
    assert verify_checksum(path) is None, path  # intact: the bytes its sidecar describes
    assert non_finite_tensors(checkpoint["state_dict"]) == [], path  # the weights and the EMA copy
    return checkpoint


def file_state(path: Path) -> tuple[int, bytes]:
    return path.stat().st_mtime_ns, path.read_bytes()


@pytest.mark.slow
def test_a_hung_or_diverged_run_ends_itself_and_keeps_its_checkpoints(tmp_path, ffcv_dir):
    """One run directory, three processes of the same command:

    1. a slow first step and slow steps pass; the loader then blocks in C code after step 3: exit 76 within the
       bound, the stack file names the blocked frame, summary.json says stalled, checkpoint_latest is intact;
    2. the rerun resumes from it and stalls again, the second stall of a run allowed one restart: exit 1;
    3. resumed at LR 1e6 the loss turns NaN: exit 1 after finite_loss.consecutive (2) logging steps, with the
       paragraph, and neither checkpoint_latest nor best_model is written again (both load, finite).
    """
    run_dir = tmp_path / "run"
    latest, best = (run_dir / "checkpoints" / name for name in ("checkpoint_latest.ckpt", "best_model.ckpt"))
    # 2 steps per epoch: epoch 0 is saved (step 2), epoch 1's first batch is step 3, then the loader blocks.
    config = watchdog_config(
        tmp_path, ffcv_dir, [paced(first=1.5 * STALL_S, then=0.5 * STALL_S)], max_epochs=3, limit_train_batches=2
    )
    command = ("fit", "--config", str(config))
    first = CLIProcess(*command, env={BLOCK_AFTER_ENV: "3"})
    first.wait_for_line("step 3 done", timeout=240)
    step_3_done = time.monotonic()
    children = psutil.Process(first.process.pid).children(recursive=True)
    assert first.finish(timeout=60) == STALLED_EXIT_CODE, first.output
    assert [p.pid for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    # Step 3 ends after its paced sleep; then the stall bound, one poll, the stack dump and the exit.
    assert time.monotonic() - step_3_done < 0.5 * STALL_S + STALL_S + 5, first.output
    (stack_file,) = (run_dir / "stalls").glob("rank0-*.txt")
    assert f"the stacks of every thread are in {stack_file}" in first.output
    assert "exiting with code 76" in first.output and "stall 1 of at most 2 in this run" in first.output
    stacks = stack_file.read_text()
    assert "last progress: a training step, step 3, epoch 1" in stacks
    assert "in block_forever_for_tests" in stacks and "loading.py" in stacks  # the blocked frame, by name
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "stalled"
    assert assert_finite_checkpoint(latest)["global_step"] == 2  # the epoch-0 save, untouched by the stall
    stalls = json.loads((run_dir / "checkpoints" / STALL_COUNT_FILE).read_text())["stalls"]
    assert [(s["step"], s["stacks"]) for s in stalls] == [(3, str(stack_file))]
    before = [file_state(path) for path in (latest, best)]

    # 2. The same command (unpaced) resumes from that checkpoint and stalls again: the second stall, exit 1.
    second = CLIProcess(*command, "--trainer.callbacks=[]", env={BLOCK_AFTER_ENV: "1"})
    assert second.finish(timeout=240) == 1, second.output
    assert f"Resuming from {latest}" in second.output
    assert "epoch 2/3 step 3 " in second.output  # the step count went on from the checkpoint's 2
    assert "this run has now stalled 2 times (watchdog.max_restarts 1): it is not retried again" in second.output
    assert len(list((run_dir / "stalls").glob("rank0-*.txt"))) == 2

    # 3. Resumed at LR 1e6 (6 steps per epoch now): NaN, stopped after 2 NaN logging steps in a row.
    diverging = CLIProcess(
        *command,
        *("--trainer.callbacks=[]", "--trainer.limit_train_batches", "6", "--model.lr", "1e6"),
        *("--resume_with", "config", "--finite_loss.consecutive", "2"),
    )
    assert diverging.finish() == 1, diverging.output
    nan_steps = [int(line.split()[3]) for line in diverging.lines if line.startswith("epoch ") and "loss nan" in line]
    assert nan_steps, diverging.output
    stopped = (
        f"the loss is NaN/Inf at 2 checks in a row (step {nan_steps[0]} loss, step {nan_steps[0] + 1} loss): "
        f"the run diverged at step {nan_steps[0] + 1}, epoch 1, LR "
    )
    assert stopped in diverging.output
    assert f"the last good one is {latest}" in diverging.output and "Traceback" not in diverging.output
    assert [file_state(path) for path in (latest, best)] == before  # nothing written after the first NaN
    for path in (latest, best):
        assert_finite_checkpoint(path)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.slow
def test_a_frozen_ddp_rank_ends_the_whole_run_with_76(tmp_path, ffcv_dir):
    """2-rank CPU DDP; rank 1 gets SIGSTOP mid-epoch, so rank 0 waits in the gradient all-reduce. Rank 0's
    watchdog exits 76 within the bound and kills the stopped rank it launched: no process of the run remains."""
    stall_s = 2 * STALL_S  # a DDP step on two loaded cores takes longer
    config = watchdog_config(
        tmp_path,
        ffcv_dir,
        [paced(first=0.0, then=0.2)],
        stall_s=stall_s,
        strategy="ddp",
        devices=2,
        max_epochs=1,
        limit_train_batches=10,
    )
    env = {"MASTER_PORT": str(free_port())}
    run = CLIProcess("fit", "--config", str(config), env=env)
    run.wait_for_line("step 3 done", timeout=240)
    rank0 = psutil.Process(run.process.pid)
    descendants = rank0.children(recursive=True)
    (rank1,) = rank0.children()  # Lightning's launcher started rank 1 as rank 0's child
    rank1.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    assert run.finish(timeout=120) == STALLED_EXIT_CODE, run.output
    assert time.monotonic() - stopped_at < stall_s + 6, run.output
    assert "rank 0 stalled: no training step or validation batch completed" in run.output
    assert [p.pid for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(config) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == [], leftovers


COLLECTIVE_SCRIPT = """
import datetime, sys, time
import torch, torch.distributed as dist
rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if rank == 0:  # imported while rank 1 starts, not after
    import lightning as L
    from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint
    from resnet_ffcv.callbacks.watchdog import Watchdog
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
dist.barrier()
if rank == 1:
    time.sleep(30)  # never joins the all-reduce below
    sys.exit(0)
for group in dist.distributed_c10d._world.pg_map:  # the watchdog section's timeout, as the CLI sets it on DDP
    group._get_backend(torch.device("cpu"))._set_default_timeout(datetime.timedelta(seconds=2))
watchdog = Watchdog(stall_minutes=1, stall_dir=f"{out}/stalls")
trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[SpotCheckpoint(f"{out}/checkpoints"), watchdog])
try:
    dist.all_reduce(torch.ones(4))
except RuntimeError as error:
    watchdog.on_exception(trainer, None, error)  # what Lightning calls when the error leaves a training step
print("not reached")
"""


@pytest.mark.slow  # two interpreters, one importing Lightning: ~15 s on 2 cores
def test_a_collective_timeout_exits_76(tmp_path):
    """gloo raises once a collective outlives the process group's timeout: the watchdog turns that into exit 76
    with a stack file and a counted stall, as for a hang (not a traceback and exit 1)."""
    script, port = tmp_path / "collective.py", str(free_port())
    script.write_text(COLLECTIVE_SCRIPT)
    env = cli_env()
    peer = subprocess.Popen([sys.executable, str(script), "1", port, str(tmp_path)], env=env)
    try:
        result = subprocess.run(
            [sys.executable, str(script), "0", port, str(tmp_path)], env=env, capture_output=True, text=True
        )
    finally:
        peer.kill()
        peer.wait()
    assert result.returncode == STALLED_EXIT_CODE, result.stderr
    assert "a collective waited past the process group's timeout" in result.stderr
    assert "Timed out waiting" in result.stderr and "not reached" not in result.stdout
    assert len(list((tmp_path / "stalls").glob("rank0-*.txt"))) == 1
    assert len(json.loads((tmp_path / "checkpoints" / STALL_COUNT_FILE).read_text())["stalls"]) == 1


def test_a_stop_signal_during_a_nan_run_saves_no_nan_weights(tmp_path):
    """SIGTERM once the loss is NaN: the spot handler's save of checkpoint_latest refuses (the weights hold NaN),
    says so and fails instead of writing them."""
    import lightning as L

    from resnet_ffcv.callbacks import SpotInterruption
    from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint
    from resnet_ffcv.recipe.module import ImageClassifier
    from resnet_ffcv.run.finite import TrainingDiverged
    from resnet_ffcv.run.stop_signals import STOP
    from resnet_ffcv.tools.throughput import RepeatedBatches, synthetic_batch

    from .helpers import quiet_trainer

    class SigtermOnceNaN(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if not torch.isfinite(outputs["loss"]):
                os.kill(os.getpid(), signal.SIGTERM)

    torch.manual_seed(0)
    module = ImageClassifier(arch="resnet18", num_classes=10, lr=1e6, warmup_epochs=0, scheduler="constant")
    spot = SpotInterruption(endpoint="http://127.0.0.1:9")
    trainer = quiet_trainer(
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[SigtermOnceNaN(), spot, SpotCheckpoint(str(tmp_path / "checkpoints"))],
    )
    batches = RepeatedBatches(synthetic_batch(4, 32, 10, torch.device("cpu")), 12)
    try:
        with pytest.raises(TrainingDiverged, match=r"refusing to save .*checkpoint_latest\.ckpt: \d+ tensors"):
            trainer.fit(module, batches)
        assert STOP.reason == "received SIGTERM"  # the stop came from the signal, mid-epoch
    finally:
        STOP.reason = None
    assert trainer.global_step < 12
    assert list((tmp_path / "checkpoints").glob("*.ckpt")) == []


def test_spot_training_script_passes_a_stall_on_as_76(tmp_path):
    """scripts/spot_training.sh reads 76 as "stalled: rerun" (not "training failed", exit 1). Its fit is a stub
    that exits 76 here; the real fit's 76 is the tests above."""
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\ncase "$3" in doctor) echo "[PASS] stub: ok"; exit 0 ;; fit) exit 76 ;; esac\nexit 9\n')
    stub.chmod(0o755)
    config = tmp_path / "config.yaml"
    config.write_text("{}\n")
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "spot_training.sh"), str(config)],
        env={**os.environ, "PYTHON": str(stub)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == STALLED_EXIT_CODE, result.stderr
    assert "spot_training: stalled (stacks in the run directory's stalls/" in result.stderr
    assert "allows watchdog.max_restarts stalls per run, then fails with 1" in result.stderr
