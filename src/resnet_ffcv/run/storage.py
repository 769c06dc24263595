"""Checkpoints in object storage (``s3://bucket/run/``): they outlive the zone, so a relaunch anywhere resumes.

How a URL ``dirpath`` works: :class:`SpotCheckpoint` keeps writing into a *local mirror* directory with its usual
atomic renames, and :class:`RemoteCheckpointDir` copies each finished file to the bucket before the save returns
(so exit code 75 means "the checkpoint is in the bucket", not "in a local cache that dies with the instance").
At construction the mirror is filled from the bucket, so the resume logic (``find_resume_checkpoint``, the W&B
run id) reads local files and needs no URL support of its own.

Why a mirror and direct fsspec rather than a SkyPilot ``MOUNT``/``MOUNT_CACHED`` bucket: a FUSE mount has no
atomic rename (our writes rely on one), and ``MOUNT_CACHED`` uploads in the background after ``close()``: a
preemption two minutes later could lose a checkpoint that training already reported as saved.

Object layout, per file: ``NAME`` (the checkpoint, one PUT: S3 makes an object visible only when its upload,
multipart included, completes, so no partial object ever carries the final name), then ``NAME.sha256`` (a small
JSON marker ``{"bytes": N, "sha256": H}``). An object whose marker is missing or names another size is
incomplete (an upload cut between the two PUTs, a foreign copy) and is skipped for the newest good periodic file.

Credentials and endpoint come from the usual AWS variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` ...)
through s3fs/botocore; install with ``pip install -e '.[cloud]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from resnet_ffcv import atomic
from resnet_ffcv.run.resume import file_sha256, periodic_epochs

MARKER_SUFFIX = ".sha256"
CACHE_ENV = "RESNET_FFCV_CHECKPOINT_CACHE"


def is_url(path: str | os.PathLike) -> bool:
    """A remote fsspec URL (``s3://``, ``gs://`` ...); ``file://`` and plain paths are local."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def default_cache_dir(url: str) -> Path:
    """Where this process mirrors ``url``: ``$RESNET_FFCV_CHECKPOINT_CACHE`` (else ~/.cache/...)/<hash>/rank<L>.

    One mirror per local rank: every DDP process builds the callback and fills its mirror before training, at
    the same moment; sharing one directory would let a process delete a file another is about to resume from.
    """
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "resnet-ffcv" / "checkpoints")
    key = hashlib.sha1(url.rstrip("/").encode()).hexdigest()[:16]
    return root / key / f"rank{os.environ.get('LOCAL_RANK', '0')}"


class RemoteCheckpointDir:
    """A checkpoint directory in object storage, mirrored in a local directory.

    Args:
        url: ``s3://bucket/prefix`` (any fsspec protocol with atomic object writes: s3, gs, az).
        cache_dir: the local mirror; default :func:`default_cache_dir`.
    """

    def __init__(self, url: str, cache_dir: str | os.PathLike | None = None):
        try:
            from fsspec.core import url_to_fs
        except ImportError as error:  # pragma: no cover - fsspec comes with lightning
            raise ImportError("checkpoints in object storage need fsspec: pip install -e '.[cloud]'") from error
        self.url = url.rstrip("/")
        try:
            self.fs, self.root = url_to_fs(self.url)
        except ImportError as error:
            raise ImportError(
                f"SpotCheckpoint dirpath={url!r}: no fsspec driver for this URL ({error}); "
                "install the cloud extra: pip install -e '.[cloud]'"
            ) from error
        self.local = Path(cache_dir) if cache_dir is not None else default_cache_dir(self.url)

    def _remote(self, name: str) -> str:
        return f"{self.root}/{name}"

    # -- writing -------------------------------------------------------------------------------------------
    def upload(self, local: Path, name: str | None = None) -> None:
        """``local`` to ``NAME`` (one PUT), then its marker: the marker is the last thing written."""
        name = name or local.name
        marker = {"bytes": local.stat().st_size, "sha256": file_sha256(local)}
        self.fs.put_file(str(local), self._remote(name))
        self.fs.pipe_file(self._remote(name + MARKER_SUFFIX), json.dumps(marker).encode())

    def copy(self, source: str, target: str) -> None:
        """Server-side copy (S3 CopyObject is atomic too), then the marker: best/periodic files cost no upload."""
        marker = self.fs.cat_file(self._remote(source + MARKER_SUFFIX))
        self.fs.copy(self._remote(source), self._remote(target))
        self.fs.pipe_file(self._remote(target + MARKER_SUFFIX), marker)

    def remove(self, name: str) -> None:
        for key in (name + MARKER_SUFFIX, name):  # marker first: a half-removed pair reads as incomplete
            if self.fs.exists(self._remote(key)):
                self.fs.rm_file(self._remote(key))

    def prune_periodic(self, keep: int) -> list[str]:
        """Removes all but the ``keep`` newest ``checkpoint_epoch_N.ckpt`` objects; returns the removed names."""
        removed = self.periodic_names()[keep:] if keep >= 0 else []
        for name in removed:
            self.remove(name)
        return removed

    # -- reading -------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        try:
            return [Path(entry).name for entry in self.fs.ls(self.root, detail=False, refresh=True)]
        except FileNotFoundError:
            return []

    def periodic_names(self) -> list[str]:
        """``checkpoint_epoch_N.ckpt`` objects, newest (largest N) first."""
        found = [(epoch, name) for name in self.names() if (epoch := periodic_epochs(name)) is not None]
        return [name for _, name in sorted(found, reverse=True)]

    def problem(self, name: str) -> str | None:
        """None when ``name`` is complete (marker present, sizes agree); else why it cannot be used."""
        try:
            size = self.fs.size(self._remote(name))
        except FileNotFoundError:
            return f"{name} is missing"
        try:
            marker = json.loads(self.fs.cat_file(self._remote(name + MARKER_SUFFIX)))
        except FileNotFoundError:
            return f"{name} has no {name + MARKER_SUFFIX} (upload not finished)"
        if size != marker["bytes"]:
            return f"{name} is {size} bytes, its marker says {marker['bytes']} (truncated or replaced)"
        return None

    def download(self, name: str) -> Path:
        """``name`` into the mirror through a temp file, checked against the marker's SHA-256."""
        marker = json.loads(self.fs.cat_file(self._remote(name + MARKER_SUFFIX)))
        target = self.local / name
        with atomic.replacing(target) as temp:
            self.fs.get_file(self._remote(name), str(temp))
            actual = file_sha256(temp)
            if actual != marker["sha256"]:
                raise ValueError(f"{self.url}/{name}: SHA-256 {actual[:12]}... differs from its marker")
        return target

    def hydrate(self, latest_name: str, extra_names: tuple[str, ...] = ()) -> list[str]:
        """Makes the mirror hold what a restart needs: the latest checkpoint if complete, else the newest complete
        periodic one, plus ``extra_names`` (the W&B run id). Local files the bucket does not vouch for are
        removed first, so a stale mirror never resumes a run the bucket does not have. Returns log lines."""
        self.local.mkdir(parents=True, exist_ok=True)
        for stale in [*self.local.glob("*.ckpt"), *(self.local / name for name in extra_names)]:
            stale.unlink(missing_ok=True)
        notes = []
        for name in [latest_name, *self.periodic_names()]:
            problem = self.problem(name)
            if problem is None:
                try:
                    self.download(name)
                except (OSError, ValueError) as error:
                    notes.append(f"{self.url}/{name}: not usable ({error})")
                    continue
                notes.append(f"{self.url}/{name} -> {self.local / name}")
                break
            if not problem.endswith("is missing"):
                notes.append(f"{self.url}/{problem}: skipped")
        for name in extra_names:
            if self.fs.exists(self._remote(name)):
                atomic.write_bytes(self.local / name, self.fs.cat_file(self._remote(name)))
        return notes

    def upload_small(self, local: Path) -> None:
        """A small file (the W&B run id) as one PUT; no marker: it is read whole or not at all."""
        self.fs.pipe_file(self._remote(local.name), local.read_bytes())

    def clear_mirror(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)
