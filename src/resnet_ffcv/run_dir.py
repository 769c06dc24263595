"""One ``run_dir`` from which every output path of a run defaults, so a person finds the whole run in one place:

    <run_dir>/config.yaml               the resolved fit config (absolute paths; works as --config for every
                                        subcommand, or ``--run RUN_DIR``)
    <run_dir>/checkpoints/              checkpoint_latest, checkpoint_epoch_N, best_model (.ckpt), W&B run id
    <run_dir>/logs/                     the logger's save_dir (W&B: logs/wandb/...)
    <run_dir>/metrics.csv               every logged value, kept across spot restarts (``resnet-ffcv curves``)
    <run_dir>/summary.json              best/final accuracy, checkpoints, wall time, images/s, cost, status
    <run_dir>/predictions/              ``predict``: predictions.csv and its config.yaml
    <run_dir>/validate/, test/          ``validate``/``test``: their config.yaml (and logs/ with a logger)

Only ``fit`` writes the run's own records (config.yaml, metrics.csv, summary.json). ``validate``/``test``/
``predict`` belong to the checkpoint's run: ``--run_dir`` typed on the command line, else the run whose
``checkpoints/`` holds ``--ckpt_path``, else the working directory (a config file's ``run_dir`` is the training
run's and is not used for them), and each writes into its own subfolder there.

A path set on its own wins. "Not set" means null or the class's own default (SpotCheckpoint's ``checkpoints``,
WandbLogger's ``.``, PredictionWriter's ``predictions/predictions.csv``): a parsed config cannot tell a default
from the same value typed by hand.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

import yaml

from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint
from resnet_ffcv.errors import InputNotFound
from resnet_ffcv.run.resume import BEST_NAME, LATEST_NAME

CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.csv"
# Where each subcommand's saved config.yaml goes, relative to the run directory (fit's is the run's own).
SUBCOMMAND_DIRS = {"fit": ".", "predict": "predictions"}
CHECKPOINTS_NAME = "checkpoints"
# fit's options that act once (move files aside, pick a side): not kept in the saved config.yaml.
FIT_ONLY_OPTIONS = ("fresh_start", "resume_with")
# The saved config's paths, made absolute so that it works as --config from any directory.
PATH_KEYS = (
    "run_dir",
    "data.data_dir",
    "model.init_weights",
    "checkpoint.dirpath",
    "summary.path",
    "metrics_csv.path",
    "trainer.default_root_dir",
    "ckpt_path",
    "data.predict_path",
)
RUN_OPTION = "--run"
RUN_SUBCOMMANDS = ("validate", "test", "predict")
# What --run adds after the run's config: no logger (the metrics are printed) and, for predict, what
# configs/predict.yaml sets: one device and the prediction writer as the only callback.
RUN_OVERLAY: dict[str, dict[str, Any]] = {
    "validate": {"trainer": {"logger": False}},
    "test": {"trainer": {"logger": False}},
    "predict": {
        "trainer": {
            "logger": False,
            "devices": 1,
            "num_nodes": 1,
            "strategy": "auto",
            "enable_checkpointing": False,
            "callbacks": [{"class_path": "resnet_ffcv.callbacks.PredictionWriter"}],
        },
        "model": {"compile": False},
    },
}


def _class_of(entry: Any) -> type | None:
    """The class a ``{class_path, init_args}`` entry names, None for anything else."""
    class_path = entry.get("class_path") if hasattr(entry, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return None
    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _entries(value: Any) -> list[Any]:
    """A callbacks or logger setting as a list of entries (it may be one entry, a list, a bool or null)."""
    if isinstance(value, list):
        return value
    return [value] if hasattr(value, "get") else []


def _unset(settings: Any, key: str, cls: type) -> bool:
    """True when ``settings.key`` is null or the default of ``cls``'s ``key`` argument."""
    value = settings.get(key)
    parameter = inspect.signature(cls.__init__).parameters.get(key)
    default = None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default
    return value is None or (default is not None and str(value) == str(default))


def _fill(settings: Any, key: str, cls: type, path: Path) -> None:
    if settings is not None and _unset(settings, key, cls):
        settings[key] = str(path)


def apply_run_dir(config: Any) -> None:
    """Fills the unset output paths of one subcommand's parsed config from its ``run_dir`` (in place)."""
    run_dir = config.get("run_dir")
    if run_dir is None:
        return
    run_dir = Path(run_dir)
    checkpoint = config.get("checkpoint")  # the SpotCheckpoint section; None in a config without one
    _fill(checkpoint, "dirpath", SpotCheckpoint, run_dir / "checkpoints")
    trainer = config.trainer
    for entry in _entries(trainer.get("logger")):
        if (cls := _class_of(entry)) is not None and "save_dir" in inspect.signature(cls.__init__).parameters:
            _fill(entry.get("init_args"), "save_dir", cls, run_dir / "logs")
    if trainer.get("default_root_dir") is None:  # Lightning's fallback for anything else it writes
        trainer["default_root_dir"] = str(run_dir)
    for entry in _entries(trainer.get("callbacks")):
        if (cls := _class_of(entry)) is not None and cls.__name__ == "PredictionWriter":
            _fill(entry.get("init_args"), "output", cls, run_dir / "predictions" / "predictions.csv")
    for section, name in (("summary", SUMMARY_NAME), ("metrics_csv", METRICS_NAME)):
        if config.get(section) is not None and config[section].get("path") is None:
            config[section]["path"] = str(run_dir / name)


def saved_config_path(run_dir: str | Path, stage: str) -> Path:
    """Where a subcommand's resolved config is saved: fit's in the run directory, the others beside their output."""
    stage = str(getattr(stage, "value", stage))  # Lightning passes a TrainerFn: its value is the subcommand's name
    return Path(run_dir) / SUBCOMMAND_DIRS.get(stage, stage) / CONFIG_NAME


def _absolute(value: Any) -> Any:
    if not isinstance(value, str) or "://" in value or os.path.isabs(value):
        return value
    return os.path.abspath(value)


def saved_config(config: Any) -> Any:
    """The config as ``<run_dir>/config.yaml`` (or ``<run>/<subcommand>/config.yaml``) keeps it: relative paths
    made absolute (it is read from other directories: ``--run``, a spot restart), fit's once-only options left out
    (a rerun must not move files aside again)."""
    saved = config.clone()
    for key in FIT_ONLY_OPTIONS:
        if key in saved:
            del saved[key]
    for key in PATH_KEYS:
        if saved.get(key) is not None:
            saved[key] = _absolute(saved[key])
    for entry in _entries(saved.get("trainer", {}).get("logger")):
        init_args = entry.get("init_args")
        if init_args is not None and init_args.get("save_dir") is not None:
            init_args["save_dir"] = _absolute(init_args["save_dir"])
    return saved


def run_of_checkpoint(ckpt_path: str | None) -> Path:
    """The run a checkpoint belongs to: ``<run>/checkpoints/NAME.ckpt`` -> ``<run>``; else the working directory."""
    if ckpt_path and "://" not in str(ckpt_path):
        folder = Path(ckpt_path).parent
        if folder.name == CHECKPOINTS_NAME:
            return folder.parent
    return Path(".")


def run_dir_typed(argv: list[str]) -> bool:
    """Whether ``--run_dir`` was given on the command line (a config file's run_dir is the training run's)."""
    return any(arg == "--run_dir" or arg.startswith("--run_dir=") for arg in argv)


def apply_evaluation_run_dir(config: Any, subcommand: str, typed: bool) -> Path:
    """validate/test/predict: outputs into ``<run>/<subcommand dir>/`` of the checkpoint's run (see the module
    docstring); the run's summary.json and metrics.csv are never written. Returns that run directory."""
    run_dir = Path(config.run_dir) if typed and config.get("run_dir") else run_of_checkpoint(config.get("ckpt_path"))
    config["run_dir"] = str(run_dir)
    own = run_dir / SUBCOMMAND_DIRS.get(subcommand, subcommand)
    trainer = config.trainer
    trainer["default_root_dir"] = str(own)  # the fit config's value is the training run's
    for entry in _entries(trainer.get("logger")):
        cls = _class_of(entry)
        if cls is not None and "save_dir" in inspect.signature(cls.__init__).parameters and entry.get("init_args"):
            entry["init_args"]["save_dir"] = str(own / "logs")
    for entry in _entries(trainer.get("callbacks")):
        if (cls := _class_of(entry)) is not None and cls.__name__ == "PredictionWriter":
            _fill(entry.get("init_args"), "output", cls, run_dir / "predictions" / "predictions.csv")
    for section in ("summary", "metrics_csv"):
        if config.get(section) is not None:
            config[section]["path"] = None  # fit's records: only fit writes them
    return run_dir


def take_run_option(argv: list[str]) -> tuple[Path | None, list[str]]:
    """``--run RUN_DIR`` (or ``--run=RUN_DIR``) taken out of ``argv``; the run's folder must hold a config.yaml."""
    rest, run = [], None
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == RUN_OPTION and index + 1 < len(argv):
            run, index = Path(argv[index + 1]), index + 2
            continue
        if arg.startswith(RUN_OPTION + "="):
            run = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        index += 1
    if run is not None and not (run / CONFIG_NAME).is_file():
        raise InputNotFound(
            f"--run {run}: no {run / CONFIG_NAME}; expected a run directory written by `resnet-ffcv fit` "
            "(its run_dir, holding config.yaml and checkpoints/)"
        )
    return run, rest


def run_checkpoint(run: Path, argv: list[str]) -> list[str]:
    """``--ckpt_path`` of the run's best checkpoint (else its latest) unless ``argv`` gives one."""
    if any(arg == "--ckpt_path" or arg.startswith("--ckpt_path=") for arg in argv):
        return []
    for name in (BEST_NAME, LATEST_NAME):
        if (run / CHECKPOINTS_NAME / name).is_file():
            return [f"--ckpt_path={run / CHECKPOINTS_NAME / name}"]
    raise InputNotFound(
        f"--run {run}: no {BEST_NAME} or {LATEST_NAME} in {run / CHECKPOINTS_NAME}; give --ckpt_path FILE"
    )


def expand_run_option(argv: list[str]) -> list[str]:
    """``validate|test|predict --run RUN_DIR ARGS`` -> the run's config.yaml, the overlay of that subcommand,
    ``--run_dir RUN_DIR``, ARGS (later, so they override) and the run's best checkpoint unless ARGS name one."""
    if not argv or argv[0] not in RUN_SUBCOMMANDS:
        return argv
    run, rest = take_run_option(argv[1:])
    if run is None:
        return argv
    overlay = yaml.safe_dump(RUN_OVERLAY[argv[0]], default_flow_style=True).strip()
    config = ["--config", str(run / CONFIG_NAME), "--config", overlay, f"--run_dir={run}"]
    return [argv[0], *config, *rest, *run_checkpoint(run, rest)]


def run_config_value(run: Path, key: str) -> Any:
    """One dotted key of ``<run>/config.yaml`` (``data.data_dir``), None when absent."""
    value: Any = yaml.safe_load((run / CONFIG_NAME).read_text())
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
