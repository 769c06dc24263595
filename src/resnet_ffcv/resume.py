"""Everything about continuing a run: the checkpoint file names, which file to resume from, whether it fits the
model, and the W&B run id that makes a restarted run log into the same W&B run.

The one place that spells the names of the checkpoint directory's files (everything else imports them):

    checkpoint_latest.ckpt      every epoch end, and mid-epoch on a spot notice / SIGTERM / SIGINT
    checkpoint_epoch_{N}.ckpt   every ``checkpoint_interval`` epochs (N = epochs completed)
    best_model.ckpt             the epoch with the best monitored value so far
    wandb_run_id.txt            the W&B run id of the run that writes this directory

Lower layer: imports no callback and no CLI module, so the callbacks, the CLI and the tools can all use it.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from resnet_ffcv import atomic
from resnet_ffcv.errors import UserError

LATEST_NAME = "checkpoint_latest.ckpt"
BEST_NAME = "best_model.ckpt"
WANDB_ID_FILE = "wandb_run_id.txt"
_PERIODIC_PREFIX, _SUFFIX = "checkpoint_epoch_", ".ckpt"
_PERIODIC_PATTERN = re.compile(rf"^{_PERIODIC_PREFIX}(\d+){re.escape(_SUFFIX)}$")

# Hyperparameters that change the network's shape: a checkpoint written with other values cannot be continued.
SHAPE_HPARAMS = ("arch", "num_classes")


class IncompatibleCheckpointError(UserError, ValueError):
    """The checkpoint to resume from was written by a different model configuration."""


def periodic_name(epochs_done: int) -> str:
    """The periodic checkpoint's file name after ``epochs_done`` completed epochs."""
    return f"{_PERIODIC_PREFIX}{epochs_done}{_SUFFIX}"


def periodic_epochs(name: str) -> int | None:
    """The N of a periodic checkpoint's file name, None for any other name."""
    match = _PERIODIC_PATTERN.match(name)
    return int(match.group(1)) if match else None


def periodic_checkpoints(directory: Path) -> list[Path]:
    """The periodic checkpoint files in ``directory``, newest (largest N) first."""
    paths = Path(directory).glob(f"{_PERIODIC_PREFIX}*{_SUFFIX}")
    found = [(n, p) for p in paths if (n := periodic_epochs(p.name)) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def load_checkpoint_header(path: Path) -> dict[str, Any]:
    """Loads a checkpoint memory-mapped (tensors stay on disk), so checking a 300 MB file costs milliseconds.

    Raises on a truncated or foreign file. ``weights_only=False``: these are our own files, and Lightning
    stores hyperparameters and loop state as plain Python objects.
    """
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    missing = [key for key in ("state_dict", "loops", "optimizer_states") if key not in checkpoint]
    if missing:
        raise ValueError(f"not a full training checkpoint (no {', '.join(missing)})")
    return checkpoint


def _describe(error: BaseException, limit: int = 100) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def find_resume_checkpoint(directory: Path, latest_name: str = LATEST_NAME) -> tuple[Path | None, str]:
    """The file a restart should continue from, and a sentence saying which and why.

    ``latest_name`` first; if it is missing or unreadable, the newest periodic file that loads.
    """
    directory = Path(directory)
    latest = directory / latest_name
    problems = []
    if latest.is_file():
        try:
            load_checkpoint_header(latest)
            return latest, f"Resuming from {latest}"
        except Exception as error:  # noqa: BLE001 - any load failure means: try the next file
            problems.append(f"{latest.name} is unreadable ({_describe(error)})")
    else:
        problems.append(f"{latest.name} is missing")
    for path in periodic_checkpoints(directory):
        try:
            load_checkpoint_header(path)
        except Exception as error:  # noqa: BLE001
            problems.append(f"{path.name} is unreadable ({_describe(error)})")
            continue
        return path, f"Resuming from {path}: {'; '.join(problems)}"
    if problems == [f"{latest.name} is missing"]:
        return None, f"No checkpoint in {directory}: starting from scratch"
    return None, f"No loadable checkpoint in {directory} ({'; '.join(problems)}): starting from scratch"


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
