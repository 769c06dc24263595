"""A small, learnable image set written as real JPEG files in ImageFolder layout, for the demo and the tests.

Each class is a shape or texture in its own colour, drawn at a random place and scale on a noisy background,
in images of random size: a small ResNet learns it in a few CPU minutes, yet it exercises the same decode,
random-resized-crop and aspect-ratio paths as ImageNet.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from resnet_ffcv.errors import InvalidValue

Box = tuple[int, int, int, int]
Painter = Callable[[ImageDraw.ImageDraw, Box, tuple[int, int, int]], None]


def _circle(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
    draw.ellipse(box, fill=colour)


def _square(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
    draw.rectangle(box, fill=colour)


def _triangle(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    draw.polygon([((x0 + x1) // 2, y0), (x0, y1), (x1, y1)], fill=colour)


def _ring(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
    draw.ellipse(box, outline=colour, width=max(2, (box[2] - box[0]) // 6))


def _cross(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    w = max(2, (x1 - x0) // 5)
    draw.rectangle(((x0 + x1) // 2 - w, y0, (x0 + x1) // 2 + w, y1), fill=colour)
    draw.rectangle((x0, (y0 + y1) // 2 - w, x1, (y0 + y1) // 2 + w), fill=colour)


def _stripes(direction: str) -> Painter:
    def paint(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = box
        step = max(4, (x1 - x0) // 6)
        side = x1 - x0
        for offset in range(0, 2 * side if direction == "d" else side, 2 * step):
            if direction == "h":
                draw.rectangle((x0, y0 + offset, x1, min(y1, y0 + offset + step - 1)), fill=colour)
            elif direction == "v":
                draw.rectangle((x0 + offset, y0, min(x1, x0 + offset + step - 1), y1), fill=colour)
            else:
                draw.line((x0 + offset, y0, x0, y0 + offset), fill=colour, width=step // 2 + 1)

    return paint


def _checker(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    step = max(4, (x1 - x0) // 5)
    for i, x in enumerate(range(x0, x1, step)):
        for j, y in enumerate(range(y0, y1, step)):
            if (i + j) % 2 == 0:
                draw.rectangle((x, y, min(x1, x + step - 1), min(y1, y + step - 1)), fill=colour)


def _dots(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    step = max(6, (x1 - x0) // 4)
    r = max(2, step // 4)
    for x in range(x0 + step // 2, x1, step):
        for y in range(y0 + step // 2, y1, step):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


CLASSES: list[tuple[str, Painter, tuple[int, int, int]]] = [
    ("red_circle", _circle, (220, 40, 40)),
    ("green_square", _square, (40, 200, 60)),
    ("blue_triangle", _triangle, (50, 80, 230)),
    ("yellow_hstripes", _stripes("h"), (230, 220, 50)),
    ("magenta_vstripes", _stripes("v"), (210, 50, 210)),
    ("cyan_checker", _checker, (50, 210, 220)),
    ("orange_ring", _ring, (240, 140, 30)),
    ("white_cross", _cross, (235, 235, 235)),
    ("purple_diagonal", _stripes("d"), (130, 60, 200)),
    ("grey_dots", _dots, (150, 150, 150)),
]


def draw_sample(class_index: int, rng: random.Random, min_side: int = 64, max_side: int = 400) -> Image.Image:
    """One image of class ``class_index``: random size (sides in [min_side, max_side]), position, scale, colour."""
    _, paint, colour = CLASSES[class_index]
    width, height = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 60, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(noise + np.uint8(rng.randint(0, 40)))
    side = int(min(width, height) * rng.uniform(0.45, 0.9))
    x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
    jitter = tuple(int(np.clip(c + rng.randint(-25, 25), 0, 255)) for c in colour)
    paint(ImageDraw.Draw(image), (x0, y0, x0 + side, y0 + side), jitter)
    return image


def make_synthetic_imagefolder(
    root: str | Path,
    train_per_class: int = 60,
    val_per_class: int = 20,
    num_classes: int = len(CLASSES),
    seed: int = 0,
    min_side: int = 64,
    max_side: int = 400,
) -> Path:
    """Write ``root/{train,val}/<class>/<n>.JPEG`` and return ``root``.

    Args:
        root: folder to write into (created; ImageFolder layout, ready for ``resnet-ffcv write-dataset``).
        train_per_class: training images per class.
        val_per_class: validation images per class.
        num_classes: how many of the 10 shape classes to draw (1 to 10).
        seed: random seed: the same seed writes the same images.
        min_side: shortest allowed image side in pixels (ImageNet-like: 300).
        max_side: longest allowed image side in pixels (ImageNet-like: 600).
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise InvalidValue(f"num_classes={num_classes}: expected 1..{len(CLASSES)}")
    if not 16 <= min_side <= max_side:
        raise InvalidValue(f"min_side={min_side}, max_side={max_side}: expected 16 <= min_side <= max_side")
    root = Path(root)
    rng = random.Random(seed)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for class_index in range(num_classes):
            class_dir = root / split / CLASSES[class_index][0]
            class_dir.mkdir(parents=True, exist_ok=True)
            for n in range(per_class):
                draw_sample(class_index, rng, min_side, max_side).save(class_dir / f"{n:05d}.JPEG", quality=90)
    return root


def make_synthetic_command(
    root: str,
    train_per_class: int = 60,
    val_per_class: int = 20,
    num_classes: int = len(CLASSES),
    seed: int = 0,
    min_side: int = 64,
    max_side: int = 400,
) -> None:
    """The demo's learnable image set (coloured shapes on noise) as JPEG files in ImageFolder layout.

    Then ``resnet-ffcv write-dataset --source_dir ROOT`` makes the .ffcv files.

    Args:
        root: folder to write into (created; ImageFolder layout: root/train/<class>/, root/val/<class>/).
        train_per_class: training images per class.
        val_per_class: validation images per class.
        num_classes: how many of the 10 shape classes to draw (1 to 10).
        seed: random seed: the same seed writes the same images.
        min_side: shortest allowed image side in pixels (ImageNet-like: 300).
        max_side: longest allowed image side in pixels (ImageNet-like: 600).
    """
    make_synthetic_imagefolder(root, train_per_class, val_per_class, num_classes, seed, min_side, max_side)
    names = ", ".join(name for name, _, _ in CLASSES[:num_classes])
    print(
        f"wrote {train_per_class * num_classes} train and {val_per_class * num_classes} val JPEGs "
        f"({num_classes} classes: {names}; sides {min_side}-{max_side} px) to {Path(root)}/train and "
        f"{Path(root)}/val"
    )
