"""An exponential moving average of the network's weights and BatchNorm statistics.

``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` does the averaging. We subclass it for
two reasons:

- its EMA function blends integer buffers in float and truncates the result back into the integer (BatchNorm's
  ``num_batches_tracked`` would stay stuck at its first value): those are copied instead;
- its ``update_parameters`` branches on the device tensor ``n_averaged`` (``bool(self.n_averaged == 0)``,
  ``if self.n_averaged > 0``): two GPU->host reads per optimizer step, each of which waits for every queued
  kernel, so the GPU idles while the next step's kernels are launched. Here the count is mirrored on the host
  and read from the device once (after construction or a checkpoint load).

Lightning 2.6's ``EMAWeightAveraging`` callback swaps the EMA weights in for every validation and so
reports no raw-weight metric; the module keeps this copy itself to report both.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from resnet_ffcv.errors import InvalidValue

# The EMA horizon when neither model.ema_half_life_epochs nor model.ema_decay is set (docs/recipe.md: why 2).
DEFAULT_HALF_LIFE_EPOCHS = 2.0


class EMA(AveragedModel):
    """EMA of ``network``: after each update, ``ema = decay * ema + (1 - decay) * network`` for every
    parameter and floating-point buffer (BatchNorm running mean and variance); the first update copies.

    The copy is frozen (``requires_grad=False``): an optimizer built from the trainable parameters skips
    it and DDP, which only reduces parameters that require gradients, leaves it alone.

    Args:
        network: the module to follow (deep-copied once).
        decay: weight kept per update (per optimizer step); the half-life is ``ln 2 / (1 - decay)`` steps.
    """

    def __init__(self, network: nn.Module, decay: float = 0.9998):
        _check_decay(decay)
        super().__init__(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self.requires_grad_(False)
        self._host_updates: int | None = None  # mirrors n_averaged; None: read it from the buffer once

    def follow_half_life(self, half_life_epochs: float, steps_per_epoch: int | None) -> float | None:
        """Sets the decay that gives ``half_life_epochs`` at this epoch's step count; the new decay, or None when
        it did not change (resolution stages may change the batch size, so the step count)."""
        decay = decay_for_half_life(half_life_epochs, steps_per_epoch if steps_per_epoch is not None else math.inf)
        if decay == self.decay:
            return None
        self.set_decay(decay)
        return decay

    def set_decay(self, decay: float) -> None:
        """A new per-step decay from the next update on (a horizon in epochs gives one per steps-per-epoch)."""
        _check_decay(decay)
        self.decay = decay
        self.multi_avg_fn = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """One EMA step (the first copies), with no device->host synchronization."""
        if self._host_updates is None:
            self._host_updates = int(self.n_averaged.item())
        ema_tensors = [*self.module.parameters(), *self.module.buffers()]
        pairs = zip(ema_tensors, [*model.parameters(), *model.buffers()], strict=True)
        groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for ema_tensor, tensor in pairs:
            if ema_tensor.is_floating_point() or ema_tensor.is_complex():
                ema_list, model_list = groups.setdefault((ema_tensor.device, ema_tensor.dtype), ([], []))
                ema_list.append(ema_tensor.detach())
                model_list.append(tensor.detach().to(ema_tensor.device))
            else:  # integer buffers (num_batches_tracked): copied, never blended
                ema_tensor.copy_(tensor)
        for (device, _), (ema_list, model_list) in groups.items():
            if self._host_updates == 0:
                torch._foreach_copy_(ema_list, model_list)
            else:
                self.multi_avg_fn(ema_list, model_list, self.n_averaged.to(device))
        self.n_averaged += 1
        self._host_updates += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._host_updates = None  # n_averaged may have changed: read it again at the next update


def _check_decay(decay: float) -> None:
    if not 0.0 <= decay < 1.0:
        raise InvalidValue(f"model.ema_decay={decay}: expected a value in [0, 1)")


def decay_for_half_life(half_life_epochs: float, steps_per_epoch: float) -> float:
    """The per-step decay whose half-life is ``half_life_epochs`` epochs of ``steps_per_epoch`` optimizer steps:
    ``0.5 ** (1 / (half_life_epochs * steps_per_epoch))``. An iterate ``t`` epochs old then carries
    ``2 ** (-t / half_life_epochs)`` of the average, whatever the batch size and dataset size."""
    if half_life_epochs <= 0:
        raise InvalidValue(f"model.ema_half_life_epochs={half_life_epochs}: expected > 0 (epochs)")
    if not 0 < steps_per_epoch < math.inf:
        raise InvalidValue(
            f"model.ema_half_life_epochs={half_life_epochs}: needs a training loader with a length "
            f"(steps per epoch: {steps_per_epoch}); set model.ema_decay (per step) instead"
        )
    return 0.5 ** (1.0 / (half_life_epochs * steps_per_epoch))


def check_ema_settings(
    use_ema: bool, ema_decay: float | None, ema_half_life_epochs: float | None, val_weights: str
) -> None:
    """The ``model.*`` EMA values, checked together before anything is built."""
    if ema_decay is not None and ema_half_life_epochs is not None:
        raise InvalidValue(
            f"model.ema_decay={ema_decay} and model.ema_half_life_epochs={ema_half_life_epochs}: set one of them "
            "(the horizon in epochs, or the decay per optimizer step) and the other to null"
        )
    if ema_half_life_epochs is not None and ema_half_life_epochs <= 0:
        raise InvalidValue(f"model.ema_half_life_epochs={ema_half_life_epochs}: expected > 0 (epochs)")
    if val_weights == "ema" and not use_ema:
        raise InvalidValue("model.val_weights='ema' with model.use_ema=false: there are no EMA weights to validate")


def adapt_ema_state(state_dict: dict, ema: EMA | None, network_prefix: str = "network.", prefix: str = "ema.") -> None:
    """A checkpoint's ``state_dict`` made loadable with the EMA switched the other way (in place): an EMA the
    module no longer keeps is dropped; a missing one starts as a copy of the checkpoint's network weights."""
    has_ema = any(key.startswith(prefix) for key in state_dict)
    if ema is None and has_ema:
        for key in [key for key in state_dict if key.startswith(prefix)]:
            del state_dict[key]
    elif ema is not None and not has_ema:
        for key, value in ema.module.state_dict().items():
            state_dict[f"{prefix}module.{key}"] = state_dict.get(f"{network_prefix}{key}", value)
        state_dict[f"{prefix}n_averaged"] = torch.tensor(1, dtype=torch.long)
