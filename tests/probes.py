"""Callbacks that tests add through the real CLI (``--trainer.callbacks+=tests.probes.X``) to observe a run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


class ParameterDigest(L.Callback):
    """Writes, per global rank, a digest of the trained parameters plus what the rank saw of the cluster."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, parameter in sorted(pl_module.named_parameters()):
            digest.update(name.encode())
            digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
        self.out_dir.mkdir(parents=True, exist_ok=True)
        report = {
            "digest": digest.hexdigest(),
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "num_nodes": trainer.num_nodes,
            "node_rank": trainer.node_rank,
            "global_step": trainer.global_step,
            "cluster": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            "train_batches": trainer.num_training_batches,
            # The FFCV Loader inside the datamodule's EpochLoader wrapper.
            "ffcv_distributed": getattr(getattr(trainer.train_dataloader, "loader", None), "distributed", None),
        }
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(report))


class BatchLog(L.Callback):
    """Appends ``epoch batch_idx label...`` for every training step to ``out_dir/batches.txt``.

    With label = sample index (tests write such files), the lines say exactly which samples each step saw.
    """

    def __init__(self, out_dir: str):
        self.path = Path(out_dir) / "batches.txt"

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        labels = " ".join(str(label) for label in batch[1].tolist())
        with open(self.path, "a") as log:
            log.write(f"{trainer.current_epoch} {batch_idx} {labels}\n")
