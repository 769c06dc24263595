"""The LightningModule's recipe pieces: weight-decay groups, BlurPool, zero-init, LR scaling, flip TTA,
DDP padding, and a checkpoint round trip through real Trainers."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from resnet_ffcv.recipe.evaluation import real_samples_on_rank
from resnet_ffcv.recipe.module import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier
from resnet_ffcv.recipe.networks import BlurPoolConv2d, build_network
from resnet_ffcv.recipe.optim import split_weight_decay

from .helpers import load_checkpoint, quiet_trainer

NO_MIX = {"cutmix_prob": 0.0, "mixup_alpha": 0.0}


def test_weight_decay_exempts_exactly_batchnorm_and_biases():
    network = build_network("resnet50", num_classes=10, blurpool=True)
    names = {id(p): name for name, p in network.named_parameters()}
    decayed, exempt = split_weight_decay(network)
    exempt_names = {names[id(p)] for p in exempt}
    # Independent of the code's type test: in a torchvision ResNet the BatchNorms are bn1/bn2/bn3 and
    # downsample.1, and the only bias is the classifier's.
    expected = {name for name in names.values() if name.endswith(".bias") or ".bn" in name or name.startswith("bn1.")}
    expected |= {name for name in names.values() if ".downsample.1." in name}
    assert exempt_names == expected
    assert "layer2.0.downsample.1.weight" in exempt_names and "fc.bias" in exempt_names
    # FFCV's name filter ('bn' in name) would have decayed the downsample BatchNorms.
    assert not any("bn" in name for name in exempt_names if "downsample" in name)
    assert all(names[id(p)].endswith(".weight") and p.dim() > 1 for p in decayed)
    assert len(decayed) + len(exempt) == len(names)

    model = ImageClassifier(arch="resnet18", num_classes=10, weight_decay=1e-4, use_ema=False)
    decay_group, exempt_group = model.configure_optimizers().param_groups
    assert decay_group["weight_decay"] == 1e-4 and exempt_group["weight_decay"] == 0.0


def test_blurpool_wraps_strided_convs_past_the_stem():
    network = build_network("resnet50", num_classes=10, blurpool=True)
    wrapped = [name for name, module in network.named_modules() if isinstance(module, BlurPoolConv2d)]
    assert wrapped == [
        f"{layer}.0.{conv}" for layer in ("layer2", "layer3", "layer4") for conv in ("conv2", "downsample.0")
    ]
    assert isinstance(network.conv1, torch.nn.Conv2d)  # the 3-channel stem is left alone, as in FFCV
    blur = network.layer2[0].conv2
    flat = torch.full((1, blur.conv.in_channels, 8, 8), 3.0)
    # The blur keeps a constant image constant away from the zero-padded border.
    blurred = torch.nn.functional.conv2d(flat, blur.blur_filter, padding=1, groups=blur.conv.in_channels)
    torch.testing.assert_close(blurred[..., 1:-1, 1:-1], flat[..., 1:-1, 1:-1])
    assert network(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_zero_init_residual_makes_blocks_identity():
    network = build_network("resnet50", num_classes=10, zero_init_residual=True).eval()
    assert all(block.bn3.weight.abs().sum() == 0 for layer in (network.layer1, network.layer4) for block in layer)
    x = torch.randn(2, 256, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(network.layer1[1](x), torch.relu(x))
    with pytest.raises(ValueError, match="zero_init_residual"):
        build_network("mobilenet_v2", zero_init_residual=True)


def test_linear_lr_scaling_is_opt_in():
    plain = ImageClassifier(arch="resnet18", num_classes=4, lr=0.8, use_ema=False)
    assert plain.lr_schedule.peak_lr(global_batch=1024) == 0.8
    scaled = ImageClassifier(arch="resnet18", num_classes=4, lr=0.1, lr_reference_batch=256, use_ema=False)
    assert scaled.lr_schedule.peak_lr(global_batch=2048) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="model.lr_reference_batch=0"):
        ImageClassifier(arch="resnet18", num_classes=4, lr_reference_batch=0)


def test_flip_tta_sums_the_logits_of_both_views():
    model = ImageClassifier(arch="resnet18", num_classes=4, val_flip_tta=True, use_ema=False).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.network(images) + model.network(images.flip(3))
        torch.testing.assert_close(model._logits(model.network, images), expected)


@pytest.mark.parametrize(("total", "world"), [(10, 4), (12, 4), (3, 4), (50_000, 8)])
def test_padding_count_matches_distributed_sampler(total, world):
    for rank in range(world):
        sampler = DistributedSampler(range(total), num_replicas=world, rank=rank, shuffle=False)
        order = list(sampler)
        real = real_samples_on_rank(total, world, rank)
        assert order[:real] == list(range(rank, total, world))  # the real ones come first, each once
        assert sum(real_samples_on_rank(total, world, r) for r in range(world)) == total


# -- checkpoint round trip -------------------------------------------------------------------------------
class TensorData(L.LightningDataModule):
    """Fixed uint8 channels_last images: 4 training batches of 8, one validation batch of 16."""

    def __init__(self, classes: int = 4):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=generator)
        self.images = images.contiguous(memory_format=torch.channels_last)
        self.labels = torch.arange(32) % classes

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.images, self.labels), batch_size=8, shuffle=False)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.images[:16], self.labels[:16]), batch_size=16)


class Recorder(L.Callback):
    """The LR used at each (epoch, batch) and, at the start of training, what was restored."""

    def __init__(self):
        self.lrs: dict[tuple[int, int], float] = {}
        self.at_start: dict = {}

    def on_train_start(self, trainer, pl_module):
        self.at_start = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "optimizer": _clone(trainer.optimizers[0].state_dict()),
            "ema": _clone(pl_module.ema.state_dict()),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs[(trainer.current_epoch, batch_idx)] = trainer.optimizers[0].param_groups[0]["lr"]


def _clone(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().clone()
    if isinstance(tree, dict):
        return {key: _clone(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_clone(value) for value in tree]
    return tree


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _trainer(tmp_path, recorder, max_epochs=3):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    return quiet_trainer(
        max_epochs=max_epochs, callbacks=[checkpoints, recorder], enable_checkpointing=True, deterministic=True
    )


def _model(seed: int, use_ema: bool = True) -> ImageClassifier:
    torch.manual_seed(seed)
    # ShuffleNet: BatchNorm and strided convolutions for BlurPool, no dropout (a resume does not restore the
    # RNG), and 1.4M parameters, so checkpoints stay small.
    return ImageClassifier(
        arch="shufflenet_v2_x0_5",
        num_classes=4,
        lr=0.05,
        scheduler="triangular",
        lr_peak_epoch=1.5,
        use_ema=use_ema,
        ema_decay=0.8,
        blurpool=True,
        val_flip_tta=True,
        **NO_MIX,  # mixing draws from the global RNG, which a resume does not restore
    )


def test_checkpoint_round_trip_restores_optimizer_schedule_ema_and_epoch(tmp_path):
    straight = Recorder()
    first = _model(seed=0)
    _trainer(tmp_path, straight).fit(first, TensorData())
    checkpoint_path = tmp_path / "epoch=0.ckpt"
    checkpoint = load_checkpoint(checkpoint_path)
    assert checkpoint["epoch"] == 0
    assert any(key.startswith("ema.module.") for key in checkpoint["state_dict"])

    resumed = Recorder()
    second = _model(seed=1)  # different initial weights: everything must come from the checkpoint
    _trainer(tmp_path / "resumed", resumed).fit(second, TensorData(), ckpt_path=checkpoint_path)

    assert resumed.at_start["epoch"] == 1 and resumed.at_start["global_step"] == 4
    _assert_same(resumed.at_start["optimizer"], checkpoint["optimizer_states"][0], "optimizer")
    ema_saved = {key[len("ema.") :]: value for key, value in checkpoint["state_dict"].items() if key.startswith("ema.")}
    _assert_same(resumed.at_start["ema"], ema_saved, "ema")
    assert resumed.at_start["ema"]["n_averaged"].item() == 4

    # The schedule resumes at the same fractional epochs with the same LRs, and the run ends where the
    # uninterrupted one did.
    assert sorted(resumed.lrs) == [(epoch, batch) for epoch in (1, 2) for batch in range(4)]
    for key, lr in resumed.lrs.items():
        assert lr == straight.lrs[key], key
    _assert_same(second.state_dict(), first.state_dict(), "final weights")


def test_checkpoint_loads_with_ema_switched_either_way(tmp_path):
    with_ema = _model(seed=0)
    state = {"state_dict": with_ema.state_dict()}
    without = _model(seed=1, use_ema=False)
    without.on_load_checkpoint(state)
    without.load_state_dict(state["state_dict"])

    plain = {"state_dict": without.state_dict()}
    again = _model(seed=2)
    again.on_load_checkpoint(plain)
    again.load_state_dict(plain["state_dict"])
    _assert_same(again.ema.module.state_dict(), without.network.state_dict(), "ema from network")


@pytest.mark.slow
def test_ddp_counts_each_validation_sample_once_and_trains_with_ema(tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp.json"
    script = Path(__file__).with_name("ddp_eval_script.py")
    done = subprocess.run(
        [sys.executable, str(script), str(out)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    # 15 samples over 2 ranks: counting rank 1's padding repeat would average over 16.
    assert result["logged"]["val/acc1"] == pytest.approx(result["expected"]["val/acc1"], abs=1e-6)
    assert result["logged"]["val/loss"] == pytest.approx(result["expected"]["val/loss"], rel=1e-5)
    assert result["logged"]["val/acc1_ema"] == pytest.approx(result["expected"]["val/acc1"], abs=1e-6)
    # One step per rank (8 samples, batch 4, 2 ranks): EMA updated outside DDP, metrics reported.
    assert result["ema_updates"] == 1
    assert {"train/lr", "train/loss", "val/acc1", "val/acc1_ema"} <= result["after_fit"].keys()


def test_normalize_hands_over_the_autocast_dtype_in_channels_last():
    module = ImageClassifier(arch="resnet18", num_classes=10, use_ema=False)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    exact = module.normalize(images)
    assert exact.dtype == torch.float32 and exact.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(exact, (images.float() - mean) / std)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = module.normalize(images)
    assert mixed.dtype == torch.bfloat16 and mixed.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mixed.float(), exact, rtol=1e-2, atol=1e-2)  # bf16 keeps ~3 significant digits
