"""Test helpers for the data side: .ffcv files whose label IS the sample index, and a model that records.

With label = index, a batch's labels say exactly which samples it holds: orders, shards and resumes are
checked on what the real loader served, not on what our code says it would serve.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.aggregation import CatMetric


class _Indexed:
    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng((self.seed, index))
        height, width = rng.integers(24, 56, size=2)
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), index


def write_indexed_ffcv(out: Path, train: int = 80, val: int = 41) -> Path:
    """``out/{train,val}.ffcv`` (JPEGs of 24-56 px, label = index) and a ``classes.json`` to match."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    out.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", train, 0), ("val", val, 1)):
        fields = {"image": RGBImageField(write_mode="jpg"), "label": IntField()}
        DatasetWriter(str(out / f"{name}.ffcv"), fields, num_workers=1).from_indexed_dataset(_Indexed(count, seed))
    classes = [{"index": i, "wnid": f"c{i}", "name": f"c{i}"} for i in range(max(train, val))]
    (out / "classes.json").write_text(json.dumps(classes))
    return out


class ProbeModule(L.LightningModule):
    """A linear model on mean pixel colours that records what each step was fed: cheap, and tells the truth.

    ``train_seen``: (epoch, batch_idx, resolution, labels) per training batch; ``val_seen``: labels per
    validation batch on this rank; ``val_synced``: all ranks' validation labels as torchmetrics gathers them.
    """

    def __init__(self, num_classes: int = 80):
        super().__init__()
        self.linear = torch.nn.Linear(3, num_classes)
        self.val_labels = CatMetric()
        self.train_seen: list[tuple[int, int, int, list[int]]] = []
        self.val_seen: list[list[int]] = []
        self.val_synced: list[list[int]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.float().mean(dim=(2, 3)) / 255)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        self.train_seen.append((self.current_epoch, batch_idx, int(images.shape[-1]), labels.tolist()))
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        self.val_seen.append(labels.tolist())
        self.val_labels.update(labels.float())

    def on_validation_epoch_end(self) -> None:
        self.val_synced.append(sorted(int(x) for x in self.val_labels.compute().flatten().tolist()))
        self.val_labels.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _RawIndexed(_Indexed):
    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng((self.seed, index))
        height, width = rng.integers(150, 200, size=2)
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8), index


def write_paged_ffcv(out: Path, train: int = 400, val: int = 20) -> Path:
    """Like :func:`write_indexed_ffcv` (label = index) but over many pages: raw images of ~80 KB in FFCV's
    smallest pages (2 MiB), ~21 samples a page, ~19 pages for 400 samples; what ``quasi_random`` works on."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    out.mkdir(parents=True, exist_ok=True)
    for name, count, seed in (("train", train, 0), ("val", val, 1)):
        fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}
        writer = DatasetWriter(str(out / f"{name}.ffcv"), fields, page_size=1 << 21, num_workers=1)
        writer.from_indexed_dataset(_RawIndexed(count, seed))
    classes = [{"index": i, "wnid": f"c{i}", "name": f"c{i}"} for i in range(max(train, val))]
    (out / "classes.json").write_text(json.dumps(classes))
    return out
