"""One writer per checkpoint directory, and a directory that can take the checkpoints before training starts.

The lock is ``fcntl.flock`` on ``<dir>/.lock`` (the file holds the holder's PID and host for the error message).
The kernel drops a flock when its holder dies, kill -9 included, so a lock left by a dead process is simply taken
over: no stale-PID guessing. Under DDP only rank 0 takes it (the other ranks never write checkpoint files).
flock on NFS/EFS is emulated with POSIX locks by Linux clients, which also work across machines.

Exit codes of ``resnet-ffcv fit`` these errors lead to: :data:`CHECK_FAILED_EXIT_CODE` (2) for a refusal before
training (locked, not writable, too little room, unusable checkpoints), :data:`DISK_EXIT_CODE` (74, EX_IOERR)
for a disk that filled up during a save.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
from pathlib import Path

from resnet_ffcv.errors import UserError

LOCK_NAME = ".lock"
CHECK_FAILED_EXIT_CODE = 2
DISK_EXIT_CODE = 74  # sysexits.h EX_IOERR

# Held locks of this process, by resolved directory: taking the same lock twice in one process is a no-op
# (a second open + flock of the same file would conflict with the first, flock being per open file).
_held: dict[Path, int] = {}


class CheckpointGuardError(UserError):
    """A refusal before training (or a full disk during it); the CLI prints it as one paragraph and exits."""

    exit_code = CHECK_FAILED_EXIT_CODE


class CheckpointDirLocked(CheckpointGuardError):
    """Another live process writes this checkpoint directory."""


class CheckpointDirUnusable(CheckpointGuardError):
    """The checkpoint directory cannot be written, or has too little room for the checkpoints."""


class CheckpointDiskFull(CheckpointGuardError):
    """A checkpoint save ran out of space; the previous checkpoint is intact (writes are atomic)."""

    exit_code = DISK_EXIT_CODE


def acquire(directory: Path) -> None:
    """Locks ``directory`` for this process until it exits (or :func:`release`); refuses if another holds it."""
    directory = Path(directory).resolve()
    if directory in _held:
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise CheckpointDirLocked(
            f"The checkpoint directory {directory} is in use by another resnet-ffcv fit ({holder}); two runs "
            "writing one directory overwrite each other's checkpoints. Wait for it to finish, stop it, or give "
            "this run another checkpoint directory."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    _held[directory] = fd


def release(directory: Path) -> None:
    fd = _held.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor drops the flock


def holds(directory: Path) -> bool:
    return Path(directory).resolve() in _held


def check_writable(directory: Path) -> None:
    """Creates and removes a probe file: a read-only directory is found now, not after an epoch of training."""
    probe = Path(directory) / f".write-probe-{os.getpid()}"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as error:
        raise CheckpointDirUnusable(
            f"The checkpoint directory {directory} is not writable ({error.strerror or error}); checkpoints "
            "could not be saved. Give a writable directory (the checkpoint callback's dirpath)."
        ) from None


def check_room(directory: Path, needed: int) -> None:
    """Refuses when the filesystem has less than ``needed`` bytes free (plus what our own files there hold)."""
    usage = shutil.disk_usage(directory)
    replaceable = _own_checkpoint_bytes(Path(directory))
    if usage.free + replaceable < needed:
        raise CheckpointDirUnusable(
            f"The checkpoint directory {directory} has {_mib(usage.free)} free (plus {_mib(replaceable)} in "
            f"checkpoints it replaces), but the checkpoints this run keeps need about {_mib(needed)}. Free some "
            "space, lower keep_periodic / raise checkpoint_interval, or use a larger volume."
        )


def _own_checkpoint_bytes(directory: Path) -> int:
    """Bytes of the checkpoint files already there, each inode once (hard-linked names share their bytes)."""
    inodes = {}
    for path in directory.glob("*.ckpt"):
        stat = path.stat()
        inodes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(inodes.values())


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(directory: Path, error: OSError) -> CheckpointDiskFull:
    free = shutil.disk_usage(directory).free if Path(directory).exists() else 0
    return CheckpointDiskFull(
        f"The disk of the checkpoint directory {directory} is full ({error.strerror or error}; {_mib(free)} free) "
        "while saving a checkpoint. The previous checkpoint is intact. Free some space and rerun the same "
        "command: it resumes from the last complete checkpoint."
    )
