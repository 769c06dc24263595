"""Everything about continuing a run: the checkpoint file names, which file to resume from, whether it fits the
model, and the W&B run id that makes a restarted run log into the same W&B run.

The one place that spells the names of the checkpoint directory's files (everything else imports them):

    checkpoint_latest.ckpt      every epoch end, and mid-epoch on a spot notice / SIGTERM / SIGINT
    checkpoint_epoch_{N}.ckpt   every ``checkpoint_interval`` epochs (N = epochs completed)
    best_model.ckpt             the epoch with the best monitored value so far
    wandb_run_id.txt            the W&B run id of the run that writes this directory
    <name>.sha256               the sha256 of each checkpoint file, checked before resuming from it
    .lock                       held (flock) by the one ``fit`` writing this directory (checkpoint_lock.py)
    previous-<time>/            old files moved aside by ``fit --fresh_start true`` (never deleted)

Lower layer: imports no callback and no CLI module, so the callbacks, the CLI and the tools can all use it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_only

from resnet_ffcv import atomic
from resnet_ffcv.errors import UserError
from resnet_ffcv.run.checkpoint_lock import LOCK_NAME, CheckpointGuardError

LATEST_NAME = "checkpoint_latest.ckpt"
BEST_NAME = "best_model.ckpt"
WANDB_ID_FILE = "wandb_run_id.txt"
_PERIODIC_PREFIX, _SUFFIX = "checkpoint_epoch_", ".ckpt"
_PERIODIC_PATTERN = re.compile(rf"^{_PERIODIC_PREFIX}(\d+){re.escape(_SUFFIX)}$")

# Hyperparameters that change the network's shape: a checkpoint written with other values cannot be continued.
SHAPE_HPARAMS = ("arch", "num_classes")


CHECKSUM_SUFFIX = ".sha256"
PREVIOUS_PREFIX = "previous-"

# Hyperparameters that may differ between a checkpoint and the rerun's config without asking: where the data
# lives and how fast it is read change no result (a spot machine may mount the dataset elsewhere), and a resumed
# run never reads model.init_weights (the checkpoint holds the weights).
IGNORED_HPARAMS = frozenset(
    {"data.data_dir", "data.num_workers", "data.os_cache", "data.batches_ahead", "model.init_weights"}
)


class IncompatibleCheckpointError(UserError, ValueError):
    """The checkpoint to resume from was written by a different model configuration."""


class ChecksumMismatch(ValueError):
    """A checkpoint's bytes differ from the sha256 recorded beside it when it was written."""


class NoLoadableCheckpoint(CheckpointGuardError):
    """The checkpoint directory holds checkpoint files and none of them can be resumed from."""


class SettingsDiffer(CheckpointGuardError):
    """The rerun's config differs from the checkpoint's hyperparameters and no ``--resume_with`` says which."""


_noted: set[Path] = set()  # files whose missing sidecar was already mentioned (one note per file)


def checksum_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + CHECKSUM_SUFFIX)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Streaming sha256 (4 MiB reads): a 300 MB checkpoint costs a fraction of a second, far less than a load."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checksum(path: Path, digest: str) -> None:
    """``<name>.sha256`` in ``sha256sum`` format, written atomically (``sha256sum -c`` checks it by hand)."""
    atomic.write_text(checksum_path(path), f"{digest}  {Path(path).name}\n")


def verify_checksum(path: Path) -> str | None:
    """Raises :class:`ChecksumMismatch` on a difference; a note when there is no sidecar (an older run's file).

    The sidecar is removed before a checkpoint is renamed into place and written after, so a kill between the
    two leaves a file without a sidecar (accepted), never a good file with a wrong sum.
    """
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        if Path(path) in _noted:
            return None
        _noted.add(Path(path))
        return f"{Path(path).name} has no {sidecar.name} (written before checksums): not verified"
    recorded = (sidecar.read_text().split() or [""])[0]
    actual = file_sha256(path)
    if actual != recorded:
        raise ChecksumMismatch(f"checksum mismatch: sha256 {actual[:12]}... but {sidecar.name} says {recorded[:12]}...")
    return None


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


def load_checkpoint_header(path: Path, verify: bool = True) -> dict[str, Any]:
    """Loads a checkpoint memory-mapped (tensors stay on disk), so checking a 300 MB file costs milliseconds.

    Raises on a truncated or foreign file, and (``verify``) on a checksum mismatch. ``weights_only=False``:
    these are our own files, and Lightning stores hyperparameters and loop state as plain Python objects.
    """
    if verify:
        note = verify_checksum(path)
        if note:
            rank_zero_info(f"Note: {note}")
    checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    missing = [key for key in ("state_dict", "loops", "optimizer_states") if key not in checkpoint]
    if missing:
        raise ValueError(f"not a full training checkpoint (no {', '.join(missing)})")
    return checkpoint


def _describe(error: BaseException, limit: int = 100) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def find_resume_checkpoint(
    directory: Path, latest_name: str = LATEST_NAME, fresh: str = "from scratch"
) -> tuple[Path | None, str]:
    """The file a restart should continue from, and a sentence saying which and why.

    ``latest_name`` first; if it is missing, unreadable or fails its checksum, the newest periodic file that
    loads. Raises :class:`NoLoadableCheckpoint` when checkpoint files exist and none loads: starting from
    scratch would overwrite them (``best_model.ckpt`` included) with an untrained model.
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
    others = sorted(
        p for p in directory.glob(f"*{_SUFFIX}") if p.name != latest.name and periodic_epochs(p.name) is None
    )
    if problems == [f"{latest.name} is missing"] and not others:
        return None, f"No checkpoint in {directory}: starting {fresh}"
    lines = [*problems, *(f"{p.name} is not a resume point (use --ckpt_path {p} to continue from it)" for p in others)]
    raise NoLoadableCheckpoint(
        f"The checkpoint directory {directory} holds checkpoint files, but none can be resumed from:\n  "
        + "\n  ".join(lines)
        + "\nNothing was trained or overwritten. To start from scratch anyway, rerun with --fresh_start true: "
        "the old files are moved into a previous-<time>/ folder there, not deleted."
    )


def move_aside(directory: Path) -> Path | None:
    """``--fresh_start``: moves the directory's files (checkpoints, sums, W&B id, temp files) into
    ``previous-<time>/`` inside it, so a fresh run never destroys what an earlier one wrote."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    keep = {LOCK_NAME}
    moving = [p for p in directory.iterdir() if p.name not in keep and not p.name.startswith(PREVIOUS_PREFIX)]
    if not moving:
        return None
    target = directory / f"{PREVIOUS_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(exist_ok=False)  # same second twice: refuse rather than mix two runs' files
    for path in moving:
        shutil.move(path, target / path.name)
    atomic.fsync_dir(directory)
    return target


def epochs_done(checkpoint: dict[str, Any]) -> int:
    """Completed epochs: ``processed`` is increased before ``on_train_epoch_end``, where the latest file is
    written (a mid-epoch save has processed == the running epoch's index)."""
    return checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


def finished_reason(checkpoint: dict[str, Any], trainer) -> str | None:
    """Why a run resumed from ``checkpoint`` would train nothing (max_epochs, max_steps, target), or None."""
    done = epochs_done(checkpoint)
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs >= 0 and done >= max_epochs:
        return f"{done} of trainer.max_epochs={max_epochs} epochs are done"
    if trainer.max_steps is not None and trainer.max_steps >= 0 and checkpoint["global_step"] >= trainer.max_steps:
        return f"global step {checkpoint['global_step']} reached trainer.max_steps={trainer.max_steps}"
    for callback in trainer.callbacks:
        # TargetAccuracyStop (an EarlyStopping): its saved state says the threshold stopped the run, as its own
        # on_train_start decides on a rerun (best_score is not updated on the stopping epoch).
        if getattr(callback, "target_accuracy", None) is None or not hasattr(callback, "state_key"):
            continue
        state = checkpoint.get("callbacks", {}).get(callback.state_key, {})
        if state.get("stopping_reason") == EarlyStoppingReason.STOPPING_THRESHOLD.value:
            epoch = state.get("stopped_epoch", -1) + 1  # counted from 1, as in the log and checkpoint names
            return f"the target accuracy was reached ({callback.monitor}, after epoch {epoch})"
    return None


def _flat(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{key}": value for key, value in dict(values).items()}


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value  # YAML gives lists where the code wrote tuples


def settings_differences(checkpoint: dict[str, Any], model, datamodule) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, config value) for every model / data hyperparameter the rerun changes.

    ``trainer.*`` is not in a checkpoint: extending ``trainer.max_epochs`` continues without asking.
    """
    saved = _flat("model", checkpoint.get("hyper_parameters", {}))
    saved |= _flat("data", checkpoint.get("datamodule_hyper_parameters", {}))
    current = _flat("model", model.hparams)
    if datamodule is not None:
        current |= _flat("data", datamodule.hparams)
    return [
        (key, saved[key], current[key])
        for key in sorted(saved.keys() & current.keys())
        if key not in IGNORED_HPARAMS
        and not key.split(".", 1)[1].startswith("_")  # Lightning's own entries (_instantiator)
        and _normal(saved[key]) != _normal(current[key])
    ]


def describe_differences(path: Path, differences: list[tuple[str, Any, Any]]) -> str:
    rows = "\n".join(f"  {key}: {old!r} in the checkpoint, {new!r} in this config" for key, old, new in differences)
    return (
        f"This config differs from the one that wrote {path}:\n{rows}\n"
        "Rerun with --resume_with config (continue the checkpoint's training with these new values), "
        "--resume_with checkpoint (continue with the checkpoint's values), or --fresh_start true (start over; "
        "the old files are moved aside). Raising trainer.max_epochs alone needs none of these."
    )


def expected_checkpoint_bytes(model, keep_files: int) -> int:
    """A simple upper estimate of what the checkpoint directory must hold, documented in docs/spot-safety.md.

    One file = the module's state (parameters, buffers and the EMA copy, all in ``state_dict``) + one optimizer
    buffer per parameter (SGD momentum). ``keep_files`` distinct files: hard-linked names count once only while
    they share the latest file's inode, so each counts here (latest, its temp copy during an overwrite, best and
    the kept periodic files).
    """
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    momentum = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return (state + momentum) * keep_files


def configured_checkpoint_dir(trainer) -> Path | None:
    """The checkpoint callback's directory: the one place that says where checkpoints live."""
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
        return Path(callback.dirpath)
    return None


def resolve_resume_path(trainer, ckpt_path: str | None, fresh: str = "from scratch") -> str | None:
    """An explicit ``ckpt_path`` wins; else the checkpoint dir's latest (or newest loadable periodic) file.

    ``fresh`` says what a run without one starts from (``from init_weights FILE`` for a fine-tune)."""
    if ckpt_path is not None:
        rank_zero_info(f"Resuming from {ckpt_path} (--ckpt_path)")
        return ckpt_path
    callback = trainer.checkpoint_callback
    directory = configured_checkpoint_dir(trainer)
    if directory is None:
        rank_zero_info(f"No checkpoint callback with a fixed dirpath: starting {fresh}")
        return None
    if not getattr(callback, "auto_resume", True):
        rank_zero_info(f"auto_resume is off: starting {fresh} (checkpoints go to {directory})")
        return None
    latest_name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    path, explanation = find_resume_checkpoint(directory, latest_name, fresh)
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
