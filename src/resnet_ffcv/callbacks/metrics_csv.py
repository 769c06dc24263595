"""Every logged value in ``<run_dir>/metrics.csv``, without W&B and across spot restarts (``resnet-ffcv curves``).

Why not Lightning's CSVLogger: it writes ``<save_dir>/<name>/version_N/metrics.csv`` and a restart either picks a
new ``version_N+1`` (one file per process) or, given the same version, rewrites the file from the metrics of this
process only; it also rewrites the whole file when a new key appears. A spot run needs one file that every
process appends to.

Why a logger and not a callback reading ``trainer.callback_metrics``: Lightning hands metrics to loggers exactly at
``log_every_n_steps`` and at epoch ends, with the step they belong to, and keeps nothing in ``logged_metrics`` when
no logger is configured. So this callback attaches a small appending logger next to the configured ones.

Rows are long (``wall_time,step,epoch,metric,value``): metrics appear later (validation after the first epoch) or
differ between processes, and a long file appends without ever rewriting its header. Rows written after the last
checkpoint by an interrupted process are repeated by the resumed one for the same steps: readers keep the last
value per (step, metric) (:func:`read_metrics`).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

COLUMNS = ("wall_time", "step", "epoch", "metric", "value")


class AppendingCSVLogger(Logger):
    """A Lightning logger that appends one row per metric to a CSV file (rank 0 only)."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)

    @property
    def name(self) -> str:
        return "metrics_csv"

    @property
    def version(self) -> None:
        return None  # no version directories: one file per run

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """The resolved config is saved as config.yaml beside this file."""

    @rank_zero_only
    def start(self) -> None:
        """Creates the file with its header, or ends a line a killed process left half written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.is_file() or self.path.stat().st_size == 0:
            self.path.write_text(",".join(COLUMNS) + "\n")
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.write(b"\n")

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        epoch = metrics.get("epoch", "")
        now = f"{time.time():.3f}"
        rows = [(now, step, epoch, key, value) for key, value in metrics.items() if key != "epoch"]
        # Opened per call (every log_every_n_steps): each batch of rows reaches the file before the next step.
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerows(rows)


class MetricsCSV(L.Callback):
    """Appends every value the loggers receive to one CSV file during ``fit``.

    Args:
        path: the CSV file; null: off. The CLI always adds this callback as the ``metrics_csv:`` section and sets
            ``<run_dir>/metrics.csv`` when ``run_dir`` is set.
    """

    def __init__(self, path: str | None = None):
        self.path = None if path is None else Path(path)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.path is None or stage != "fit":
            return
        if any(isinstance(logger, AppendingCSVLogger) and logger.path == self.path for logger in trainer.loggers):
            return
        logger = AppendingCSVLogger(self.path)
        logger.start()
        # Appended: the configured logger (W&B) stays trainer.logger, and its save_dir stays trainer.log_dir.
        trainer.loggers = [*trainer.loggers, logger]


def read_metrics(path: str | Path) -> dict[str, dict[int, float]]:
    """metric -> {step: value} from a metrics CSV; the last row for a (step, metric) wins, malformed rows are skipped
    (the half line a kill -9 can leave)."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step, value = int(row["step"]), float(row["value"])
            except (TypeError, ValueError, KeyError):
                continue
            series.setdefault(row["metric"], {})[step] = value
    return series
