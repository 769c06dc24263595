"""A finished run's checkpoint, reused through the real CLI: it needs no init_weights file, validate/predict write
beside the run without touching its records, and the run's own config.yaml (or ``--run RUN_DIR``) gives the rest.

One fine-tuned run (two steps, from an exported 7-class network into the 10-class fixture data) serves every
test; each subprocess runs from a directory of its own, as a user would.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from resnet_ffcv.tools.export import export

from .helpers import CONFIGS, load_checkpoint, run_cli, trained_checkpoint

DEMO = CONFIGS / "demo_cpu.yaml"
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.logger=false",
    "--data.batch_size=8",
    "--data.num_workers=1",
    "--data.train_resolution=32",
    "--resolution.stages=null",
    "--data.val_resolution=32",
]
HEAD_LINE = "new classifier head 'fc'"  # printed when init_weights is loaded into a network of another class count
RECORDS = ("summary.json", "metrics.csv", "config.yaml")  # what only fit writes


@pytest.fixture(scope="module")
def run(ffcv_dir, tmp_path_factory) -> dict[str, Path]:
    """A fit from an init_weights file: ``{"run": run_dir, "init": the file, "folder": where fit ran}``."""
    folder = tmp_path_factory.mktemp("fine_tuned")
    seven = trained_checkpoint(folder / "seven.ckpt", num_classes=7, blurpool=True)
    init = Path(export(str(seven), str(folder / "seven.pt"), blurpool="drop"))
    result = run_cli(
        "fit",
        "--config",
        str(DEMO),
        f"--data.data_dir={ffcv_dir}",
        f"--model.init_weights={init}",
        "--run_dir=run",  # relative, as in the demo config: the saved config.yaml must work from elsewhere
        *TINY,
        cwd=folder,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert HEAD_LINE in result.stderr
    return {"run": folder / "run", "init": init, "folder": folder}


@contextlib.contextmanager
def init_file_gone(run: dict[str, Path]) -> Iterator[None]:
    """The init_weights file moved away (as on a fresh spot instance), back afterwards for the other tests."""
    aside = run["init"].with_suffix(".moved")
    run["init"].rename(aside)
    try:
        yield
    finally:
        aside.rename(run["init"])


def records(run_dir: Path) -> dict[str, bytes]:
    return {name: (run_dir / name).read_bytes() for name in RECORDS}


def output(result) -> str:
    return result.stdout + result.stderr


@pytest.mark.slow
def test_resume_and_evaluate_a_fine_tuned_run_without_its_init_file(run, tmp_path):
    """Item 1: the checkpoint holds the weights; resume and evaluate never open init_weights (nor say its line)."""
    with init_file_gone(run):
        resumed = run_cli("fit", "--config", str(run["run"] / "config.yaml"), "--trainer.max_epochs=2", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "Resuming from" in output(resumed) and HEAD_LINE not in output(resumed)
        latest = load_checkpoint(run["run"] / "checkpoints" / "checkpoint_latest.ckpt")
        assert latest["global_step"] == 4 and latest["hyper_parameters"]["init_weights"] == str(run["init"])
        assert json.loads((run["run"] / "summary.json").read_text())["epochs_completed"] == 2

        # --run: the run's best checkpoint and data_dir from its config.yaml (item 7), nothing retyped.
        evaluated = run_cli("evaluate", "--run", str(run["run"]), "--resolutions", "32", "--tta", "off", cwd=tmp_path)
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        assert f"{run['run'] / 'checkpoints' / 'best_model.ckpt'} on " in evaluated.stdout
        assert "raw top-1" in evaluated.stdout and HEAD_LINE not in output(evaluated)


@pytest.mark.slow
def test_the_runs_saved_config_validates_its_checkpoint_from_another_directory(run, tmp_path):
    """Items 7 and 1: ``<run_dir>/config.yaml`` is a valid --config for validate (no fresh_start refusal, data_dir
    absolute), the init file may be gone, and validate writes into ``<run>/validate/``, not over the run's records."""
    before = records(run["run"])
    with init_file_gone(run):
        result = run_cli(
            "validate",
            "--config",
            str(run["run"] / "config.yaml"),
            f"--ckpt_path={run['run'] / 'checkpoints' / 'best_model.ckpt'}",
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/acc1_best" in result.stdout and HEAD_LINE not in output(result)
    assert records(run["run"]) == before
    assert (run["run"] / "validate" / "config.yaml").is_file()
    assert not any(tmp_path.iterdir())  # nothing in the working directory


@pytest.mark.slow
def test_predictions_go_beside_the_checkpoints_run(run, image_folder, ffcv_dir, tmp_path):
    """Item 3: the README's predict command (training config with its relative run_dir) from another directory
    writes ``<run>/predictions/predictions.csv`` beside the checkpoint (not ``./demo_output/run/``) and says so."""
    images = image_folder / "val" / "blue_triangle"
    result = run_cli(
        "predict",
        *("--config", str(DEMO), "--config", str(CONFIGS / "predict.yaml")),
        f"--data.data_dir={ffcv_dir}",
        f"--ckpt_path={run['run'] / 'checkpoints' / 'best_model.ckpt'}",
        f"--data.predict_path={images}",
        "--data.val_resolution=32",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    csv_path = run["run"] / "predictions" / "predictions.csv"
    assert f"4 predictions (top 5) written to {csv_path}" in result.stdout
    with open(csv_path, newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == sorted(p.name for p in images.iterdir())
    assert not (tmp_path / "demo_output").exists() and HEAD_LINE not in output(result)


@pytest.mark.slow
def test_predict_with_run_reuses_the_runs_config(run, image_folder, tmp_path):
    """Items 7 and 1: ``predict --run RUN_DIR`` takes data_dir, num_classes, arch and the best checkpoint from the
    run, and needs no init_weights file."""
    images = image_folder / "val" / "green_square"
    with init_file_gone(run):
        result = run_cli("predict", "--run", str(run["run"]), f"--data.predict_path={images}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    csv_path = run["run"] / "predictions" / "predictions.csv"
    assert f"written to {csv_path}" in result.stdout and HEAD_LINE not in output(result)
    with open(csv_path, newline="") as f:
        assert [row["path"] for row in csv.DictReader(f)] == sorted(p.name for p in images.iterdir())


def test_run_expands_to_the_runs_config_and_best_checkpoint_and_refuses_a_folder_that_is_no_run(tmp_path):
    """``--run`` in-process (the CLI runs above): what it stands for, and a mistake named in one line."""
    from resnet_ffcv.errors import InputNotFound
    from resnet_ffcv.run_dir import expand_run_option

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("model: {arch: resnet18}\n")
    (tmp_path / "checkpoints" / "best_model.ckpt").write_bytes(b"")
    expanded = expand_run_option(["validate", "--run", str(tmp_path), "--trainer.limit_val_batches=1"])
    assert expanded[:3] == ["validate", "--config", str(tmp_path / "config.yaml")]
    assert f"--run_dir={tmp_path}" in expanded
    assert expanded[-2:] == ["--trainer.limit_val_batches=1", f"--ckpt_path={tmp_path / 'checkpoints/best_model.ckpt'}"]
    assert expand_run_option(["validate", "--run", str(tmp_path), "--ckpt_path=x.ckpt"])[-1] == "--ckpt_path=x.ckpt"
    with pytest.raises(InputNotFound, match=r"--run .*nowhere: no .*nowhere/config\.yaml; expected a run directory"):
        expand_run_option(["predict", "--run", str(tmp_path / "nowhere")])


@pytest.mark.slow
def test_a_failed_predict_leaves_the_runs_records_alone(run, ffcv_dir, image_folder, tmp_path):
    """Item 2: predict on data of another class count, pointed at the run with --run_dir, fails; the run's
    summary.json, metrics.csv and config.yaml stay byte for byte as fit wrote them."""
    three = tmp_path / "three_classes"
    three.mkdir()
    for name in ("train.ffcv", "val.ffcv"):
        (three / name).symlink_to(ffcv_dir / name)
    classes = json.loads((ffcv_dir / "classes.json").read_text())
    (three / "classes.json").write_text(json.dumps(classes[:3]))
    before = records(run["run"])
    result = run_cli(
        "predict",
        *("--config", str(DEMO), "--config", str(CONFIGS / "predict.yaml")),
        f"--data.data_dir={three}",
        f"--run_dir={run['run']}",
        f"--ckpt_path={run['run'] / 'checkpoints' / 'best_model.ckpt'}",
        f"--data.predict_path={image_folder / 'val' / 'blue_triangle'}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert records(run["run"]) == before
    assert json.loads(before["summary.json"])["status"] == "finished"
    shutil.rmtree(three)
