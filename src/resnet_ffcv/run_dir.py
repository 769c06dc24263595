"""One ``run_dir`` from which every output path of a run defaults, so a person finds the whole run in one place:

    <run_dir>/config.yaml               the resolved fit config (``validate``/``test``: <run_dir>/<subcommand>/)
    <run_dir>/checkpoints/              checkpoint_latest, checkpoint_epoch_N, best_model (.ckpt), W&B run id
    <run_dir>/logs/                     the logger's save_dir (W&B: logs/wandb/...)
    <run_dir>/metrics.csv               every logged value, kept across spot restarts (``resnet-ffcv curves``)
    <run_dir>/summary.json              best/final accuracy, checkpoints, wall time, images/s, cost, status
    <run_dir>/predictions/              ``predict``: predictions.csv and its config.yaml

A path set on its own wins. "Not set" means null or the class's own default (SpotCheckpoint's ``checkpoints``,
WandbLogger's ``.``, PredictionWriter's ``predictions/predictions.csv``): a parsed config cannot tell a default
from the same value typed by hand.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint

CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.csv"
# Where each subcommand's saved config.yaml goes, relative to the run directory (fit's is the run's own).
SUBCOMMAND_DIRS = {"fit": ".", "predict": "predictions"}


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
