"""``resnet-ffcv predict``: a folder of images (or a ``.ffcv`` file) and a checkpoint -> top-k classes per image.

    resnet-ffcv predict --config configs/p4d_78pct.yaml --config configs/predict.yaml \\
        --ckpt_path /data/checkpoints/best_model.ckpt --data.predict_path my_images/     # or some.ffcv

LightningCLI's own ``predict`` subcommand runs it; ``configs/predict.yaml`` is the overlay that turns a training
config into a prediction run (one device, no logger, :class:`PredictionWriter` as the only callback). The
pieces here:

- :class:`ImageFiles`: image files -> exactly the uint8 crops FFCV's validation pipeline would hand over for
  the same images (decoded as the dataset writer decodes them, then FFCV's own centre crop and resize).
- :class:`IndexedBatches`: an FFCV loader's batches with each sample's index in place of its label.
- :class:`PredictionWriter`: gathers ``predict_step``'s top-k into a CSV (written atomically) and a table.

Predict batches are ``(uint8 images NCHW channels_last, int64 sample index)``; the datamodule names the index
(``predict_names``: the image paths) and the classes (``class_names``).
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from resnet_ffcv import atomic
from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.sources import IMAGE_SUFFIXES, decode_rgb, is_image_file

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

    Decoding is the dataset writer's (:func:`resnet_ffcv.sources.decode_rgb`: PIL, grayscale and palette
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


def image_files_loader(dataset: ImageFiles, batch_size: int, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_channels_last,
        pin_memory=pin_memory,
    )


class IndexedBatches:
    """An FFCV loader in sequential order with each batch's labels replaced by its samples' indices.

    FFCV hands over fields, not sample indices; in sequential order over ``indices`` batch ``b`` holds
    ``indices[b * batch_size : (b + 1) * batch_size]``.

    Args:
        loader: the FFCV loader (or :class:`~resnet_ffcv.ffcv_loading.EpochLoader`), sequential, no ``drop_last``.
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


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict_step``'s top-k as a CSV and prints the first rows as a table.

    CSV columns: ``path`` (relative to ``data.predict_path``; ``index`` for a ``.ffcv`` file), then
    ``class_1, prob_1, ... class_k, prob_k``, most likely first, one row per image in input order. The file
    is written to a temporary name and renamed, so an interrupted run never leaves half a CSV under ``output``.

    Everything is gathered in one process: run predict with ``trainer.devices: 1`` (a multi-process run is
    refused at setup, before any image is decoded; gathering across DDP ranks is not implemented).
    Lightning's own ``BasePredictionWriter`` gives the hooks; gathering and formatting are ours because
    Lightning ships no concrete writer.

    Args:
        output: CSV path (folders are created).
        print_rows: table rows printed to the console (0: none).
    """

    def __init__(self, output: str = "predictions/predictions.csv", print_rows: int = 20):
        super().__init__(write_interval="batch")
        if print_rows < 0:
            raise InvalidValue(f"PredictionWriter.print_rows={print_rows}: expected >= 0")
        self.output = Path(output)
        self.print_rows = print_rows
        self._indices: list[torch.Tensor] = []
        self._classes: list[torch.Tensor] = []
        self._probabilities: list[torch.Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict" and trainer.world_size > 1:
            raise InvalidValue(
                f"PredictionWriter gathers predictions in one process, this run has {trainer.world_size}: "
                "set trainer.devices: 1 and trainer.num_nodes: 1 (configs/predict.yaml does)"
            )

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._indices, self._classes, self._probabilities = [], [], []

    def write_on_batch_end(
        self, trainer, pl_module, prediction: dict[str, torch.Tensor], batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        self._indices.append(batch[1].detach().cpu())
        self._classes.append(prediction["classes"].detach().cpu())
        self._probabilities.append(prediction["probabilities"].detach().float().cpu())

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._indices:
            rank_zero_info("PredictionWriter: nothing was predicted")
            return
        indices = torch.cat(self._indices)
        order = indices.argsort()
        indices = indices[order].tolist()
        classes = torch.cat(self._classes)[order].tolist()
        probabilities = torch.cat(self._probabilities)[order].tolist()

        datamodule = trainer.datamodule
        item_names = getattr(datamodule, "predict_names", None)
        class_names = getattr(datamodule, "class_names", None)
        if class_names is None:
            warnings.warn(
                "no classes.json in data.data_dir: the CSV and the table name classes by their index",
                stacklevel=1,
            )
        key = "index" if item_names is None else "path"
        rows = [
            [str(index) if item_names is None else item_names[index]]
            + [
                value
                for label, probability in zip(row_classes, row_probabilities, strict=True)
                for value in (str(label) if class_names is None else class_names[label], f"{probability:.6g}")
            ]
            for index, row_classes, row_probabilities in zip(indices, classes, probabilities, strict=True)
        ]
        top_k = len(classes[0])
        header = [key] + [name for rank in range(1, top_k + 1) for name in (f"class_{rank}", f"prob_{rank}")]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        atomic.write_bytes(self.output, text.getvalue().encode())
        if self.print_rows:
            print(format_table(header, rows[: self.print_rows]), flush=True)
        shown = f", the first {min(self.print_rows, len(rows))} above" if self.print_rows else ""
        print(f"{len(rows)} predictions (top {top_k}) written to {os.fspath(self.output)}{shown}", flush=True)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """``path | 1st class (prob) | 2nd ...``: one column per rank, the class and its probability together."""
    cells = [[header[0]] + [f"top-{rank}" for rank in range(1, (len(header) - 1) // 2 + 1)]]
    for row in rows:
        pairs = zip(row[1::2], row[2::2], strict=True)
        cells.append([row[0]] + [f"{name} {float(probability):.3f}" for name, probability in pairs])
    widths = [max(len(line[column]) for line in cells) for column in range(len(cells[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells
    )


def predict_workers(configured: int | None, available: int) -> int:
    """DataLoader worker processes for an image folder: the configured count, else the cores, at most 16.

    ``data.num_workers`` counts FFCV threads; a DataLoader worker is a process, and past ~16 decoding
    processes one GPU's forward pass is the bottleneck while every process still costs its start-up.
    """
    return configured if configured is not None else min(available, 16)
