#!/usr/bin/env python
"""Copy a written dataset (train.ffcv, val.ffcv, classes.json, manifest.json) to local disk before `fit`.

    python scripts/stage_data.py s3://my-bucket/imagenet-ffcv /local/ffcv      # or a mounted directory as SOURCE

Why: FFCV reads train.ffcv in random order every epoch; from object storage (or a FUSE mount of it) that is
slow, and even a gp3 volume at its default 125 MB/s needs ~52 min for one pass over the ~390 GB rn50 train file.
A one-time sequential copy to the instance's disk runs at that disk's write speed instead.

How: for s3:// boto3's transfer manager (s3transfer: ``--workers`` threads, each on its own connection, ranged GETs
of ``--chunk_mb`` written at their offsets), the technique the AWS CLI uses to fill a fast link from one large
object; any other fsspec URL or a directory through fsspec's own ``get_file``. Measured here against moto's S3 on
127.0.0.1 (benchmarks/stage_throughput.py, 1 GB): boto3's manager costs ~1 CPU second per GB, 2.5x less than the
s3fs ranged reads this script used before. Against real S3 the rate is documented, not measured (no AWS here):
~85-90 MB/s per connection, so 16 workers aim at ~1.4 GB/s, which the instance store can write and gp3 cannot.

Checks: SOURCE/manifest.json must say ``complete``; each copied .ffcv file must have the byte count the
manifest records, and classes.json the manifest's class-map hash. Files are copied into temp names and renamed,
manifest.json last, so a kill leaves no file under its final name that is not complete. A restart (spot
relaunch on the same disk, or a rerun) skips the copy when the local manifest equals the source's and every file
has its recorded size. Exit codes: 0 ready, 2 a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from resnet_ffcv.dataset.format import CLASSES_FILE, MANIFEST_FILE, classes_sha256


class StageError(Exception):
    """A check failed: the message names the file and what was expected."""


def _fs_and_root(source: str):
    from fsspec.core import url_to_fs

    return url_to_fs(source.rstrip("/"))


def expected_files(manifest: dict) -> dict[str, int]:
    """File name -> byte count for every split the manifest records."""
    if not manifest.get("complete"):
        raise StageError(f"{MANIFEST_FILE}: 'complete' is not true: the dataset was not written to the end")
    return {record["file"]: int(record["bytes"]) for record in manifest.get("splits", {}).values()}


def local_is_complete(dest: Path, manifest_bytes: bytes) -> bool:
    """The same manifest is already here and every file it names has its recorded size."""
    local = dest / MANIFEST_FILE
    if not local.is_file() or local.read_bytes() != manifest_bytes:
        return False
    files = expected_files(json.loads(manifest_bytes))
    return (dest / CLASSES_FILE).is_file() and all(
        (dest / name).is_file() and (dest / name).stat().st_size == size for name, size in files.items()
    )


def _temp(target: Path) -> Path:
    return target.with_name(f".{target.name}.staging")


def copy_file(fs, remote: str, target: Path, size: int, workers: int, chunk: int) -> None:
    """``remote`` into a temp file beside ``target``, size-checked, fsynced, renamed."""
    actual = fs.size(remote)
    if actual != size:
        raise StageError(f"{remote}: {actual} bytes in the source, manifest.json records {size}")
    temp = _temp(target)
    if "s3" in fs.protocol:
        _s3_download(remote, temp, workers, chunk)
    else:
        fs.get_file(remote, str(temp))
    with open(temp, "rb+") as f:
        os.fsync(f.fileno())
    if temp.stat().st_size != size:
        raise StageError(f"{target}: copied {temp.stat().st_size} bytes, expected {size}")
    os.replace(temp, target)


def _s3_download(remote: str, temp: Path, workers: int, chunk: int) -> None:
    """boto3's transfer manager rather than s3fs: its threads stream each range into the file with ~2.5x less
    CPU per GB (benchmarks/stage_throughput.py), and CPU is what a one-process copier runs out of first."""
    import boto3
    from boto3.s3.transfer import TransferConfig

    bucket, _, key = remote.removeprefix("s3://").partition("/")
    # "classic": the threaded manager tested here; "auto" would switch to the CRT client wherever awscrt happens
    # to be installed, a path no test of ours runs (it fails against moto).
    config = TransferConfig(
        multipart_threshold=chunk,
        multipart_chunksize=chunk,
        max_concurrency=workers,
        preferred_transfer_client="classic",
    )
    boto3.client("s3").download_file(bucket, key, str(temp), Config=config)


def check_classes(classes_bytes: bytes, manifest: dict) -> None:
    """classes.json against the class-map hash the writer recorded in the manifest."""
    expected = manifest.get("classes_sha256")
    actual = classes_sha256(json.loads(classes_bytes))
    if expected and actual != expected:
        raise StageError(
            f"{CLASSES_FILE}: its class-map hash {actual[:12]}... differs from {MANIFEST_FILE}'s {expected[:12]}..."
        )


def stage(source: str, dest: Path, workers: int = 16, chunk_mb: int = 64) -> str:
    """Makes ``dest`` a complete copy of ``source``; returns a one-line summary."""
    fs, root = _fs_and_root(source)
    try:
        manifest_bytes = fs.cat_file(f"{root}/{MANIFEST_FILE}")
    except FileNotFoundError as error:
        message = f"{source}/{MANIFEST_FILE} not found: SOURCE must be a write-dataset output directory"
        raise StageError(message) from error
    manifest = json.loads(manifest_bytes)
    files = expected_files(manifest)
    dest.mkdir(parents=True, exist_ok=True)
    if local_is_complete(dest, manifest_bytes):
        return f"{dest} already holds this dataset ({len(files)} files match {MANIFEST_FILE}): nothing copied"
    (dest / MANIFEST_FILE).unlink(missing_ok=True)  # its presence means "complete": gone until the copy is
    classes_bytes = fs.cat_file(f"{root}/{CLASSES_FILE}")
    check_classes(classes_bytes, manifest)
    started, copied = time.perf_counter(), 0
    for name, size in files.items():
        target = dest / name
        if target.is_file() and target.stat().st_size == size:
            print(f"stage_data: {target} has its recorded size, kept", file=sys.stderr)
            continue
        copy_file(fs, f"{root}/{name}", target, size, workers, chunk_mb << 20)
        copied += size
    for name, data in ((CLASSES_FILE, classes_bytes), (MANIFEST_FILE, manifest_bytes)):
        _temp(dest / name).write_bytes(data)
        os.replace(_temp(dest / name), dest / name)
    seconds = time.perf_counter() - started
    rate = copied / 1e6 / seconds if seconds > 0 else 0.0
    return f"copied {copied / 1e9:.2f} GB from {source} to {dest} in {seconds:.1f} s ({rate:.0f} MB/s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="s3://bucket/prefix, any fsspec URL, or a directory")
    parser.add_argument("dest", type=Path, help="local directory (data.data_dir of the fit config)")
    parser.add_argument("--workers", type=int, default=16, help="ranged reads in flight")
    parser.add_argument("--chunk_mb", type=int, default=64, help="bytes per ranged read")
    args = parser.parse_args(argv)
    try:
        print(f"stage_data: {stage(args.source, args.dest, args.workers, args.chunk_mb)}", file=sys.stderr)
    except StageError as error:
        print(f"stage_data: check failed: {error}", file=sys.stderr)
        return 2
    except _access_errors() as error:  # no credentials, access denied, a full or read-only disk: the user's to fix
        print(f"stage_data: cannot copy {args.source} to {args.dest}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0


def _access_errors() -> tuple[type[BaseException], ...]:
    """OSError (s3fs maps S3's errors to it), and botocore's own (credentials, the transfer manager's requests)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # a directory source needs no AWS libraries
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


if __name__ == "__main__":
    sys.exit(main())
