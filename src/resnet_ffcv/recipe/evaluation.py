"""What validation measures: top-1/top-5/loss of the raw and the EMA weights (``model.val_weights``), the better of
the two as ``val/acc1_best``, and each evaluation sample counted once under DDP.

``config_checks`` and ``plan`` read the metric names from here (what a monitor may name, how many passes a
validation costs), so they never need the LightningModule itself.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.data import DistributedSampler
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

ValWeights = Literal["both", "ema", "raw"]
NAMES = ("loss", "acc1", "acc5")


def eval_suffixes(with_ema: bool, val_weights: ValWeights = "both") -> list[str]:
    """Metric name suffixes of the weights validated: ``""`` for the raw weights, ``"_ema"`` for the EMA."""
    if not with_ema:
        return [""]
    return {"both": ["", "_ema"], "ema": ["_ema"], "raw": [""]}[val_weights]


def eval_metrics(num_classes: int, with_ema: bool, val_weights: ValWeights = "both") -> nn.ModuleDict:
    """``acc1``, ``acc5`` and ``loss`` for the raw weights, and the same with ``_ema`` for the EMA weights.

    Top-5 becomes top-``num_classes`` below 5 classes (torchmetrics refuses ``top_k > num_classes``).
    """
    top_k = min(5, num_classes)
    return nn.ModuleDict(
        {
            f"{name}{suffix}": metric
            for suffix in eval_suffixes(with_ema, val_weights)
            for name, metric in (
                ("acc1", MulticlassAccuracy(num_classes, top_k=1, average="micro")),
                ("acc5", MulticlassAccuracy(num_classes, top_k=top_k, average="micro")),
                ("loss", MeanMetric()),
            )
        }
    )


def evaluated_networks(network: nn.Module, ema_network: nn.Module | None, val_weights: ValWeights) -> dict:
    """suffix -> the network validated under it (``val_weights`` picks raw, EMA or both)."""
    every = {"": network} | ({"_ema": ema_network} if ema_network is not None else {})
    return {suffix: every[suffix] for suffix in eval_suffixes(ema_network is not None, val_weights)}


def best_accuracies(metrics: nn.ModuleDict, with_ema: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-1, top-5) of the better weights by top-1: what ``val/acc1_best`` and ``val/acc5_best`` log.

    ``compute()`` syncs across ranks and caches, so Lightning's own compute of the logged metrics reuses it.
    """
    acc1, acc5 = metrics["acc1"].compute(), metrics["acc5"].compute()
    if with_ema:
        ema1, ema5 = metrics["acc1_ema"].compute(), metrics["acc5_ema"].compute()
        acc1, acc5 = (ema1, ema5) if ema1 >= acc1 else (acc1, acc5)
    return acc1, acc5


def real_samples_on_rank(total: int, world_size: int, rank: int) -> int:
    """How many of this rank's evaluation samples are real, not padding.

    ``DistributedSampler(shuffle=False, drop_last=False)`` (FFCV's distributed sequential order, and what
    Lightning injects into a plain DataLoader) gives rank ``r`` the indices ``r, r + W, ...`` of the dataset
    and then repeats samples so every rank gets ``ceil(total / W)``; the repeats come last.
    """
    return len(range(rank, total, world_size))


def padded_total(loaders) -> int | None:
    """The evaluation set's size when a ``DistributedSampler`` pads this rank's share, else None.

    Our FFCVDataModule shards validation without padding (disjoint ``indices`` per rank), so nothing is trimmed
    there; this covers plain DataLoaders, into which Lightning injects a padding DistributedSampler.
    """
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if len(loaders) == 1 else None
    sampler = getattr(loaders, "sampler", None)
    if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
        return len(sampler.dataset)
    return None


class RealSamples:
    """Counts, batch by batch, how many of an evaluation epoch's samples on this rank are real (not padding)."""

    def __init__(self) -> None:
        self.seen = 0

    def reset(self) -> None:
        self.seen = 0

    def take(self, batch_size: int, loaders, world_size: int, rank: int) -> int:
        """Samples of this batch to count: under DDP the padding repeats of the last batches are dropped."""
        if world_size == 1 or (total := padded_total(loaders)) is None:
            return batch_size
        count = max(0, min(batch_size, real_samples_on_rank(total, world_size, rank) - self.seen))
        self.seen += batch_size
        return count
