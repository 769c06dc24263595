"""The performance benchmarks run end to end in their tiny modes and print their tables (speed is not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .helpers import REPO

BENCHMARKS = REPO / "benchmarks"


def run_benchmark(name: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_train_throughput_prints_its_table(tmp_path):
    out = tmp_path / "rows.json"
    result = run_benchmark("train_throughput.py", "--smoke", "--repeats", "2", "--json", str(out))
    assert "| arch | res | batch | precision | compile | plain img/s | Lightning img/s |" in result.stdout
    assert "| resnet18 | 32 | 4 | 32-true | False |" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert len(row["plain_seconds"]) == len(row["lightning_seconds"]) == 2
    assert row["plain_images_per_s"] > 0 and row["lightning_images_per_s"] > 0
    assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]


@pytest.mark.slow
def test_end_to_end_prints_its_table_and_verdict(tmp_path):
    out = tmp_path / "result.json"
    result = run_benchmark("end_to_end.py", "--smoke", "--workdir", str(tmp_path / "work"), "--json", str(out))
    assert "| loader alone img/s | model alone img/s | fit img/s |" in result.stdout
    report = json.loads(out.read_text())
    fit = report["fit"]
    # The fit run went through the CLI: its DataWaitMonitor counted exactly the steps after the warm-up.
    assert fit["steps"] == report["steps"] - report["warmup"]
    assert fit["images"] == fit["steps"] * report["batch"]
    assert 0.0 <= fit["wait_share"] < 1.0
    assert report["verdict"] in {"loader-bound", "compute-bound"}
    assert report["verdict"] in result.stdout
    assert (tmp_path / "work" / "ffcv" / "train.ffcv").is_file()


def test_gpu_check_refuses_to_run_without_a_gpu(tmp_path):
    """Without a GPU the benchmarks would fall back to their CPU modes and time the wrong thing for minutes."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    (fake_bin / "nvidia-smi").chmod(0o755)
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), str(tmp_path / "out")],
        env={**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no GPU here" in result.stderr
    assert not (tmp_path / "out" / "train_throughput.md").exists()


def test_stage_throughput_prints_rate_and_cpu_per_gb_for_s3_and_a_directory():
    rows = run_benchmark("stage_throughput.py", "--smoke").stdout.splitlines()[1:]
    sources = [row.split()[0] + " " + row.split()[1] for row in rows]
    assert sources == ["moto S3", "local dir"], rows
    for row in rows:
        rate, cpu_per_gb = float(row.split()[-3]), float(row.split()[-2])
        assert rate > 0 and cpu_per_gb > 0, row


@pytest.mark.slow
def test_os_cache_io_prints_its_table(tmp_path):
    cases = ["os_cache=true RANDOM", "os_cache=false RANDOM"]  # one of each memory manager: a loader JIT each
    result = run_benchmark("os_cache_io.py", "--smoke", "--workdir", str(tmp_path), "--cases", *cases)
    header = "| case | file MB | read MB | read / file | peak +MB | slots | images/s |"
    assert header in result.stdout
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| os_cache="):
            rows[cells[0]] = [float(cell.rstrip("x").replace(",", "")) if cell != "-" else None for cell in cells[1:]]
    assert set(rows) == set(cases)
    file_mb = (tmp_path / "train.ffcv").stat().st_size / 2**20
    for name, (file, read, ratio, _peak, slots, images_per_s) in rows.items():
        assert file == pytest.approx(file_mb, abs=1), name
        # A cold cache: the epoch read the file from storage (tmp_path is on disk, not tmpfs, on this project's
        # machines), and the ratio column is read / file.
        assert read > 0 and ratio > 0, name
        assert ratio == pytest.approx(read / file, abs=0.05), name  # the MB columns are rounded
        assert images_per_s > 0, name
        # FFCV's own cache reports its page slots; the mmap has none.
        assert (slots is None) == name.startswith("os_cache=true"), name
