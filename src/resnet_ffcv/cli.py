"""``resnet-ffcv``: LightningCLI's fit / validate / test / predict, plus the steps around training.

    resnet-ffcv fit --config configs/p4d_78pct.yaml [--model.lr 0.6 --trainer.max_epochs 90 ...]
    resnet-ffcv write-dataset --config configs/write_imagenet.yaml [--source_dir ... --output_dir ...]

Every argument is settable in YAML and overridable on the command line; ``--print_config`` shows the result.

``fit`` resumes by itself: with no ``--ckpt_path`` it continues from ``checkpoint_latest.ckpt`` in the
checkpoint callback's ``dirpath`` (or the newest loadable ``checkpoint_epoch_N.ckpt``), and a W&B logger
continues the same run. Exit codes: 0 finished, 75 interrupted with a checkpoint saved (rerun the same
command), anything else failed.
"""

from __future__ import annotations

import os
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import yaml
from jsonargparse import auto_cli
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from resnet_ffcv import atomic
from resnet_ffcv.callbacks.checkpointing import (
    WANDB_ID_FILE,
    find_resume_checkpoint,
    load_checkpoint_header,
)
from resnet_ffcv.callbacks.cost import CostMonitor
from resnet_ffcv.callbacks.resolution import ResolutionMonitor
from resnet_ffcv.callbacks.spot import TrainingInterrupted
from resnet_ffcv.callbacks.target_accuracy import TargetAccuracyStop
from resnet_ffcv.data import FFCVDataModule
from resnet_ffcv.model import ImageClassifier
from resnet_ffcv.resolution import ResolutionSchedule
from resnet_ffcv.wandb_setup import fall_back_to_offline_without_credentials

# Hyperparameters that change the network's shape: a checkpoint written with other values cannot be continued.
SHAPE_HPARAMS = ("arch", "num_classes")


class IncompatibleCheckpointError(ValueError):
    """The checkpoint to resume from was written by a different model configuration."""


class LoggedSaveConfig(SaveConfigCallback):
    """Saves the resolved config beside the logs (Lightning's behaviour) and logs it to the logger (W&B)."""

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is not None:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            trainer.logger.log_hyperparams({"config": config})


class ResNetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The class count comes from the data (classes.json), never typed twice.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        # Callbacks that recipes and machines configure differently get sections of their own, always present
        # and off (or zero) unless set: a later config sets single keys (resolution.start_ramp: 41,
        # target.target_accuracy: null, cost.price_per_hour: 3.5) where a callbacks list is replaced whole.
        # The resolution schedule is a plain object the datamodule is given; a callback logs what was served.
        parser.add_class_arguments(ResolutionSchedule, "resolution")
        parser.link_arguments("resolution", "data.resolution", apply_on="instantiate")
        parser.add_lightning_class_args(ResolutionMonitor, "resolution_monitor")
        parser.add_lightning_class_args(TargetAccuracyStop, "target")
        parser.add_lightning_class_args(CostMonitor, "cost")

    def before_instantiate_classes(self) -> None:
        logger = self.config[self.subcommand].trainer.logger if self.subcommand else None
        if hasattr(logger, "get") and "Wandb" in str(logger.get("class_path")):
            fall_back_to_offline_without_credentials(logger.get("init_args"))

    def fit(self, model, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        """``trainer.fit`` with auto-resume, a compatibility check and W&B run continuity."""
        checkpoint_dir = configured_checkpoint_dir(self.trainer)
        ckpt_path = resolve_resume_path(self.trainer, ckpt_path)
        if ckpt_path is not None:
            check_compatible(Path(ckpt_path), model)
        if checkpoint_dir is not None:
            continue_wandb_run(self.trainer, checkpoint_dir, resuming=ckpt_path is not None)
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)


class _ParseOnlyCLI(ResNetCLI):
    """Parses a fit configuration (files and overrides) exactly as ``fit`` does, and instantiates nothing."""

    def instantiate_classes(self) -> None:
        pass


def parse_config_only(argv: list[str]):
    """The configuration ``resnet-ffcv fit ARGV`` would run with, without building model, data or Trainer."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # argv is not sys.argv here
        return _ParseOnlyCLI(
            ImageClassifier,
            FFCVDataModule,
            run=False,
            args=argv,
            save_config_callback=None,
            auto_configure_optimizers=False,
        ).config


def configured_checkpoint_dir(trainer) -> Path | None:
    """The checkpoint callback's directory: the one place that says where checkpoints live."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        return Path(callback.dirpath)
    return None


def resolve_resume_path(trainer, ckpt_path: str | None) -> str | None:
    """An explicit ``ckpt_path`` wins; else the checkpoint dir's latest (or newest loadable periodic) file."""
    if ckpt_path is not None:
        rank_zero_info(f"Resuming from {ckpt_path} (--ckpt_path)")
        return ckpt_path
    callback = trainer.checkpoint_callback
    directory = configured_checkpoint_dir(trainer)
    if directory is None:
        rank_zero_info("No checkpoint callback with a fixed dirpath: starting from scratch")
        return None
    if not getattr(callback, "auto_resume", True):
        rank_zero_info(f"auto_resume is off: starting from scratch (checkpoints go to {directory})")
        return None
    latest_name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    path, explanation = find_resume_checkpoint(directory, latest_name)
    rank_zero_info(explanation)
    return None if path is None else str(path)


def check_compatible(path: Path, model) -> None:
    """Stops before training when the checkpoint's network has another shape (never a silent partial load)."""
    if "://" in str(path) or not path.is_file():
        return  # "last"/"best"/remote paths: Lightning resolves and reports those itself
    try:
        saved = load_checkpoint_header(path).get("hyper_parameters", {})
    except Exception as error:  # noqa: BLE001
        raise IncompatibleCheckpointError(f"{path}: cannot be loaded as a training checkpoint ({error})") from error
    differences = [
        f"model.{key}={saved[key]!r} in the checkpoint, {model.hparams[key]!r} in this config"
        for key in SHAPE_HPARAMS
        if key in saved and key in model.hparams and saved[key] != model.hparams[key]
    ]
    if differences:
        raise IncompatibleCheckpointError(
            f"{path} was written by another model configuration: {'; '.join(differences)}. Use the original "
            "config, another checkpoint directory, or set auto_resume: false on the checkpoint callback"
        )


def continue_wandb_run(trainer, checkpoint_dir: Path, resuming: bool) -> None:
    """A resumed run logs into the same W&B run: its id lives in the checkpoint directory.

    WandbLogger already passes ``resume="allow"``; the id reaches ``wandb.init`` through ``WANDB_RUN_ID``,
    which DDP ranks started later inherit. An id set in the config or the environment wins.
    """
    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers or loggers[0].version is not None or "WANDB_RUN_ID" in os.environ:
        return
    id_file = checkpoint_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() and resuming else ""
    continued = bool(run_id)
    if rank_zero_only.rank == 0 and not continued:
        run_id = uuid.uuid4().hex[:12]
        atomic.write_text(id_file, run_id)
    rank_zero_info(f"W&B run id {run_id} ({'continued' if continued else 'new'}; kept in {id_file})")
    # Other ranks never create a W&B run (WandbLogger is rank-zero only); they just need some id.
    os.environ["WANDB_RUN_ID"] = run_id or uuid.uuid4().hex[:12]


def doctor_command(argv: list[str]) -> None:
    from resnet_ffcv.doctor import doctor

    sys.exit(doctor(argv))


def export_command(argv: list[str]) -> None:
    from resnet_ffcv.export import export

    auto_cli(export, args=argv, as_positional=False, prog="resnet-ffcv export")


def plan_command(argv: list[str]) -> None:
    from resnet_ffcv.plan import plan_command as run_plan

    run_plan(argv)


def write_dataset_command(argv: list[str]) -> None:
    from resnet_ffcv.ffcv_io import WriteAborted
    from resnet_ffcv.writer import write_dataset

    try:
        auto_cli(write_dataset, args=argv, as_positional=False, prog="resnet-ffcv write-dataset")
    except (OSError, ValueError, WriteAborted) as error:  # refused inputs, missing folders, no space: the message
        sys.exit(f"resnet-ffcv write-dataset: error: {error}")


def make_synthetic_command(argv: list[str]) -> None:
    from resnet_ffcv.synthetic import make_synthetic_imagefolder

    auto_cli(make_synthetic_imagefolder, args=argv, as_positional=False, prog="resnet-ffcv make-synthetic")


def evaluate_command(argv: list[str]) -> None:
    from resnet_ffcv.evaluate import evaluate_command as run_evaluate

    run_evaluate(argv)


def inspect_dataset_command(argv: list[str]) -> None:
    from resnet_ffcv.inspect_dataset import inspect_dataset

    auto_cli(inspect_dataset, args=argv, as_positional=False, prog="resnet-ffcv inspect-dataset")


# Subcommands that are not Trainer methods: each is a function whose signature is its interface.
TOOLS: dict[str, Callable[[list[str]], None]] = {
    "write-dataset": write_dataset_command,
    "make-synthetic": make_synthetic_command,
    "inspect-dataset": inspect_dataset_command,
    "doctor": doctor_command,
    "export": export_command,
    "plan": plan_command,
    "evaluate": evaluate_command,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        TOOLS[argv[0]](argv[1:])
        return
    try:
        ResNetCLI(
            ImageClassifier,
            FFCVDataModule,
            # A spot restart reruns the same command into the same log directory.
            save_config_callback=LoggedSaveConfig,
            save_config_kwargs={"overwrite": True},
            # The module owns its optimizer (weight-decay groups) and per-batch LR schedule: no --optimizer knobs.
            auto_configure_optimizers=False,
            args=argv,
        )
    except TrainingInterrupted as interruption:
        sys.exit(interruption.exit_code)
    except IncompatibleCheckpointError as error:
        sys.exit(f"resnet-ffcv: error: {error}")


if __name__ == "__main__":
    main()
