"""``resnet-ffcv export``: a training checkpoint -> weights anyone can load without this project.

``state_dict`` (default): a plain torchvision state_dict, so ``torchvision.models.resnet50(num_classes=N)
.load_state_dict(torch.load(path))`` works. BlurPool (FFCV's recipe) is not part of torchvision's ResNet: such a
checkpoint is refused unless ``blurpool="drop"``, which removes the blur in front of each strided convolution
and keeps the convolution weights; the network then computes something else and loses accuracy (validate it
before use). ``torchscript`` keeps the exact network, BlurPool included.

Both take what torchvision models take: float NCHW images normalized with the ImageNet mean and std (the
LightningModule does that normalization itself on uint8 input; the exported network does not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from resnet_ffcv import atomic
from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.recipe.networks import BLUR_SUFFIX, build_network, drop_blurpool, network_state_dict  # noqa: F401


def _atomic_save(save, output: Path) -> None:
    with atomic.replacing(output) as temp:
        save(temp)
        atomic.fsync_file(temp)


def export(
    ckpt_path: str,
    output: str,
    weights: Literal["ema", "raw"] = "ema",
    format: Literal["state_dict", "torchscript"] = "state_dict",
    blurpool: Literal["refuse", "drop"] = "refuse",
) -> Path:
    """Write the network of ``ckpt_path`` to ``output``.

    Args:
        ckpt_path: a checkpoint written by ``resnet-ffcv fit``.
        output: the file to write (written atomically).
        weights: ``ema`` (the EMA copy, when the run kept one) or ``raw``.
        format: ``state_dict`` (torchvision-loadable) or ``torchscript`` (exact network, BlurPool included).
        blurpool: for ``state_dict`` from a BlurPool network: ``refuse``, or ``drop`` the blur (changes outputs).
    """
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    hparams = checkpoint.get("hyper_parameters", {})
    state, used = network_state_dict(checkpoint, weights)
    has_blur = any(key.endswith(BLUR_SUFFIX) for key in state)
    output_path = Path(output)
    if format == "state_dict":
        if has_blur and blurpool == "refuse":
            raise InvalidValue(
                f"{ckpt_path}: the network uses BlurPool, which torchvision's {hparams.get('arch', 'model')} "
                "lacks. Use --format torchscript for the exact network, or --blurpool drop to export the "
                "convolution weights without the blur (outputs change: validate before use)."
            )
        plain = drop_blurpool(state) if has_blur else state
        _atomic_save(lambda path: torch.save(plain, path), output_path)
    elif format == "torchscript":
        network = build_network(
            hparams.get("arch", "resnet50"),
            hparams.get("num_classes", 1000),
            blurpool=has_blur,
            channels_last=False,
        )
        network.load_state_dict(state)
        scripted = torch.jit.script(network.eval())
        _atomic_save(lambda path: scripted.save(str(path)), output_path)
    else:
        raise InvalidValue(f"format={format!r}: expected state_dict or torchscript")
    note = ", BlurPool dropped" if has_blur and format == "state_dict" else ""
    print(f"exported {hparams.get('arch', '?')} ({used} weights{note}) as {format} -> {output_path}")
    return output_path
