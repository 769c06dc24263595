"""Fine-tuning from ``model.init_weights``: only the classifier head trains for the first
``model.freeze_backbone_epochs`` epochs (BatchNorm statistics still adapt), then everything does.

The shape of Lightning's ``BaseFinetuning`` (freeze and unfreeze as named steps at an epoch), not the callback
itself: it freezes by taking parameters out of the optimizer and adds them back as a new param group on
unfreeze, while this recipe's optimizer holds every parameter from the start (its weight-decay groups stay as
built, and a checkpoint's optimizer state always matches). And under DDP nothing may stop requiring gradients
(the reducer expects one for every parameter it was built with): there the gradients are computed and dropped
before the step, which must happen in the module's ``on_before_optimizer_step``, after any callback's.
"""

from __future__ import annotations

from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.recipe.networks import classifier_head


class BackboneFreeze:
    """Freezes everything but ``network``'s classifier head while ``epoch < epochs``.

    Args:
        network: the network being trained (its head is the last ``Linear`` with ``num_classes`` outputs).
        num_classes: output classes (finds the head).
        epochs: the first epochs that train the head alone (``model.freeze_backbone_epochs``); 0: none.
    """

    def __init__(self, network: nn.Module, num_classes: int, epochs: int):
        if epochs < 0:
            raise InvalidValue(f"model.freeze_backbone_epochs={epochs}: expected 0 or more epochs")
        self.network, self.num_classes, self.epochs = network, num_classes, epochs
        self.frozen = False

    def backbone(self) -> list[nn.Parameter]:
        head = classifier_head(self.network, self.num_classes) + "."
        return [p for name, p in self.network.named_parameters() if not name.startswith(head)]

    def start_epoch(self, epoch: int, world_size: int) -> None:
        """Freezes at the first frozen epoch, unfreezes at the first epoch after them."""
        frozen = epoch < self.epochs
        if frozen == self.frozen:
            return
        if world_size == 1:  # no backward through a frozen backbone; under DDP see drop_gradients
            for parameter in self.backbone():
                parameter.requires_grad_(not frozen)
        self.frozen = frozen
        step = "frozen: only the classifier head trains" if frozen else "unfrozen: every layer trains"
        rank_zero_info(f"model.freeze_backbone_epochs={self.epochs}: epoch {epoch + 1}, backbone {step}")

    def drop_gradients(self) -> None:
        """While frozen: no gradient, so SGD skips the backbone (no decay, no momentum, no update)."""
        if self.frozen:
            for parameter in self.backbone():
                parameter.grad = None
