"""Write one ``.ffcv`` file with FFCV's own format code, but a sturdier process loop around it.

FFCV's ``DatasetWriter`` does the file layout (header, field descriptors, page allocator, allocation table)
and we reuse all of that. Its process loop is replaced here because, in ffcv 1.0.2, it:
- waits forever when a worker process dies (the progress counter never reaches the total), with no file name;
- cannot leave a sample out: every index gets a metadata slot up front;
- leaves its workers running when the parent is killed, still writing into the abandoned file.
Here each worker reports unreadable samples instead of dying, the parent watches worker exit codes, samples
that were left out are dropped from the metadata before the header is written, and workers die with the
parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resnet_ffcv.dataset.sources import UnreadableImage
from resnet_ffcv.errors import UserError


@dataclass
class WriteResult:
    """What a split's write produced: written sample count and the samples left out (``where``, reason)."""

    written: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


class WriteAborted(UserError, RuntimeError, ValueError):  # a UserError: the CLI prints its message only
    """A worker hit a sample it may not skip, or died; the message names the sample."""


# Shortest side an image is stored with. FFCV's resize rounds each side down, so a very elongated image
# (6000x5 at max_resolution 500) would get a 0 px side and abort the write in OpenCV. Its centre crop at
# validation (side = int(crop_ratio * short side)) is empty for a 1 px side at any crop ratio < 1, which
# aborts the loader process in OpenCV's resize: 2 px keeps every crop ratio >= 0.5 working. Such an image
# is kept, slightly stretched across its short side, rather than dropped: it is a real (if odd) photo of its
# class, and stretching 1 px of a 500 px strip changes little of what a crop of it shows.
MIN_SIDE = 2


def fit_image(image: np.ndarray, max_resolution: int | None) -> np.ndarray:
    """``image`` resized as FFCV's ``RGBImageField`` would (same arithmetic, OpenCV ``INTER_AREA``), except
    that no side goes below :data:`MIN_SIDE`. The result is what FFCV stores: its own resize is then a no-op,
    so every image that FFCV could already store comes out bit-identical."""
    import cv2

    height, width = image.shape[:2]
    size = np.array([width, height])
    if max_resolution is not None and max_resolution / size.max() < 1:
        size = (max_resolution / size.max() * size).astype(int)  # ffcv.fields.rgb_image.resizer
    size = np.maximum(size, MIN_SIDE)
    if (size == (width, height)).all():
        return image
    return cv2.resize(image, (int(size[0]), int(size[1])), interpolation=cv2.INTER_AREA)


def _fit_sample(sample: tuple, fields: dict) -> tuple:
    """Each image of a sample passed through :func:`fit_image` for its field's ``max_resolution``."""
    from ffcv.fields import RGBImageField

    return tuple(
        fit_image(value, field.max_resolution)
        if isinstance(field, RGBImageField) and isinstance(value, np.ndarray) and value.ndim == 3
        else value  # anything else goes to FFCV as it is, to be refused there with its own message
        for value, field in zip(sample, fields.values(), strict=True)
    )


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies, so ``kill -9`` of the writer stops its workers."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _worker(
    worker_index, work, metadata_sm, metadata_type, fields, allocator, done, allocations, events, source
) -> None:
    from ffcv.writer import handle_sample

    _die_with_parent()
    # Forked workers share the parent's numpy RNG: without a reseed they all draw the same
    # compress-or-not sequence for write_mode="proportion".
    np.random.seed((os.getpid() * 7919 + worker_index) % 2**32)
    metadata = np.frombuffer(metadata_sm.buf, dtype=metadata_type)
    names = metadata_type.names
    with allocator:
        while (chunk := work.get()) is not None:
            for dest_index, source_index in chunk:
                try:
                    sample = _fit_sample(source[source_index], fields)
                    handle_sample(sample, dest_index, names, metadata, allocator, fields)
                except UnreadableImage as error:
                    events.put(("unreadable", int(dest_index), str(error)))
                except Exception as error:
                    where = source.describe(source_index)
                    message = f"{where}: {type(error).__name__}: {error}\n{traceback.format_exc()}"
                    events.put(("crash", int(dest_index), message))
                    raise
            with done.get_lock():
                done.value += len(chunk)
    allocations.put(allocator.allocations)


def _progress(total: int, desc: str):
    from tqdm import tqdm

    # tqdm shows images/s and the ETA. Into a log file (no terminal), one line every 30 s, not 10 a second.
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", mininterval=0.5 if interactive else 30, smoothing=0.05)


def write_ffcv(
    path: Path,
    fields: dict,
    source,
    num_workers: int,
    chunk_size: int,
    skip_unreadable: bool,
    desc: str = "",
    page_size: int = 1 << 23,
    order: np.ndarray | None = None,
) -> WriteResult:
    """Write ``source`` (indexable; ``source.describe(i)`` names sample i) to ``path`` in ``order`` (the source
    index of each written sample, as FFCV's ``shuffle_indices``; default: the source order): what was written.

    Raises :class:`WriteAborted` on the first unreadable sample when ``skip_unreadable`` is false, or when a
    worker dies; ``path`` is then incomplete and the caller removes it.
    """
    from ffcv.memory_allocator import MemoryAllocator
    from ffcv.writer import DatasetWriter

    total = len(source)
    writer = DatasetWriter(str(path), fields, page_size=page_size, num_workers=num_workers)
    writer.num_samples = total
    writer.prepare()  # header placeholder, field descriptors, shared metadata buffer
    allocator = MemoryAllocator(str(path), writer.data_region_start, page_size)
    source_of = np.arange(total) if order is None else np.asarray(order)
    work, allocations, events = _work_queue(source_of, chunk_size, num_workers), mp.Queue(), mp.Queue()
    done = mp.Value(ctypes.c_uint64, 0)
    shared = (writer.metadata_sm, writer.metadata_type, fields, allocator, done, allocations, events, source)
    processes = [mp.Process(target=_worker, args=(i, work, *shared), daemon=True) for i in range(num_workers)]
    skipped: dict[int, str] = {}

    def drain_events() -> None:
        while True:
            try:
                kind, dest_index, message = events.get_nowait()
            except queue.Empty:
                return
            if kind == "crash" or not skip_unreadable:
                raise WriteAborted(message)
            skipped[dest_index] = message

    try:
        for process in processes:
            process.start()
        progress = _progress(total, desc)
        previous = 0
        while previous < total:
            drain_events()
            current = done.value
            progress.update(current - previous)
            previous = current
            if previous < total and any(p.exitcode not in (None, 0) for p in processes):
                time.sleep(0.5)  # let a dying worker's last report arrive
                drain_events()
                dead = [p.exitcode for p in processes]
                raise WriteAborted(f"{path.name}: a writer process died (exit codes {dead}) at {previous}/{total}")
            time.sleep(0.1)
        progress.close()
        allocation_list = []
        for _ in processes:
            while True:
                drain_events()
                try:
                    allocation_list.extend(allocations.get(timeout=1))
                    break
                except queue.Empty:
                    if all(p.exitcode is not None for p in processes) and allocations.empty():
                        raise WriteAborted(f"{path.name}: writer processes exited without reporting") from None
        for process in processes:
            process.join()
        drain_events()
        _finalize(writer, allocation_list, sorted(skipped))
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        writer.metadata_sm.close()
        writer.metadata_sm.unlink()
    reasons = [(source.describe(int(source_of[index])), skipped[index]) for index in sorted(skipped)]
    return WriteResult(total - len(skipped), reasons)


def _work_queue(source_of: np.ndarray, chunk_size: int, num_workers: int) -> mp.Queue:
    """(written index, source index) pairs in chunks of ``chunk_size``, then one ``None`` (stop) per worker."""
    work = mp.Queue()
    pairs = list(enumerate(source_of.tolist()))
    for start in range(0, len(pairs), chunk_size):
        work.put(pairs[start : start + chunk_size])
    for _ in range(num_workers):
        work.put(None)
    return work


def _finalize(writer, allocations: list, skipped: list[int]) -> None:
    """FFCV's ``DatasetWriter.finalize``, minus the samples that were left out."""
    from ffcv.types import ALLOC_TABLE_TYPE

    metadata = np.frombuffer(writer.metadata_sm.buf, dtype=writer.metadata_type)
    table = np.array(allocations, dtype=ALLOC_TABLE_TYPE) if allocations else np.zeros(0, ALLOC_TABLE_TYPE)
    if skipped:
        keep = np.ones(len(metadata), dtype=bool)
        keep[skipped] = False
        new_ids = np.cumsum(keep) - 1
        metadata = metadata[keep]
        table = table[keep[table["sample_id"]]]
        table["sample_id"] = new_ids[table["sample_id"]]
        writer.header["num_samples"] = len(metadata)
    with open(writer.fname, "r+b") as fp:
        fp.seek(writer.metadata_start)
        fp.write(metadata.tobytes())
        fp.seek(0, os.SEEK_END)
        writer.header["alloc_table_ptr"] = fp.tell()
        fp.write(table.tobytes())
        fp.seek(0)
        fp.write(writer.header.tobytes())
        fp.flush()
        os.fsync(fp.fileno())
