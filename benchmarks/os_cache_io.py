"""Storage bytes one training epoch reads: ``data.os_cache`` true (mmap + page cache) vs false (FFCV's own page cache).

    python benchmarks/os_cache_io.py [--size-mb 1536] [--batch-size 64] [--workers 2] [--workdir DIR]
    python benchmarks/os_cache_io.py --smoke      # under a minute (JIT of 5 loaders); what the test suite runs

The question: on instances with less RAM than train.ffcv (g5/g6.12xlarge 192 GB, p3.8xlarge 244 GB, vs ~390 GB
at the rn50 preset), which ``os_cache`` under DDP, where the order must be RANDOM?

Scaling. ImageNet at rn50 is ~302 KB per sample in our writer's 8 MiB pages: ~27 samples per page. Here both are
scaled down by 4: FFCV's smallest page (2 MiB) and raw RGB images of 128-190 px a side (mean ~76 KB), so still
~27 samples per page, and each sample spans about as many 4 KB OS pages relative to its FFCV page. What the two
memory managers read and hold depends on that ratio and on batches per epoch >> samples per page (how pages
recur over a random epoch), not on absolute sizes; ``--size-mb 1536`` gives ~21,000 samples in ~785 pages, of which
one batch of 64 touches ~60. Images are stored raw (no JPEG) so that decoding costs little next to the reads.

Each row builds our FFCVDataModule (bare ``order``/``os_cache``) and runs one epoch from a cold page cache: the
file is fsynced and dropped (``POSIX_FADV_DONTNEED``) first. ``read MB`` is this process's ``read_bytes`` in
/proc/self/io over the epoch: block-device reads, including mmap page faults and FFCV's reader threads.
``peak +MB`` is the largest rise of resident memory over the epoch (sampled every 20 ms): with ``os_cache=false``
FFCV allocates one page-sized slot for each page from its first to its last use in the epoch (``slots`` column).
The ``evicted`` rows re-drop the file's unmapped cached pages every 0.2 s during the epoch: the page cache then
keeps nothing the kernel read ahead but the loader has not used yet, the worst case of a file far larger than RAM.
``MADV_RANDOM`` opens FFCV's mmap with that advice: each fault reads its 4 KB page only, no read-ahead window.

Measured on the dev box (2 cores, 23 GB RAM, virtio disk, read_ahead_kb 8192),
``python benchmarks/os_cache_io.py --workdir /tmp/oscache_bench`` (21,236 samples):

    | case | file MB | read MB | read / file | peak +MB | slots | images/s |
    |---|---:|---:|---:|---:|---:|---:|
    | os_cache=true RANDOM | 1,570 | 1,569 | 1.00x | 126 | - | 7,695 |
    | os_cache=true RANDOM, evicted | 1,570 | 50,939 | 32.44x | 58 | - | 510 |
    | os_cache=true RANDOM, evicted, MADV_RANDOM | 1,570 | 1,089 | 0.69x | 54 | - | 1,426 |
    | os_cache=false RANDOM | 1,570 | 1,568 | 1.00x | 1,637 | 784 | 4,320 |
    | os_cache=false QUASI_RANDOM | 1,570 | 1,568 | 1.00x | 337 | 141 | 8,405 |

- ``os_cache=false`` does NOT amplify reads: FFCV's schedule reads each page once per epoch and keeps it until its
  last sample is served. Under RANDOM a page's first and last samples lie near the two ends of the epoch, so it
  holds ~all pages at once: 784 slots = the whole 785-page file in anonymous memory (QUASI_RANDOM, which serves
  pages in bursts, 141). At 390 GB that is ~390 GB of process memory: impossible at 192-244 GB of RAM (and, by the same
  schedule, each DDP rank, whose shard still touches nearly every page, would read and hold most of the file).
- ``os_cache=true`` reads 1x while the cache holds the read-ahead it did; when it cannot (evicted), every fault
  reads the device's whole read-ahead window again: 32x here with an 8 MiB window and 76 KB samples. The window,
  not FFCV's page, sets that cost; with ``MADV_RANDOM`` (or a small ``read_ahead_kb``) reads fall to the bytes the
  crops touch (0.69x: a raw image's random-resized crop reads only its rows; a JPEG is read whole, 1x).

The instance store as scripts/local_nvme.sh mounts it (two loop drives, btrfs RAID 0), evicted row only, the
btrfs read-ahead scaled like the samples (/4): btrfs's own 4 MiB is 1024 KB here, 128 KB is 32 KB:

    read_ahead_kb (real / here)   4096 / 1024   256 / 64   128 / 32
    read / file                        4.36x      1.41x      1.15x

Hence: under DDP keep ``os_cache: true`` also where RAM < file, and local_nvme.sh sets the mount's read-ahead to
128 KB.
"""

from __future__ import annotations

import argparse
import gc
import mmap
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.loading import cores_per_rank
from resnet_ffcv.dataset.ffcv_io import write_ffcv
from resnet_ffcv.dataset.format import IMAGE_FIELD, LABEL_FIELD
from resnet_ffcv.tools.disk_speed import drop_cached

PAGE = 1 << 21  # FFCV's smallest page: 1/4 of our writer's 8 MiB (writer.PAGE_SIZE)
SIDES = (128, 190)  # raw RGB, mean side 159: ~76 KB a sample, 1/4 of ImageNet's ~302 KB at the rn50 preset


class RawImages:
    """``count`` raw RGB images of random sides in ``SIDES`` (content irrelevant: only sizes matter here)."""

    def __init__(self, count: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.sides = rng.integers(SIDES[0], SIDES[1] + 1, size=(count, 2))

    def __len__(self) -> int:
        return len(self.sides)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        height, width = (int(side) for side in self.sides[index])
        image = np.empty((height, width, 3), np.uint8)
        image[:] = np.arange(width, dtype=np.uint8)[None, :, None] + np.uint8(index % 256)  # cheap, not constant
        return image, index % 10

    def describe(self, index: int) -> str:
        return f"synthetic sample {index}"


def write_train(path: Path, size_mb: int, workers: int) -> None:
    from ffcv.fields import IntField, RGBImageField

    count = int(size_mb * 2**20 / (3 * np.mean(SIDES) ** 2))
    fields = {IMAGE_FIELD: RGBImageField(write_mode="raw", max_resolution=SIDES[1]), LABEL_FIELD: IntField()}
    write_ffcv(path, fields, RawImages(count), workers, chunk_size=100, skip_unreadable=False, page_size=PAGE)
    with open(path, "rb+") as f:  # written back now: drop_cached drops clean pages only
        os.fsync(f.fileno())


def storage_read_bytes() -> int:
    """Bytes this process (all its threads) made the block layer read: page faults on mmaps included."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes (kernel without task I/O accounting)")


def read_ahead_kb(path: Path) -> str:
    """The kernel's read-ahead window of the device holding ``path``: how much one mmap fault reads around."""
    dev = os.stat(path).st_dev
    block = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for queue in (block / "queue", block / ".." / "queue"):  # a partition's queue is its disk's
        if (queue / "read_ahead_kb").is_file():
            return (queue / "read_ahead_kb").read_text().strip()
    return "?"


class Watch(threading.Thread):
    """Samples anonymous resident memory every 20 ms (its peak) and, if ``evict``, drops ``path``'s cache every 0.2 s.

    Anonymous memory only: the file pages an mmap keeps resident are page cache the kernel may reclaim."""

    def __init__(self, path: Path, evict: bool):
        super().__init__(daemon=True)
        self.path, self.evict, self.stop, self.peak = path, evict, threading.Event(), 0

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("/proc/self/status has no RssAnon")

    def run(self) -> None:
        ticks = 0
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.rss())
            ticks += 1
            if self.evict and ticks % 10 == 0:
                drop_cached(self.path)


@dataclass
class Row:
    name: str
    file_bytes: int
    read_bytes: int
    peak_bytes: int
    slots: int | None
    images_per_s: float


def advise_random(loader, path: Path) -> None:
    """Opens FFCV's mmap of ``path`` ahead of its epoch with ``MADV_RANDOM``: a page fault then reads its 4 KB page
    alone, not the device's read-ahead window around it."""
    memmap = np.memmap(path, "uint8", mode="r")
    memmap._mmap.madvise(mmap.MADV_RANDOM)  # numpy keeps the Python mmap here; it has no public handle
    loader.loader.memory_manager.context.mmap = memmap  # OSCacheContext maps the file only when this is None


def one_epoch(
    data_dir: Path, name: str, order: str, os_cache: bool, evict: bool, random_advice: bool, batch: int, workers: int
) -> Row:
    """One epoch of our training loader from a cold cache: storage bytes read, memory peak, images/s."""
    path = data_dir / "train.ffcv"
    data = FFCVDataModule(
        str(data_dir),
        val_file="train.ffcv",  # setup("fit") checks a val file exists; none is read here
        num_classes=10,
        batch_size=batch,
        num_workers=workers,
        train_resolution=128,
        order=order,
        os_cache=os_cache,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    if random_advice:
        advise_random(loader, path)
    gc.collect()  # an earlier row's mmap keeps its pages mapped, where DONTNEED cannot drop them
    drop_cached(path)
    watch = Watch(path, evict)
    before_rss, before_read = watch.rss(), storage_read_bytes()
    watch.start()
    images, slots, started = 0, None, 0.0
    for step, (_, labels) in enumerate(loader):
        if step == 0:  # the first batch also JIT-compiles the pipeline: time the rest
            started, images = time.perf_counter(), 0
            context = loader._live.memory_context
            slots = context.schedule.num_slots if hasattr(context, "schedule") else None
        images += len(labels)
    seconds = time.perf_counter() - started
    read = storage_read_bytes() - before_read
    watch.stop.set()
    watch.join()
    data.teardown("fit")
    del data, loader
    gc.collect()
    return Row(name, path.stat().st_size, read, watch.peak - before_rss, slots, images / seconds)


CASES = {  # name: (order, os_cache, evict, MADV_RANDOM)
    "os_cache=true RANDOM": ("random", True, False, False),
    "os_cache=true RANDOM, evicted": ("random", True, True, False),
    "os_cache=true RANDOM, evicted, MADV_RANDOM": ("random", True, True, True),
    "os_cache=false RANDOM": ("random", False, False, False),
    "os_cache=false QUASI_RANDOM": ("quasi_random", False, False, False),
}


def print_table(rows: list[Row], path: Path, batch: int, workers: int) -> None:
    mb = 1 / 2**20
    print(
        f"\n{path}: {rows[0].file_bytes * mb:,.0f} MB, {PAGE >> 20} MiB pages, batch {batch}, {workers} workers, "
        f"read_ahead_kb {read_ahead_kb(path)}, one epoch per row from a cold page cache\n"
    )
    print("| case | file MB | read MB | read / file | peak +MB | slots | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        slots = "-" if row.slots is None else str(row.slots)
        print(
            f"| {row.name} | {row.file_bytes * mb:,.0f} | {row.read_bytes * mb:,.0f} | "
            f"{row.read_bytes / row.file_bytes:.2f}x | {row.peak_bytes * mb:,.0f} | {slots} | "
            f"{row.images_per_s:,.0f} |"
        )


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1536, help="train.ffcv size to write (~76 KB a sample)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=cores_per_rank(1), help="default: all cores of this process")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--workdir", type=Path, default=None, help="keep train.ffcv here (default: temp)")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: checks that the benchmark runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.size_mb, args.batch_size = 24, 16

    with tempfile.TemporaryDirectory() as temp:
        data_dir = args.workdir or Path(temp)
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "train.ffcv"
        if not path.is_file():
            write_train(path, args.size_mb, args.workers)
        rows = [
            one_epoch(data_dir, name, *CASES[name], batch=args.batch_size, workers=args.workers) for name in args.cases
        ]
        print_table(rows, path, args.batch_size, args.workers)
    return rows


if __name__ == "__main__":
    main()
