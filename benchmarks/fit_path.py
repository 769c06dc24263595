"""The path a user pays for, on one device: ``resnet-ffcv fit --config configs/p4d_78pct.yaml`` with size overrides
only, stopped by SIGTERM mid-epoch and rerun with the same command, as a spot run is. One JSON, one markdown table.

    python benchmarks/fit_path.py --workdir WORK --json OUT/fit_path.json --md OUT/fit_path.md             # GPU
    python benchmarks/fit_path.py --rehearse --workdir WORK --json OUT/fit_path.json --md OUT/fit_path.md  # CPU

Kept from the p4d recipe: ResNet-50 (BlurPool), EMA, MixUp/CutMix, label smoothing, SGD + onecycle, bf16-mixed, DDP
(one process), channels_last, torch.compile (static shapes, fullgraph, the planned graphs), validation of raw and
EMA weights at 256 px with flip TTA, SpotCheckpoint + SpotInterruption, RunSummary, W&B (offline) and
ThroughputMonitor. Changed, sizes only: 1 device; a generated rn50-preset ``.ffcv`` (synthetic JPEGs of 300-600
px a side written by our writer, ``resnet_ffcv.dataset.synthetic``); each resolution stage compressed to 2 epochs
(``--epochs-per-stage``) of 10 batches of 256 (``--batches``, ``trainer.limit_train_batches``),
``model.warmup_epochs`` 1, one validation (the last epoch). ``--rehearse`` runs the same on the CPU:
``trainer.accelerator cpu``, ``model.compile_backend aot_eager`` (the same dynamo graphs and guards, seconds per
graph instead of minutes), 32/40/48 px training and 64 px validation at batch 4 (validation 8), 1 epoch of 6
batches per stage, tiny JPEGs; ``--arch resnet18`` shrinks it further (the test suite's run).

What it records, from the processes themselves (their logs, ``benchmarks/fit_probe.py``'s report, the checkpoint):
images/s of each stage through the Trainer; the torch.compile graphs each process compiled (the fit log's
``torch.compile graph i/N`` lines) against ``resnet-ffcv plan``'s prediction for the same config
(``compile_plan.plan_from_config``); the time from launch to the end of the first step; every checkpoint save's
seconds (``Saved ... in X s``) and the file's size; and the spot path: SIGTERM in the last epoch -> exit 75 ->
the same command resumes at the saved step and ends at the step an uninterrupted run ends at.

``--deadline-s`` bounds the whole run: a process still running then is killed, and the files say what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from resnet_ffcv.run.stop_signals import INTERRUPTED_EXIT_CODE as EXIT_INTERRUPTED

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # benchmarks.fit_probe, the callback named in the fit config
P4D = REPO / "configs" / "p4d_78pct.yaml"
TARGETS = {"compiles": 8, "save_seconds": 10.0, "images_per_s": {160: 9000.0, 224: 5000.0}}  # issues 8 and 26

MODES = {
    "gpu": dict(
        batch=256, val_batch=256, resolutions=(160, 192, 224), val_resolution=256, epochs_per_stage=2, batches=10,
        per_class=300, sides=(300, 600), accelerator=None, backend="inductor", workers=None,
    ),
    "rehearse": dict(
        batch=4, val_batch=8, resolutions=(32, 40, 48), val_resolution=64, epochs_per_stage=1, batches=6,
        per_class=3, sides=(64, 128), accelerator="cpu", backend="aot_eager", workers=1,
    ),
}  # fmt: skip

COMPILED = re.compile(r"torch\.compile graph (\d+)/(\d+): (.+?) \((planned|UNPLANNED)\), first call ([\d.]+) s")
PLANNED = re.compile(r"torch\.compile: (\d+) graphs planned")
SAVED = re.compile(r"Saved (\S+) \(epoch (\d+), step (\d+)\) in ([\d.]+) s")


@dataclass
class FitProcess:
    """One ``resnet-ffcv fit`` process: its output lines (also echoed to stderr), launch time and exit."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    tag: str
    lines: list[str] = field(default_factory=list)
    launched: float = 0.0
    exit_code: int | None = None
    ended: float = 0.0

    def start(self) -> None:
        self.launched = time.time()
        self.process = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)
            print(f"[{self.tag}] {line}", end="", file=sys.stderr, flush=True)

    def wait_for_line(self, needle: str, deadline: float) -> bool:
        """True once a line contains ``needle``; False if the process exits or the deadline passes first."""
        while not any(needle in line for line in self.lines):
            if self.process.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.01)
        return True

    def finish(self, deadline: float) -> int | None:
        """The exit code, or None when it was still running at the deadline (then it is killed)."""
        try:
            self.exit_code = self.process.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.ended = time.time()
        self._reader.join(timeout=10)
        return self.exit_code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def prepare_data(work: Path, mode: dict) -> Path:
    """train.ffcv / val.ffcv of the synthetic set, rn50 preset, in ``work/ffcv`` (reused when present)."""
    from resnet_ffcv.data.loading import cores_per_rank
    from resnet_ffcv.dataset.synthetic import make_synthetic_imagefolder
    from resnet_ffcv.dataset.writer import write_dataset

    data_dir = work / "ffcv"
    if (data_dir / "train.ffcv").is_file():
        return data_dir
    images = make_synthetic_imagefolder(
        work / "images",
        train_per_class=mode["per_class"],
        val_per_class=2,
        min_side=mode["sides"][0],
        max_side=mode["sides"][1],
    )
    workers = mode["workers"] or cores_per_rank(1)
    write_dataset(images, data_dir, preset="rn50", num_workers=workers, overwrite=True)
    shutil.rmtree(images)  # the .ffcv is what the benchmarks read
    return data_dir


def total_epochs(mode: dict) -> int:
    return len(mode["resolutions"]) * mode["epochs_per_stage"]


def fit_overrides(mode: dict, data_dir: Path, work: Path, announce_step: int) -> dict:
    """The config laid over configs/p4d_78pct.yaml: sizes, paths and the probe, nothing of the recipe."""
    epochs = total_epochs(mode)
    p4d = yaml.safe_load(P4D.read_text())
    probe = {
        "class_path": "benchmarks.fit_probe.FitProbe",
        "init_args": {"report_path": str(work / "probe.jsonl"), "announce_step": announce_step},
    }
    trainer = {
        "devices": 1,
        "num_nodes": 1,
        "max_epochs": epochs,
        "limit_train_batches": mode["batches"],
        "check_val_every_n_epoch": epochs,  # one validation: the last epoch (with val_last_epochs 1)
        "callbacks": [*p4d["trainer"]["callbacks"], probe],  # the recipe's list, plus the probe
    }
    if mode["accelerator"]:
        trainer["accelerator"] = mode["accelerator"]
    stages = [{"start_epoch": i * mode["epochs_per_stage"], "resolution": r} for i, r in enumerate(mode["resolutions"])]
    data = {
        "data_dir": str(data_dir),
        "batch_size": mode["batch"],
        "val_batch_size": mode["val_batch"],
        "val_resolution": mode["val_resolution"],
    }
    if mode["workers"]:
        data["num_workers"] = mode["workers"]
    model = {"warmup_epochs": 1, "val_last_epochs": 1, "compile_backend": mode["backend"]}
    if mode.get("arch"):
        model["arch"] = mode["arch"]
    return {
        "run_dir": str(work / "run"),  # checkpoints, W&B files, summary.json: outside the results folder
        "trainer": trainer,
        "model": model,
        "resolution": {"stages": stages},
        "data": data,
    }


def predicted_graphs(config_argv: list[str]) -> list[str]:
    """The graphs ``resnet-ffcv plan`` predicts for this config (the same functions it calls)."""
    from resnet_ffcv.lightning_cli import parse_config_only
    from resnet_ffcv.recipe.compile_plan import plan_from_config
    from resnet_ffcv.tools.plan import group_stages, train_shape_of

    config = parse_config_only(config_argv)
    stages = group_stages(int(config.trainer.max_epochs), train_shape_of(config))
    return [str(graph) for graph in plan_from_config(config, stages)]


def parse_log(output: str) -> dict:
    """What one fit process printed: its plan line, each compile, each checkpoint save, the resume line."""
    planned = PLANNED.search(output)
    return {
        "planned_count": int(planned.group(1)) if planned else None,
        "compiles": [
            {"graph": m[2], "planned": m[3] == "planned", "seconds": float(m[4])} for m in COMPILED.findall(output)
        ],
        "saves": [{"epoch": int(m[1]), "step": int(m[2]), "seconds": float(m[3])} for m in SAVED.findall(output)],
        "resumed": any(line.startswith("Resuming from ") for line in output.splitlines()),
        "eager_fallback_warning": "recompile_limit" in output,  # dynamo's warning when it gives up and runs eagerly
    }


def read_probe(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def checkpoint_position(path: Path) -> dict:
    """Where ``checkpoint_latest.ckpt`` stands: global step, epoch, batches done in that epoch, size."""
    import torch

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    batches = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    return {
        "global_step": checkpoint["global_step"],
        "epoch": checkpoint["epoch"],
        "batches_in_epoch": batches,
        "megabytes": path.stat().st_size / 2**20,
    }


def describe_device(mode_name: str) -> str:
    import torch

    if mode_name == "gpu":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), rehearsal"


def run_fit_path(args, mode: dict, result: dict, write) -> None:
    """Data, process 1 (SIGTERM in the last epoch, exit 75), the checkpoint, process 2 (resume to the end).

    ``write()`` is called after each phase, so a run cut off by its deadline still leaves what it measured.
    """
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    data_dir = Path(args.data_dir) if args.data_dir else prepare_data(work, mode)
    result["data_seconds"] = time.time() - started
    steps = total_epochs(mode) * mode["batches"]
    announce = steps - mode["batches"] + 2  # the last epoch's second batch: the stop lands well before its end
    for stale in ("run", "inductor-cache"):  # a previous run's checkpoint would be resumed, its compiles reused
        shutil.rmtree(work / stale, ignore_errors=True)
    (work / "probe.jsonl").unlink(missing_ok=True)
    overrides = fit_overrides(mode, data_dir, work, announce)
    overrides_path = work / "fit_overrides.yaml"
    overrides_path.write_text(yaml.safe_dump(overrides, sort_keys=False))
    config_argv = ["--config", str(P4D), "--config", str(overrides_path)]
    result |= {"overrides": overrides, "expected_final_step": steps, "sigterm_after_step": announce}
    result["plan"] = predicted_graphs(config_argv)
    write()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH")]))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "inductor-cache")  # cold for process 1, as on a fresh machine
    argv = [sys.executable, "-m", "resnet_ffcv.cli", "fit", *config_argv]
    deadline = started + args.deadline_s

    from benchmarks.fit_probe import ANNOUNCE

    first = FitProcess(argv, env, work, "fit 1")
    first.start()
    signalled = first.wait_for_line(ANNOUNCE, deadline)
    sent = time.time()
    if signalled:
        first.process.send_signal(signal.SIGTERM)
    if first.finish(deadline) is None or not signalled:
        result["stopped"] = (
            "process 1 was still running at the deadline (killed)"
            if first.exit_code is None
            else f"process 1 exited with {first.exit_code} before step {announce}"
        )
    result["processes"] = [process_record(first, work, sent if signalled else None)]
    latest = work / "run" / "checkpoints" / "checkpoint_latest.ckpt"
    if first.exit_code == EXIT_INTERRUPTED and latest.is_file():
        result["interrupted_checkpoint"] = checkpoint_position(latest)
    write()
    if first.exit_code != EXIT_INTERRUPTED:
        result.setdefault("stopped", f"process 1 exited with {first.exit_code}, not {EXIT_INTERRUPTED}")
        return
    second = FitProcess(argv, env, work, "fit 2")
    second.start()
    if second.finish(deadline) is None:
        result["stopped"] = "process 2 was still running at the deadline (killed)"
    result["processes"].append(process_record(second, work, None))
    write()


def process_record(process: FitProcess, work: Path, sigterm_sent: float | None) -> dict:
    """A fit process's exit, its log's figures and its probe record (the probe line with its pid)."""
    probe = next((r for r in read_probe(work / "probe.jsonl") if r["pid"] == process.process.pid), None)
    record = {
        "exit_code": process.exit_code,
        "wall_seconds": process.ended - process.launched,
        **parse_log(process.output),
        "probe": probe,
    }
    if sigterm_sent is not None:
        record["sigterm_to_exit_seconds"] = process.ended - sigterm_sent
    first = (probe or {}).get("first_step") or {}
    if "end" in first:
        record["time_to_first_step_seconds"] = first["end"] - process.launched
        record["startup_seconds"] = probe["fit_start"] - process.launched  # imports, config, data checks
    return record


def stage_rates(processes: list[dict]) -> list[dict]:
    """Images/s per resolution: the epochs' windows that ran to their epoch's end (synchronized at both edges)."""
    windows = [e for p in processes if p.get("probe") for e in p["probe"]["epochs"] if e.get("to_epoch_end")]
    stages = []
    for resolution in sorted({w["resolution"] for w in windows}):
        mine = [w for w in windows if w["resolution"] == resolution and w["timed_steps"]]
        images, seconds = sum(w["images"] for w in mine), sum(w["seconds"] for w in mine)
        stages.append(
            {
                "resolution": resolution,
                "batch": mine[0]["batch"] if mine else None,
                "windows": len(mine),
                "timed_steps": sum(w["timed_steps"] for w in mine),
                "images": images,
                "seconds": seconds,
                "images_per_s": images / seconds if seconds > 0 else None,
            }
        )
    return stages


def summarize(result: dict) -> None:
    """The figures and pass/fail checks derived from the raw records (recomputed at each write)."""
    processes = result.get("processes", [])
    result["stages"] = stage_rates(processes)
    compiled = [c for p in processes for c in p["compiles"]]
    distinct = sorted({c["graph"] for c in compiled})
    plan = result.get("plan", [])
    saves = [s["seconds"] for p in processes for s in p["saves"]]
    result["compile"] = {
        "planned": len(plan),
        "per_process": [len(p["compiles"]) for p in processes],
        "distinct": distinct,
        "unplanned": sorted({c["graph"] for c in compiled if not c["planned"]} | (set(distinct) - set(plan))),
        "seconds_per_process": [round(sum(c["seconds"] for c in p["compiles"]), 1) for p in processes],
        "eager_fallback_warning": any(p["eager_fallback_warning"] for p in processes),
    }
    result["checkpoint"] = {
        "saves": len(saves),
        "median_seconds": statistics.median(saves) if saves else None,
        "max_seconds": max(saves) if saves else None,
        "megabytes": result.get("interrupted_checkpoint", {}).get("megabytes"),
    }
    result["spot"] = spot_summary(result, processes)
    result["checks"] = checks(result)
    result["complete"] = len(processes) == 2 and processes[1]["exit_code"] == 0


def spot_summary(result: dict, processes: list[dict]) -> dict:
    saved = result.get("interrupted_checkpoint") or {}
    spot = {"exit_code": processes[0]["exit_code"] if processes else None, "saved_step": saved.get("global_step")}
    spot["sigterm_to_exit_seconds"] = processes[0].get("sigterm_to_exit_seconds") if processes else None
    if len(processes) == 2:
        resumed = processes[1]
        probe = resumed.get("probe") or {}
        spot |= {
            "rerun_exit_code": resumed["exit_code"],
            "rerun_logged_resume": resumed["resumed"],
            "resumed_at_step": (probe.get("first_step") or {}).get("global_step"),
            "final_step": probe.get("last_global_step"),
        }
    return spot


def checks(result: dict) -> list[dict]:
    """Each check with its measured value. ``kind``: "function" (the path works: the exit status depends on these)
    or "target" (a speed goal: reported, a miss is a finding). ``ok`` None where this run cannot tell."""
    compile_, spot, saves = result["compile"], result["spot"], result["checkpoint"]
    distinct, planned, resumed_at = len(compile_["distinct"]), compile_["planned"], spot.get("resumed_at_step")
    exit_code, final_step, expected_final = spot["exit_code"], spot.get("final_step"), result.get("expected_final_step")
    rows = [
        (
            "function",
            "torch.compile graphs, distinct over both processes",
            f"= plan ({planned}), <= {TARGETS['compiles']}",
            distinct,
            distinct == planned <= TARGETS["compiles"] and not compile_["unplanned"],
        ),
        ("function", "SIGTERM mid-epoch: exit code", f"{EXIT_INTERRUPTED}", exit_code, exit_code == EXIT_INTERRUPTED),
        ("function", "rerun resumes at the saved step", f"= {spot['saved_step']}", resumed_at,
         resumed_at is not None and resumed_at == spot["saved_step"]),
        ("function", "rerun ends at the uninterrupted run's last step", f"= {expected_final}", final_step,
         final_step == expected_final),
        ("target", "checkpoint save, max s", f"<= {TARGETS['save_seconds']:g}", saves["max_seconds"],
         saves["max_seconds"] is not None and saves["max_seconds"] <= TARGETS["save_seconds"]),
    ]  # fmt: skip
    for stage in result["stages"]:
        target, rate = TARGETS["images_per_s"].get(stage["resolution"]), stage["images_per_s"]
        if target is not None and result["mode"] == "gpu":  # the CPU's rates are in the stage table alone
            rows.append(("target", f"fit images/s at {stage['resolution']} px", f">= {target:,.0f}", rate,
                         rate is not None and rate >= target))  # fmt: skip
    return [dict(zip(("kind", "check", "target", "value", "ok"), row, strict=True)) for row in rows]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:.2f}"
    return str(value)


def format_markdown(result: dict) -> str:
    """The stage table, then the measures with their targets (the JSON has every raw figure)."""
    mode = result["sizes"]
    lines = [
        f"fit path on {result['device']}: configs/p4d_78pct.yaml + sizes ({result['differs']}); "
        f"{total_epochs(mode)} epochs x {mode['batches']} batches of {mode['batch']}, one validation at "
        f"{mode['val_resolution']} px (raw + EMA, flip TTA); SIGTERM after step {result.get('sigterm_after_step')}, "
        "then the same command again",
        "",
        "| stage | res | batch | epochs timed | timed steps | images/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for number, stage in enumerate(result.get("stages", []), 1):
        lines.append(
            f"| {number} | {stage['resolution']} | {_cell(stage['batch'])} | {stage['windows']} "
            f"| {stage['timed_steps']} | {_cell(stage['images_per_s'])} |"
        )
    processes = result.get("processes", [])
    compile_ = result.get("compile", {})
    first = processes[0] if processes else {}
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| time to first step, s (launch -> end of step 1; startup before fit) | "
        f"{_cell(first.get('time_to_first_step_seconds'))} ({_cell(first.get('startup_seconds'))}) |",
        f"| rerun: time to first step, s (resume; inductor's compile cache warm) | "
        f"{_cell(processes[1].get('time_to_first_step_seconds')) if len(processes) > 1 else '-'} |",
        f"| torch.compile graphs per process (planned {compile_.get('planned')}) | "
        f"{' / '.join(map(str, compile_.get('per_process', []))) or '-'} |",
        f"| torch.compile seconds per process (first calls) | "
        f"{' / '.join(map(str, compile_.get('seconds_per_process', []))) or '-'} |",
        f"| checkpoint saves: count, median / max s, MB | {result.get('checkpoint', {}).get('saves', 0)}, "
        f"{_cell(result.get('checkpoint', {}).get('median_seconds'))} / "
        f"{_cell(result.get('checkpoint', {}).get('max_seconds'))}, "
        f"{_cell(result.get('checkpoint', {}).get('megabytes'))} |",
        f"| SIGTERM -> exit, s | {_cell(result.get('spot', {}).get('sigterm_to_exit_seconds'))} |",
        f"| validation (raw + EMA, flip TTA, with its compiles), s | {validation_seconds(processes)} |",
        f"| data generation + writing, s | {_cell(result.get('data_seconds'))} |",
        "",
        "| check | kind | target | value | ok |",
        "|---|---|---|---|---|",
    ]
    for check in result.get("checks", []):
        ok = "n/a" if check["ok"] is None else _cell(check["ok"])
        lines.append(f"| {check['check']} | {check['kind']} | {check['target']} | {_cell(check['value'])} | {ok} |")
    if not result.get("complete"):
        lines.append(f"INCOMPLETE: {result.get('stopped', 'a process failed or the deadline passed')} (see the log)")
    return "\n".join(lines) + "\n"


def validation_seconds(processes: list[dict]) -> str:
    seconds = [s for p in processes if p.get("probe") for s in p["probe"]["validation_seconds"]]
    return " / ".join(f"{s:.1f}" for s in seconds) or "-"


DIFFERS = {
    "gpu": "1 device, generated data, short epochs",
    "rehearse": "CPU, aot_eager compile backend, 32-48 px, batch 4, tiny JPEGs: a rehearsal, not a measurement",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rehearse", action="store_true", help="the same steps on the CPU at tiny sizes")
    parser.add_argument("--workdir", required=True, help="data, run directory and compile cache (not the results)")
    parser.add_argument("--data-dir", default=None, help="an existing folder with train.ffcv, val.ffcv, classes.json")
    parser.add_argument("--json", required=True, help="the result, rewritten after each phase")
    parser.add_argument("--md", required=True, help="the markdown tables, rewritten after each phase")
    parser.add_argument("--deadline-s", type=float, default=600, help="wall-clock limit of the whole step")
    parser.add_argument("--epochs-per-stage", type=int, default=None, help="epochs at each resolution")
    parser.add_argument("--batches", type=int, default=None, help="training batches per epoch (>= 4)")
    parser.add_argument("--arch", default=None, help="model.arch instead of the recipe's resnet50 (a smaller test)")
    args = parser.parse_args(argv)
    args.mode = "rehearse" if args.rehearse else "gpu"
    if args.batches is not None and args.batches < 4:
        parser.error(f"--batches {args.batches}: expected >= 4 (the SIGTERM lands mid-epoch, after batch 2)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = dict(MODES[args.mode])
    for key in ("epochs_per_stage", "batches", "arch"):
        if getattr(args, key) is not None:
            mode[key] = getattr(args, key)
    if args.mode == "gpu":
        import torch

        if not torch.cuda.is_available():
            print("fit_path.py: no CUDA device (use --rehearse for the CPU rehearsal)", file=sys.stderr)
            return 1
    differs = DIFFERS[args.mode] + (f", {args.arch} instead of resnet50" if args.arch else "")
    result = {"mode": args.mode, "device": describe_device(args.mode), "differs": differs, "sizes": mode}

    def write() -> None:  # atomic: a run killed mid-write leaves the previous version, never half of one
        from resnet_ffcv import atomic

        summarize(result)
        atomic.write_text(args.json, json.dumps(result, indent=1, default=str) + "\n")
        atomic.write_text(args.md, format_markdown(result))

    try:
        run_fit_path(args, mode, result, write)
    finally:
        write()
    print(format_markdown(result), flush=True)
    works = all(check["ok"] for check in result["checks"] if check["kind"] == "function")
    return 0 if result["complete"] and works else 1  # a missed speed target is a finding, not a failure


if __name__ == "__main__":
    sys.exit(main())
