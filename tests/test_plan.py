"""``resnet-ffcv plan``: the projection arithmetic, and real measured runs on this machine's CPU."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
import torch

from resnet_ffcv.cli import main
from resnet_ffcv.data.resolution import ResolutionSchedule
from resnet_ffcv.data.resolution import Stage as ScheduleStage
from resnet_ffcv.tools.plan import Plan, Stage, format_plan, group_stages, project_stage

from .helpers import CONFIGS, cli_command, cli_env


def test_group_stages_follows_the_schedule():
    schedule = ResolutionSchedule(
        stages=[ScheduleStage(0, 160), ScheduleStage(3, 192, 128), ScheduleStage(5, 224, 128)]
    )

    assert group_stages(6, lambda epoch: schedule.train_shape(epoch, 64, batch_size=256)) == [
        Stage(0, 3, 160, 256),
        Stage(3, 2, 192, 128),
        Stage(5, 1, 224, 128),
    ]


def test_projection_arithmetic():
    stage = Stage(first_epoch=0, epochs=20, resolution=160, batch_size=256)
    # 2,500 img/s per GPU x 8 GPUs = 20,000 img/s; 1,200,000 images -> 60 s per epoch; 20 epochs -> 1,200 s.
    row = project_stage(stage, 2500.0, None, devices=8, train_images=1_200_000)
    assert row.cluster_images_per_s == 20_000
    assert row.epoch_seconds == 60.0 and row.stage_seconds == 1200.0
    assert not row.loader_bound
    # A loader that serves 2,000 img/s per rank caps the cluster at 16,000 img/s: loader-bound.
    slow = project_stage(stage, 2500.0, 2000.0, devices=8, train_images=1_200_000)
    assert slow.loader_bound and slow.cluster_images_per_s == 16_000 and slow.epoch_seconds == 75.0
    # 90% scaling efficiency.
    assert project_stage(stage, 2500.0, None, 8, 1_200_000, scaling_efficiency=0.9).cluster_images_per_s == 18_000

    plan = Plan([row, slow], devices=8, train_images=1_200_000, price_per_hour=11.0, scaling_efficiency=1.0)
    assert plan.total_seconds == 1200.0 + 1500.0
    assert plan.total_cost == pytest.approx(2700 / 3600 * 11.0)
    table = format_plan(plan, "test GPU", ["a note"])
    assert "LOADER" in table and "$8.25 at $11.00/h" in table and "note: a note" in table


def run_plan(capsys, *args: str) -> str:
    main(["plan", *args])
    return capsys.readouterr().out


def test_plan_demo_config_with_its_data(capsys, ffcv_dir, tmp_path):
    out = run_plan(
        capsys,
        "--steps=3",
        "--warmup=1",
        "--loader_batches=3",
        f"--json={tmp_path / 'plan.json'}",
        "--config",
        str(CONFIGS / "demo_cpu.yaml"),
        f"--data.data_dir={ffcv_dir}",
        "--data.batch_size=8",
        "--trainer.max_epochs=3",
    )
    assert "measured on CPU" in out and "total:" in out
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["train_images"] == 80  # counted in train.ffcv
    [stage] = saved["stages"]
    assert stage["stage"]["epochs"] == 3 and stage["loader_images_per_s"] > 0 and stage["step_images_per_s"] > 0
    assert saved["validation_seconds"] > 0  # the demo validates every epoch: plan counts those passes too
    expected = 3 * stage["epoch_seconds"] + saved["validation_seconds"] + saved["disk_extra_seconds"]
    assert saved["total_seconds"] == pytest.approx(expected)


def test_plan_p4d_config_on_this_cpu(capsys, tmp_path):
    """The production config (ResNet-50, 3 resolution stages, 8 GPUs) measured here with synthetic batches."""
    out = run_plan(
        capsys,
        "--steps=2",
        "--warmup=1",
        "--batch=2",
        f"--json={tmp_path / 'plan.json'}",
        "--config",
        str(CONFIGS / "p4d_78pct.yaml"),
        f"--data.data_dir={tmp_path / 'no-data-here'}",
    )
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert [row["stage"]["resolution"] for row in saved["stages"]] == [160, 192, 224]
    assert [row["stage"]["epochs"] for row in saved["stages"]] == [20, 20, 20]
    assert saved["devices"] == 8 and saved["train_images"] == 1_281_167 and saved["price_per_hour"] == 11.0
    assert all(row["loader_images_per_s"] is None for row in saved["stages"])  # no data: synthetic only
    # A CPU's speed times 8 "GPUs" is no price: said up front, hours at CPU speed, no dollar total.
    assert saved["on_cpu"] and saved["total_cost_usd"] is None
    assert out.startswith("CPU FIGURES: no GPU here")
    assert re.search(r"total: [\d.]+ (h|min) to epoch 60 at CPU speed; no cost", out), out
    assert not re.search(r"\$[\d,]+\.\d\d at \$11", out)
    assert "synthetic batches only" in out and "measured eagerly" in out and "$11.00/h" in out
    assert "5 graphs" in out and "compile time per graph not measured" in out  # the count, and why no time
    # p4d validates every 5th epoch and the last 10 (20 of 60), raw + EMA with flip TTA: 4 passes of 50,000 images.
    assert "validation: 20 of 60 epochs" in out and "4 passes of 50,000 images at 256 px" in out
    assert saved["validation_seconds"] > 0
    # Beside the checkpoint cadence, what a hang costs on these 8 GPUs at $11/h: 10 min = $1.83.
    assert (
        "note: checkpoint_latest every epoch, a periodic one every 5; a hang costs at most 10 min of 8 GPU(s) = "
        "$1.83 (30 min = $5.50 at a first step), then exit 76, relaunched at most 3 times per run; collective "
        "timeout 15 min; a NaN/Inf loss at 3 checks in a row exits 1, never saved"
    ) in out


def test_plan_compiles_on_the_cpu_when_asked(capsys, ffcv_dir, tmp_path):
    """--compile_on_cpu with a fast backend: the compile time per training graph is measured and printed."""
    out = run_plan(
        capsys,
        "--steps=3",
        "--warmup=1",
        "--batch=2",
        "--loader_batches=2",
        "--compile_on_cpu",
        "--config",
        str(CONFIGS / "demo_cpu.yaml"),
        f"--data.data_dir={ffcv_dir}",
        "--model.compile=true",
        "--model.compile_backend=aot_eager",
        "--resolution.stages=[{start_epoch: 0, resolution: 32}]",
        "--data.val_resolution=32",
    )
    assert "torch.compile measured here:" in out and "s per training graph" in out


def test_step_clock_times_the_first_step_apart(monkeypatch):
    """Where plan reads a compile's cost: the first step alone, against the steady ones. The clock the StepClock
    reads is one the steps themselves advance (10 s in the first, 1 s in each other), so the split is exact."""
    from types import SimpleNamespace

    import lightning as L

    from resnet_ffcv.recipe.module import ImageClassifier
    from resnet_ffcv.tools import throughput

    now = [0.0]
    monkeypatch.setattr(throughput, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    class StepTime(L.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:  # inside the step, whatever the hook order
            now[0] += 10.0 if trainer.global_step == 0 else 1.0  # the first stands in for a compile

    module = ImageClassifier(arch="resnet18", num_classes=10, warmup_epochs=0, use_ema=False)
    batch = throughput.synthetic_batch(2, 32, 10, torch.device("cpu"))
    clock = throughput.run_lightning_steps(module, batch, 4, 1, "32-true", torch.device("cpu"), callbacks=[StepTime()])
    assert clock.first_step_seconds == 10.0
    assert clock.seconds == 3.0  # the three steady steps, the first one not among them
    assert clock.step_seconds == [1.0, 1.0, 1.0]


def test_plan_on_a_cpu_says_what_it_measures_and_stops_promptly_on_sigterm(tmp_path):
    """The p4d config (batch 256) measured at the CPU batch, with progress on stderr; SIGTERM ends it at once."""
    command = cli_command(
        "plan",
        "--steps=400",  # far longer than the test waits: only SIGTERM can end it in time
        "--warmup=1",
        "--config",
        str(CONFIGS / "p4d_78pct.yaml"),
        "--model.arch=resnet18",
        f"--data.data_dir={tmp_path / 'no-data-here'}",
    )
    process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        before, first = [], process.stderr.readline()
        while first and "timing" not in first:
            before.append(first)
            first = process.stderr.readline()
        assert "stage 1/3" in first and "at batch 4 on cpu" in first, first
        # Up front, before any figure: these are CPU figures, and no cost comes from them.
        assert any("plan: no GPU on this machine: measuring on the CPU. The figures are CPU figures" in line
                   for line in before), before  # fmt: skip
        time.sleep(3)  # inside the Trainer's steps now
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        waited = time.monotonic() - sent
    finally:
        process.kill()
    assert waited < 10, f"plan took {waited:.1f} s to stop after SIGTERM"
    rest = process.stderr.read()
    assert process.returncode != 0 and "stopped by signal SIGTERM" in rest
    assert "EMA: half-life 2 epochs x 400 optimizer steps per epoch (global batch 4)" in rest, rest[-2000:]
