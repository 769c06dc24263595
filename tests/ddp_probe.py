"""Run by test_data_ddp.py: 2 epochs of DDP on 2 CPU processes (gloo); each rank writes what it was fed.

    python tests/ddp_probe.py DATA_DIR OUT_DIR

Lightning's ``ddp`` strategy starts rank 1 by running this same command again.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from data_helpers import ProbeModule
from helpers import quiet_trainer

from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.resolution import ResolutionSchedule


def main(data_dir: str, out_dir: str) -> None:
    # FFCV's ramp: 32 px on epoch 0, 64 px from epoch 1 (the datamodule alone would say 48).
    ramp = ResolutionSchedule(min_res=32, max_res=64, start_ramp=0, end_ramp=1, round_to=32)
    trainer = quiet_trainer(strategy="ddp", devices=2, max_epochs=2)
    data = FFCVDataModule(
        data_dir,
        batch_size=8,
        val_batch_size=10,
        num_workers=1,
        train_resolution=48,
        val_resolution=32,
        resolution=ramp,
    )
    model = ProbeModule()
    trainer.fit(model, datamodule=data)
    record = {"train": model.train_seen, "val": model.val_seen, "val_synced": model.val_synced}
    (Path(out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
