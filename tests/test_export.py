"""``resnet-ffcv export``: real Lightning checkpoints -> torchvision state_dict / TorchScript, same logits."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnet_ffcv.cli import main
from resnet_ffcv.recipe.module import ImageClassifier

from .helpers import trained_checkpoint


def normalized_images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_state_dict_loads_into_torchvision_with_the_same_logits(tmp_path):
    checkpoint = trained_checkpoint(tmp_path / "plain.ckpt", blurpool=False)
    source = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    x = normalized_images()
    for weights, network in (("ema", source.ema.module), ("raw", source.network)):
        output = tmp_path / f"{weights}.pt"
        main(["export", f"--ckpt_path={checkpoint}", f"--output={output}", f"--weights={weights}"])
        plain = torchvision.models.resnet18(num_classes=10)
        plain.load_state_dict(torch.load(output, weights_only=True))  # strict: every key, nothing extra
        with torch.no_grad():
            # The source runs channels_last, the fresh torchvision model NCHW: other conv kernels, float noise.
            torch.testing.assert_close(plain.eval()(x), network.eval()(x), rtol=1e-5, atol=1e-4)
    assert not torch.equal(torch.load(tmp_path / "ema.pt")["fc.weight"], torch.load(tmp_path / "raw.pt")["fc.weight"])


def test_blurpool_checkpoint_is_refused_dropped_or_scripted(tmp_path):
    checkpoint = trained_checkpoint(tmp_path / "blur.ckpt", blurpool=True)
    with pytest.raises(SystemExit, match="export: error: .*uses BlurPool.*--format torchscript.*--blurpool drop"):
        main(["export", f"--ckpt_path={checkpoint}", f"--output={tmp_path / 'refused.pt'}"])
    assert not (tmp_path / "refused.pt").exists()

    main(["export", f"--ckpt_path={checkpoint}", f"--output={tmp_path / 'dropped.pt'}", "--blurpool=drop"])
    torchvision.models.resnet18(num_classes=10).load_state_dict(torch.load(tmp_path / "dropped.pt"))

    main(["export", f"--ckpt_path={checkpoint}", f"--output={tmp_path / 'exact.ts'}", "--format=torchscript"])
    scripted = torch.jit.load(str(tmp_path / "exact.ts"))
    source = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    x = normalized_images()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), source.ema.module(x), rtol=1e-5, atol=1e-4)
