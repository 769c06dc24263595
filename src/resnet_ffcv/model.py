"""The LightningModule: a torchvision classifier, label-smoothed cross-entropy, SGD on a per-epoch schedule."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
import torchvision
from torchmetrics.classification import MulticlassAccuracy

from resnet_ffcv.schedules import ScheduleName, lr_multiplier

# ImageNet statistics on the 0-255 scale: FFCV hands over uint8 images.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def build_network(arch: str, num_classes: int) -> torch.nn.Module:
    """Any torchvision classification model by name, randomly initialised (nothing is downloaded)."""
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(f"model.arch={arch!r}: not a torchvision classification model (e.g. resnet50, resnet18)")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


class ImageClassifier(L.LightningModule):
    """ImageNet classification with the seed's recipe knobs.

    Args:
        arch: torchvision model name (``resnet50``; ``resnet18`` for the demo).
        num_classes: output classes; linked from ``data.num_classes`` by the CLI.
        lr: peak learning rate for the actual global batch (no automatic scaling by world size).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 penalty applied by SGD.
        label_smoothing: cross-entropy label smoothing.
        scheduler: LR shape over fractional epochs (see ``schedules.py``).
        warmup_epochs: linear warmup length in epochs.
        channels_last: NHWC memory format for the network and its inputs (faster convolutions on tensor cores).
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 1000,
        lr: float = 0.8,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.1,
        scheduler: ScheduleName = "onecycle",
        warmup_epochs: float = 8,
        channels_last: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.network = build_network(arch, num_classes)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network.to(memory_format=self.memory_format)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        top_k = min(5, num_classes)
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=top_k, average="micro")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW -> normalized float on the device, in the network's memory format."""
        return ((images.float() - self.mean) / self.std).contiguous(memory_format=self.memory_format)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.normalize(images))

    # -- training --------------------------------------------------------------------------------------------------
    def fractional_epoch(self, batch_idx: int) -> float:
        batches = self.trainer.num_training_batches
        return self.current_epoch + (batch_idx / batches if 0 < batches < float("inf") else 0.0)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        factor = lr_multiplier(
            self.hparams.scheduler, self.fractional_epoch(batch_idx), max_epochs, self.hparams.warmup_epochs
        )
        lr = self.hparams.lr * factor
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr
        self.log("train/lr", lr, on_step=True, on_epoch=False)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The LR is set on every batch from the epoch-based schedule (on_train_batch_start): no LRScheduler
        # object, so nothing step-counted can drift when batch sizes change or a run resumes mid-epoch.
        return torch.optim.SGD(
            self.parameters(),
            lr=self.hparams.lr,
            momentum=self.hparams.momentum,
            nesterov=self.hparams.nesterov,
            weight_decay=self.hparams.weight_decay,
        )

    # -- evaluation ------------------------------------------------------------------------------------------------
    def _evaluate(self, batch, prefix: str) -> None:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.val_acc1(logits, labels)
        self.val_acc5(logits, labels)
        self.log(f"{prefix}/loss", loss, sync_dist=True)
        self.log(f"{prefix}/acc1", self.val_acc1, prog_bar=True)
        self.log(f"{prefix}/acc5", self.val_acc5)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probabilities = self(images).softmax(dim=1)
        top = probabilities.topk(min(5, probabilities.shape[1]), dim=1)
        return {"probabilities": top.values, "classes": top.indices}
