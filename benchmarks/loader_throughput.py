"""Training-loader throughput: our FFCVDataModule vs a bare ffcv Loader vs torchvision ImageFolder + PIL.

    python benchmarks/loader_throughput.py [--images-per-class 200] [--resolutions 160 224] [--repeats 9]
    python benchmarks/loader_throughput.py --smoke      # seconds; what the test suite runs

One generated JPEG set (the synthetic shapes, 64-400 px a side; ``--image-sides 333 500`` for ImageNet's typical
sizes) is written once as an ImageFolder and, by our writer, as train.ffcv (``--preset rn50``: half the images
stored as JPEG, as the p4d recipe's data; ``--preset rn18``: 90% stored raw, so mostly no JPEG decode). All three
loaders do the same work per image: random-resized crop (scale 0.08-1) to the resolution, horizontal flip, uint8
CHW, batches of ``--batch-size`` with ``--workers`` threads or processes, and nothing moves to a GPU. Each loader
runs one warm-up epoch (FFCV compiles its pipeline then; DataLoader starts its workers), then ``--repeats`` epochs
interleaved with the other loaders, each repeat starting with the next loader, so that noise from other processes
spreads evenly; the table gives the median epoch's images/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.loading import cores_per_rank
from resnet_ffcv.dataset.synthetic import make_synthetic_imagefolder
from resnet_ffcv.dataset.writer import write_dataset


def ours(data_dir: Path, resolution: int, batch_size: int, workers: int) -> Iterable:
    data = FFCVDataModule(
        str(data_dir), batch_size=batch_size, num_workers=workers, train_resolution=resolution, order="random"
    )
    data.setup("fit")
    return data.train_dataloader()


def bare_ffcv(data_dir: Path, resolution: int, batch_size: int, workers: int) -> Iterable:
    from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    return Loader(
        str(data_dir / "train.ffcv"),
        batch_size=batch_size,
        num_workers=workers,
        order=OrderOption.RANDOM,
        os_cache=True,
        drop_last=True,
        seed=0,
        batches_ahead=3,
        pipelines={
            "image": [
                RandomResizedCropRGBImageDecoder((resolution, resolution)),
                RandomHorizontalFlip(),
                ToTensor(),
                ToTorchImage(),
            ],
            "label": [IntDecoder(), ToTensor(), Squeeze(1)],
        },
    )


def pil_imagefolder(image_dir: Path, resolution: int, batch_size: int, workers: int) -> Iterable:
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomResizedCrop(resolution), v2.RandomHorizontalFlip(), v2.PILToTensor()])
    dataset = ImageFolder(str(image_dir / "train"), transform=transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def epoch_seconds(loader: Iterable) -> tuple[float, int]:
    start, images, batch = time.perf_counter(), 0, None
    batches = iter(loader)
    for batch in batches:
        images += len(batch[1])
    # A bare FFCV iterator frees its batch buffers (~10 ms at batch 64) when dropped, ours when its epoch ends:
    # drop it inside the timed span so that both pay for it.
    del batch, batches
    return time.perf_counter() - start, images


def measure(loaders: dict[str, Iterable], repeats: int) -> dict[str, float]:
    """Median images/s per loader over ``repeats`` epochs, after one warm-up epoch each."""
    for loader in loaders.values():
        epoch_seconds(loader)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    names = list(loaders)
    for repeat in range(repeats):
        # Each repeat starts with the next loader: no loader always runs right after the PIL workers.
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, images = epoch_seconds(loaders[name])
            rates[name].append(images / seconds)
    return {name: statistics.median(values) for name, values in rates.items()}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images-per-class", type=int, default=200, help="10 classes of this many JPEGs")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[160, 224])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=cores_per_rank(1), help="default: all cores of this process")
    parser.add_argument(
        "--repeats",
        type=int,
        default=9,
        help="measured epochs per loader and resolution (a multiple of 3 puts each loader in each place equally)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated data here (default: temp)")
    parser.add_argument("--images", type=Path, default=None, help="an existing ImageFolder root (with train/)")
    parser.add_argument("--ffcv", type=Path, default=None, help="an existing folder with train.ffcv of --images")
    parser.add_argument(
        "--image-sides",
        type=int,
        nargs=2,
        default=[64, 400],
        metavar=("MIN", "MAX"),
        help="generated image side range in px (ImageNet's typical photos: 333 500)",
    )
    parser.add_argument(
        "--preset",
        choices=["rn50", "rn18"],
        default="rn50",
        help="how train.ffcv stores the images: rn50 (half JPEG, 500 px) or rn18 (10%% JPEG, 400 px)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: checks that the benchmark runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images_per_class, args.resolutions, args.batch_size, args.repeats = 4, [32], 8, 1

    with tempfile.TemporaryDirectory() as temp:
        root = args.workdir or Path(temp)
        image_dir, ffcv_dir = args.images or root / "images", args.ffcv or root / f"ffcv_{args.preset}"
        if not (image_dir / "train").is_dir():
            make_synthetic_imagefolder(
                image_dir,
                train_per_class=args.images_per_class,
                val_per_class=1,
                min_side=args.image_sides[0],
                max_side=args.image_sides[1],
            )
        if not (ffcv_dir / "train.ffcv").is_file():
            write_dataset(image_dir, ffcv_dir, preset=args.preset, num_workers=args.workers, overwrite=True)

        builders: dict[str, Callable[..., Iterable]] = {
            "ours": lambda res: ours(ffcv_dir, res, args.batch_size, args.workers),
            "bare ffcv": lambda res: bare_ffcv(ffcv_dir, res, args.batch_size, args.workers),
            "ImageFolder+PIL": lambda res: pil_imagefolder(image_dir, res, args.batch_size, args.workers),
        }
        rows = []
        for resolution in args.resolutions:
            rates = measure({name: build(resolution) for name, build in builders.items()}, args.repeats)
            rows.append({"resolution": resolution, **rates})
        images = sum(1 for path in (image_dir / "train").rglob("*") if path.is_file())

    print(
        f"\n{images} JPEGs, {args.preset} preset, batch {args.batch_size}, {args.workers} workers, "
        f"{os.cpu_count()} CPUs, median of {args.repeats} epochs (images/s)\n"
    )
    print("| resolution | ours | bare ffcv | ImageFolder+PIL | ours / bare ffcv | ours / PIL |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ours_rate, bare, pil = row["ours"], row["bare ffcv"], row["ImageFolder+PIL"]
        print(
            f"| {row['resolution']} | {ours_rate:,.0f} | {bare:,.0f} | {pil:,.0f} | "
            f"{ours_rate / bare:.2f}x | {ours_rate / pil:.1f}x |"
        )
    return rows


if __name__ == "__main__":
    main()
