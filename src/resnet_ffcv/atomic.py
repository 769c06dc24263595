"""Atomic file writes: a reader (or a restart after kill -9) sees the old file or the complete new one, never half.

The recipe, for every file this project writes that a crash must not corrupt (checkpoints, their checksums, the
W&B run id, the dataset's ``classes.json`` / ``manifest.json``, exported weights, prediction CSVs):
a temp file in the *same directory* (so the rename never crosses filesystems), written and fsynced, renamed over
the target with ``os.replace``, then the directory fsynced (so the rename itself survives a power cut).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Makes a rename durable: the directory entry is what a power cut would otherwise lose."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()


def temp_name_pattern(target_name: str) -> str:
    """Glob pattern of the temp files :func:`replacing` makes for ``target_name`` (for clean-up after a crash)."""
    return f".{target_name}.*{TEMP_SUFFIX}"


def _temp_path(target: Path) -> Path:
    """An empty file beside ``target``: same filesystem, so the final rename is atomic."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; the result should look like any other file the user writes
    os.close(fd)
    return Path(name)


@contextmanager
def replacing(target: str | os.PathLike) -> Iterator[Path]:
    """A temp file beside ``target`` to write into: renamed over ``target`` (directory fsynced) when the block
    succeeds, removed when it fails, so ``target`` is always either the old file or the complete new one.

    The block must flush and fsync what it writes (:func:`write_bytes` does); a writer that only takes a path
    (``torch.save(obj, path)``, ``ScriptModule.save``) can be followed by :func:`fsync_file`.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(target)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with replacing(target) as temp, open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode())


def link(source: Path, target: Path) -> None:
    """``target`` becomes a second name of ``source`` in one rename (a copy where hard links fail).

    Sharing bytes between names is safe because nothing here rewrites a file in place.
    """
    with replacing(target) as temp:
        temp.unlink()
        try:
            os.link(source, temp)
        except OSError:
            shutil.copyfile(source, temp)
            fsync_file(temp)
