"""SGD as the recipe builds it (BatchNorm and biases exempt from weight decay), and what the module logs about the
gradients it steps on (global norm, share of clipped steps) without a device->host read per step."""

from __future__ import annotations

import torch
from torch import nn


def split_weight_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, exempt) trainable parameters: every BatchNorm parameter and every bias is exempt.

    Chosen by module type and parameter role, not by name: FFCV's ``'bn' in name`` filter misses the
    BatchNorm of each downsample branch (``layer2.0.downsample.1``), which weight decay then shrinks.
    """
    exempt: dict[int, nn.Parameter] = {}
    for submodule in module.modules():
        if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
            exempt.update((id(p), p) for p in submodule.parameters(recurse=False))
        bias = submodule._parameters.get("bias")
        if bias is not None:
            exempt[id(bias)] = bias
    trainable = [p for p in module.parameters() if p.requires_grad]
    return [p for p in trainable if id(p) not in exempt], [p for p in trainable if id(p) in exempt]


def build_sgd(
    network: nn.Module, lr: float, momentum: float, nesterov: bool, weight_decay: float, no_decay_bn_bias: bool
) -> torch.optim.SGD:
    """SGD over every trainable parameter of ``network``; with ``no_decay_bn_bias`` BatchNorm and biases get none.

    No LRScheduler goes with it: the module sets the LR on every batch from the epoch-based schedule
    (:class:`resnet_ffcv.recipe.schedules.EpochLR`), so nothing step-counted can drift when batch sizes change
    or a run resumes mid-epoch.
    """
    if no_decay_bn_bias:
        decayed, exempt = split_weight_decay(network)
        groups = [{"params": decayed}, {"params": exempt, "weight_decay": 0.0}]
    else:
        groups = [{"params": [p for p in network.parameters() if p.requires_grad]}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


class GradientStats:
    """The global gradient norm before clipping (what ``gradient_clip_val`` is compared to) and the share of steps
    it exceeded the clip value, kept as device tensors and read on the host only when logged.

    A helper the module calls from ``on_before_optimizer_step``, not a callback: a callback's hook runs before the
    module's, so it would see the gradients a frozen backbone is about to drop (``finetune.BackboneFreeze``).
    """

    def __init__(self) -> None:
        self._clipped: torch.Tensor | None = None  # on the device: summed without a host read
        self._steps = 0
        self.norm: torch.Tensor | None = None  # the last step's norm

    def observe(self, optimizer: torch.optim.Optimizer, clip_value: float | None, clip_algorithm: str | None) -> bool:
        """Records this step's gradients; False when there are none (nothing to log)."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return False
        self.norm = torch.nn.utils.get_total_norm(grads)
        if self.clipping(clip_value, clip_algorithm):
            clipped = (self.norm > clip_value).to(torch.float32)
            self._clipped = clipped if self._clipped is None else self._clipped + clipped
        self._steps += 1
        return True

    @staticmethod
    def clipping(clip_value: float | None, clip_algorithm: str | None) -> bool:
        return bool(clip_value) and clip_algorithm in (None, "norm")

    def logged(self, clip_value: float | None, clip_algorithm: str | None) -> dict[str, torch.Tensor]:
        """What to log now: ``train/grad_norm``, and ``train/clipped_share`` since the last log (then counted anew)."""
        values = {"train/grad_norm": self.norm.detach().float()}
        if self.clipping(clip_value, clip_algorithm):
            values["train/clipped_share"] = self._clipped / self._steps  # a new tensor: the logged one is never mutated
        self._clipped, self._steps = None, 0
        return values
