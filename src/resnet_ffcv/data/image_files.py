"""The image-folder input of ``resnet-ffcv predict``: image files -> the uint8 crops FFCV's validation pipeline
would hand over for the same images, batched as FFCV batches them.

- :func:`predict_image_files`: the images ``data.predict_path`` names, every header checked before a model runs.
- :class:`ImageFiles`: decoded as the dataset writer decodes them, then FFCV's own centre crop and resize.
- :class:`IndexedBatches`: an FFCV loader's batches with each sample's index in place of its label.

Predict batches are ``(uint8 images NCHW channels_last, int64 sample index)``; the datamodule names the index
(``predict_names``: the image paths) and the classes (``class_names``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from resnet_ffcv.dataset.sources import IMAGE_SUFFIXES, decode_rgb, is_image_file
from resnet_ffcv.errors import InvalidValue

# Every name the dataset writer takes for an image (Pillow's decodable formats: .gif, .tif, .bmp, .ppm, ...),
# the common ones first so that a message listing them starts with what people have.
_COMMON = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PREDICT_SUFFIXES = _COMMON + tuple(sorted(IMAGE_SUFFIXES - set(_COMMON)))


def list_images(root: Path) -> list[Path]:
    """Image files in ``root`` and its subfolders, sorted folder by folder (as ``write-dataset`` orders them).

    Chosen as ``write-dataset`` chooses them: by name (any case) or, for a name that says nothing, by content;
    hidden files (macOS ``._x.jpg`` forks) are skipped. Each real folder is read once, so a symlink loop
    cannot list an image twice (or forever).
    """
    files: list[Path] = []
    # Folders above root count as seen: a link up to one of them is a loop too.
    seen = {(stat.st_dev, stat.st_ino) for stat in map(os.stat, root.resolve().parents)}
    for folder, subfolders, names in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            subfolders.clear()  # a loop or a second link to the same folder: its images are listed already
            continue
        seen.add((stat.st_dev, stat.st_ino))
        files += [Path(folder, name) for name in sorted(names) if is_image_file(os.path.join(folder, name), name)]
    return sorted(files, key=lambda path: path.relative_to(root).parts)


def check_images(files: list[Path]) -> None:
    """Reads every file's header (no decode), so an unreadable file stops the run before any work.

    A file whose header is fine but whose data is broken (truncated) still fails later, naming the file.
    """
    for path in files:
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018  (the header is parsed by open; size proves it)
        except Exception as error:  # PIL raises many types; all mean "not an image we can read"
            raise InvalidValue(
                f"{path}: not a readable image ({type(error).__name__}: {error}); remove it from "
                f"data.predict_path (expected an image file Pillow can read: {', '.join(_COMMON)}, ...)"
            ) from error


def predict_image_files(path: Path | None) -> list[Path] | None:
    """The images ``data.predict_path`` names (a folder, searched recursively, or one image), every header
    checked before a model runs; None for a ``.ffcv`` file, which the datamodule checks as it checks its own."""
    if path is None:
        raise InvalidValue("data.predict_path is not set: expected a folder of images or a .ffcv file")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise InvalidValue(
                f"data.predict_path={path}: no image files in this folder "
                f"({', '.join(PREDICT_SUFFIXES[:8])}, ... any format Pillow reads)"
            )
    elif path.suffix == ".ffcv":
        return None
    elif path.is_file() and path.suffix.lower() in PREDICT_SUFFIXES:
        files = [path]
    else:
        raise FileNotFoundError(f"data.predict_path={path}: expected a folder of images, an image or a .ffcv file")
    check_images(files)
    return files


def center_crop(image: np.ndarray, resolution: int, crop_ratio: float) -> np.ndarray:
    """FFCV's ``CenterCropRGBImageDecoder`` on a decoded HWC image: the centred square whose side is
    ``crop_ratio`` of the short side, resized to ``resolution`` (so the short side is in effect scaled to
    ``resolution / crop_ratio``).

    Calls FFCV's own C resize (OpenCV ``INTER_AREA`` on the crop) with FFCV's own crop arithmetic, so an image
    stored raw in a ``.ffcv`` file gives the same pixels both ways.
    """
    from ffcv.libffcv import resize_crop

    height, width = image.shape[:2]
    # ffcv.fields.rgb_image.get_center_crop, but at least 1 px: a 1x1 image would otherwise abort in the resize.
    side = max(1, int(crop_ratio * min(height, width)))
    top, left = (height - side) // 2, (width - side) // 2
    output = np.empty((resolution, resolution, 3), dtype=np.uint8)
    resize_crop(np.ascontiguousarray(image), top, top + side, left, left + side, output)
    return output


class ImageFiles(Dataset):
    """``(uint8 HWC crop, index)`` for each image file, decoded by content whatever its name says.

    Decoding is the dataset writer's (:func:`resnet_ffcv.dataset.sources.decode_rgb`: PIL, grayscale and palette
    images to RGB, transparency laid on white), so predictions see what training saw.

    Args:
        files: the image files, in output order.
        resolution: crop side in pixels (``data.val_resolution``).
        crop_ratio: crop side / short image side (``data.val_crop_ratio``).
    """

    def __init__(self, files: list[Path], resolution: int, crop_ratio: float):
        self.files = files
        self.resolution = resolution
        self.crop_ratio = crop_ratio

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        image = center_crop(decode_rgb(path, str(path)), self.resolution, self.crop_ratio)
        return torch.from_numpy(image), index


def collate_channels_last(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """HWC crops -> one NHWC block seen as NCHW: the channels_last uint8 batch FFCV's ``ToTorchImage`` gives."""
    images, indices = zip(*samples, strict=True)
    return torch.stack(images).permute(0, 3, 1, 2), torch.tensor(indices, dtype=torch.long)


def image_files_loader(
    files: list[Path], resolution: int, crop_ratio: float, batch_size: int, num_workers: int, pin_memory: bool
) -> DataLoader:
    """Batches of :class:`ImageFiles` in input order, as FFCV's validation loader would hand them over."""
    return DataLoader(
        ImageFiles(files, resolution, crop_ratio),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_channels_last,
        pin_memory=pin_memory,
    )


def relative_names(path: Path, files: list[Path]) -> list[str]:
    """Each file's name relative to ``data.predict_path`` (a folder, or one image): the CSV's ``path`` column."""
    root = path if path.is_dir() else path.parent
    return [file.relative_to(root).as_posix() for file in files]


class IndexedBatches:
    """An FFCV loader in sequential order with each batch's labels replaced by its samples' indices.

    FFCV hands over fields, not sample indices; in sequential order over ``indices`` batch ``b`` holds
    ``indices[b * batch_size : (b + 1) * batch_size]``.

    Args:
        loader: the FFCV loader (or :class:`~resnet_ffcv.data.loading.EpochLoader`), sequential, no ``drop_last``.
        indices: the sample indices it reads, in its order.
    """

    def __init__(self, loader, indices: np.ndarray):
        self.loader = loader
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = 0
        for images, _labels in self.loader:
            count = images.shape[0]
            yield images, torch.from_numpy(self.indices[start : start + count])
            start += count

    def close(self) -> None:
        if hasattr(self.loader, "close"):
            self.loader.close()


def predict_workers(configured: int | None, available: int) -> int:
    """DataLoader worker processes for an image folder: the configured count, else the cores, at most 16.

    ``data.num_workers`` counts FFCV threads; a DataLoader worker is a process, and past ~16 decoding
    processes one GPU's forward pass is the bottleneck while every process still costs its start-up.
    """
    return configured if configured is not None else min(available, 16)
