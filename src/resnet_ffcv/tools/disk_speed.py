"""How fast ``data.data_dir`` reads, and what that costs the first epoch (and every epoch, past the RAM size).

The measured size of ImageNet at the rn50 preset is ~390 GB of train.ffcv (302 KB per image, see README "Dataset
size"): at gp3's default 125 MB/s one pass takes ~52 min, longer than a whole epoch of compute on a p4d. The first
epoch reads the file from disk (afterwards the page cache serves it, when RAM holds it); if RAM does not hold it,
every epoch does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

MAX_BYTES = 256 << 20
MAX_SECONDS = 3.0
_BLOCK = 8 << 20


@dataclass
class ReadSpeed:
    path: Path
    file_bytes: int
    bytes_read: int
    seconds: float

    @property
    def bytes_per_s(self) -> float:
        return self.bytes_read / self.seconds if self.seconds > 0 else float("inf")

    @property
    def full_read_seconds(self) -> float:
        """One sequential pass over the whole file at the measured rate."""
        return self.file_bytes / self.bytes_per_s


def drop_cached(path: str | os.PathLike) -> None:
    """Drops ``path``'s clean pages from the page cache (``POSIX_FADV_DONTNEED``, no root needed). Dirty pages and
    pages a process keeps mapped stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure_read_speed(
    path: str | os.PathLike, max_bytes: int = MAX_BYTES, max_seconds: float = MAX_SECONDS
) -> ReadSpeed:
    """Reads ``path`` from its start, sequentially, until ``max_bytes`` or ``max_seconds``.

    The file's cached pages are dropped first (:func:`drop_cached`) so the figure is the disk's, not the page
    cache's; pages another process keeps dirty or mapped may still come from memory.
    """
    path = Path(path)
    size = path.stat().st_size
    if hasattr(os, "posix_fadvise"):
        drop_cached(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        done, started = 0, time.perf_counter()
        while done < min(max_bytes, size) and time.perf_counter() - started < max_seconds:
            block = os.read(fd, _BLOCK)
            if not block:
                break
            done += len(block)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
    return ReadSpeed(path, size, done, seconds)


def memory_bytes() -> int | None:
    """Physical RAM (Linux ``/proc/meminfo``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def every_epoch_reads_disk(file_bytes: int) -> bool:
    """True when the page cache cannot hold the file: each epoch then reads it from disk again."""
    ram = memory_bytes()
    return ram is not None and file_bytes > 0.8 * ram  # the model, loader buffers and the OS need the rest


def describe(speed: ReadSpeed) -> str:
    every = every_epoch_reads_disk(speed.file_bytes)
    return (
        f"{speed.path}: {speed.bytes_per_s / 1e6:.0f} MB/s ({speed.bytes_read / 1e6:.0f} MB in {speed.seconds:.1f} s); "
        f"reading its {speed.file_bytes / 1e9:.1f} GB takes {speed.full_read_seconds / 60:.1f} min "
        + ("in EVERY epoch (larger than 80% of RAM)" if every else "in the first epoch (then the page cache)")
    )


def doctor_check(data_dir: str | os.PathLike, train_file: str) -> tuple[bool, str]:
    """(ok, detail) for ``resnet-ffcv doctor``: informational, fails only when the file cannot be read."""
    path = Path(data_dir) / train_file
    if not path.is_file():
        return False, f"{path} is missing: nothing to measure"
    try:
        return True, describe(measure_read_speed(path))
    except OSError as error:
        return False, f"{path}: cannot be read ({error})"


def extra_seconds(train_path: Path, epoch_seconds: list[float]) -> tuple[float, str | None]:
    """Seconds the disk adds to a plan whose epochs take ``epoch_seconds`` of compute/decode, and a note.

    An epoch lasts at least one read of train.ffcv when it comes from disk: the first epoch always, every epoch
    when RAM cannot hold the file.
    """
    if not train_path.is_file() or not epoch_seconds:
        return 0.0, None
    speed = measure_read_speed(train_path)
    read = speed.full_read_seconds
    disk_epochs = epoch_seconds if every_epoch_reads_disk(speed.file_bytes) else epoch_seconds[:1]
    extra = sum(max(0.0, read - seconds) for seconds in disk_epochs)
    return extra, f"{describe(speed)}; adds {extra / 60:.1f} min to the total"
