"""The LightningCLI behind ``resnet-ffcv fit / validate / test / predict``, and the same parse for the tools.

``fit`` resumes by itself: with no ``--ckpt_path`` it continues from the latest checkpoint in
``checkpoint.dirpath`` (or the newest loadable periodic one; names and rules in :mod:`resnet_ffcv.run.resume`),
and a W&B logger continues the same run. Before training it guards the directory (docs/spot-safety.md): one
``fit`` per directory (a lock), writable with room for the checkpoints, no silent start from scratch over
unloadable checkpoints, no silent change of hyperparameters, and a finished run is not trained again.
Exit codes: 0 finished, 75 interrupted with a checkpoint saved (rerun the same command), 76 stalled (no progress
for ``watchdog.stall_minutes`` or a collective timed out; rerun, a bounded number of times), 74 disk full during a
save, 2 a check before training refused, 1 (or anything else) failed, a NaN/Inf loss included. A user's mistake
(:class:`resnet_ffcv.errors.UserError`) is one paragraph, no traceback.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Literal

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from resnet_ffcv import atomic
from resnet_ffcv.callbacks.checkpointing import DEFAULT_DIRPATH, SpotCheckpoint
from resnet_ffcv.callbacks.cost import CostMonitor
from resnet_ffcv.callbacks.finite_loss import FiniteLossGuard
from resnet_ffcv.callbacks.metrics_csv import MetricsCSV
from resnet_ffcv.callbacks.progress import ProgressPrinter
from resnet_ffcv.callbacks.resolution import ResolutionMonitor
from resnet_ffcv.callbacks.run_summary import RunSummary
from resnet_ffcv.callbacks.spot import SpotInterruption, TrainingInterrupted
from resnet_ffcv.callbacks.target_accuracy import TargetAccuracyStop
from resnet_ffcv.callbacks.watchdog import Watchdog
from resnet_ffcv.config_checks import ConfigError, check_eval_config, check_fit_config
from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.resolution import ResolutionSchedule
from resnet_ffcv.errors import UserError, UserErrorExit, debug_enabled
from resnet_ffcv.parse_errors import OneParagraphParser
from resnet_ffcv.recipe.module import ImageClassifier, weights_from_checkpoint
from resnet_ffcv.run import checkpoint_lock
from resnet_ffcv.run.resume import (
    BEST_NAME,
    SettingsDiffer,
    check_compatible,
    configured_checkpoint_dir,
    continue_wandb_run,
    describe_differences,
    expected_checkpoint_bytes,
    finished_reason,
    load_checkpoint_header,
    move_aside,
    resolve_resume_path,
    settings_differences,
)
from resnet_ffcv.run.stop_signals import STALLED_EXIT_CODE, STOP, StopSignals
from resnet_ffcv.run.wandb_setup import fall_back_to_offline_without_credentials, is_wandb_logger, prepare_wandb_logger
from resnet_ffcv.run.watchdog import is_collective_timeout, kill_descendants
from resnet_ffcv.run_dir import (
    FIT_ONLY_OPTIONS,
    RUN_OPTION,
    apply_evaluation_run_dir,
    apply_run_dir,
    expand_run_option,
    run_dir_typed,
    saved_config,
    saved_config_path,
)

# Library noise printed by every command, filtered narrowly (each has no argument that avoids it):
# Lightning 2.6's own _pytree helper uses torch's deprecated LeafSpec (nothing we call or could change)...
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", module="lightning")


class _NoProductTips(logging.Filter):
    """...and Lightning advertises litlogger/litmodels in every run that does not use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip: For seamless cloud")


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoProductTips())

# For the tools that read a training config (doctor, plan): their --help says how the config is given.
CONFIG_HELP = (
    "a training config, as for `resnet-ffcv fit` (repeat to layer configs: later files override earlier ones); "
    "any other `fit` argument (--trainer.devices 8, --data.data_dir /data ...) overrides it, as in `fit`"
)


class LoggedSaveConfig(SaveConfigCallback):
    """Saves the resolved config (in ``run_dir`` when set, else beside the logs as Lightning does) and logs it to
    the logger (W&B)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        run_dir = self.config.get("run_dir")
        if run_dir is not None and self.save_to_log_dir and not self.already_saved:
            self.save_to_log_dir = False  # not trainer.log_dir (<run_dir>/logs for W&B): the run directory itself
            if trainer.is_global_zero:  # absolute paths, no fit-only options: valid as --config from anywhere
                text = self.parser.dump(saved_config(self.config), skip_none=False)
                atomic.write_text(saved_config_path(run_dir, stage), text)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is not None:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            trainer.logger.log_hyperparams({"config": config})


class ResNetCLI(LightningCLI):
    def __init__(self, *args, **kwargs) -> None:
        # A mistyped key or a wrong type: one paragraph (key, source, expected, close keys), not the usage dump.
        super().__init__(*args, parser_class=OneParagraphParser, **kwargs)

    def parse_arguments(self, parser, args) -> None:
        self.command_line = list(sys.argv[1:] if args is None else args)  # what was typed, not what configs said
        OneParagraphParser.argv = tuple(self.command_line)  # where a refused key came from
        super().parse_arguments(parser, args)

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
        parser.add_lightning_class_args(RunSummary, "summary")
        parser.add_lightning_class_args(MetricsCSV, "metrics_csv")
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="one directory for the run: checkpoints/, logs/, config.yaml, metrics.csv, summary.json (and "
            "predictions/) default into it; a path set on its own wins (resnet_ffcv/run_dir.py)",
        )
        parser.add_lightning_class_args(ProgressPrinter, "progress")
        # Checkpointing and spot handling are never optional for fit: sections, not trainer.callbacks entries
        # (a user restating that list to add a callback would silently drop them). Every subcommand accepts the
        # sections (validate/predict read the same config files); only fit builds them (instantiate_trainer).
        parser.add_class_arguments(SpotCheckpoint, "checkpoint", instantiate=False)
        parser.add_class_arguments(SpotInterruption, "spot", instantiate=False)
        # A run that cannot make progress ends itself: a hang exits 76 (watchdog), a NaN loss exits 1 (finite_loss).
        parser.add_class_arguments(Watchdog, "watchdog", instantiate=False)
        parser.add_class_arguments(FiniteLossGuard, "finite_loss", instantiate=False)

    def before_instantiate_classes(self) -> None:
        # Here, on the parsed config, because the callbacks, logger and trainer are built from it next: a default
        # filled in later would miss the objects that already hold their paths.
        if self.subcommand in (None, "fit"):
            apply_run_dir(self.config[self.subcommand] if self.subcommand else self.config)
        else:  # validate/test/predict write beside the checkpoint's run, never over its fit records
            apply_evaluation_run_dir(self.config[self.subcommand], self.subcommand, run_dir_typed(self.command_line))
        if self.subcommand == "fit":  # a config mistake stops here, before any data or model is built
            check_fit_config(self.config.fit)
            if not self.config.fit.spot.handle_signals and signal.getsignal(signal.SIGTERM) == STOP.handler:
                StopSignals.restore({signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler})
        elif self.subcommand in ("validate", "test", "predict"):  # before the run directory, logger or model
            check_eval_config(self.config[self.subcommand], self.subcommand)
            # A fit checkpoint holds the states of fit's callbacks (SpotCheckpoint, SpotInterruption, ...), which
            # an evaluation never builds and has no use for; Lightning warns about each on every run.
            warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks used")
        logger = self.config[self.subcommand].trainer.logger if self.subcommand else None
        if is_wandb_logger(logger):
            fall_back_to_offline_without_credentials(logger.get("init_args"))

    def instantiate_classes(self) -> None:
        # model.init_weights is read only where no checkpoint gives the weights: fit decides once it knows whether
        # it resumes (fit below); the other subcommands when no --ckpt_path is given.
        with weights_from_checkpoint():
            super().instantiate_classes()
        if self.subcommand is None or (self.subcommand != "fit" and not self.config[self.subcommand].get("ckpt_path")):
            self.model.load_init_weights()
        for logger in self.trainer.loggers:
            prepare_wandb_logger(logger)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer, with the ``checkpoint`` and ``spot`` sections' callbacks added for ``fit``."""
        trainer_config = self._get(self.config_init, "trainer", default={})
        if self.subcommand == "fit" and trainer_config.get("enable_checkpointing") is False:
            # An explicit opt-out (benchmarks, throwaway runs): no checkpoint, so nothing a spot stop could save.
            rank_zero_info("trainer.enable_checkpointing is false: no checkpoints, no spot handling in this run")
        elif self.subcommand == "fit":
            configured = trainer_config.get("callbacks") or []
            configured = configured if isinstance(configured, list) else [configured]
            kwargs["callbacks"] = [*configured, *self._section_callbacks()]
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit":
            apply_collective_timeout(trainer, self._get(self.config_init, "watchdog").collective_timeout_minutes)
        return trainer

    def _section_callbacks(self) -> list:
        built = []
        sections = (
            ("checkpoint", SpotCheckpoint),
            ("spot", SpotInterruption),
            ("watchdog", Watchdog),
            ("finite_loss", FiniteLossGuard),
        )
        for section, cls in sections:
            arguments = self._get(self.config_init, section).as_dict()
            try:
                built.append(cls(**arguments))
            except ValueError as error:  # the class's own argument checks: a config value, named
                raise ConfigError(f"{section}: {error}") from error
        return built

    def _prepare_subcommand_parser(self, klass, subcommand: str, **kwargs):
        """``fit`` alone gets the resume options (the other subcommands resume nothing)."""
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":
            parser.add_argument(
                "--fresh_start",
                type=bool,
                default=False,
                help="start from scratch although the checkpoint directory holds checkpoints: its files are "
                "moved into <dir>/previous-<time>/, never deleted; false resumes",
            )
            parser.add_argument(
                "--resume_with",
                type=Literal["config", "checkpoint"] | None,
                default=None,
                help="when the config's model/data values differ from the checkpoint's: continue with the "
                "config's values or the checkpoint's; null lists the differences and stops",
            )
        else:
            parser.add_argument(  # for --help only: run() expands it before parsing (run_dir.expand_run_option)
                RUN_OPTION,
                metavar="RUN_DIR",
                default=None,
                help=f"a run directory written by fit: its config.yaml, its checkpoints/{BEST_NAME} (unless "
                "--ckpt_path) and --run_dir RUN_DIR, no logger; the other arguments still override",
            )
            # So that a fit config holding them (an older run's saved config.yaml) works as --config here too.
            for name in FIT_ONLY_OPTIONS:
                parser.add_argument(f"--{name}", default=None, help=f"fit's option, ignored by {subcommand}")
        return parser

    def fit(self, model, datamodule=None, ckpt_path: str | None = None, **kwargs) -> None:
        """``trainer.fit`` with a locked, checked checkpoint directory, auto-resume and W&B run continuity."""
        if STOP.reason is not None and self.config.fit.spot.handle_signals:  # before anything was trained
            message = (
                f"{STOP.reason} during start-up: nothing trained, nothing new to save; exiting with code "
                f"{TrainingInterrupted.exit_code} (rerun the same command to resume)"
            )
            print(message, file=sys.stderr)
            raise TrainingInterrupted(message)
        checkpoint_dir = configured_checkpoint_dir(self.trainer)
        init_weights = model.hparams.get("init_weights")
        fresh = f"from init_weights {init_weights}" if init_weights else "from scratch"  # what a fresh run loads
        if checkpoint_dir is None:
            ckpt_path = resolve_resume_path(self.trainer, ckpt_path, fresh)
            if ckpt_path is None:
                model.load_init_weights()
            self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
            return
        options = self.config[self.subcommand]
        is_zero = rank_zero_only.rank == 0  # set from the environment: valid before the strategy starts ranks
        if is_zero:
            checkpoint_lock.check_writable(checkpoint_dir)  # first: the lock file itself needs a writable dir
            checkpoint_lock.acquire(checkpoint_dir)  # held until this process exits
        if options.get("fresh_start") and ckpt_path is None:
            moved = move_aside(checkpoint_dir) if is_zero else None
            rank_zero_info(f"--fresh_start: starting {fresh}{f'; old files moved to {moved}' if moved else ''}")
        else:
            ckpt_path = resolve_resume_path(self.trainer, ckpt_path, fresh)
        if ckpt_path is not None:
            check_compatible(Path(ckpt_path), model)
            resumed = self._checked_resume(Path(ckpt_path), model, datamodule, options.get("resume_with"))
            if resumed is None:
                return
            model, datamodule = resumed
        else:  # a fresh start: the only time init_weights is read (a checkpoint holds the weights otherwise)
            model.load_init_weights()
        if is_zero:
            checkpoint_lock.check_room(checkpoint_dir, expected_checkpoint_bytes(model, self._files_kept()))
        continue_wandb_run(self.trainer, checkpoint_dir, resuming=ckpt_path is not None)
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def _checked_resume(self, path: Path, model, datamodule, resume_with: str | None):
        """None when the run is finished (said so; nothing is touched); else the (model, datamodule) to train."""
        if "://" in str(path) or not path.is_file():
            return model, datamodule
        checkpoint = load_checkpoint_header(path, verify=False)  # verified when it was chosen
        differences = settings_differences(checkpoint, model, datamodule)
        if differences and resume_with is None:
            raise SettingsDiffer(describe_differences(path, differences))
        reason = finished_reason(checkpoint, self.trainer)
        if reason is not None and not differences:
            rank_zero_info(
                f"This run is already finished ({reason}; checkpoint {path}): nothing to do. Raise "
                "trainer.max_epochs to train longer, or use --fresh_start true to start over."
            )
            return None
        if differences and resume_with == "checkpoint":
            rank_zero_info(f"--resume_with checkpoint: using the checkpoint's values of {len(differences)} key(s)")
            return _rebuilt(model, checkpoint["hyper_parameters"]), _rebuilt_data(
                datamodule, checkpoint.get("datamodule_hyper_parameters")
            )
        if differences:
            rank_zero_info(f"--resume_with config: {', '.join(f'{k}={v!r}' for k, _, v in differences)}")
        return model, datamodule

    def _files_kept(self) -> int:
        """Latest, its temp copy during an overwrite, best, and the periodic files the retention policy keeps."""
        callback = self.trainer.checkpoint_callback
        interval = getattr(callback, "checkpoint_interval", 0)
        keep = getattr(callback, "keep_periodic", -1)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 0
        periodic = 0 if not interval else (keep if keep > 0 else max_epochs // interval)
        return 3 + periodic


def _without_private(hparams) -> dict:
    return {key: value for key, value in dict(hparams).items() if not key.startswith("_")}


def _rebuilt(model, hparams):
    """The same class built from the checkpoint's hyperparameters (``--resume_with checkpoint``)."""
    with weights_from_checkpoint():
        return type(model)(**_without_private(hparams))


def _rebuilt_data(datamodule, hparams):
    if datamodule is None or hparams is None:
        return datamodule
    values = _without_private(hparams) | {key: datamodule.hparams[key] for key in ("data_dir", "num_workers")}
    # num_classes and the resolution schedule are not hyperparameters of the datamodule (saved with the model).
    return type(datamodule)(**values, num_classes=datamodule.num_classes, resolution=datamodule.resolution)


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


def parse_tool_args(
    own: argparse.ArgumentParser, argv: list[str], description: str
) -> tuple[argparse.Namespace, list[str]]:
    """A tool's own options, and the rest of ``argv`` in its order for :func:`parse_config_only`.

    ``own`` (made with ``add_help=False``) holds the tool's options; ``--help`` shows them with ``description``
    and ``--config``. The configs stay in the rest, in place: configs and overrides apply in the order given.
    """
    documented = argparse.ArgumentParser(
        prog=own.prog,
        description=description,
        parents=[own],
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    documented.add_argument("-c", "--config", action="append", metavar="FILE", help=CONFIG_HELP)
    documented.parse_known_args(argv)  # answers --help; reports a bad value of the tool's own options
    return own.parse_known_args(argv)


def apply_collective_timeout(trainer: Trainer, minutes: float | None) -> None:
    """``watchdog.collective_timeout_minutes`` as the DDP process group's timeout (DDPStrategy's ``timeout``,
    set before the strategy creates the group): a collective waiting past it raises instead of waiting 30 min."""
    if minutes is not None and isinstance(trainer.strategy, DDPStrategy):
        trainer.strategy._timeout = datetime.timedelta(minutes=minutes)


def checkpoint_dirpath(config) -> Path:
    """``checkpoint.dirpath`` of a parsed fit config, as ``fit`` will use it (null: the default directory)."""
    return Path(config.checkpoint.dirpath or DEFAULT_DIRPATH)


def run(argv: list[str]) -> None:
    """``resnet-ffcv SUBCOMMAND ARGS`` for the Trainer subcommands; a user's mistake exits with one paragraph."""
    subcommand = argv[0] if argv and not argv[0].startswith("-") else ""
    if subcommand == "fit":  # a stop during start-up exits 75 (cli.main installs it earlier still, before torch)
        STOP.install()
    try:
        argv = expand_run_option(argv)  # validate/test/predict --run RUN_DIR: the run's own config and checkpoint
        with warnings.catch_warnings():
            # argv is sys.argv[1:] (or a test's list): the caution about passing both does not apply here.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            ResNetCLI(
                ImageClassifier,
                FFCVDataModule,
                # A spot restart reruns the same command into the same log directory.
                save_config_callback=LoggedSaveConfig,
                save_config_kwargs={"overwrite": True},
                # The module owns its optimizer (weight-decay groups) and per-batch LR schedule: no --optimizer knobs.
                auto_configure_optimizers=False,
                parser_kwargs={"prog": "resnet-ffcv"},
                args=argv,
            )
    except TrainingInterrupted as interruption:
        sys.exit(interruption.exit_code)
    # A refusal before training: a config, data, checkpoint or input problem, the lock, the directory (2); a full
    # disk during a save (74).
    except UserError as error:
        if debug_enabled():
            raise
        message = f"{' '.join(filter(None, ('resnet-ffcv', subcommand)))}: error: {error}"
        print(message, file=sys.stderr)
        raise UserErrorExit(message, getattr(error, "exit_code", checkpoint_lock.CHECK_FAILED_EXIT_CODE)) from None
    except RuntimeError as error:
        if not is_collective_timeout(error):  # the watchdog callback exits 76 on these inside fit; this is the
            raise  # rest (a rendezvous or a collective outside the training loop)
        print(
            f"resnet-ffcv {subcommand}: a collective timed out ({error}); exiting with code {STALLED_EXIT_CODE}",
            file=sys.stderr,
        )
        kill_descendants()
        sys.exit(STALLED_EXIT_CODE)
