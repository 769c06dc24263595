"""Write an ImageFolder tree (``train/<class>/*``, ``val/<class>/*``) to ``train.ffcv`` and ``val.ffcv``.

Both splits share one class index (sorted train folder names), saved beside the outputs as ``classes.json``
so that training, prediction and export all agree on what label 3 means.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Preset:
    """FFCV's ImageNet writer settings (libffcv/ffcv-imagenet, rn50 and rn18 configs)."""

    max_resolution: int
    compress_probability: float
    jpeg_quality: int
    write_mode: str = "proportion"


PRESETS = {
    "rn50": Preset(max_resolution=500, compress_probability=0.5, jpeg_quality=90),
    "rn18": Preset(max_resolution=400, compress_probability=0.1, jpeg_quality=90),
}


class ImageFolderSource:
    """(RGB uint8 HWC array, label) pairs from a list of files; picklable so FFCV's writer processes can use it."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Exception as error:  # the path is what a user needs to fix their data
            raise RuntimeError(f"cannot decode image {path}: {error}") from error
        return np.asarray(rgb), label


def find_classes(split_dir: Path) -> list[str]:
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image files>)")
    return classes


def list_samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    samples = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if class_dir.is_dir():
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            samples.extend((str(path), label) for path in files)
    return samples


def write_split(
    samples: list[tuple[str, int]],
    output: Path,
    preset: Preset,
    num_workers: int,
    chunk_size: int,
) -> None:
    """Write one ``.ffcv`` file atomically: a temporary name in the same directory, renamed when complete."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    fields = {
        "image": RGBImageField(
            write_mode=preset.write_mode,
            max_resolution=preset.max_resolution,
            compress_probability=preset.compress_probability,
            jpeg_quality=preset.jpeg_quality,
        ),
        "label": IntField(),
    }
    try:
        DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(
            ImageFolderSource(samples), chunksize=chunk_size
        )
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)


def write_dataset(
    source_dir: str | Path,
    output_dir: str | Path,
    splits: tuple[str, ...] = ("train", "val"),
    preset: str = "rn50",
    num_workers: int = os.cpu_count() or 1,
    chunk_size: int = 100,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write ``<output_dir>/<split>.ffcv`` for each split and ``classes.json``; returns the written paths.

    Args:
        source_dir: ImageFolder root holding one folder per split, each with one folder per class.
        output_dir: where the ``.ffcv`` files and ``classes.json`` go (created if missing).
        splits: split folder names; the first one defines the class index.
        preset: FFCV's writer settings, ``rn50`` (max side 500 px, half of the images JPEG-compressed at
            quality 90, the rest raw) or ``rn18`` (400 px, 10% compressed).
        num_workers: writer processes.
        chunk_size: images per work unit handed to a writer process.
        overwrite: replace existing complete output files.
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
    for split in splits:
        if not (source_dir / split).is_dir():
            raise FileNotFoundError(f"{source_dir / split}: missing split folder (expected <class>/<images> inside)")
    classes = find_classes(source_dir / splits[0])
    for split in splits[1:]:
        other = find_classes(source_dir / split)
        if other != classes:
            extra, missing = sorted(set(other) - set(classes)), sorted(set(classes) - set(other))
            raise ValueError(
                f"{source_dir / split}: class folders differ from {splits[0]}: "
                f"extra {extra[:10]}, missing {missing[:10]}"
            )
    outputs = {split: output_dir / f"{split}.ffcv" for split in splits}
    existing = [str(path) for path in outputs.values() if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist; pass --overwrite true to replace them")

    output_dir.mkdir(parents=True, exist_ok=True)
    for split, output in outputs.items():
        samples = list_samples(source_dir / split, classes)
        if not samples:
            raise FileNotFoundError(f"{source_dir / split}: no image files found")
        start = time.perf_counter()
        write_split(samples, output, PRESETS[preset], num_workers, chunk_size)
        seconds = time.perf_counter() - start
        print(
            f"{split}: {len(samples)} images, {len(classes)} classes, {output.stat().st_size / 1e6:.1f} MB "
            f"in {seconds:.1f} s ({len(samples) / seconds:.0f} images/s) -> {output}"
        )
    save_classes(output_dir / CLASSES_FILE, classes)
    return outputs


def save_classes(path: Path, classes: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps([{"index": i, "wnid": name, "name": name} for i, name in enumerate(classes)], indent=1))
    os.replace(tmp, path)


def load_classes(path: str | Path) -> list[str]:
    """Class names by label index from a ``classes.json`` written by :func:`write_dataset`."""
    entries = json.loads(Path(path).read_text())
    return [entry["name"] for entry in sorted(entries, key=lambda entry: entry["index"])]
