"""``resnet-ffcv predict``'s output: ``predict_step``'s top-k classes per image -> a CSV and a table.

    resnet-ffcv predict --config configs/p4d_78pct.yaml --config configs/predict.yaml \\
        --ckpt_path /data/checkpoints/best_model.ckpt --data.predict_path my_images/     # or some.ffcv

LightningCLI's own ``predict`` subcommand runs it; ``configs/predict.yaml`` is the overlay that turns a training
config into a prediction run (one device, no logger, :class:`PredictionWriter` as the only callback). The input
side (image folders, FFCV's centre crop) is :mod:`resnet_ffcv.data.image_files`.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from resnet_ffcv import atomic
from resnet_ffcv.errors import InvalidValue


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict_step``'s top-k as a CSV and prints the first rows as a table.

    CSV columns: ``path`` (relative to ``data.predict_path``; ``index`` for a ``.ffcv`` file), then
    ``class_1, prob_1, ... class_k, prob_k``, most likely first, one row per image in input order. The file
    is written to a temporary name and renamed, so an interrupted run never leaves half a CSV under ``output``.

    Everything is gathered in one process: run predict with ``trainer.devices: 1`` (a multi-process run is
    refused at setup, before any image is decoded; gathering across DDP ranks is not implemented).
    Lightning's own ``BasePredictionWriter`` gives the hooks; gathering and formatting are ours because
    Lightning ships no concrete writer.

    Args:
        output: CSV path (folders are created).
        print_rows: table rows printed to the console (0: none).
    """

    def __init__(self, output: str = "predictions/predictions.csv", print_rows: int = 20):
        super().__init__(write_interval="batch")
        if print_rows < 0:
            raise InvalidValue(f"PredictionWriter.print_rows={print_rows}: expected >= 0")
        self.output = Path(output)
        self.print_rows = print_rows
        self._indices: list[torch.Tensor] = []
        self._classes: list[torch.Tensor] = []
        self._probabilities: list[torch.Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict" and trainer.world_size > 1:
            raise InvalidValue(
                f"PredictionWriter gathers predictions in one process, this run has {trainer.world_size}: "
                "set trainer.devices: 1 and trainer.num_nodes: 1 (configs/predict.yaml does)"
            )

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._indices, self._classes, self._probabilities = [], [], []

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict[str, torch.Tensor], batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        self._indices.append(batch[1].detach().cpu())
        self._classes.append(prediction["classes"].detach().cpu())
        self._probabilities.append(prediction["probabilities"].detach().float().cpu())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._indices:
            rank_zero_info("PredictionWriter: nothing was predicted")
            return
        indices = torch.cat(self._indices)
        order = indices.argsort()
        indices = indices[order].tolist()
        classes = torch.cat(self._classes)[order].tolist()
        probabilities = torch.cat(self._probabilities)[order].tolist()

        datamodule = trainer.datamodule
        item_names = getattr(datamodule, "predict_names", None)
        class_names = getattr(datamodule, "class_names", None)
        if class_names is None:
            warnings.warn(
                "no classes.json in data.data_dir: the CSV and the table name classes by their index",
                stacklevel=1,
            )
        key = "index" if item_names is None else "path"
        rows = [
            [str(index) if item_names is None else item_names[index]]
            + [
                value
                for label, probability in zip(row_classes, row_probabilities, strict=True)
                for value in (str(label) if class_names is None else class_names[label], f"{probability:.6g}")
            ]
            for index, row_classes, row_probabilities in zip(indices, classes, probabilities, strict=True)
        ]
        top_k = len(classes[0])
        header = [key] + [name for rank in range(1, top_k + 1) for name in (f"class_{rank}", f"prob_{rank}")]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        atomic.write_bytes(self.output, text.getvalue().encode())
        if self.print_rows:
            print(format_table(header, rows[: self.print_rows]), flush=True)
        shown = f", the first {min(self.print_rows, len(rows))} above" if self.print_rows else ""
        print(f"{len(rows)} predictions (top {top_k}) written to {os.fspath(self.output)}{shown}", flush=True)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """``path | 1st class (prob) | 2nd ...``: one column per rank, the class and its probability together."""
    cells = [[header[0]] + [f"top-{rank}" for rank in range(1, (len(header) - 1) // 2 + 1)]]
    for row in rows:
        pairs = zip(row[1::2], row[2::2], strict=True)
        cells.append([row[0]] + [f"{name} {float(probability):.3f}" for name, probability in pairs])
    widths = [max(len(line[column]) for line in cells) for column in range(len(cells[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells
    )
