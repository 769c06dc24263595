"""The FFCV LightningDataModule: ``train.ffcv`` / ``val.ffcv`` -> uint8 NCHW (channels_last) batches.

FFCV's pipelines end in uint8: normalization happens on the device in the LightningModule (a normalize inside
the pipeline can hang forever on the CPU in ffcv 1.0.2, and uint8 moves 4x fewer bytes to the GPU).
Loaders are built inside the dataloader hooks because ``distributed=True`` needs the process group.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from resnet_ffcv.writer import CLASSES_FILE, load_classes

Order = Literal["random", "quasi_random", "sequential"]


def cores_per_rank(devices_per_node: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // max(1, devices_per_node))


class FFCVDataModule(L.LightningDataModule):
    """ImageNet-style classification from FFCV files written by ``resnet-ffcv write-dataset``.

    Args:
        data_dir: folder holding ``train_file``, ``val_file`` and ``classes.json``.
        train_file: training split, relative to ``data_dir``.
        val_file: validation split, relative to ``data_dir``.
        batch_size: per device (the global batch is ``batch_size * devices * num_nodes``).
        val_batch_size: per device for validation; defaults to ``batch_size``.
        num_workers: FFCV decode threads per rank; default: the CPU cores divided by the ranks on this node.
        train_resolution: side of the random-resized crop, in pixels.
        val_resolution: side of the centre crop, in pixels.
        val_crop_ratio: centre crop side / short image side (224/256 as in the classic ImageNet protocol).
        scale: random-resized-crop area range, as a fraction of the image.
        ratio: random-resized-crop aspect ratio range.
        order: training order on one device; under DDP always ``random`` (FFCV has no distributed quasi-random).
        os_cache: let the OS page cache hold the whole file (FFCV's fast mode when it fits in RAM).
        batches_ahead: batches FFCV prepares ahead of the one in use.
        drop_last: drop the last incomplete training batch.
        seed: shuffling seed, identical on all ranks.
        num_classes: class count; by default the length of ``classes.json``.
    """

    def __init__(
        self,
        data_dir: str = "/data/ffcv",
        train_file: str = "train.ffcv",
        val_file: str = "val.ffcv",
        batch_size: int = 256,
        val_batch_size: int | None = None,
        num_workers: int | None = None,
        train_resolution: int = 160,
        val_resolution: int = 224,
        val_crop_ratio: float = 224 / 256,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        order: Order = "random",
        os_cache: bool = True,
        batches_ahead: int = 3,
        drop_last: bool = True,
        seed: int = 0,
        num_classes: int | None = None,
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.train_path = self.data_dir / train_file
        self.val_path = self.data_dir / val_file
        self.classes_path = self.data_dir / CLASSES_FILE
        self.num_classes = num_classes if num_classes is not None else self._count_classes()
        # num_classes is logged with the model's hparams (the CLI links it there); here it may still read None.
        self.save_hyperparameters(ignore=["num_classes"])
        self.train_resolution = train_resolution
        self._train_decoder = None

    def _count_classes(self) -> int:
        if not self.classes_path.is_file():
            raise FileNotFoundError(
                f"{self.classes_path}: missing (written by `resnet-ffcv write-dataset`); "
                "set data.num_classes or data.data_dir to the folder holding it"
            )
        return len(load_classes(self.classes_path))

    @property
    def class_names(self) -> list[str] | None:
        return load_classes(self.classes_path) if self.classes_path.is_file() else None

    def setup(self, stage: str) -> None:
        needed = [self.train_path, self.val_path] if stage == "fit" else [self.val_path]
        for path in needed:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing .ffcv file (check data.data_dir / data.train_file / data.val_file)")

    # -- the surface callbacks use -------------------------------------------------------------------------------
    def set_train_resolution(self, resolution: int) -> None:
        """Takes effect at the next ``iter(loader)``, without recompiling the pipeline."""
        self.train_resolution = resolution
        if self._train_decoder is not None:
            self._train_decoder.output_size = (resolution, resolution)

    # -- loaders ---------------------------------------------------------------------------------------------------
    def _distributed(self) -> bool:
        return self.trainer is not None and self.trainer.world_size > 1

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _loader(self, path: Path, image_decoder, batch_size: int, order, drop_last: bool, augment: bool):
        from ffcv.fields.decoders import IntDecoder
        from ffcv.loader import Loader
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        device = self._device()
        on_gpu = device.type == "cuda"
        image = [image_decoder, *([RandomHorizontalFlip()] if augment else []), ToTensor()]
        label = [IntDecoder(), ToTensor(), Squeeze()]
        if on_gpu:
            image.append(ToDevice(device, non_blocking=True))
            label.append(ToDevice(device, non_blocking=True))
        image.append(ToTorchImage())
        devices = self.trainer.num_devices if self.trainer is not None else 1
        return Loader(
            str(path),
            batch_size=batch_size,
            num_workers=self.hparams.num_workers or cores_per_rank(devices),
            order=order,
            os_cache=self.hparams.os_cache,
            drop_last=drop_last,
            pipelines={"image": image, "label": label},
            distributed=self._distributed(),
            seed=self.hparams.seed,
            batches_ahead=self.hparams.batches_ahead,
        )

    def train_dataloader(self):
        from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
        from ffcv.loader import OrderOption

        order = OrderOption.RANDOM if self._distributed() else OrderOption[self.hparams.order.upper()]
        self._train_decoder = RandomResizedCropRGBImageDecoder(
            (self.train_resolution, self.train_resolution),
            scale=tuple(self.hparams.scale),
            ratio=tuple(self.hparams.ratio),
        )
        loader = self._loader(
            self.train_path, self._train_decoder, self.hparams.batch_size, order, self.hparams.drop_last, augment=True
        )
        if self.trainer is not None:
            # FFCV's shuffle counter starts at 0 in every process; follow the trainer so a resume keeps the order.
            loader.next_epoch = self.trainer.current_epoch
        return loader

    def val_dataloader(self):
        from ffcv.fields.decoders import CenterCropRGBImageDecoder
        from ffcv.loader import OrderOption

        resolution = self.hparams.val_resolution
        decoder = CenterCropRGBImageDecoder((resolution, resolution), ratio=self.hparams.val_crop_ratio)
        batch_size = self.hparams.val_batch_size or self.hparams.batch_size
        return self._loader(self.val_path, decoder, batch_size, OrderOption.SEQUENTIAL, drop_last=False, augment=False)

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()
