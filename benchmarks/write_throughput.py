"""Images/s of ``resnet-ffcv write-dataset`` against FFCV's own way (``write_imagenet.py``: a plain
``ffcv.writer.DatasetWriter`` over ``torchvision.datasets.ImageFolder``), same images, same field parameters.

    python benchmarks/write_throughput.py              # 960 JPEGs of 300-600 px, about 1.5 minutes on 2 cores
    python benchmarks/write_throughput.py --smoke      # a few tiny images: checks that the script runs

Runs alternate (FFCV, ours, FFCV, ours, ...) so that load from other processes hits both alike; the table
shows the best and the median of the repeats. Ours is timed end to end: listing, checks, size estimate,
write, manifest.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_imagenet_like(root: Path, images: int, classes: int, min_side: int, max_side: int, seed: int = 0) -> None:
    """Photo-like JPEGs (smooth colour, shapes, grain) of random size at quality 90, in ImageFolder layout.

    Pure noise would be several times bigger and slower to decode than a photo; flat colour much smaller.
    """
    rng = np.random.default_rng(seed)
    for index in range(images):
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            box = (x0, y0, x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2)))
            draw.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image = image.filter(ImageFilter.GaussianBlur(1.5))
        grain = rng.normal(0, 8, (height, width, 3))
        image = Image.fromarray(np.clip(np.asarray(image) + grain, 0, 255).astype(np.uint8))
        folder = root / "train" / f"n{index % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{index:06d}.JPEG", quality=90)


def run_ffcv_reference(root: Path, output: Path, preset, workers: int, chunk_size: int) -> int:
    """FFCV's write_imagenet.py, reduced to its writing lines."""
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    from resnet_ffcv.dataset.writer import image_fields

    dataset = ImageFolder(str(root / "train"))
    writer = DatasetWriter(
        str(output),
        image_fields(preset),  # the same RGBImageField/IntField settings our writer uses
        num_workers=workers,
    )
    writer.from_indexed_dataset(dataset, chunksize=chunk_size)
    return len(dataset)


def run_ours(root: Path, output_dir: Path, preset_name: str, workers: int, chunk_size: int) -> int:
    from resnet_ffcv.dataset.inspect import StoredImages
    from resnet_ffcv.dataset.writer import write_dataset

    outputs = write_dataset(
        root, output_dir, splits=("train",), preset=preset_name, num_workers=workers, chunk_size=chunk_size,
        overwrite=True,
    )  # fmt: skip
    return len(StoredImages(outputs["train"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=960, help="generated JPEGs")
    parser.add_argument("--classes", type=int, default=16)
    parser.add_argument("--min-side", type=int, default=300)
    parser.add_argument("--max-side", type=int, default=600)
    parser.add_argument("--preset", default="rn50", choices=["rn50", "rn18"])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each writer")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--smoke", action="store_true", help="tiny run to check that the script works")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.classes, args.min_side, args.max_side, args.repeats = 12, 3, 48, 96, 1

    # Imported before any timing, so that neither writer pays for them.
    import ffcv.writer  # noqa: F401
    import torchvision.datasets  # noqa: F401

    from resnet_ffcv.dataset.writer import PRESETS

    preset = PRESETS[args.preset]
    root = args.root or Path(tempfile.mkdtemp(prefix="write_throughput_"))
    try:
        start = time.perf_counter()
        make_imagenet_like(root / "images", args.images, args.classes, args.min_side, args.max_side)
        source_bytes = sum(p.stat().st_size for p in (root / "images").rglob("*.JPEG"))
        print(
            f"generated {args.images} JPEGs ({args.min_side}-{args.max_side} px, "
            f"{source_bytes / args.images / 1e3:.0f} kB mean) in {time.perf_counter() - start:.1f} s"
        )
        seconds: dict[str, list[float]] = {
            "ffcv DatasetWriter + ImageFolder": [],
            "resnet-ffcv write-dataset": [],
        }
        for _ in range(args.repeats):
            for name in seconds:
                shutil.rmtree(root / "out", ignore_errors=True)
                (root / "out").mkdir()
                begin = time.perf_counter()
                if name.startswith("ffcv"):
                    count = run_ffcv_reference(
                        root / "images", root / "out" / "train.ffcv", preset, args.workers, args.chunk_size
                    )
                else:
                    count = run_ours(root / "images", root / "out", args.preset, args.workers, args.chunk_size)
                seconds[name].append(time.perf_counter() - begin)
                assert count == args.images, f"{name} wrote {count} of {args.images} images"
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"\n{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, "
        f"preset {args.preset}, {args.workers} workers, chunk {args.chunk_size}, {args.images} images, "
        f"{args.repeats} runs each\n"
    )
    print("| writer | best s | median s | images/s (best) | images/s (median) |")
    print("|---|---:|---:|---:|---:|")
    rates = {}
    for name, times in seconds.items():
        best, median = min(times), statistics.median(times)
        rates[name] = (args.images / best, args.images / median)
        print(f"| {name} | {best:.2f} | {median:.2f} | {rates[name][0]:.0f} | {rates[name][1]:.0f} |")
    ours, reference = rates["resnet-ffcv write-dataset"], rates["ffcv DatasetWriter + ImageFolder"]
    print(f"\nratio ours / FFCV: {ours[0] / reference[0]:.2f} (best), {ours[1] / reference[1]:.2f} (median)")


if __name__ == "__main__":
    main()
