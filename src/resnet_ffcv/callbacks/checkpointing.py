"""A checkpoint directory a spot run can be killed over: atomic writes, latest, periodic and best files.

The file names (latest, periodic, best, the W&B run id) and the choice of the file to resume from live in
:mod:`resnet_ffcv.run.resume`; this callback decides when those files are written and writes them atomically.

Each epoch serializes the state once (the latest file); best and periodic files are hard links to that file (a
copy where the filesystem has no hard links), so three names cost one write. Linked names share their bytes,
which is safe because nothing here rewrites a file in place: every write renames a new file into a name.
"""

from __future__ import annotations

import errno
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from resnet_ffcv import atomic
from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.run import checkpoint_lock
from resnet_ffcv.run.finite import TrainingDiverged, non_finite_tensors
from resnet_ffcv.run.resume import (
    BEST_NAME,
    CHECKSUM_SUFFIX,
    LATEST_NAME,
    WANDB_ID_FILE,
    checksum_path,
    file_sha256,
    periodic_checkpoints,
    periodic_name,
    write_checksum,
)
from resnet_ffcv.run.stall_count import STALL_COUNT_FILE
from resnet_ffcv.run.storage import RemoteCheckpointDir, is_url

# Test seam: seconds to pause after the bytes are written and before the rename, when the write replaces an
# existing file, so a test can kill -9 the process while a checkpoint is being overwritten. Tests only.
WRITE_PAUSE_ENV = "RESNET_FFCV_TEST_CHECKPOINT_WRITE_PAUSE_S"
# Test seam: a save that replaces an existing file fails with ENOSPC, as on a full disk (a full filesystem cannot
# be made here without root). Tests only.
DISK_FULL_ENV = "RESNET_FFCV_TEST_CHECKPOINT_DISK_FULL"


# ModelCheckpoint warns about a non-empty directory; resuming from a non-empty directory is the point here.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temp file in the target's directory, flush + fsync, ``os.replace``, fsync dir.

    Why not Lightning's own save: ``TorchCheckpointIO`` (``_atomic_save`` in lightning 2.6) serializes to
    memory and writes through an fsspec transaction whose temporary file is made by ``tempfile.mkstemp()`` in
    the *system* temp dir, then moved with ``shutil.move``: no fsync, and when /tmp is another filesystem than
    the checkpoint dir (tmpfs vs. EBS/NVMe, the usual case on cloud machines) the move is a copy into the
    final name, so a kill in the middle leaves a truncated checkpoint. A rename inside one directory is atomic
    on POSIX filesystems. Local paths only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint: storage_options are not supported")
        target = Path(path)
        try:
            with atomic.replacing(target) as temp:
                with open(temp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    pause = float(os.environ.get(WRITE_PAUSE_ENV, "0") or 0)
                    if pause > 0 and target.exists():
                        time.sleep(pause)
                    if os.environ.get(DISK_FULL_ENV) and target.exists():
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(temp))
                    os.fsync(f.fileno())
                digest = file_sha256(temp)  # the bytes on disk (page cache: cheap), hashed once for every name
                # The old sum goes before the rename: a kill in between leaves a file without a sum (accepted
                # with a note), never a good file with a stale sum (which would be refused).
                checksum_path(target).unlink(missing_ok=True)
            write_checksum(target, digest)
        except OSError as error:
            if checkpoint_lock.is_disk_full(error):
                raise checkpoint_lock.disk_full_error(target.parent, error) from None
            raise


def refuse_non_finite(trainer: L.Trainer, path: Path) -> None:
    """Raises :class:`TrainingDiverged` instead of saving weights or EMA that hold NaN/Inf over a good file.

    Every save goes through here (epoch end, spot notice, SIGTERM; best and periodic files are links to the
    latest), so a diverged model never replaces a checkpoint. Each rank checks its own (identical) copy: all
    ranks refuse together, none waits in the save's barrier.
    """
    bad = non_finite_tensors(trainer.lightning_module.state_dict())
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise TrainingDiverged(
            f"refusing to save {path}: {len(bad)} tensors of the model hold NaN/Inf ({shown}); the run diverged "
            f"by step {trainer.global_step}, epoch {trainer.current_epoch}, LR {lr:.4g}. Nothing was written: "
            f"the checkpoints in {path.parent} are the last good ones. Exit code 1 (a divergence is not retried); "
            "lower model.lr (or raise model.warmup_epochs), then rerun to resume from the last good checkpoint."
        )


DEFAULT_DIRPATH = "checkpoints"  # relative to the working directory, when ``checkpoint.dirpath`` is null


class SpotCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint arranged for spot instances: one directory, fixed names, atomic writes.

    ModelCheckpoint keeps the best-so-far bookkeeping (``best_model_score``, saved in every checkpoint and
    restored on resume), the ``trainer.checkpoint_callback`` / ``ckpt_path="last"`` integration and the
    monitor validation. This class decides *when* files are written (once per epoch end, plus
    :meth:`save_latest` for interruptions) and replaces the strategy's checkpoint writer by
    :class:`AtomicCheckpointIO`.

    Args:
        dirpath: the checkpoint directory; restarts look here, so it must outlive the instance: an EBS volume
            (not instance storage), or an object-store URL ``s3://bucket/run`` that outlives the zone too
            (see :mod:`resnet_ffcv.run.storage`). Null: ``checkpoints`` in the working
            directory (with ``run_dir`` set, the CLI fills in ``<run_dir>/checkpoints``).
        monitor: metric that picks ``best_model.ckpt``: ``val/acc1``, or ``val/acc1_ema`` when EMA is on.
        mode: ``max`` for accuracies, ``min`` for losses.
        checkpoint_interval: write ``checkpoint_epoch_{N}.ckpt`` every this many epochs; 0 turns them off.
        keep_periodic: how many periodic files to keep (the newest); -1 keeps all.
        auto_resume: ``fit`` without ``--ckpt_path`` resumes from ``checkpoint_latest.ckpt`` here (falling
            back to the newest loadable periodic file); false starts from scratch every time.
        verbose: log a line for every file written.
    """

    CHECKPOINT_NAME_LAST = Path(LATEST_NAME).stem

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/acc1",
        mode: str = "max",
        checkpoint_interval: int = 5,
        keep_periodic: int = -1,
        auto_resume: bool = True,
        verbose: bool = True,
    ):
        dirpath = DEFAULT_DIRPATH if dirpath is None else dirpath
        if checkpoint_interval < 0:
            raise InvalidValue(f"SpotCheckpoint checkpoint_interval={checkpoint_interval}: expected >= 0 (0 = off)")
        if keep_periodic == 0 or keep_periodic < -1:
            raise InvalidValue(f"SpotCheckpoint keep_periodic={keep_periodic}: expected -1 (all) or a count >= 1")
        self.remote: RemoteCheckpointDir | None = None
        if is_url(dirpath):  # object storage: files go to a local mirror, then the bucket (storage.py)
            self.remote = RemoteCheckpointDir(str(dirpath))
            for note in self.remote.hydrate(LATEST_NAME, (WANDB_ID_FILE, STALL_COUNT_FILE)):
                rank_zero_info(note)
            dirpath = str(self.remote.local)
        super().__init__(
            dirpath=dirpath,
            filename=Path(BEST_NAME).stem,
            monitor=monitor,
            mode=mode,
            save_top_k=1,
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
            verbose=verbose,
        )
        self.checkpoint_interval = checkpoint_interval
        self.keep_periodic = keep_periodic
        self.auto_resume = auto_resume

    @property
    def directory(self) -> Path:
        return Path(self.dirpath)

    # -- setup ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        strategy = trainer.strategy
        if type(strategy.checkpoint_io) is TorchCheckpointIO:
            strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(strategy.checkpoint_io, AtomicCheckpointIO):
            rank_zero_warn(
                f"SpotCheckpoint: the strategy writes checkpoints with "
                f"{type(strategy.checkpoint_io).__name__}, which may not write atomically; "
                "a crash during a write could corrupt a checkpoint"
            )
        if trainer.is_global_zero and stage == "fit":
            # The CLI took the lock before deciding the resume; a plain Trainer takes it here. Only the holder
            # removes temp files, so they can only be a dead writer's (a live one holds the lock).
            checkpoint_lock.acquire(self.directory)
            for pattern in ("*.ckpt", f"*{CHECKSUM_SUFFIX}"):
                for stale in self.directory.glob(atomic.temp_name_pattern(pattern)):  # a process killed mid-write
                    stale.unlink(missing_ok=True)
            if self.remote is not None and (self.directory / WANDB_ID_FILE).is_file():  # written by the CLI
                self.remote.upload_small(self.directory / WANDB_ID_FILE)

    # -- when to write -------------------------------------------------------------------------------------
    def on_train_batch_end(self, *args, **kwargs) -> None:
        """No step- or time-based saves: interruptions call :meth:`save_latest` instead."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Saves happen at the train epoch end, which Lightning calls after that epoch's validation."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        improved = self._update_best(trainer, candidates)
        latest = self.save_latest(trainer)
        epochs_done = trainer.current_epoch + 1
        if improved:
            self._publish(trainer, latest, self.directory / BEST_NAME)
        if self.checkpoint_interval and epochs_done % self.checkpoint_interval == 0:
            self._publish(trainer, latest, self.directory / periodic_name(epochs_done))
            self._prune_periodic(trainer)

    def save_latest(self, trainer: L.Trainer) -> Path:
        """Writes the latest checkpoint (``LATEST_NAME``) now; every rank must call it (the save ends in a barrier)."""
        path = self.directory / LATEST_NAME
        refuse_non_finite(trainer, path)
        self.last_model_path = str(path)
        started = time.perf_counter()
        self._save_checkpoint(trainer, str(path))
        if self.remote is not None:  # uploaded before anyone reports "saved" or exits 75
            if trainer.is_global_zero:
                self.remote.upload(path)
            trainer.strategy.barrier("SpotCheckpoint.upload")
        if self.verbose:
            rank_zero_info(
                f"Saved {path} (epoch {trainer.current_epoch + 1}, step {trainer.global_step}) "
                f"in {time.perf_counter() - started:.1f} s"
            )
        return path

    def _update_best(self, trainer: L.Trainer, candidates: dict[str, torch.Tensor]) -> bool:
        """ModelCheckpoint's top-1 bookkeeping without its write: the write is the latest file."""
        current = candidates.get(self.monitor)
        if current is None:
            if trainer.fit_loop.epoch_loop.val_loop._has_run:  # as ModelCheckpoint decides it
                raise InvalidValue(
                    f"SpotCheckpoint monitor={self.monitor!r}: not among the logged metrics {sorted(candidates)}"
                )
            return False
        if not self.check_monitor_top_k(trainer, current):
            return False
        if torch.isnan(current):
            return False
        path = str(self.directory / BEST_NAME)
        self.current_score = current
        self.best_k_models = {path: current}
        self.kth_best_model_path = self.best_model_path = path
        self.kth_value = self.best_model_score = current
        if self.verbose:
            rank_zero_info(f"Epoch {trainer.current_epoch + 1}: {self.monitor} = {current.item():.4f}, new best")
        return True

    def _publish(self, trainer: L.Trainer, source: Path, target: Path) -> None:
        """``target`` becomes another name of ``source``, with its own copy of the checksum sidecar."""
        if trainer.is_global_zero:
            try:
                checksum_path(target).unlink(missing_ok=True)  # as in AtomicCheckpointIO: never a stale sum
                atomic.link(source, target)
                if checksum_path(source).is_file():
                    atomic.write_bytes(
                        checksum_path(target),
                        checksum_path(source).read_bytes().replace(source.name.encode(), target.name.encode()),
                    )
                if self.remote is not None:
                    self.remote.copy(source.name, target.name)
            except OSError as error:
                if checkpoint_lock.is_disk_full(error):
                    raise checkpoint_lock.disk_full_error(self.directory, error) from None
                raise
        trainer.strategy.barrier("SpotCheckpoint._publish")

    def _prune_periodic(self, trainer: L.Trainer) -> None:
        if self.keep_periodic < 0 or not trainer.is_global_zero:
            return
        for path in periodic_checkpoints(self.directory)[self.keep_periodic :]:
            path.unlink(missing_ok=True)
            checksum_path(path).unlink(missing_ok=True)
        if self.remote is not None:
            self.remote.prune_periodic(self.keep_periodic)
