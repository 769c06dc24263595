"""Run by test_model.py as ``python tests/ddp_eval_script.py OUT.json``: validation and one training step
on 2 CPU ranks (DDP, gloo). Lightning's DDP launcher re-runs this file for rank 1, so it must be a script.

15 validation samples over 2 ranks: DistributedSampler pads rank 1 with a repeat of sample 0. Rank 0 writes
the logged metrics and the same metrics computed directly on all 15 samples in one process.
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from helpers import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from resnet_ffcv.recipe.module import ImageClassifier


def main(out_path: str) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (15, 3, 32, 32), dtype=torch.uint8, generator=generator)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 4, (15,), generator=generator)
    val = DataLoader(TensorDataset(images, labels), batch_size=4)
    train = DataLoader(TensorDataset(images[:8], labels[:8]), batch_size=4)

    torch.manual_seed(0)  # identical initial weights on both ranks
    model = ImageClassifier(
        arch="shufflenet_v2_x0_5", num_classes=4, lr=0.05, use_ema=True, cutmix_prob=0.3, mixup_alpha=0.2
    )
    model.eval()
    with torch.no_grad():
        logits = model(images)
    expected = {
        "val/acc1": (logits.argmax(1) == labels).float().mean().item(),
        "val/loss": F.cross_entropy(logits, labels).item(),
    }
    trainer = quiet_trainer(devices=2, strategy="ddp")
    logged = trainer.validate(model, val, verbose=False)[0]
    fit = quiet_trainer(devices=2, strategy="ddp", max_epochs=1)
    fit.fit(model, train, val)
    if fit.global_rank == 0:
        result = {
            "logged": logged,
            "expected": expected,
            "ema_updates": int(model.ema.n_averaged),
            "after_fit": {key: float(value) for key, value in fit.callback_metrics.items()},
        }
        with open(out_path, "w") as file:
            json.dump(result, file)


if __name__ == "__main__":
    main(sys.argv[1])
