"""The network: a torchvision classifier by name, with FFCV's BlurPool and the zero-init residual option."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from resnet_ffcv.errors import InvalidValue


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


def classifier_head(network: nn.Module, num_classes: int) -> str:
    """The name of the classifier head: the last ``Linear`` with ``num_classes`` outputs (``fc`` in a ResNet)."""
    heads = [name for name, m in network.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not heads:
        raise ValueError(f"no Linear layer with {num_classes} outputs: cannot tell this network's classifier head")
    return heads[-1]


# -- state_dict layouts: ours (BlurPool wrappers, Lightning prefixes) and torchvision's plain one -----------------
BLUR_SUFFIX = ".blur_filter"


def network_state_dict(checkpoint: dict, weights: Literal["ema", "raw"] = "ema") -> tuple[dict, str]:
    """The network's state_dict from a Lightning checkpoint, and which weights it is (EMA if present)."""
    state = checkpoint["state_dict"]
    has_ema = any(key.startswith("ema.module.") for key in state)
    prefix = "ema.module." if weights == "ema" and has_ema else "network."
    used = "ema" if prefix == "ema.module." else "raw" + (" (the checkpoint has no EMA weights)" * (weights == "ema"))
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}, used


def drop_blurpool(state: dict) -> dict:
    """``X.blur_filter`` removed and ``X.conv.<param>`` renamed ``X.<param>``: torchvision's plain layout."""
    wrapped = {key[: -len(BLUR_SUFFIX)] for key in state if key.endswith(BLUR_SUFFIX)}
    plain = {}
    for key, value in state.items():
        if key.endswith(BLUR_SUFFIX):
            continue
        owner, _, name = key.rpartition(".conv.")
        plain[f"{owner}.{name}" if owner in wrapped and "." not in name else key] = value
    return plain


def _weights_file_state(path: str) -> dict[str, torch.Tensor]:
    """A plain state_dict from ``path``: torchvision's weights file, ``resnet-ffcv export``, or a training .ckpt."""
    if not Path(path).is_file():
        raise InvalidValue(f"model.init_weights={path}: no such file (expected a state_dict, e.g. from export)")
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):  # a Lightning checkpoint
        loaded = network_state_dict(loaded)[0]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InvalidValue(f"model.init_weights={path}: not a state_dict (a mapping of names to tensors)")
    return loaded


def load_init_weights(network: nn.Module, path: str, num_classes: int) -> list[str]:
    """Load the weights file ``path`` into ``network`` for fine-tuning; returns notes to print.

    Both sides are compared in torchvision's plain layout (``drop_blurpool``), so a file with or without
    BlurPool fits a network with or without it (the blur has no weights). A head of another class count is left
    at its fresh initialisation; every other key must match in name and shape.
    """
    notes = []
    own = network.state_dict()
    plain_to_own = drop_blurpool({key: key for key in own})  # plain name -> our name, blur filters left out
    source = _weights_file_state(path)
    if any(key.endswith(BLUR_SUFFIX) for key in source):
        source = drop_blurpool(source)
        if not any(key.endswith(BLUR_SUFFIX) for key in own):
            notes.append(f"{path} was trained with BlurPool, this network has none (model.blurpool: false)")
    head = classifier_head(network, num_classes)
    replaced = [k for k in plain_to_own if k.startswith(head + ".") and k in source and source[k].shape != own[k].shape]
    if replaced:
        shapes = ", ".join(f"{k} {tuple(source[k].shape)} -> {tuple(own[k].shape)}" for k in replaced)
        notes.append(f"new classifier head {head!r} (another class count than {path}; initialised fresh): {shapes}")
        for key in replaced:
            del source[key], plain_to_own[key]
    missing = sorted(set(plain_to_own) - set(source))
    unexpected = sorted(set(source) - set(plain_to_own))
    mismatched = sorted(k for k in set(source) & set(plain_to_own) if source[k].shape != own[plain_to_own[k]].shape)
    if missing or unexpected or mismatched:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", mismatched))
            if keys
        ]
        raise InvalidValue(
            f"model.init_weights={path}: does not fit this network ({type(network).__name__}); keys "
            + "; ".join(problems)
            + ". Expected a state_dict of the same model.arch (e.g. written by `resnet-ffcv export`)."
        )
    network.load_state_dict(own | {plain_to_own[key]: value for key, value in source.items()})
    return notes
