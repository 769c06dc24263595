"""``resnet-ffcv inspect-dataset``: what is inside a ``.ffcv`` file, in numbers and as a picture.

    resnet-ffcv inspect-dataset --path /data/ffcv/val.ffcv --grid val_samples.png

Prints the sample count, the fields, a label histogram summary and stored image sizes, decodes a random sample
of images (any failure is listed), and draws a grid of them captioned with their class names for a person to
look at. It reads the file's metadata and stored bytes directly, so it needs no FFCV pipeline compile.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from resnet_ffcv.dataset.format import CLASSES_FILE, IMAGE_FIELD, LABEL_FIELD, field_metadata, load_classes, open_ffcv


class StoredImages:
    """Random access to the images and labels of a ``.ffcv`` file of our format (checked on opening)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.reader = open_ffcv(self.path)
        self.fields = {name: type(handler).__name__ for name, handler in self.reader.handlers.items()}
        self.meta = field_metadata(self.reader, IMAGE_FIELD)
        self.labels = np.asarray(field_metadata(self.reader, LABEL_FIELD), dtype=np.int64)
        table = self.reader.alloc_table
        self.sizes = dict(zip(table["ptr"].tolist(), table["size"].tolist(), strict=True))
        self.data = np.memmap(self.path, dtype=np.uint8, mode="r")

    def __len__(self) -> int:
        return int(self.reader.num_samples)

    def jpeg_share(self) -> float:
        from ffcv.fields.rgb_image import IMAGE_MODES

        return float(np.mean(self.meta["mode"] == IMAGE_MODES["jpg"])) if len(self) else 0.0

    def image(self, index: int) -> np.ndarray:
        """The stored RGB image (after the writer's resize), as uint8 HWC."""
        import cv2
        from ffcv.fields.rgb_image import IMAGE_MODES

        entry = self.meta[index]
        height, width, pointer = int(entry["height"]), int(entry["width"]), int(entry["data_ptr"])
        if entry["mode"] == IMAGE_MODES["raw"]:
            return np.array(self.data[pointer : pointer + height * width * 3]).reshape(height, width, 3)
        encoded = np.asarray(self.data[pointer : pointer + self.sizes[pointer]])
        decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
        if decoded is None or decoded.shape[:2] != (height, width):
            raise ValueError(f"{self.path}[{index}]: stored JPEG does not decode to {height}x{width}")
        return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _stats(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": round(float(values.mean()), 1),
        "max": int(values.max()),
    }


def draw_grid(images: list[np.ndarray], captions: list[str], path: Path, cell: int = 160, columns: int = 6) -> None:
    """Thumbnails (longest side ``cell``) on a white sheet, each captioned under it."""
    from PIL import Image, ImageDraw

    rows = max(1, -(-len(images) // columns))
    caption_height = 14
    sheet = Image.new("RGB", (columns * (cell + 4), rows * (cell + caption_height + 6)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (array, caption) in enumerate(zip(images, captions, strict=True)):
        thumb = Image.fromarray(array)
        thumb.thumbnail((cell, cell))
        x, y = (i % columns) * (cell + 4) + 2, (i // columns) * (cell + caption_height + 6) + 2
        sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        draw.text((x, y + cell + 2), caption[: cell // 6], fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def inspect_dataset(
    path: str,
    classes_file: str | None = None,
    sample: int = 256,
    grid: str | None = None,
    grid_images: int = 36,
    json_out: str | None = None,
    seed: int = 0,
) -> dict:
    """Summarize a ``.ffcv`` file; print it, optionally save it as JSON and draw a sample grid.

    Args:
        path: the ``.ffcv`` file.
        classes_file: class names by label; default: ``classes.json`` beside the file, if present.
        sample: images decoded to check that they decode (sizes come from the metadata of all images).
        grid: PNG to draw with ``grid_images`` random images captioned ``label: class name``; none if unset.
        grid_images: images in the grid.
        json_out: where to save the summary as JSON; none if unset.
        seed: picks the sampled images.
    """
    stored = StoredImages(path)
    classes_path = Path(classes_file) if classes_file else stored.path.parent / CLASSES_FILE
    names = load_classes(classes_path) if classes_path.is_file() else None
    count = len(stored)
    num_classes = len(names) if names else int(stored.labels.max()) + 1 if count else 0
    histogram = np.bincount(stored.labels, minlength=num_classes) if count else np.zeros(num_classes, int)
    rng = random.Random(seed)
    picks = sorted(rng.sample(range(count), min(sample, count)))
    failures = []
    for index in picks:
        try:
            stored.image(index)
        except Exception as error:  # report every bad one rather than stop at the first
            failures.append(f"{index}: {error}")

    def name(label: int) -> str:
        return names[label] if names and 0 <= label < len(names) else str(label)

    summary = {
        "file": str(stored.path),
        "bytes": stored.path.stat().st_size,
        "images": count,
        "fields": stored.fields,
        "classes": num_classes,
        "labels": _label_summary(stored.labels, histogram, num_classes, name),
        "stored_size": {
            "width": _stats(stored.meta["width"].astype(np.int64)),
            "height": _stats(stored.meta["height"].astype(np.int64)),
            "jpeg_share": round(stored.jpeg_share(), 3),
        },
        "decode_check": {"sampled": len(picks), "failed": failures[:20], "failed_count": len(failures)},
    }
    if grid:
        shown = sorted(rng.sample(range(count), min(grid_images, count)))
        images = [stored.image(index) for index in shown]
        captions = [f"{stored.labels[index]}: {name(int(stored.labels[index]))}" for index in shown]
        draw_grid(images, captions, Path(grid))
        summary["grid"] = str(grid)
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=1))
    _print(summary)
    return summary


def _label_summary(labels: np.ndarray, histogram: np.ndarray, num_classes: int, name) -> dict:
    """Classes present and empty, samples per class, the rarest and commonest, labels outside the index."""
    order = np.argsort(histogram, kind="stable")
    return {
        "classes_present": int((histogram > 0).sum()),
        "empty_classes": [name(int(label)) for label in np.flatnonzero(histogram == 0)[:20]],
        "per_class": _stats(histogram),
        "fewest": {name(int(label)): int(histogram[label]) for label in order[:3]},
        "most": {name(int(label)): int(histogram[label]) for label in order[::-1][:3]},
        "out_of_range": int(((labels < 0) | (labels >= max(num_classes, 1))).sum()),
    }


def _print(summary: dict) -> None:
    labels, sizes = summary["labels"], summary["stored_size"]
    print(f"{summary['file']}: {summary['images']} images, {summary['bytes'] / 1e9:.3f} GB, fields {summary['fields']}")
    print(
        f"  labels: {labels['classes_present']}/{summary['classes']} classes present, "
        f"per class {labels['per_class']}, "
        f"fewest {labels['fewest']}, most {labels['most']}, out of range {labels['out_of_range']}"
    )
    print(f"  stored width {sizes['width']}, height {sizes['height']}, JPEG share {sizes['jpeg_share']}")
    check = summary["decode_check"]
    print(f"  decoded {check['sampled']} sampled images, {check['failed_count']} failed {check['failed']}")
    if "grid" in summary:
        print(f"  sample grid: {summary['grid']}")
