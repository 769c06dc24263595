"""One run directory a person can follow: paths default from ``run_dir``, ``summary.json`` at the end (finished or
interrupted), ``metrics.csv`` kept across a resume, and ``resnet-ffcv curves`` drawing it.

The run tests use the real CLI in subprocesses (as a user runs it) on the 80-image fixture set.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from resnet_ffcv.callbacks.metrics_csv import AppendingCSVLogger, read_metrics
from resnet_ffcv.callbacks.spot import INTERRUPTED_EXIT_CODE
from resnet_ffcv.lightning_cli import parse_config_only
from resnet_ffcv.run_dir import apply_run_dir

from .helpers import CONFIGS, run_cli
from .spot_support import BASE_CONFIG, CLIProcess
from .wandb_log import records

DEMO = CONFIGS / "demo_cpu.yaml"
TWO_EPOCHS = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--cost.log_every_n_steps=2",
]


def run_config(tmp_path: Path, ffcv_dir: Path, run_dir: Path, extra_callbacks: list[dict] | None = None) -> Path:
    """tests/spot_config.yaml with no path of its own: everything defaults from ``run_dir``."""
    config = yaml.safe_load(BASE_CONFIG.read_text())
    del config["trainer"]["logger"]["init_args"]["save_dir"]
    del config["checkpoint"]["dirpath"]
    config["trainer"]["callbacks"] = extra_callbacks or []
    config["data"]["data_dir"] = str(ffcv_dir)
    config["run_dir"] = str(run_dir)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metric_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wandb_summary_keys(logs: Path) -> set[str]:
    [log] = logs.glob("wandb/offline-run-*/run-*.wandb")
    return {
        item.key or ".".join(item.nested_key)
        for record in records(log)
        if record.WhichOneof("record_type") == "summary"
        for item in record.summary.update
    }


def test_paths_default_from_run_dir_and_an_explicit_path_wins(tmp_path):
    config = parse_config_only(["--config", str(DEMO), f"--run_dir={tmp_path / 'run'}"])
    run = tmp_path / "run"
    assert config.checkpoint.dirpath == str(run / "checkpoints")
    assert config.trainer.logger.init_args.save_dir == str(run / "logs")
    assert config.trainer.default_root_dir == str(run)
    assert (config.summary.path, config.metrics_csv.path) == (str(run / "summary.json"), str(run / "metrics.csv"))
    assert config.watchdog.stall_dir == str(run / "stalls")  # the stall watchdog's stack files

    # One path set on its own (a later config, as a user layers them): it wins, the others still follow run_dir.
    (tmp_path / "paths.yaml").write_text(yaml.safe_dump({"checkpoint": {"dirpath": str(tmp_path / "elsewhere")}}))
    config = parse_config_only(["--config", str(DEMO), "--config", str(tmp_path / "paths.yaml"), f"--run_dir={run}"])
    assert config.checkpoint.dirpath == str(tmp_path / "elsewhere")
    assert config.trainer.logger.init_args.save_dir == str(run / "logs")
    config = parse_config_only(["--config", str(DEMO), f"--run_dir={run}", "--summary.path=report.json"])
    assert config.summary.path == "report.json"

    # predict: the writer's default output moves into the run directory.
    config = parse_config_only(["--config", str(DEMO), "--config", str(CONFIGS / "predict.yaml"), f"--run_dir={run}"])
    assert config.trainer.callbacks[0].init_args.output == str(run / "predictions" / "predictions.csv")


def test_a_checkpoint_section_gets_the_run_dir_too():
    """The layout where SpotCheckpoint has its own ``checkpoint:`` section (dirpath unset, or set and kept)."""
    for dirpath, expected in ((None, "/runs/a/checkpoints"), ("/ckpt", "/ckpt")):
        config = Namespace(
            run_dir="/runs/a",
            checkpoint=Namespace(dirpath=dirpath, monitor="val/acc1_best"),
            trainer=Namespace(logger=False, callbacks=None, default_root_dir=None),
        )
        apply_run_dir(config)
        assert config.checkpoint.dirpath == expected


@pytest.mark.slow
def test_fit_and_resume_fill_the_run_dir(ffcv_dir, tmp_path):
    """Two epochs, then the same command with a larger budget resumes: one metrics.csv, one summary."""
    run = tmp_path / "run"
    config = run_config(tmp_path, ffcv_dir, run)
    first = run_cli("fit", "--config", str(config), *TWO_EPOCHS, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (run / "config.yaml").is_file() and yaml.safe_load((run / "config.yaml").read_text())["run_dir"] == str(run)
    assert (run / "checkpoints" / "checkpoint_latest.ckpt").is_file()
    assert list((run / "logs" / "wandb").glob("offline-run-*")), "W&B's save_dir is not <run_dir>/logs"
    assert not (run / "logs" / "config.yaml").exists() and not (tmp_path / "lightning_logs").exists()

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2 and summary["global_step"] == 8
    assert summary["best_epoch"] in (1, 2)  # counted from 1, like checkpoint_epoch_N and the progress lines
    assert set(summary["best"]) == {f"val/acc{k}{s}" for k in (1, 5) for s in ("", "_ema", "_best")}
    assert summary["final"]["epoch"] == 2 and 0 <= summary["final"]["val/acc1"] <= 1
    assert summary["checkpoints"]["latest"] == str(run / "checkpoints" / "checkpoint_latest.ckpt")
    assert summary["checkpoints"]["best"] == str(run / "checkpoints" / "best_model.ckpt")
    assert summary["images_seen"] == 2 * 4 * 4 and summary["images_per_sec"] > 0
    assert summary["cost_usd"] == 0.0 and summary["wall_hours"] > 0
    assert "Run summary (finished): 2 epochs, step 8" in first.stdout + first.stderr
    # One epoch count for all a user reads, from 1: each best figure printed at its own epoch, the log's "Epoch N:".
    raw1, raw5 = (summary["best"][f"val/acc{k}"] for k in (1, 5))
    best_line = f"raw {raw1['value']:.2%} (epoch {raw1['epoch']}) / {raw5['value']:.2%} (epoch {raw5['epoch']})"
    assert best_line in first.stdout + first.stderr
    assert "Epoch 0:" not in first.stdout + first.stderr and "(epoch 0," not in first.stdout + first.stderr
    assert {"val/acc1_best_max", "val/acc1_ema_max", "run/best_epoch"} <= wandb_summary_keys(run / "logs")

    first_rows = metric_rows(run / "metrics.csv")
    first_steps = {int(row["step"]) for row in first_rows}
    assert max(first_steps) == 7  # Lightning's step of a row: batches stepped before it (0-based)
    assert {"train/loss_step", "train/lr", "val/acc1", "images_per_sec"} <= {row["metric"] for row in first_rows}

    second = run_cli("fit", "--config", str(config), *TWO_EPOCHS, "--trainer.max_epochs=3", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stdout + second.stderr
    rows = metric_rows(run / "metrics.csv")
    assert len(rows) > len(first_rows) and rows[: len(first_rows)] == first_rows  # appended, never truncated
    later_steps = [int(row["step"]) for row in rows[len(first_rows) :]]
    assert min(later_steps) > max(first_steps) and max(later_steps) == 11  # the resumed process continued the steps
    validated = sorted(read_metrics(run / "metrics.csv")["val/acc1"])  # one value per validated epoch
    assert len(validated) == 3 and validated[-1] > max(first_steps)

    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["epochs_completed"] == 3 and resumed["images_seen"] == 3 * 4 * 4
    assert resumed["started"] == summary["started"] and resumed["wall_hours"] > summary["wall_hours"]
    for key, best in resumed["best"].items():  # the best of all three epochs, the first two from the checkpoint
        assert best["value"] >= summary["best"][key]["value"]


@pytest.mark.slow
def test_sigterm_writes_an_interrupted_summary(ffcv_dir, tmp_path, imds):
    """A spot stop (SIGTERM -> exit 75) still leaves summary.json, and a checkpoint dirpath set on its own wins."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    config = run_config(tmp_path, ffcv_dir, run)
    settings = yaml.safe_load(config.read_text())
    settings["spot"]["endpoint"] = imds.endpoint
    settings["checkpoint"]["dirpath"] = str(elsewhere)
    config.write_text(yaml.safe_dump(settings))
    process = CLIProcess("fit", "--config", str(config), "--trainer.max_epochs=50", "--data.batch_size=2")
    # After a batch has trained (the progress line of step 1): the stop is mid-epoch, with a checkpoint to save. A
    # signal right after "Armed" can land while the first batch is still being fetched, before epoch 0 starts,
    # and then there is nothing to save (that path: test_spot.py's start-up test).
    process.wait_for_line(" step 1 (batch 1/")
    process.process.send_signal(signal.SIGTERM)
    assert process.finish() == INTERRUPTED_EXIT_CODE, process.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 0
    assert summary["checkpoints"]["latest"] == str(elsewhere / "checkpoint_latest.ckpt")
    assert not (run / "checkpoints").exists() and (run / "metrics.csv").is_file()
    assert summary["best"] == {} and summary["best_epoch"] is None  # stopped before the first validation
    assert "Run summary (interrupted)" in process.output


def test_curves_of_two_runs(tmp_path):
    """Two run directories on the same axes -> a readable PNG (real MetricsCSV files, two processes' worth)."""
    from resnet_ffcv.cli import main

    for name, scale in (("run_a", 1.0), ("run_b", 0.8)):
        for restart in range(2):  # a resumed process appends to the same file, repeating step 40
            logger = AppendingCSVLogger(tmp_path / name / "metrics.csv")
            logger.start()
            for step in range(restart * 40, restart * 40 + 50, 10):
                epoch = step // 20
                loss = 2.3 / (1 + scale * step / 20) + restart / 100  # the restart's step 40 differs a little
                logger.log_metrics({"train/loss_step": loss, "epoch": epoch}, step)
                logger.log_metrics({"train/lr": 0.1 * scale, "images_per_sec": 300.0 * scale}, step)
                logger.log_metrics({"train/resolution": 32.0 + 16 * (epoch >= 2)}, step)
                if step % 20 == 0:
                    logger.log_metrics({"val/acc1": scale * step / 100, "val/acc1_ema": scale * step / 90}, step)
    assert sum(1 for row in metric_rows(tmp_path / "run_a" / "metrics.csv") if row["step"] == "40") == 12
    assert read_metrics(tmp_path / "run_a" / "metrics.csv")["train/loss_step"][40] == pytest.approx(2.3 / 3 + 0.01)

    output = tmp_path / "out" / "curves.png"
    main(["curves", str(tmp_path / "run_a"), str(tmp_path / "run_b"), "--output", str(output)])
    data = output.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 400_000

    with pytest.raises(SystemExit) as exit_info:
        main(["curves", str(tmp_path / "no_such_run"), "--output", str(output)])
    assert exit_info.value.code == 2
