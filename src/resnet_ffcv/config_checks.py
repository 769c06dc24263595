"""Config mistakes that Lightning, torch or the callbacks would report late, or never: found before training.

Each check reads the parsed ``fit`` config (the jsonargparse namespace, before any class is built), so the same
functions serve ``resnet-ffcv fit`` (stops before the model, data or first epoch) and ``resnet-ffcv doctor``
(one pass/fail line). Each problem is one sentence naming the key, its value and what was expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from resnet_ffcv.dataset.format import CLASSES_FILE, load_classes
from resnet_ffcv.errors import UserError

# Schedules whose rise to model.lr lasts model.warmup_epochs (triangular rises until model.lr_peak_epoch).
WARMUP_SCHEDULES = ("onecycle", "cosine", "step")


class ConfigError(UserError, ValueError):
    """A config value that would fail (or silently mistrain) only after data loading or epochs of training."""


def validation_metrics(use_ema: bool, val_weights: str = "both") -> set[str]:
    """What ``ImageClassifier`` logs at each validation: the weights ``model.val_weights`` validates (raw, EMA if
    kept), the better of them, and the validation's seconds.

    ``val/acc1_best`` / ``val/acc5_best`` exist with EMA on or off, so a monitor naming them survives a later
    config (or ``--model.use_ema false``) switching EMA off. tests/test_config_stacks.py checks this set against
    what a real run logs.
    """
    from resnet_ffcv.recipe.evaluation import eval_suffixes

    suffixes = eval_suffixes(use_ema, val_weights)
    return {f"val/{name}{suffix}" for name in ("acc1", "acc5", "loss") for suffix in suffixes} | {
        "val/acc1_best",
        "val/acc5_best",
        "val/seconds",
    }


def _get(namespace: Any, key: str, default: Any = None) -> Any:
    """``namespace.key`` for jsonargparse Namespaces and plain dicts alike."""
    if isinstance(namespace, Mapping):
        return namespace.get(key, default)
    return getattr(namespace, key, default)


def configured_monitors(callbacks: Iterable[Any] | None, target: Any, checkpoint: Any = None) -> dict[str, str]:
    """Config key -> metric name for every callback ``monitor`` that will be read during ``fit``.

    ``target.monitor`` counts only with a ``target.target_accuracy`` set: otherwise TargetAccuracyStop reads
    nothing. ``trainer.callbacks`` entries are ``{class_path, init_args}``; a ``monitor: null`` monitors nothing.
    """
    monitors = {}
    if checkpoint is not None and _get(checkpoint, "monitor") is not None:
        monitors["checkpoint.monitor"] = str(_get(checkpoint, "monitor"))
    for index, callback in enumerate(callbacks or []):
        monitor = _get(_get(callback, "init_args", {}), "monitor")
        if monitor is not None:
            monitors[f"trainer.callbacks[{index}].init_args.monitor"] = str(monitor)
    if target is not None and _get(target, "target_accuracy") is not None:
        monitors["target.monitor"] = str(_get(target, "monitor"))
    return monitors


def monitor_problems(use_ema: bool, monitors: Mapping[str, str], val_weights: str = "both") -> list[str]:
    """A sentence per monitor under ``val/`` that the module never logs with this ``model.use_ema``.

    Only ``val/`` names are judged: other metrics (``train/loss_epoch``, ``cost/usd``) come from elsewhere.
    """
    logged = validation_metrics(use_ema, val_weights)
    problems = []
    for key, metric in monitors.items():
        if metric.startswith("val/") and metric not in logged:
            hint = " or set model.use_ema: true" if metric.endswith("_ema") and not use_ema else ""
            problems.append(
                f"{key}={metric!r} names a metric this config never logs: with model.use_ema={str(use_ema).lower()} "
                f"validation logs {', '.join(sorted(logged))}. Use val/acc1_best (the better of the raw and EMA "
                f"top-1, logged with EMA on or off){hint}."
            )
    return problems


def schedule_problems(model: Any, max_epochs: int | None) -> list[str]:
    """The LR must reach ``model.lr`` within the run, and ``model.lr`` must be a positive number."""
    problems = []
    lr = _get(model, "lr")
    if lr is not None and lr <= 0:
        problems.append(f"model.lr={lr}: expected a positive peak learning rate (e.g. 0.8 for the global batch 2048).")
    if max_epochs is None or max_epochs <= 0:
        return problems  # the schedule then ends at max_steps, known only once the loader exists
    scheduler = _get(model, "scheduler")
    rise_key = (
        "warmup_epochs" if scheduler in WARMUP_SCHEDULES else "lr_peak_epoch" if scheduler == "triangular" else None
    )
    rise = _get(model, rise_key) if rise_key else None
    if rise is not None and rise > max_epochs:
        problems.append(
            f"model.{rise_key}={rise} is longer than trainer.max_epochs={max_epochs}: the {scheduler} schedule "
            f"would end before the LR reaches model.lr={lr}. Expected model.{rise_key} <= {max_epochs}."
        )
    return problems


def num_classes_problems(data: Any) -> list[str]:
    """``data.num_classes`` below 2 (no classifier; torchmetrics would refuse it with a traceback) or above the
    class count of ``classes.json`` (outputs no label ever trains).

    Other smaller counts are caught by the datamodule (labels out of range); a missing file by
    :func:`data_file_problems`.
    """
    num_classes = _get(data, "num_classes")
    classes_path = Path(str(_get(data, "data_dir", ""))) / CLASSES_FILE
    count = len(load_classes(classes_path)) if classes_path.is_file() else None
    listed = f"{classes_path} lists {count} classes" if count is not None else f"{classes_path} is missing"
    if num_classes is not None and num_classes < 2:
        return [
            f"data.num_classes={num_classes} but a classifier needs at least 2 classes ({listed}). Leave "
            "data.num_classes unset to take the count from classes.json, or set it to the number of classes."
        ]
    if count is not None and count < 2 and num_classes is None:
        return [f"{listed}: a classifier needs at least 2 classes; write the dataset with two or more class folders."]
    if num_classes is None or count is None or num_classes <= count:
        return []
    return [
        f"data.num_classes={num_classes} but {listed}: the network would get "
        f"{num_classes - count} outputs no label uses. Expected at most {count}; leave data.num_classes unset "
        "to take the count from classes.json."
    ]


def data_file_problems(data: Any, splits: Iterable[str] = ("train", "val")) -> list[str]:
    """The files a subcommand reads, missing: found before a run directory, W&B run or summary is created.

    ``splits``: ``train`` and/or ``val`` (``data.train_file`` / ``data.val_file``); ``classes.json`` is needed
    unless ``data.num_classes`` is set.
    """
    data_dir = Path(str(_get(data, "data_dir", "")))
    wanted = [] if _get(data, "num_classes") is not None else [data_dir / CLASSES_FILE]
    wanted += [data_dir / str(_get(data, f"{split}_file", f"{split}.ffcv")) for split in splits]
    missing = [str(path) for path in wanted if not path.is_file()]
    if not missing:
        return []
    where = "does not exist" if not data_dir.is_dir() else "is incomplete"
    return [
        f"data.data_dir={data_dir} {where}: missing {', '.join(missing)} (written by `resnet-ffcv write-dataset`). "
        "Set data.data_dir to the folder holding them."
    ]


def checkpoint_class_problems(config: Any, ckpt_path: str | None) -> list[str]:
    """validate/test/predict with a checkpoint whose network has another class count than the data's: Lightning
    would fail loading it with a size-mismatch traceback. (The architecture and the other model keys LightningCLI
    takes from the checkpoint's hyperparameters itself; the class count is linked from the data.)"""
    if ckpt_path is None or "://" in str(ckpt_path) or not Path(ckpt_path).is_file():
        return []  # "best"/"last"/remote: Lightning resolves and reports those itself
    from resnet_ffcv.run.resume import load_checkpoint_header

    try:
        saved = load_checkpoint_header(Path(ckpt_path), verify=False).get("hyper_parameters", {})
    except Exception:  # noqa: BLE001 - not ours to judge here: Lightning's own load reports it
        return []
    data = _get(config, "data")
    problems = []
    classes_path = Path(str(_get(data, "data_dir", ""))) / CLASSES_FILE
    num_classes = _get(data, "num_classes")
    if num_classes is None and classes_path.is_file():
        num_classes, source = len(load_classes(classes_path)), f"{classes_path} lists"
    else:
        source = "data.num_classes is"
    trained = saved.get("num_classes")
    if trained is not None and num_classes is not None and trained != num_classes:
        problems.append(
            f"{ckpt_path} was trained for {trained} classes, but {source} {num_classes}. Point data.data_dir at "
            f"the dataset it was trained on (its classes.json names the {trained} classes), or set "
            f"--data.num_classes {trained}."
        )
    return problems


# Callbacks that are config sections of their own (always present for fit), by class name -> section.
SECTION_CALLBACKS = {"SpotCheckpoint": "checkpoint", "SpotInterruption": "spot"}


def section_callback_problems(callbacks: Iterable[Any] | None) -> list[str]:
    """A config written before ``checkpoint:`` / ``spot:`` became sections: two checkpoint callbacks otherwise."""
    problems = []
    for index, callback in enumerate(callbacks or []):
        class_path = str(_get(callback, "class_path", "") or "")
        section = SECTION_CALLBACKS.get(class_path.rpartition(".")[2])
        if section is not None:
            problems.append(
                f"trainer.callbacks[{index}] is {class_path}: it is always on for fit now, configured in the "
                f"`{section}:` section. Move its init_args there ({section}.KEY: VALUE) and remove it from "
                "trainer.callbacks."
            )
    return problems


def fit_config_problems(config: Any) -> list[str]:
    """Every problem of a parsed ``fit`` config (trainer, model, data, target, checkpoint), one sentence each."""
    trainer, model = _get(config, "trainer"), _get(config, "model")
    monitors = configured_monitors(_get(trainer, "callbacks"), _get(config, "target"), _get(config, "checkpoint"))
    return [
        *section_callback_problems(_get(trainer, "callbacks")),
        *monitor_problems(bool(_get(model, "use_ema")), monitors, _get(model, "val_weights") or "both"),
        *schedule_problems(model, _get(trainer, "max_epochs")),
        *num_classes_problems(_get(config, "data")),
    ]


def check_fit_config(config: Any) -> None:
    """Raises one ConfigError paragraph listing every problem; called by the CLI before anything is built."""
    validates = _get(_get(config, "trainer"), "limit_val_batches") != 0
    splits = ("train", "val") if validates else ("train",)
    raise_problems([*fit_config_problems(config), *data_file_problems(_get(config, "data"), splits)])


def check_eval_config(config: Any, subcommand: str) -> None:
    """validate/test/predict: the class count (also against ``--ckpt_path``'s network) and the files read."""
    data = _get(config, "data")
    files = data_file_problems(data, () if subcommand == "predict" else ("val",))  # predict: its own inputs
    raise_problems([*files, *num_classes_problems(data), *checkpoint_class_problems(config, _get(config, "ckpt_path"))])


def raise_problems(problems: list[str]) -> None:
    if problems:
        count = "Config problem" if len(problems) == 1 else f"{len(problems)} config problems"
        raise ConfigError(" ".join([f"{count}, found before anything ran:", *problems]))
