"""Run by test_quasi_random.py: quasi_random order on 2 CPU DDP ranks (gloo), stopped mid-epoch and resumed.

    python tests/ddp_quasi_probe.py DATA_DIR OUT_DIR

Fit A runs epoch 0 and 3 batches of epoch 1, saves a checkpoint there (as a spot notice would) and stops; fit B,
a fresh Trainer and model, resumes from it and finishes epoch 1. Only the checkpoint's state crosses over: the
datamodule object is reused (its loaders skip a second pipeline compile) but loads that state like a new one.
Each rank writes what each fit fed it and how many page slots FFCV's own cache (os_cache false) allocated per
epoch. Lightning's ``ddp`` strategy starts rank 1 by running this same command again; both fits run in both.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
from data_helpers import ProbeModule
from helpers import quiet_trainer

from resnet_ffcv.data.datamodule import FFCVDataModule

BATCH, PAGES, STOP_AT = 10, 2, (1, 3)  # 200 samples per rank: 20 batches an epoch; stop after 3 of epoch 1


class StopAt(L.Callback):
    def __init__(self, path: Path):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx + 1) == STOP_AT:
            trainer.save_checkpoint(self.path)  # every rank: it ends in a barrier
            trainer.should_stop = True


class Slots(L.Callback):
    """Page slots of FFCV's process cache for each epoch: what it holds in memory at once, at most."""

    def __init__(self):
        self.per_epoch: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        live = trainer.datamodule._last_train._live
        if live is not None and len(self.per_epoch) <= trainer.current_epoch:
            self.per_epoch.append(live.memory_context.schedule.num_slots)


def fit(data: FFCVDataModule, callbacks: list, ckpt_path: str | None = None) -> tuple[ProbeModule, L.Trainer]:
    model = ProbeModule(num_classes=400)
    trainer = quiet_trainer(strategy="ddp", devices=2, max_epochs=2, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return model, trainer


def main(data_dir: str, out_dir: str) -> None:
    checkpoint = Path(out_dir) / "mid.ckpt"
    data = FFCVDataModule(
        data_dir,
        batch_size=BATCH,
        num_workers=1,
        train_resolution=32,
        val_resolution=32,
        order="quasi_random",
        os_cache=False,
        quasi_random_pages=PAGES,
    )
    slots = Slots()
    first, trainer = fit(data, [StopAt(checkpoint), slots])
    second, _ = fit(data, [], str(checkpoint))
    record = {"first": first.train_seen, "second": second.train_seen, "slots": slots.per_epoch}
    (Path(out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
