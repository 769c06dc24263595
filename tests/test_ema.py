"""EMA update math, BatchNorm buffers, and its place outside the optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnet_ffcv.recipe.ema import EMA, decay_for_half_life


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def test_ema_update_math_and_buffers():
    torch.manual_seed(0)
    net = small_net()
    net(torch.randn(2, 3, 6, 6))  # materialise the lazy layer
    ema = EMA(net, decay=0.9)
    ema.update_parameters(net)  # first update copies
    for p_ema, p in zip(ema.module.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p_ema, p)

    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()
    net(torch.randn(4, 3, 6, 6) * 3 + 2)  # moves the BN running stats and num_batches_tracked
    ema.update_parameters(net)

    model_state = net.state_dict()
    for key, value in ema.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * model_state[key])
        else:  # integer buffers are copied, not blended and truncated
            assert torch.equal(value, model_state[key]), key
    assert model_state["1.num_batches_tracked"].item() == 2
    assert ema.n_averaged.item() == 2


def test_ema_is_frozen_and_kept_out_of_the_optimizer():
    from resnet_ffcv.recipe.module import ImageClassifier

    model = ImageClassifier(arch="resnet18", num_classes=3, use_ema=True, blurpool=False)
    assert not any(p.requires_grad for p in model.ema.parameters())
    optimizer_params = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for p in model.network.parameters()}
    assert any(key.startswith("ema.module.") for key in model.state_dict())


def test_bad_decay_is_named():
    with pytest.raises(ValueError, match="model.ema_decay=1.0"):
        EMA(small_net(), decay=1.0)


def test_update_reads_nothing_back_from_the_device(monkeypatch):
    """After the first update, an EMA step never reads a tensor on the host (on a GPU each read is a sync);
    a loaded state dict's count is read again."""
    torch.manual_seed(0)
    net = small_net()
    net(torch.randn(2, 3, 6, 6))
    ema = EMA(net, decay=0.5)
    ema.update_parameters(net)
    state = {k: v.clone() for k, v in ema.state_dict().items()}

    def host_read(*_):
        raise AssertionError("a tensor was read on the host during an EMA update")

    with monkeypatch.context() as patch:
        for name in ("item", "__bool__", "tolist", "__int__", "__float__"):
            patch.setattr(torch.Tensor, name, host_read)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(2.0)
        ema.update_parameters(net)
    assert ema.n_averaged.item() == 2
    first = next(iter(ema.module.parameters()))
    torch.testing.assert_close(first, next(iter(net.parameters())) - 1.0)  # halfway: decay 0.5

    state["n_averaged"] = torch.tensor(0)  # a checkpoint from before any update: the next one copies
    ema.load_state_dict(state)
    ema.update_parameters(net)
    torch.testing.assert_close(next(iter(ema.module.parameters())), next(iter(net.parameters())))
    assert ema.n_averaged.item() == 1


def test_half_life_in_epochs_gives_the_per_step_decay():
    # After half_life * steps updates an old iterate's weight has halved, whatever the step count per epoch.
    for steps in (625, 1251):  # p4d (batch 2048) and g5 (batch 1024) on ImageNet: the same 2-epoch horizon
        decay = decay_for_half_life(2.0, steps)
        assert decay ** (2 * steps) == pytest.approx(0.5)
    assert decay_for_half_life(1.0, 4) == pytest.approx(0.5**0.25)
    with pytest.raises(ValueError, match="model.ema_half_life_epochs=0"):
        decay_for_half_life(0, 100)
    with pytest.raises(ValueError, match="set model.ema_decay"):
        decay_for_half_life(2.0, float("inf"))


def test_set_decay_changes_the_blend():
    torch.manual_seed(0)
    net = small_net()
    net(torch.randn(2, 3, 6, 6))
    ema = EMA(net, decay=0.9)
    ema.update_parameters(net)
    ema.set_decay(0.25)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(4.0)
    ema.update_parameters(net)
    first = next(iter(ema.module.parameters()))
    torch.testing.assert_close(first, next(iter(net.parameters())) - 0.25 * 4.0)


@pytest.mark.parametrize(("accumulate", "expected_steps"), [(1, 6), (4, 2)])
def test_model_sets_the_decay_from_the_steps_of_the_epoch(accumulate, expected_steps):
    """A real fit: 6 batches per epoch (2 optimizer steps with accumulation 4, the last batch stepping too)."""
    from resnet_ffcv.recipe.module import ImageClassifier
    from resnet_ffcv.tools.throughput import RepeatedBatches, synthetic_batch

    from .helpers import quiet_trainer

    module = ImageClassifier(arch="resnet18", num_classes=10, blurpool=False, ema_half_life_epochs=0.5)
    trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=accumulate, limit_val_batches=0)
    trainer.fit(module, RepeatedBatches(synthetic_batch(2, 32, 10, torch.device("cpu")), 6))
    assert module.ema.decay == pytest.approx(0.5 ** (1 / (0.5 * expected_steps)))
    assert module.ema.n_averaged.item() == expected_steps


def test_decay_and_half_life_are_exclusive_and_named():
    from resnet_ffcv.recipe.ema import DEFAULT_HALF_LIFE_EPOCHS
    from resnet_ffcv.recipe.module import ImageClassifier

    with pytest.raises(ValueError, match=r"model.ema_decay=0.9998 and model.ema_half_life_epochs=2"):
        ImageClassifier(arch="resnet18", num_classes=3, ema_decay=0.9998, ema_half_life_epochs=2)
    with pytest.raises(ValueError, match="model.ema_half_life_epochs=-1"):
        ImageClassifier(arch="resnet18", num_classes=3, ema_half_life_epochs=-1)
    fixed = ImageClassifier(arch="resnet18", num_classes=3, ema_decay=0.99)
    assert fixed.ema.decay == 0.99
    assert DEFAULT_HALF_LIFE_EPOCHS == 2.0
