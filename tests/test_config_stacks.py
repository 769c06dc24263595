"""Every config stack the README shows trains and validates: two train and two val batches on the CPU.

Only device, size and path overrides are added (OVERRIDES, tiny resolutions, the checkpoint directory), so a
monitor, schedule or section that a stack gets wrong fails here as it would at the end of a user's epoch 0.
The stacks run in this one process through the project's LightningCLI class (one subprocess run checks the
real ``resnet-ffcv`` entry point over two epochs).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from resnet_ffcv.cli import main
from resnet_ffcv.config_checks import ConfigError, check_fit_config, validation_metrics
from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.resolution import ramp_resolution
from resnet_ffcv.dataset.writer import write_dataset
from resnet_ffcv.lightning_cli import LoggedSaveConfig, ResNetCLI, parse_config_only
from resnet_ffcv.recipe.module import ImageClassifier
from resnet_ffcv.tools.doctor import doctor

from .helpers import COMPILED, CONFIGS, run_cli

P4D, RN50_BASE = CONFIGS / "p4d_78pct.yaml", CONFIGS / "ffcv" / "rn50_base.yaml"

# Each stack as the README (or the file's own header) tells a user to pass it to `resnet-ffcv fit`.
STACKS: dict[str, list[Path]] = {
    "p4d_78pct": [P4D],
    "demo_cpu": [CONFIGS / "demo_cpu.yaml"],
    **{f"ffcv/{path.stem}": [P4D, RN50_BASE, path] for path in sorted((CONFIGS / "ffcv").glob("rn50_*_epochs.yaml"))},
    "ffcv/rn18_16_epochs": [P4D, CONFIGS / "ffcv" / "rn18_16_epochs.yaml"],  # its header: over the p4d config
    **{f"instances/{path.stem}": [P4D, path] for path in sorted((CONFIGS / "instances").glob("*.yaml"))},
}
# Configs of other commands, run by test_write_configs_write below.
WRITE_CONFIGS = [CONFIGS / "write_imagenet.yaml", CONFIGS / "write_imagenet_rn18.yaml"]
EXCLUDED = {
    CONFIGS / "predict.yaml": "a `predict` overlay, not a fit config: tests/test_predict.py predicts with it",
    RN50_BASE: "never used alone: the base of every ffcv/rn50_*_epochs stack above",
}

# Device, size and path overrides only. max_steps=2 ends the run after epoch 0's two batches and its validation
# while trainer.max_epochs (where every LR schedule ends) keeps the config's value: --trainer.max_epochs 1 would
# put the p4d warmup (8 epochs) past the end of the run, which config_checks rightly refuses.
OVERRIDES = [
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.num_nodes=1",  # instances/2x_p4d.yaml asks for 2 machines: one here
    "--trainer.precision=32-true",
    "--trainer.max_steps=2",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.check_val_every_n_epoch=1",  # the p4d config validates every 5th epoch: here epoch 0 must validate
    "--trainer.enable_progress_bar=false",
    "--data.batch_size=4",
    "--data.val_batch_size=4",
    "--data.num_workers=1",
    "--data.train_resolution=32",
    "--data.val_resolution=32",
    "--model.compile=false",
]
LATEST = "checkpoint_latest.ckpt"


@pytest.fixture(autouse=True)
def fresh_process_state():
    """What an in-process DDP run leaves behind, removed: its process group (holding MASTER_PORT) and the
    variables Lightning exports (MASTER_PORT, WORLD_SIZE, ...), which a later subprocess would inherit."""
    environment = dict(os.environ)
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


def config_args(stack: list[Path]) -> list[str]:
    return [arg for config in stack for arg in ("--config", str(config))]


def tiny_resolution_args(stack: list[Path]) -> list[str]:
    """The stack's resolution schedule kept (stage epochs, ramp epochs), its sizes shrunk to 32-64 px."""
    resolution = parse_config_only(config_args(stack)).resolution
    if resolution.stages:
        stages = [{**vars(stage), "resolution": 32} for stage in resolution.stages]
        return [f"--resolution.stages={yaml.safe_dump(stages, default_flow_style=True).strip()}"]
    if resolution.min_res is not None:
        return ["--resolution.min_res=32", "--resolution.max_res=64"]
    return []


def path_overrides(stack: list[Path], tmp_path: Path) -> Path:
    """An extra config moving the checkpoint directory (a single key of the ``checkpoint:`` section) to tmp."""
    path = tmp_path / "paths.yaml"
    settings = {
        "checkpoint": {"dirpath": str(tmp_path / "checkpoints")},
        "trainer": {"default_root_dir": str(tmp_path)},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def fit_in_process(args: list[str]) -> ResNetCLI:
    """``resnet-ffcv fit ARGS`` in this process, built as ``cli.main`` builds it; the CLI object for its trainer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        try:
            return ResNetCLI(
                ImageClassifier,
                FFCVDataModule,
                save_config_callback=LoggedSaveConfig,
                save_config_kwargs={"overwrite": True},
                auto_configure_optimizers=False,
                args=["fit", *args],
            )
        except SystemExit as error:
            pytest.fail(f"resnet-ffcv fit {' '.join(args)} exited with {error.code}")


def stack_args(stack: list[Path], ffcv_dir: Path, tmp_path: Path) -> list[str]:
    return [
        *config_args(stack),
        "--config",
        str(path_overrides(stack, tmp_path)),
        *OVERRIDES,
        *tiny_resolution_args(stack),
        f"--data.data_dir={ffcv_dir}",
        f"--run_dir={tmp_path}",  # config.yaml, metrics.csv, summary.json (and checkpoints/) under tmp
        "--trainer.logger=false",  # W&B in-process would reuse one run across stacks; the subprocess test logs
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STACKS))
def test_stack_trains_validates_and_checkpoints(name, ffcv_dir, tmp_path):
    cli = fit_in_process(stack_args(STACKS[name], ffcv_dir, tmp_path))
    trainer = cli.trainer
    assert trainer.global_step == 2 and trainer.state.finished
    assert (tmp_path / "checkpoints" / LATEST).is_file(), f"{name}: no {LATEST}"
    metrics = trainer.callback_metrics
    # config_checks judges monitors by this set: it must be exactly what the module logs.
    assert {key for key in metrics if key.startswith("val/")} == validation_metrics(
        cli.model.hparams.use_ema, cli.model.hparams.val_weights
    )
    for monitor in {trainer.checkpoint_callback.monitor, cli.config.fit.target.monitor}:
        assert monitor in metrics and torch.isfinite(metrics[monitor]), f"{name}: {monitor} not logged"


@pytest.mark.slow
def test_use_ema_false_keeps_the_default_monitors_working(ffcv_dir, tmp_path):
    """p4d's monitors are val/acc1_best, which exists without EMA: `--model.use_ema false` just works."""
    cli = fit_in_process([*stack_args([P4D], ffcv_dir, tmp_path), "--model.use_ema=false"])
    assert cli.model.ema is None
    assert (tmp_path / "checkpoints" / LATEST).is_file()
    assert "val/acc1_best" in cli.trainer.callback_metrics and "val/acc1_ema" not in cli.trainer.callback_metrics


@pytest.mark.slow
def test_ffcv_rn50_16_epochs_runs_two_epochs_through_the_cli(ffcv_dir, tmp_path):
    """The issue's "done when": the README's FFCV command, CPU overrides, two epochs, checkpoints saved."""
    stack = STACKS["ffcv/rn50_16_epochs"]
    two_epochs = [arg.replace("max_steps=2", "max_steps=4") for arg in OVERRIDES]  # 2 batches per epoch
    result = run_cli(
        "fit",
        *config_args(stack),
        "--config",
        str(path_overrides(stack, tmp_path)),
        *two_epochs,
        *tiny_resolution_args(stack),
        f"--data.data_dir={ffcv_dir}",
        f"--run_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",  # the stack's W&B logger, offline (conftest)
        cwd=tmp_path,
        env=COMPILED,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert f"Saved {tmp_path / 'checkpoints' / LATEST} (epoch 2, step 4)" in output, output[-3000:]
    assert (tmp_path / "checkpoints" / "best_model.ckpt").is_file()
    assert list((tmp_path / "logs" / "wandb").glob("offline-run-*")), "no offline W&B run"


def test_monitor_never_logged_stops_before_training(tmp_path):
    """An EMA monitor with EMA off: one paragraph naming the keys, non-zero exit, before any data is opened."""
    missing_data = tmp_path / "no_data_here"  # reaching the datamodule would raise FileNotFoundError instead
    result = run_cli(
        "fit",
        "--config",
        str(P4D),
        "--model.use_ema=false",
        "--target.monitor=val/acc1_ema",
        "--trainer.accelerator=cpu",
        f"--data.data_dir={missing_data}",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if line.startswith("resnet-ffcv fit: error:")]
    assert "target.monitor='val/acc1_ema'" in line and "model.use_ema=false" in line and "val/acc1_best" in line


def config_of(*args: str):
    return parse_config_only(["--config", str(P4D), *args])


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--model.use_ema=false", "--target.monitor=val/acc5_ema"], "target.monitor='val/acc5_ema'"),
        (
            ["--model.warmup_epochs=8", "--trainer.max_epochs=5"],
            "model.warmup_epochs=8.0 is longer than trainer.max_epochs=5",
        ),
        (
            ["--model.scheduler=triangular", "--model.lr_peak_epoch=20", "--trainer.max_epochs=16"],
            "model.lr_peak_epoch=20",
        ),
        (["--model.lr=0"], "model.lr=0"),
        (["--model.lr=-0.1"], "model.lr=-0.1"),
    ],
)
def test_config_mistakes_are_named(args, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_fit_config(config_of(*args))


def test_checkpoint_monitor_is_named_by_its_key():
    config = parse_config_only(["--config", str(CONFIGS / "demo_cpu.yaml")])
    assert config.checkpoint.monitor == "val/acc1_best"
    config = parse_config_only(
        ["--config", str(CONFIGS / "demo_cpu.yaml"), "--checkpoint.monitor=val/acc1_ema", "--model.use_ema=false"]
    )
    with pytest.raises(ConfigError, match=re.escape("checkpoint.monitor='val/acc1_ema'")):
        check_fit_config(config)


def test_num_classes_above_classes_json_is_named(ffcv_dir):
    config = config_of(f"--data.data_dir={ffcv_dir}", "--data.num_classes=1000")
    with pytest.raises(ConfigError, match=re.escape(f"data.num_classes=1000 but {ffcv_dir / 'classes.json'} lists 10")):
        check_fit_config(config)
    check_fit_config(config_of(f"--data.data_dir={ffcv_dir}", "--data.num_classes=10"))  # the same count: fine


def test_doctor_reports_a_monitor_never_logged(capsys):
    doctor(["--config", str(P4D), "--model.use_ema=false", "--target.monitor=val/acc1_ema"])
    out = capsys.readouterr().out
    assert "[FAIL] config values: target.monitor='val/acc1_ema' names a metric this config never logs" in out
    doctor(["--config", str(P4D)])
    assert "[PASS] config values" in capsys.readouterr().out


@pytest.mark.parametrize("config", [P4D, *(CONFIGS / "ffcv").glob("*_epochs.yaml")], ids=lambda path: path.stem)
def test_resolution_comments_tell_the_real_schedule(config):
    """The ramp rounds to 32 px, so 160 -> 192 is one jump mid-ramp: the comments name the real epochs."""
    resolution = parse_config_only(config_args([P4D, RN50_BASE, config] if "rn50_" in config.name else [P4D, config]))
    resolution, text = resolution.resolution, config.read_text()
    if resolution.stages:  # p4d: each stage's comment names its epochs
        ends = [stage.start_epoch - 1 for stage in resolution.stages[1:]] + [config_of().trainer.max_epochs - 1]
        for stage, end in zip(resolution.stages, ends, strict=True):
            start, side = stage.start_epoch, stage.resolution
            line = rf"start_epoch: {start}, resolution: {side}}}\s+# epochs {start}-{end}\b"
            assert re.search(line, text), line
        return
    sides = [
        ramp_resolution(epoch, resolution.min_res, resolution.max_res, resolution.start_ramp, resolution.end_ramp)
        for epoch in range(resolution.end_ramp + 1)
    ]
    last_min = max(epoch for epoch, side in enumerate(sides) if side == resolution.min_res)
    assert f"{resolution.min_res} px through epoch {last_min} " in text
    assert f"{resolution.max_res} px from epoch {last_min + 1} " in text


@pytest.mark.parametrize("config", WRITE_CONFIGS, ids=lambda path: path.stem)
def test_write_configs_write(config, image_folder, tmp_path):
    """The write-dataset configs with only their paths and worker count changed."""
    settings = yaml.safe_load(config.read_text())
    settings.update(source_dir=image_folder, output_dir=tmp_path, num_workers=1, check_space=False)
    written = write_dataset(**settings)
    assert set(written) == {"train", "val"} and all(path.stat().st_size > 0 for path in written.values())


def test_every_config_is_covered():
    configs = set(CONFIGS.glob("**/*.yaml"))
    covered = {path for stack in STACKS.values() for path in stack} | set(WRITE_CONFIGS) | set(EXCLUDED)
    assert configs - covered == set(), "configs in no stack: add them to STACKS or EXCLUDED (with a reason)"
    assert covered - configs == set(), "STACKS or EXCLUDED name configs that do not exist"
    assert set(EXCLUDED).isdisjoint(path for stack in STACKS.values() for path in stack[-1:])


def test_main_exit_code_for_config_errors(tmp_path, capsys):
    """In-process: main() turns the ConfigError into SystemExit 2 (a check before training refused) with the
    paragraph on stderr and as the exception's text."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(P4D), "--model.lr=-1", f"--data.data_dir={tmp_path}"])
    assert exit_info.value.code == 2 and "model.lr=-1" in str(exit_info.value)
    assert "model.lr=-1" in capsys.readouterr().err
