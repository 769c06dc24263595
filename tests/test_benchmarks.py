"""The performance benchmarks run end to end in their tiny modes and print their tables (speed is not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .helpers import INTERPRETED, REPO

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


def table_rows(markdown: str, first_cell: str = "") -> list[list[str]]:
    """The body rows of the markdown tables in ``markdown`` (cells stripped) whose first cell starts so."""
    lines = [line.strip() for line in markdown.splitlines()]
    separator = [line.startswith("|") and set(line) <= set("|-: ") for line in lines]
    rows = []
    for index, line in enumerate(lines):
        header = index + 1 < len(lines) and separator[index + 1]
        if line.startswith("|") and not separator[index] and not header:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows += [cells] if cells[0].startswith(first_cell) else []
    return rows


@pytest.mark.slow
def test_gpu_check_rehearsal_runs_every_step_and_writes_what_the_device_brings_back(tmp_path):
    """``gpu_check.sh --rehearse``: every step of the GPU run with its GPU-run arguments, on the CPU at tiny sizes
    (the fit path with ResNet-18 here, to keep this test short), and every figure parsed from the real processes.

    Also stands in for a separate train_throughput smoke test: the same ``--smoke`` run, its table and its JSON.
    """
    out, work = tmp_path / "out", tmp_path / "work"
    command = ["bash", str(BENCHMARKS / "gpu_check.sh"), "--rehearse", "--budget-s", "1200", "--workdir", str(work)]
    result = subprocess.run(
        [*command, str(out)],
        # FFCV's pipelines interpreted, as in the lifecycle tests (helpers.py): what the rehearsal proves is the
        # steps, arguments, files and parsing; the device run compiles them.
        env={**os.environ, **INTERPRETED, "PYTHON": sys.executable, "FIT_ARGS": "--arch resnet18"},
        capture_output=True,
        text=True,
        timeout=1300,
        stdin=subprocess.DEVNULL,
    )
    log = (out / "steps.log").read_text() if (out / "steps.log").is_file() else ""
    assert result.returncode == 0, result.stdout[-3000:] + log[-5000:]
    # What the device tool brings back: at most 8 plain files, named in letters, digits, '.', '_' and '-'.
    names = sorted(path.name for path in out.iterdir())
    assert names == [
        "end_to_end.md", "fit_path.json", "fit_path.md", "loader_throughput.md", "steps.log", "summary.json",
        "train_throughput.md",
    ]  # fmt: skip
    assert all(path.is_file() for path in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert summary["mode"] == "rehearse" and "rehearsal on the CPU" in summary["device"]
    order = ["fit_path", "train_throughput", "end_to_end", "loader_throughput", "train_throughput_compile"]
    assert list(steps) == order and {step["status"] for step in steps.values()} == {"ok"}
    assert all(step["seconds"] <= step["limit_s"] for step in steps.values())
    assert not (work / "fit" / "run").exists() and (work / "fit" / "ffcv" / "train.ffcv").is_file()

    fit = json.loads((out / "fit_path.json").read_text())
    assert steps["fit_path"]["result"] == fit and fit["complete"]
    check_fit_path(fit, (out / "fit_path.md").read_text())

    train = steps["train_throughput"]["result"]["rows"]
    assert [(row["arch"], row["resolution"], row["compile"], row["repeats"]) for row in train] == [
        ("resnet18", 32, False, 2)
    ]
    assert len(train[0]["plain_seconds"]) == len(train[0]["lightning_seconds"]) == 2
    assert train[0]["ratio_min"] <= train[0]["ratio_median"] <= train[0]["ratio_max"]
    assert [row["compile"] for row in steps["train_throughput_compile"]["result"]["rows"]] == [True]
    train_rows = table_rows((out / "train_throughput.md").read_text(), "resnet18")
    assert [row[:5] for row in train_rows] == [["resnet18", "32", "4", "32-true", c] for c in ("False", "True")]

    e2e = steps["end_to_end"]["result"]
    assert e2e["fit"]["steps"] == e2e["steps"] - e2e["warmup"] and e2e["verdict"] in {"loader-bound", "compute-bound"}
    assert table_rows((out / "end_to_end.md").read_text())[-1][-1] == e2e["verdict"]
    (loader_row,) = table_rows((out / "loader_throughput.md").read_text(), "32")
    assert all(float(cell.rstrip("x").replace(",", "")) > 0 for cell in loader_row[1:])


def check_fit_path(fit: dict, markdown: str) -> None:
    """The fit path's figures, each read from the processes, and its markdown rows agreeing with them."""
    first, second = fit["processes"]
    assert (first["exit_code"], second["exit_code"]) == (75, 0)
    saved = fit["interrupted_checkpoint"]
    # SIGTERM early in the last epoch: saved mid-epoch; the same command resumed exactly there, ran to the end.
    assert fit["sigterm_after_step"] <= saved["global_step"] < fit["expected_final_step"] == 3 * 6
    assert saved["global_step"] == saved["epoch"] * 6 + saved["batches_in_epoch"] and saved["epoch"] == 2
    assert second["resumed"] and fit["spot"]["resumed_at_step"] == saved["global_step"]
    assert fit["spot"]["final_step"] == fit["expected_final_step"]
    # Compiles: process 1 the three training graphs, process 2 the last stage's again plus raw + EMA validation.
    assert len(fit["plan"]) == 5 and first["planned_count"] == second["planned_count"] == 5
    assert fit["compile"]["per_process"] == [3, 3] and fit["compile"]["distinct"] == sorted(fit["plan"])
    assert [c["graph"] for c in second["compiles"]][0] == "train network 48 px x 4" and not fit["compile"]["unplanned"]
    # Saves (epochs as the log counts them, from 1): the ends of epochs 1 and 2, the interruption, the end of the run.
    assert [(s["epoch"], s["step"]) for p in (first, second) for s in p["saves"]] == [
        (1, 6), (2, 12), (3, saved["global_step"]), (3, 18)
    ]  # fmt: skip
    assert 0 < first["startup_seconds"] < first["time_to_first_step_seconds"] < first["wall_seconds"]
    assert [(s["resolution"], s["batch"]) for s in fit["stages"]] == [(32, 4), (40, 4), (48, 4)]
    assert all(s["images"] == 4 * s["timed_steps"] > 0 and s["images_per_s"] > 0 for s in fit["stages"])
    assert len(second["probe"]["validation_seconds"]) == 1  # one validation: the last epoch's
    stage_rows = table_rows(markdown)[: len(fit["stages"])]
    assert [row[1:5] for row in stage_rows] == [
        [str(s["resolution"]), "4", str(s["windows"]), str(s["timed_steps"])] for s in fit["stages"]
    ]
    checks = {row[0]: row[1:] for row in table_rows(markdown) if len(row) == 5 and row[1] in {"function", "target"}}
    assert len(checks) == len(fit["checks"]) == 5 and all(row[-1] == "yes" for row in checks.values())
    assert checks["rerun resumes at the saved step"][2] == str(saved["global_step"])


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
