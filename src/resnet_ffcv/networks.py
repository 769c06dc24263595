"""The network: a torchvision classifier by name, with FFCV's BlurPool and the zero-init residual option."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


class BlurPoolConv2d(nn.Module):
    """A 3x3 binomial blur (stride 1) in front of a strided convolution, as FFCV's ResNet-50 recipe does.

    Anti-aliased downsampling (Zhang, 2019), which FFCV's ResNet configs switch on. The wrapped convolution
    is kept whole (``.conv``), so its weights keep their initialisation.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
        self.register_buffer("blur_filter", kernel.expand(conv.in_channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blurred = F.conv2d(x, self.blur_filter.to(x.dtype), padding=1, groups=self.conv.in_channels)
        return self.conv(blurred)


def apply_blurpool(module: nn.Module, min_in_channels: int = 16) -> int:
    """Wrap every strided ``Conv2d`` with at least ``min_in_channels`` inputs (FFCV's rule: the RGB stem is
    left alone) in a :class:`BlurPoolConv2d`, in place; returns how many were wrapped."""
    wrapped = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and max(child.stride) > 1 and child.in_channels >= min_in_channels:
            setattr(module, name, BlurPoolConv2d(child))
            wrapped += 1
        elif not isinstance(child, BlurPoolConv2d):
            wrapped += apply_blurpool(child, min_in_channels)
    return wrapped


def zero_init_last_bn(module: nn.Module) -> int:
    """Zero the last BatchNorm gamma of each residual block, so every block starts as the identity
    (Goyal et al., 2017); the same as torchvision's ``zero_init_residual``. Returns how many blocks."""
    blocks = 0
    for block in module.modules():
        last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2 if isinstance(block, BasicBlock) else None
        if last_bn is not None:
            nn.init.zeros_(last_bn.weight)
            blocks += 1
    return blocks


def build_network(
    arch: str = "resnet50",
    num_classes: int = 1000,
    blurpool: bool = False,
    zero_init_residual: bool = False,
    channels_last: bool = True,
) -> nn.Module:
    """Any torchvision classification model by name, randomly initialised (nothing is downloaded)."""
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        raise ValueError(f"model.arch={arch!r}: not a torchvision classification model (e.g. resnet50, resnet18)")
    network = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if zero_init_residual and zero_init_last_bn(network) == 0:
        raise ValueError(f"model.zero_init_residual=true: {arch} has no ResNet BasicBlock/Bottleneck to zero-init")
    if blurpool:
        apply_blurpool(network)
    if channels_last:
        network.to(memory_format=torch.channels_last)
    return network
