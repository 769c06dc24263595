"""An exponential moving average of the network's weights and BatchNorm statistics.

``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn`` does the averaging. We subclass it only
because its EMA function blends integer buffers in float and truncates the result back into the integer
(BatchNorm's ``num_batches_tracked`` would stay stuck at its first value): those are copied instead.

Lightning 2.6's ``EMAWeightAveraging`` callback swaps the EMA weights in for every validation and so
reports no raw-weight metric; the module keeps this copy itself to report both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


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
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"model.ema_decay={decay}: expected a value in [0, 1)")
        super().__init__(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self.requires_grad_(False)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        for ema_buffer, buffer in zip(self.module.buffers(), model.buffers(), strict=True):
            if not (ema_buffer.is_floating_point() or ema_buffer.is_complex()):
                ema_buffer.copy_(buffer)

    @property
    def num_updates(self) -> int:
        return int(self.n_averaged.item())
