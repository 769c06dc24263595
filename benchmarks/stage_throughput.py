"""What scripts/stage_data.py itself costs: MB/s and CPU seconds per GB of its parallel ranged GETs.

    python benchmarks/stage_throughput.py [--megabytes 1024] [--workers 4 16 64] [--chunk_mb 64]
    python benchmarks/stage_throughput.py --smoke        # seconds; what the test suite runs

There is no AWS here, so the source is moto's S3 server on 127.0.0.1 in its own process (its CPU is not counted),
plus a local directory for comparison. The wall-clock rate is bounded by moto (a Python server) and by this
machine's two cores, so it says little about S3. The figure that carries over is the stager's own CPU time per GB,
and from it "GB/s per core": the copy rate at which the copier would keep one core busy. On AWS the network side
is documented, not measured here: one S3 connection gives roughly 85-90 MB/s, and a large instance with many
connections reaches several GB/s (dvassallo/s3-benchmark measured 6.3 GB/s on a p3dn.24xlarge).

Measured here (2 cores, 1 GB, 64 MB ranges):

    source     workers   MB/s  CPU s/GB  GB/s per core
    moto S3          4     97      1.24            0.8    boto3 transfer manager (stage_data.py now)
    moto S3         16    102      0.96            1.0
    local dir       16   2010      0.28            3.6    fsspec get_file
    moto S3         16     73      2.58            0.4    s3fs ranged cat_file + pwrite (the earlier stager)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resnet_ffcv.dataset.format import classes_sha256

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import stage_data  # noqa: E402 - scripts/ is not a package

BUCKET = "stage-bench"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_moto() -> tuple[subprocess.Popen, dict[str, str]]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(env)
    return server, env


def write_source(directory: Path, train_bytes: int) -> None:
    """A dataset directory as stage_data checks it: manifest.json (complete, byte counts, class hash), files."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.ffcv", "wb") as f:
        for _ in range(0, train_bytes, 16 << 20):
            f.write(os.urandom(min(16 << 20, train_bytes - f.tell())))
    (directory / "val.ffcv").write_bytes(os.urandom(1 << 20))
    classes = [{"index": 0, "name": "n0"}]
    (directory / "classes.json").write_text(json.dumps(classes))
    manifest = {
        "complete": True,
        "classes_sha256": classes_sha256(classes),
        "splits": {
            "train": {"file": "train.ffcv", "bytes": train_bytes},
            "val": {"file": "val.ffcv", "bytes": 1 << 20},
        },
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))


def timed_stage(source: str, dest: Path, workers: int, chunk_mb: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one full copy into an empty ``dest``."""
    shutil.rmtree(dest, ignore_errors=True)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    stage_data.stage(source, dest, workers=workers, chunk_mb=chunk_mb)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=1024, help="size of the train.ffcv stand-in")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64], help="ranged reads in flight")
    parser.add_argument("--chunk_mb", type=int, default=64, help="bytes per ranged read")
    parser.add_argument("--smoke", action="store_true", help="32 MB, one setting: seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.megabytes, args.workers, args.chunk_mb = 32, [4], 8
    import s3fs

    server, _ = start_moto()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "source"
            write_source(source, args.megabytes << 20)
            fs = s3fs.S3FileSystem()
            fs.mkdir(BUCKET)
            fs.put(str(source) + "/", f"{BUCKET}/data/", recursive=True)
            total_gb = sum(f.stat().st_size for f in source.iterdir()) / 1e9
            print(f"{'source':<12} {'workers':>7} {'chunk':>6} {'MB/s':>8} {'CPU s/GB':>9} {'GB/s per core':>14}")
            for label, url in (("moto S3", f"s3://{BUCKET}/data"), ("local dir", str(source))):
                for workers in args.workers:
                    wall, cpu = timed_stage(url, Path(tmp) / "dest", workers, args.chunk_mb)
                    per_gb = cpu / total_gb
                    print(
                        f"{label:<12} {workers:>7} {args.chunk_mb:>4}MB {total_gb * 1e3 / wall:>8.0f} "
                        f"{per_gb:>9.2f} {1 / per_gb:>14.1f}"
                    )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
