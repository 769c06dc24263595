"""MixUp / CutMix on the device, per batch, built on ``torchvision.transforms.v2`` (which does the mixing).

Per training batch: with probability ``cutmix_prob`` CutMix (box area from Beta(``cutmix_alpha``,
``cutmix_alpha``)); otherwise MixUp with lambda from Beta(``mixup_alpha``, ``mixup_alpha``) when
``mixup_alpha > 0``; otherwise the batch is left alone. Each image is mixed with its neighbour in the batch
(torchvision pairs ``i`` with ``i - 1``; FFCV's random order shuffles the batch). From ``stop_epoch`` on,
nothing is mixed (clean batches for the last epochs).

The targets come back as unsmoothed probabilities (two one-hots weighted ``lam`` and ``1 - lam``; CutMix's
``lam`` is corrected to the pasted area). Label smoothing is applied once, by the loss.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from resnet_ffcv.errors import InvalidValue


class MixPolicy:
    """Chooses CutMix, MixUp or nothing for a batch and applies it.

    Args:
        num_classes: number of classes (the width of the soft targets).
        cutmix_prob: chance that a batch gets CutMix (0 disables CutMix).
        mixup_alpha: Beta parameter of MixUp's lambda; the batches that do not get CutMix get MixUp when > 0.
        cutmix_alpha: Beta parameter of CutMix's area lambda (1.0: area uniform in [0, 1]).
        stop_epoch: first epoch with no mixing at all; ``None`` mixes until the end.
    """

    def __init__(
        self,
        num_classes: int,
        cutmix_prob: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 1.0,
        stop_epoch: int | None = None,
    ):
        if not 0.0 <= cutmix_prob <= 1.0:
            raise InvalidValue(f"model.cutmix_prob={cutmix_prob}: expected a probability in [0, 1]")
        if mixup_alpha < 0:
            raise InvalidValue(f"model.mixup_alpha={mixup_alpha}: expected >= 0 (0 disables MixUp)")
        if cutmix_prob > 0 and cutmix_alpha <= 0:
            raise InvalidValue(f"model.cutmix_alpha={cutmix_alpha}: expected > 0 when cutmix_prob > 0")
        self.cutmix_prob = cutmix_prob
        self.stop_epoch = stop_epoch
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_prob > 0 else None
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None

    @property
    def enabled(self) -> bool:
        return self.cutmix is not None or self.mixup is not None

    def active(self, epoch: int) -> bool:
        return self.enabled and (self.stop_epoch is None or epoch < self.stop_epoch)

    def choose(self) -> v2.Transform | None:
        """The transform for the next batch (uses torch's global RNG, so ``seed_everything`` fixes it)."""
        if self.cutmix is not None and torch.rand(()).item() < self.cutmix_prob:
            return self.cutmix
        return self.mixup

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images (N, C, H, W) and class indices (N,) -> mixed images and targets.

        The targets are class indices when the batch is left alone and probabilities (N, num_classes)
        otherwise; ``F.cross_entropy`` accepts both.
        """
        transform = self.choose() if self.active(epoch) else None
        if transform is None:
            return images, labels
        return transform(images, labels)
