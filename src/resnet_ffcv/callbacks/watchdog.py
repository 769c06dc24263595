"""The ``watchdog:`` section: a stalled rank ends the run itself (exit 76) instead of billing GPUs while it hangs.

Each rank runs a :class:`resnet_ffcv.run.watchdog.StallWatchdog`. The main thread beats after every training
step and validation batch (an attribute write: nothing per step reaches the device). The first step of the
process, of each new resolution/batch stage (a recompile), and the first validation may take
``first_step_minutes``; anything else ``stall_minutes``. On a stall the rank writes its stacks to
``<run_dir>/stalls/rank<k>-<time>.txt``, ``summary.json`` says ``stalled``, the stall is counted beside the
checkpoints (:mod:`resnet_ffcv.run.stall_count`) and the process exits 76, or 1 once the run has stalled more
than ``max_restarts`` times. A collective that outlives ``collective_timeout_minutes`` (the DDP process group's
timeout, which the CLI sets from this section) raises in the main thread and ends the same way.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from resnet_ffcv.callbacks.checkpointing import SpotCheckpoint
from resnet_ffcv.callbacks.run_summary import RunSummary
from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.run.stall_count import STALL_COUNT_FILE, record_stall
from resnet_ffcv.run.stop_signals import STALLED_EXIT_CODE
from resnet_ffcv.run.watchdog import Progress, StallWatchdog, exit_stalled, is_collective_timeout, run_last_words

DEFAULT_STALL_DIR = "stalls"  # relative to the working directory; with run_dir set, <run_dir>/stalls


class Watchdog(L.Callback):
    """Ends a run that makes no progress. Always present for ``fit`` (the ``watchdog:`` section).

    Args:
        enabled: false turns the stall watchdog off (the collective timeout still applies).
        stall_minutes: longest time without a completed training step or validation batch.
        first_step_minutes: the allowance for the first step (start-up, torch.compile, the first data read), the
            first step of each new resolution stage (a recompile) and the first validation.
        collective_timeout_minutes: the DDP process group's timeout (torch's default is 30 min): a collective
            waiting longer raises, and the run exits 76 as for a stall. Null keeps the strategy's own.
        max_restarts: stalls a run may have (each exits 76 and is relaunched); the next one exits 1.
        stall_dir: where the stack files go; null: ``<run_dir>/stalls`` (or ``stalls`` in the working directory).
    """

    def __init__(
        self,
        enabled: bool = True,
        stall_minutes: float = 10.0,
        first_step_minutes: float = 30.0,
        collective_timeout_minutes: float | None = 15.0,
        max_restarts: int = 3,
        stall_dir: str | None = None,
    ):
        if stall_minutes <= 0 or first_step_minutes <= 0 or max_restarts < 0:
            raise InvalidValue(
                f"watchdog.stall_minutes={stall_minutes} and watchdog.first_step_minutes={first_step_minutes} "
                f"must be > 0, watchdog.max_restarts={max_restarts} >= 0"
            )
        if collective_timeout_minutes is not None and collective_timeout_minutes <= 0:
            raise InvalidValue(f"watchdog.collective_timeout_minutes={collective_timeout_minutes}: expected > 0")
        self.enabled = enabled
        self.stall_minutes = stall_minutes
        self.first_step_minutes = first_step_minutes
        self.collective_timeout_minutes = collective_timeout_minutes
        self.max_restarts = max_restarts
        self.stall_dir = Path(stall_dir or DEFAULT_STALL_DIR)
        self._watchdog: StallWatchdog | None = None
        self._trainer: L.Trainer | None = None
        self._shape = None
        self._validated = False

    # -- lifecycle -----------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled:
            return
        self._trainer = trainer
        self._watchdog = StallWatchdog(self.stall_minutes * 60, self.stall_dir, trainer.global_rank, self._on_stall)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._watchdog is None:
            return
        self._expect_first("the first training step (start-up, compile, the first data read)")
        self._watchdog.start()
        rank_zero_info(
            f"Watchdog: no progress for {self.stall_minutes:g} min ({self.first_step_minutes:g} min for a first "
            f"step) ends the run with exit {STALLED_EXIT_CODE}; stacks go to {self.stall_dir}"
        )

    def _stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if is_collective_timeout(exception):  # before Lightning's teardown, which would wait on the dead peer
            self._trainer = trainer
            rank = trainer.global_rank
            watchdog = self._watchdog or StallWatchdog(60 * self.stall_minutes, self.stall_dir, rank, None)
            watchdog._closing.set()  # its thread must not fire too
            waited = time.monotonic() - watchdog.progress.at
            stack_file = watchdog.write_stacks(watchdog.progress, waited)
            cause = f"a collective waited past the process group's timeout ({exception})"
            exit_stalled(*self._on_stall(stack_file, watchdog.progress, waited, cause=cause))
        self._stop()

    # -- progress ------------------------------------------------------------------------------------------
    def _expect_first(self, what: str) -> None:
        if self._watchdog is not None:
            self._watchdog.expect(self.first_step_minutes * 60, what)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train_shape = getattr(trainer.datamodule, "train_shape", None)
        shape = train_shape(trainer.current_epoch) if train_shape is not None else None
        if shape != self._shape and self._shape is not None:  # a new stage compiles a new graph at its first step
            self._expect_first(f"the first step at {shape} (resolution, batch): a recompile")
        elif self._watchdog is not None and self._shape is not None:
            self._watchdog.beat("the start of an epoch", trainer.global_step, trainer.current_epoch)
        self._shape = shape

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        if self._watchdog is not None:
            self._watchdog.beat("a training step", trainer.global_step, trainer.current_epoch)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._validated:
            self._validated = True
            self._expect_first("the first validation batch (the eval graph, the val loader start)")
        elif self._watchdog is not None:
            self._watchdog.beat("the start of validation", trainer.global_step, trainer.current_epoch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._watchdog is not None:
            self._watchdog.beat("a validation batch", trainer.global_step, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs checkpoint callbacks last: the epoch-end save counts toward the next epoch's first step
        # (seconds, against minutes).
        if self._watchdog is not None:
            self._watchdog.beat("the end of an epoch", trainer.global_step, trainer.current_epoch)

    # -- the stall -----------------------------------------------------------------------------------------
    def _on_stall(self, stack_file: Path | None, progress: Progress, waited: float, cause: str | None = None):
        """The paragraph, the last words (summary, count) and the exit code of this stall (watchdog thread)."""
        trainer = self._trainer
        rank = trainer.global_rank if trainer is not None else 0
        checkpoint = trainer.checkpoint_callback if trainer is not None else None
        directory = checkpoint.directory if isinstance(checkpoint, SpotCheckpoint) else None
        stalls = {"count": None}

        def count_the_stall() -> None:
            stalls["count"] = record_stall(
                directory, rank=rank, step=progress.step, epoch=progress.epoch, stacks=str(stack_file)
            )
            if checkpoint.remote is not None:
                checkpoint.remote.upload_small(directory / STALL_COUNT_FILE)

        def write_summary() -> None:
            for callback in trainer.callbacks:
                if isinstance(callback, RunSummary):
                    callback.write_file(trainer, "stalled")

        if rank == 0 and directory is not None:  # first and alone: the exit code depends on the count
            run_last_words([count_the_stall])
        exit_code, count = STALLED_EXIT_CODE, stalls["count"]
        why = cause or f"no training step or validation batch completed for {waited / 60:.1f} min"
        where = f"the stacks of every thread are in {stack_file}" if stack_file else "no stack file (see above)"
        verdict = f"exiting with code {STALLED_EXIT_CODE} (rerun the same command: it resumes from the latest one)"
        if count is not None:
            count_file = directory / STALL_COUNT_FILE
            verdict += f"; stall {count} of at most {self.max_restarts + 1} in this run ({count_file})"
            if count > self.max_restarts:
                exit_code = 1
                verdict = (
                    f"this run has now stalled {count} times (watchdog.max_restarts {self.max_restarts}): it is not "
                    f"retried again, exiting with code 1; find the cause in the stack files, then delete "
                    f"{count_file} to allow {self.max_restarts} more restarts"
                )
        paragraph = (
            f"resnet-ffcv fit: rank {rank} stalled: {why} (last progress: {progress.what}, step {progress.step}, "
            f"epoch {progress.epoch}); {where}; the checkpoints are untouched (the latest is the last one saved); "
            f"{verdict}."
        )
        return paragraph, [write_summary] if rank == 0 and trainer is not None else [], exit_code


def describe_run_safety(config, gpus: int, price_per_hour: float) -> str:
    """One line for ``plan`` and ``doctor``: the checkpoint cadence beside what a hang or a NaN can cost."""
    checkpoint, watchdog = config.checkpoint, config.watchdog
    every = checkpoint.checkpoint_interval
    cadence = "checkpoint_latest every epoch" + (f", a periodic one every {every}" if every else "")
    if not watchdog.enabled:
        hang = "watchdog off: a hang runs until the collective timeout (DDP) or forever"
    else:
        stall, first = watchdog.stall_minutes, watchdog.first_step_minutes
        price = f" = ${stall / 60 * price_per_hour:.2f}" if price_per_hour > 0 else ""
        first_price = f" = ${first / 60 * price_per_hour:.2f}" if price_per_hour > 0 else ""
        hang = (
            f"a hang costs at most {stall:g} min of {gpus} GPU(s){price} ({first:g} min{first_price} at a first "
            f"step), then exit {STALLED_EXIT_CODE}, relaunched at most {watchdog.max_restarts} times per run"
        )
    timeout = watchdog.collective_timeout_minutes
    collective = f"collective timeout {timeout:g} min" if timeout is not None else "collective timeout: torch's"
    nan = f"a NaN/Inf loss at {config.finite_loss.consecutive} checks in a row exits 1, never saved"
    return f"{cadence}; {hang}; {collective}; {nan}"
