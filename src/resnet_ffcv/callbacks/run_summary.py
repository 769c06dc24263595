"""What a person wants to know when a run ends, in one place: printed, written as ``summary.json``, and put into
the W&B run's summary.

Written when ``fit`` returns (finished, or target reached) and when it is interrupted (spot notice / SIGTERM: exit
75) or fails, so the file always describes the latest training process; validate/test/predict never write it. The
best values so far, the wall time and the image count are saved in checkpoints: a resumed run continues them, and
its summary covers the whole run. Time and images between the last checkpoint and an interruption are not in the
next process's totals (as for CostMonitor).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from resnet_ffcv import atomic
from resnet_ffcv.callbacks.cost import CostMonitor, images_in_batch
from resnet_ffcv.callbacks.spot import TrainingInterrupted
from resnet_ffcv.callbacks.target_accuracy import TargetAccuracyStop
from resnet_ffcv.run.finite import TrainingDiverged
from resnet_ffcv.run.watchdog import is_collective_timeout

# What ImageClassifier logs at validation (config_checks.validation_metrics): raw, EMA, and the better of the two.
TRACKED = tuple(f"val/{name}{suffix}" for suffix in ("_best", "", "_ema") for name in ("acc1", "acc5"))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunSummary(L.Callback):
    """Best and final top-1/top-5 (raw, EMA and the better of the two), best epoch, checkpoint paths, wall time,
    images/s, cost and status (finished / target_reached / interrupted / stalled / diverged / failed).

    Args:
        path: where ``summary.json`` goes (written atomically on rank 0); null: printed only. The CLI always adds
            this callback as the ``summary:`` section and sets ``<run_dir>/summary.json`` when ``run_dir`` is set.
    """

    def __init__(self, path: str | None = None):
        self.path = None if path is None else Path(path)
        self.best: dict[str, dict[str, float | int]] = {}  # metric -> {"value", "epoch"}, max over validations
        self.final: dict[str, float | int] = {}  # the last validation's values, with its "epoch"
        self.seconds_before_this_process = 0.0
        self.images_before_this_process = 0
        self.started = _now()
        self._process_start = time.monotonic()
        self._images = 0

    # -- bookkeeping ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._process_start, self._images = time.monotonic(), 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx) -> None:
        # Counted when the batch starts, not at its end: the spot section's callback saves a mid-epoch checkpoint
        # in its own on_train_batch_end, which runs before this one's (the CLI's sections come first), and the
        # resumed run skips that batch; counted at the end, every resume lost one batch from images_seen.
        self._images += images_in_batch(batch) * trainer.world_size

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        epoch = trainer.current_epoch + 1  # counted from 1, as in the progress lines and checkpoint names
        values = {key: float(trainer.callback_metrics[key]) for key in TRACKED if key in trainer.callback_metrics}
        self.final = {"epoch": epoch, **values}
        for key, value in values.items():
            if key not in self.best or value > self.best[key]["value"]:
                self.best[key] = {"value": value, "epoch": epoch}

    def wall_seconds(self) -> float:
        return self.seconds_before_this_process + time.monotonic() - self._process_start

    def images_seen(self) -> int:
        return self.images_before_this_process + self._images

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "final": self.final,
            "wall_seconds": self.wall_seconds(),
            "images_seen": self.images_seen(),
            "started": self.started,
            "epochs_from": 1,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.final = state_dict["best"], state_dict["final"]
        if state_dict.get("epochs_from", 0) == 0:  # a checkpoint written when summaries counted epochs from 0
            self.best = {key: {**best, "epoch": best["epoch"] + 1} for key, best in self.best.items()}
            self.final = {**self.final, "epoch": self.final["epoch"] + 1} if "epoch" in self.final else self.final
        self.seconds_before_this_process = state_dict["wall_seconds"]
        self.images_before_this_process = state_dict["images_seen"]
        self.started = state_dict["started"]
        self._process_start, self._images = time.monotonic(), 0

    # -- the summary ---------------------------------------------------------------------------------------
    def summary(self, trainer: L.Trainer, status: str) -> dict[str, Any]:
        """The summary as a JSON-ready dict; ``best_epoch`` is the epoch of the best ``val/acc1_best``, counted from 1
        like every epoch a user reads (progress lines, checkpoint names, logs); each best value has its own epoch."""
        wall = self.wall_seconds()
        headline = next((self.best[key] for key in ("val/acc1_best", "val/acc1") if key in self.best), None)
        checkpoint = trainer.checkpoint_callback
        paths = {
            "latest": getattr(checkpoint, "last_model_path", ""),
            "best": getattr(checkpoint, "best_model_path", ""),
        }
        cost = next((callback for callback in trainer.callbacks if isinstance(callback, CostMonitor)), None)
        return {
            "status": status,
            "epochs_completed": trainer.fit_loop.epoch_progress.current.completed,
            "global_step": trainer.global_step,
            "best_epoch": None if headline is None else headline["epoch"],
            "best": self.best,
            "final": self.final,
            "checkpoints": {name: path if path and Path(path).is_file() else None for name, path in paths.items()},
            "wall_hours": round(wall / 3600, 4),
            "images_seen": self.images_seen(),
            "images_per_sec": round(self.images_seen() / wall, 1) if wall > 0 else None,
            "cost_usd": None if cost is None else round(cost.cost_usd(), 2),
            "price_per_hour": None if cost is None else cost.price_per_hour,
            "started": self.started,
            "ended": _now(),
        }

    def write_file(self, trainer: L.Trainer, status: str) -> dict[str, Any]:
        """``summary.json`` alone (rank 0): also from the stall watchdog's thread, which must not wait on W&B."""
        summary = self.summary(trainer, status)
        if self.path is not None and trainer.is_global_zero:
            atomic.write_text(self.path, json.dumps(summary, indent=2) + "\n")
        return summary

    def _report(self, trainer: L.Trainer, status: str) -> None:
        if not trainer.is_global_zero:
            return
        summary = self.write_file(trainer, status)
        rank_zero_info(format_summary(summary, self.path))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.summary.update(wandb_summary(summary))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        target = any(
            isinstance(callback, TargetAccuracyStop)
            and callback.stopping_reason == EarlyStoppingReason.STOPPING_THRESHOLD
            for callback in trainer.callbacks
        )
        self._report(trainer, "target_reached" if target else "finished")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit":  # a failed validate/predict says nothing about the run: its summary stays
            return
        if isinstance(exception, (TrainingInterrupted, KeyboardInterrupt)):
            status = "interrupted"
        elif isinstance(exception, TrainingDiverged):
            status = "diverged"
        else:
            status = "stalled" if is_collective_timeout(exception) else "failed"
        self._report(trainer, status)


def wandb_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The best values as W&B summary keys (``val/acc1_best_max``...): the run table shows the best, not the last."""
    values = {f"{key}_max": best["value"] for key, best in summary["best"].items()}
    extra = {key: summary[key] for key in ("best_epoch", "status", "wall_hours", "images_per_sec", "cost_usd")}
    return {**values, **{f"run/{key}": value for key, value in extra.items() if value is not None}}


def format_summary(summary: dict[str, Any], path: Path | None) -> str:
    """A few lines for the console."""
    best, final = summary["best"], summary["final"]

    def accuracy(values: dict[str, Any], key: str) -> str:
        value = values.get(key)
        if isinstance(value, dict):  # a best value: at its own epoch
            return f"{value['value']:.2%} (epoch {value['epoch']})"
        return "-" if value is None else f"{value:.2%}"

    lines = [
        f"Run summary ({summary['status']}): {summary['epochs_completed']} epochs, step {summary['global_step']}, "
        f"{summary['wall_hours']:.2f} h, {summary['images_per_sec'] or 0:.0f} images/s"
        + (f", ${summary['cost_usd']:.2f}" if summary["cost_usd"] else ""),
        "  best top-1/top-5  raw {} / {}, EMA {} / {}".format(
            *(accuracy(best, f"val/acc{k}{s}") for s in ("", "_ema") for k in (1, 5))
        ),
        "  final (epoch {})  raw {} / {}, EMA {} / {}".format(
            final.get("epoch", "-"), *(accuracy(final, f"val/acc{k}{s}") for s in ("", "_ema") for k in (1, 5))
        ),
        f"  checkpoints     latest {summary['checkpoints']['latest']}, best {summary['checkpoints']['best']}",
    ]
    if path is not None:
        lines.append(f"  written to      {path}")
    return "\n".join(lines)
