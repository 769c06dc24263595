"""MixUp/CutMix policy: target sums, CutMix's lambda against its pasted area, single smoothing, stop epoch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from resnet_ffcv.recipe.mixing import MixPolicy

N, C, H, W, CLASSES = 8, 3, 24, 20, 5


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(N, C, H, W, generator=generator).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(N) % CLASSES
    return images, labels


def test_cutmix_lambda_equals_pasted_area():
    torch.manual_seed(0)
    policy = MixPolicy(CLASSES, cutmix_prob=1.0, mixup_alpha=0.0)
    images, labels = batch()
    checked = 0
    for _ in range(20):
        mixed, targets = policy(images, labels, epoch=0)
        assert targets.shape == (N, CLASSES)
        torch.testing.assert_close(targets.sum(1), torch.ones(N))
        # Pixels taken from the neighbour (torchvision pairs image i with image i - 1).
        pasted = (mixed != images).all(dim=1).float().mean(dim=(1, 2))
        own_share = 1.0 - pasted
        lam = targets[torch.arange(N), labels]  # each label differs from its neighbour's here
        torch.testing.assert_close(lam, own_share, atol=1e-6, rtol=0)
        checked += int(pasted[0] > 0)
    assert checked > 5  # the boxes were not all empty


def test_mixup_targets_sum_to_one_and_match_the_images():
    torch.manual_seed(1)
    policy = MixPolicy(CLASSES, cutmix_prob=0.0, mixup_alpha=0.2)
    images, labels = batch()
    mixed, targets = policy(images, labels, epoch=0)
    torch.testing.assert_close(targets.sum(1), torch.ones(N))
    lam = targets[0, labels[0]]
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))


def test_policy_probability_and_stop_epoch():
    torch.manual_seed(2)
    policy = MixPolicy(CLASSES, cutmix_prob=0.3, mixup_alpha=0.2, stop_epoch=3)
    chosen = [policy.choose() for _ in range(2000)]
    cutmix_share = sum(t is policy.cutmix for t in chosen) / len(chosen)
    assert 0.25 < cutmix_share < 0.35
    assert all(t is policy.mixup for t in chosen if t is not policy.cutmix)
    images, labels = batch()
    same_images, same_labels = policy(images, labels, epoch=3)
    assert same_images is images and same_labels is labels
    assert MixPolicy(CLASSES, cutmix_prob=0.0, mixup_alpha=0.0).choose() is None


def test_soft_targets_are_smoothed_once():
    torch.manual_seed(3)
    policy = MixPolicy(CLASSES, mixup_alpha=0.4)
    images, labels = batch()
    _, targets = policy(images, labels, epoch=0)
    logits = torch.randn(N, CLASSES)
    smoothing = 0.1
    expected_targets = targets * (1 - smoothing) + smoothing / CLASSES
    expected = -(expected_targets * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(F.cross_entropy(logits, targets, label_smoothing=smoothing), expected)
    # Unmixed batches with class indices get the same smoothing.
    one_hot = F.one_hot(labels, CLASSES).float()
    torch.testing.assert_close(
        F.cross_entropy(logits, labels, label_smoothing=smoothing),
        -((one_hot * 0.9 + 0.1 / CLASSES) * logits.log_softmax(1)).sum(1).mean(),
    )


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"cutmix_prob": 1.5}, "cutmix_prob"),
        ({"mixup_alpha": -1}, "mixup_alpha"),
        ({"cutmix_prob": 0.5, "cutmix_alpha": 0}, "cutmix_alpha"),
    ],
)
def test_bad_knobs_are_named(kwargs, key):
    with pytest.raises(ValueError, match=f"model.{key}"):
        MixPolicy(CLASSES, **kwargs)
