"""Data larger than memory under DDP, inside a REAL memory limit: ``random`` vs ``quasi_random``, per ``os_cache``.

    python benchmarks/ddp_memory_limit.py [--size-mb 3072] [--limit-mb 2048] [--workdir DIR]
    python benchmarks/ddp_memory_limit.py --smoke     # tiny, what the test suite runs (tests/test_quasi_random.py)

Each case runs 2 ranks (CPU processes, a gloo process group as under Lightning's DDP), each rank our train
loader (``resnet_ffcv.data.loading.train_loader``, as the datamodule builds it) on its share of one epoch, inside a
cgroup-v1 memory cgroup created for the case (``/sys/fs/cgroup/memory/<name>/memory.limit_in_bytes``, the ranks'
pids in ``cgroup.procs``, removed afterwards). The kernel charges the ranks' memory AND the page cache they fill
to that cgroup and reclaims it at the limit, as on a machine whose RAM is the limit. The file's cache is dropped
before each case. Where no cgroup can be made (not root, no v1 memory controller) one line says so and each case
runs unlimited, with the file's cache dropped every 0.2 s instead (``os_cache_io.py``'s eviction mode).

Columns, per case (both ranks together):
``read / file``: storage bytes the ranks read (``read_bytes`` of /proc/<pid>/io, all threads, mmap faults
included) per epoch, over the file size; ``cgroup peak MB``: the cgroup's ``memory.max_usage_in_bytes`` (process
memory + page cache); ``anon peak MB``: the ranks' largest resident anonymous memory (sampled every 20 ms), which
the kernel cannot drop; ``images/s``: both ranks, from each rank's second batch; randomness, from the served
labels (label = sample index; classes are contiguous runs of 1,281 samples as in a class-sorted ImageNet
file): ``|di| / uniform``: the mean distance between consecutive samples' indices over what a uniform shuffle
gives (n/3), and ``classes/batch``: distinct classes per batch (a uniform shuffle's expectation in the header).
``random`` rows stop after ``--random-batches`` batches per rank (they are slow: that is the point) and scale the
bytes read to a whole epoch; the other rows run the whole epoch.

Scaling from ImageNet at the rn50 preset (~302 KB samples in 8 MiB pages, ~390 GB, vs 192 GB RAM on g5.12xlarge):
samples and pages / 4 as in ``os_cache_io.py`` (raw 76 KB images in 2 MiB pages, ~27 per page), the file about the
limit's size, and what the page cache may use smaller still: each rank's torch import holds ~0.6 GB of anonymous
memory here, so of the 1.5 GB limit ~0.3 GB is left for the cache, a fifth of the file (g5: ~150 of 390 GB).
The measured table and what it means: docs/data-loading.md, "Measured inside a real memory limit".
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
PER_CLASS = 1281  # ImageNet's samples per class: labels are indices, classes contiguous runs of these
CASES = {  # name: (order, os_cache)
    "random, os_cache=true": ("random", True),
    "random, os_cache=false": ("random", False),
    "quasi_random, os_cache=true": ("quasi_random", True),
    "quasi_random, os_cache=false": ("quasi_random", False),
}


# -- the data ------------------------------------------------------------------------------------------------
def write_train(path: Path, size_mb: int) -> None:
    """Raw images as in os_cache_io.py (76 KB mean, 2 MiB pages), label = sample index."""
    from ffcv.fields import IntField, RGBImageField

    from resnet_ffcv.dataset.ffcv_io import write_ffcv
    from resnet_ffcv.dataset.format import IMAGE_FIELD, LABEL_FIELD

    sys.path.insert(0, str(Path(__file__).parent))
    from os_cache_io import PAGE, SIDES, RawImages

    class Indexed(RawImages):
        def __getitem__(self, index: int):
            return super().__getitem__(index)[0], index

    count = int(size_mb * 2**20 / (3 * np.mean(SIDES) ** 2))
    fields = {IMAGE_FIELD: RGBImageField(write_mode="raw", max_resolution=SIDES[1]), LABEL_FIELD: IntField()}
    write_ffcv(path, fields, Indexed(count), 2, chunk_size=100, skip_unreadable=False, page_size=PAGE)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# -- one rank (a subprocess, inside the case's cgroup) ---------------------------------------------------------
def status_kb(pid: int | str, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no read_bytes")


def rank_main(args) -> None:
    """One rank's epoch: writes {labels, seconds, images, read_bytes, anon_peak, slots} to ``args.out``."""
    import torch
    import torch.distributed as dist

    from resnet_ffcv.data.loading import train_loader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=2)
    loader = train_loader(
        args.path,
        128,
        args.batch_size,
        (0.08, 1.0),
        (3 / 4, 4 / 3),
        args.order,
        True,
        True,
        torch.device("cpu"),
        lambda _: 0,
        ranks=(args.rank, 2),
        quasi_random_pages=args.pages,
        num_workers=1,
        os_cache=args.os_cache == "true",
        seed=0,
        batches_ahead=3,
    )
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], status_kb("self", "RssAnon"))

    threading.Thread(target=watch, daemon=True).start()
    before = read_bytes()
    labels, started, images, slots = [], 0.0, 0, None
    for step, (_, batch_labels) in enumerate(loader):
        if step == 0:
            started, images = time.perf_counter(), 0
            context = loader._live.memory_context
            slots = context.schedule.num_slots if hasattr(context, "schedule") else None
        labels.append(batch_labels.tolist())
        images += len(batch_labels)
        if args.max_batches and step + 1 >= args.max_batches:
            break
    seconds = time.perf_counter() - started
    result = {
        "labels": labels,
        "seconds": seconds,
        "images": images,
        "read_bytes": read_bytes() - before,
        "anon_peak": peak[0] * 1024,
        "slots": slots,
        "epoch_batches": len(loader),
    }
    stop.set()
    loader.close()
    Path(args.out).write_text(json.dumps(result))
    dist.destroy_process_group()


# -- the cgroup ----------------------------------------------------------------------------------------------
class MemoryCgroup:
    """A cgroup-v1 memory cgroup with a limit: processes started with ``preexec`` run (and are charged) in it."""

    def __init__(self, name: str, limit_bytes: int):
        self.path = CGROUP_ROOT / name
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))

    @staticmethod
    def why_not() -> str | None:
        """None if one can be made here, else why not."""
        if not (CGROUP_ROOT / "cgroup.procs").is_file():
            return f"{CGROUP_ROOT} is not a cgroup-v1 memory hierarchy"
        if not os.access(CGROUP_ROOT, os.W_OK):
            return f"{CGROUP_ROOT} is not writable (needs root)"
        return None

    def preexec(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak_bytes(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        for line in (self.path / "memory.oom_control").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
        return 0

    def remove(self) -> None:
        for _ in range(50):  # the ranks have exited; their page cache moves to the parent when it is removed
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


@dataclass
class Row:
    name: str
    read_per_file: float | None
    cgroup_peak: int | None
    anon_peak: int | None
    slots: str
    images_per_s: float | None
    spread: float | None
    classes: float | None
    note: str = ""


def randomness(labels: list[list[int]], count: int) -> tuple[float, float]:
    """(mean |index difference| of consecutive samples / (n/3), mean distinct classes per batch)."""
    flat = np.array([x for batch in labels for x in batch])
    spread = float(np.abs(np.diff(flat)).mean() / (count / 3)) if len(flat) > 1 else float("nan")
    classes = float(np.mean([len(set(np.array(batch) // PER_CLASS)) for batch in labels]))
    return spread, classes


def run_case(name: str, args, path: Path, work: Path, limited: bool) -> Row:
    from resnet_ffcv.tools.disk_speed import drop_cached

    order, os_cache = CASES[name]
    drop_cached(path)
    cgroup = (
        MemoryCgroup(f"resnet-ffcv-bench-{os.getpid()}-{order}-{os_cache}", args.limit_mb << 20) if limited else None
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    max_batches = args.random_batches if order == "random" else 0
    outs = [work / f"{order}-{os_cache}-rank{rank}.json" for rank in (0, 1)]
    command = [sys.executable, __file__, "--rank-of", str(path), "--port", str(port), "--order", order]
    command += ["--os-cache", str(os_cache).lower(), "--batch-size", str(args.batch_size), "--pages", str(args.pages)]
    command += ["--max-batches", str(max_batches)]
    stop = threading.Event()

    def evict() -> None:  # eviction mode, without a cgroup: the file's cache dropped every 0.2 s
        while not stop.wait(0.2):
            drop_cached(path)

    if not limited:
        threading.Thread(target=evict, daemon=True).start()
    logs = [out.with_suffix(".log") for out in outs]
    try:
        ranks = [
            subprocess.Popen(
                [*command, "--rank", str(rank), "--out", str(out)],
                preexec_fn=cgroup.preexec if cgroup else None,
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),
            )
            for rank, (out, log) in enumerate(zip(outs, logs, strict=True))
        ]
        codes = []
        for rank in ranks:
            try:
                rank.wait(timeout=args.case_timeout)
            except subprocess.TimeoutExpired:
                for other in ranks:
                    other.kill()
                rank.wait()
            codes.append(rank.returncode)
        stop.set()
        peak = cgroup.peak_bytes() if cgroup else None
        if any(codes):
            killed = cgroup is not None and cgroup.oom_kills() > 0
            why = "killed by the memory limit (OOM)" if killed else f"exit codes {codes}"
            tail = "" if killed else logs[codes.index(next(c for c in codes if c))].read_text()[-300:]
            tail = tail.strip().replace("\n", " ")
            return Row(name, None, peak, None, "-", None, None, None, f"{why} {tail}".strip())
        results = [json.loads(out.read_text()) for out in outs]
    finally:
        stop.set()
        if cgroup:
            cgroup.remove()
    count = _samples(path)
    fraction = sum(len(r["labels"]) for r in results) / sum(r["epoch_batches"] for r in results)
    read = sum(r["read_bytes"] for r in results) / fraction / path.stat().st_size
    spreads, classes = zip(*(randomness(r["labels"], count) for r in results), strict=True)
    slots = "/".join(str(r["slots"]) for r in results) if results[0]["slots"] is not None else "-"
    return Row(
        name,
        read,
        peak,
        sum(r["anon_peak"] for r in results),
        slots,
        sum(r["images"] / r["seconds"] for r in results),
        float(np.mean(spreads)),
        float(np.mean(classes)),
        f"first {max_batches} batches per rank, reads scaled to the epoch" if max_batches else "",
    )


def _samples(path: Path) -> int:
    from ffcv.reader import Reader

    return int(Reader(str(path)).num_samples)


def uniform_classes(count: int, batch: int) -> float:
    """Expected distinct classes in a batch drawn uniformly (without replacement, approximated with)."""
    sizes = np.diff(np.r_[np.arange(0, count, PER_CLASS), count])
    return float(np.sum(1 - (1 - sizes / count) ** batch))


def print_table(rows: list[Row], path: Path, args, limited: bool) -> None:
    count, mb = _samples(path), 1 / 2**20
    where = f"in a {args.limit_mb:,} MB cgroup-v1 memory limit" if limited else "unlimited, cache evicted every 0.2 s"
    print(
        f"\n{path}: {path.stat().st_size * mb:,.0f} MB, {count:,} samples, 2 MiB pages, 2 ranks, batch "
        f"{args.batch_size} per rank, quasi_random_pages {args.pages}, {where}; classes/batch of a uniform "
        f"shuffle: {uniform_classes(count, args.batch_size):.1f}\n"
    )
    print(
        "| case | read / file | cgroup peak MB | anon peak MB | slots | images/s | \\|di\\| / uniform "
        "| classes/batch | note |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:

        def fmt(value, spec):
            return "-" if value is None else format(value, spec)

        print(
            f"| {row.name} | {fmt(row.read_per_file, '.2f')}{'x' if row.read_per_file is not None else ''} | "
            f"{fmt(row.cgroup_peak and row.cgroup_peak * mb, ',.0f')} | "
            f"{fmt(row.anon_peak and row.anon_peak * mb, ',.0f')} | "
            f"{row.slots} | {fmt(row.images_per_s, ',.0f')} | {fmt(row.spread, '.2f')} | {fmt(row.classes, '.1f')} | "
            f"{row.note} |"
        )


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1536, help="train.ffcv to write (~76 KB a sample)")
    parser.add_argument("--limit-mb", type=int, default=1536, help="the cgroup's memory.limit_in_bytes")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--pages", type=int, default=32, help="data.quasi_random_pages")
    parser.add_argument("--random-batches", type=int, default=40, help="batches per rank of each random row")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--case-timeout", type=float, default=600)
    parser.add_argument("--workdir", type=Path, default=None, help="keep train.ffcv here (default: temp)")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick: checks that the benchmark runs")
    parser.add_argument("--rank-of", type=Path, dest="path", help=argparse.SUPPRESS)  # a rank's process
    for hidden in ("--rank", "--port", "--max-batches"):
        parser.add_argument(hidden, type=int, help=argparse.SUPPRESS)
    for hidden in ("--order", "--os-cache", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.path is not None:
        rank_main(args)
        return []
    if args.smoke:
        args.size_mb, args.batch_size, args.pages, args.random_batches = 48, 16, 4, 20
    why_not = MemoryCgroup.why_not()
    if why_not:
        print(f"no memory cgroup: {why_not}; running unlimited with the file's cache evicted every 0.2 s instead")
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        data_dir = args.workdir or work
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "train.ffcv"
        if not path.is_file():
            write_train(path, args.size_mb)
        rows = []
        for name in args.cases:
            rows.append(run_case(name, args, path, work, limited=why_not is None))
            print(f"done: {name}", file=sys.stderr, flush=True)
        print_table(rows, path, args, limited=why_not is None)
    return rows


if __name__ == "__main__":
    main()
