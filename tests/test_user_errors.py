"""A user's mistake through the real CLI: one `resnet-ffcv SUBCOMMAND: error:` paragraph, no traceback, exit != 0.

``RESNET_FFCV_DEBUG=1`` brings the traceback back (for reporting a bug in a check).
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from .helpers import run_cli, trained_checkpoint
from .spot_support import write_config


def assert_one_paragraph(result, prefix: str, *named: str) -> str:
    assert result.returncode not in (0, None), result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith(f"resnet-ffcv {prefix}: error:")]
    for name in named:
        assert name in line, line
    return line


def test_fit_with_a_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    config = write_config(tmp_path, missing)
    result = run_cli("fit", "--config", str(config), cwd=tmp_path)
    assert_one_paragraph(result, "fit", str(missing / "classes.json"), "data.data_dir")
    assert result.returncode == 2  # a check before training refused (README, docs/spot-safety.md)


def test_fit_config_listing_spot_callbacks_names_the_new_sections(tmp_path, ffcv_dir):
    """A config written before `checkpoint:` / `spot:` were sections: refused, not two checkpoint callbacks."""
    config = yaml.safe_load(write_config(tmp_path, ffcv_dir).read_text())
    config["trainer"]["callbacks"] = [
        {"class_path": "resnet_ffcv.callbacks.SpotCheckpoint", "init_args": {"dirpath": str(tmp_path / "old")}},
        {"class_path": "resnet_ffcv.callbacks.SpotInterruption"},
    ]
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(config))
    result = run_cli("fit", "--config", str(tmp_path / "old.yaml"), cwd=tmp_path)
    line = assert_one_paragraph(result, "fit", "trainer.callbacks[0] is resnet_ffcv.callbacks.SpotCheckpoint")
    assert "`checkpoint:` section" in line and "trainer.callbacks[1]" in line and "`spot:` section" in line
    assert not (tmp_path / "old").exists()


def test_export_refusal_is_one_paragraph_and_debug_shows_the_traceback(tmp_path):
    checkpoint = trained_checkpoint(tmp_path / "blur.ckpt", blurpool=True)
    args = ("export", f"--ckpt_path={checkpoint}", f"--output={tmp_path / 'refused.pt'}")
    assert_one_paragraph(run_cli(*args), "export", str(checkpoint), "--format torchscript")
    debug = run_cli(*args, env={"RESNET_FFCV_DEBUG": "1"})
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "InvalidValue" in debug.stderr


def test_write_dataset_policy_refusal_is_one_paragraph(tmp_path, image_folder):
    source = shutil.copytree(image_folder, tmp_path / "source")
    garbage = next((source / "train").iterdir()) / "garbage.JPEG"
    garbage.write_bytes(b"not an image")
    result = run_cli(
        "write-dataset", f"--source_dir={source}", f"--output_dir={tmp_path / 'out'}", "--on_unreadable=fail"
    )
    assert_one_paragraph(result, "write-dataset", str(garbage), "cannot decode image")


@pytest.mark.slow
def test_bad_model_and_resolution_values_are_one_line_naming_the_key(tmp_path, ffcv_dir):
    """Values the classes themselves refuse (model, resolution schedule): the key and the expected range."""
    config = write_config(tmp_path, ffcv_dir)
    smoothing = run_cli("fit", "--config", str(config), "--model.label_smoothing", "1.5", cwd=tmp_path)
    assert_one_paragraph(smoothing, "fit", "model.label_smoothing=1.5", "[0, 1)")
    stages = run_cli("fit", "--config", str(config), "--resolution.stages", "[{start_epoch: 1, resolution: 64}]")
    assert_one_paragraph(stages, "fit", "resolution.stages[0].start_epoch=1", "expected 0")


def test_config_key_typo_and_wrong_type_are_one_paragraph_not_the_usage(tmp_path):
    """A mistyped key in a YAML and a value of the wrong type: key, source, expectation, a guess; no usage dump."""
    config = write_config(tmp_path, tmp_path / "data")
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_epoch: 3\n")
    typo = run_cli("fit", "--config", str(config), "--config", "typo.yaml", cwd=tmp_path)
    line = assert_one_paragraph(typo, "fit", "trainer.max_epoch (in typo.yaml)", "Did you mean `trainer.max_epochs`?")
    assert "`resnet-ffcv fit --help` lists every key" in line
    assert typo.returncode == 2 and len(typo.stderr.splitlines()) <= 3, typo.stderr
    wrong = run_cli("fit", "--config", str(config), "--model.lr", "abc", cwd=tmp_path)
    assert_one_paragraph(wrong, "fit", "model.lr=abc (command line)", "expected a number")
    assert wrong.returncode == 2 and "usage:" not in wrong.stderr, wrong.stderr


def test_num_classes_below_two_is_one_paragraph_naming_both_counts(tmp_path, ffcv_dir):
    result = run_cli("fit", "--config", str(write_config(tmp_path, ffcv_dir)), "--data.num_classes", "1")
    assert_one_paragraph(result, "fit", "data.num_classes=1", "at least 2 classes", "lists 10 classes")
    assert result.returncode == 2


def test_predict_with_a_checkpoint_of_another_class_count_is_refused_before_anything_runs(tmp_path, ffcv_dir):
    """A 5-class checkpoint against a 10-class data_dir: both counts and the fix, not a state_dict traceback."""
    checkpoint = trained_checkpoint(tmp_path / "five.ckpt", num_classes=5)
    config = write_config(tmp_path, ffcv_dir)
    run_dir = tmp_path / "run"
    result = run_cli(
        "predict", "--config", str(config), f"--ckpt_path={checkpoint}", f"--data.predict_path={ffcv_dir / 'val.ffcv'}",
        f"--run_dir={run_dir}",
    )  # fmt: skip
    line = assert_one_paragraph(result, "predict", f"{checkpoint} was trained for 5 classes", "lists 10")
    assert "--data.num_classes 5" in line and result.returncode == 2
    assert not run_dir.exists() and not (tmp_path / "logs").exists()


def test_missing_train_ffcv_exits_2_before_the_run_directory_and_wandb_run_exist(tmp_path, ffcv_dir):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("classes.json", "val.ffcv"):
        shutil.copy(ffcv_dir / name, data / name)
    run_dir = tmp_path / "run"
    result = run_cli("fit", "--config", str(write_config(tmp_path, data)), f"--run_dir={run_dir}")
    assert_one_paragraph(result, "fit", f"data.data_dir={data} is incomplete", str(data / "train.ffcv"))
    assert result.returncode == 2
    assert not run_dir.exists() and not (tmp_path / "logs").exists() and not (tmp_path / "checkpoints").exists()
