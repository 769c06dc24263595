"""``OUT/summary.json`` of ``benchmarks/gpu_check.sh``: the device, the budget, and each step as it completes.

    python benchmarks/check_summary.py OUT/summary.json start --mode gpu --budget-s 600 --device-file FILE
    python benchmarks/check_summary.py OUT/summary.json step NAME --status ok --seconds 93 --limit-s 270 \
        [--json RESULT.json] [--md TABLE.md] [--command "..."]

Rewritten atomically after every step, so a run cut off later still leaves a valid file with every finished
step; a step's own JSON result (when it wrote one) is merged in whole, its markdown table is named.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from resnet_ffcv import atomic


def start(path: Path, mode: str, budget_s: float, device_file: Path | None) -> None:
    device = device_file.read_text() if device_file and device_file.is_file() else ""
    summary = {
        "mode": mode,
        "budget_s": budget_s,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.strip(),
        "steps": {},
    }
    atomic.write_text(path, json.dumps(summary, indent=1) + "\n")


def record_step(path: Path, name: str, status: str, seconds: float, limit_s: float, args) -> None:
    summary = json.loads(path.read_text())
    step: dict = {"status": status, "seconds": seconds, "limit_s": limit_s, "command": args.command}
    if args.json and Path(args.json).is_file():
        try:
            step["result"] = json.loads(Path(args.json).read_text())
        except json.JSONDecodeError as error:  # a step killed mid-write: say so, keep the summary valid
            step["result_error"] = f"{args.json}: {error}"
    if args.md and Path(args.md).is_file():
        step["table"] = Path(args.md).name
    summary["steps"][name] = step
    summary["ended"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic.write_text(path, json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path)
    actions = parser.add_subparsers(dest="action", required=True)
    begin = actions.add_parser("start")
    begin.add_argument("--mode", required=True, choices=["gpu", "rehearse"])
    begin.add_argument("--budget-s", type=float, required=True)
    begin.add_argument("--device-file", type=Path, default=None)
    step = actions.add_parser("step")
    step.add_argument("name")
    step.add_argument("--status", required=True, choices=["ok", "failed", "timed_out", "skipped"])
    step.add_argument("--seconds", type=float, required=True)
    step.add_argument("--limit-s", type=float, required=True)
    step.add_argument("--json", default=None, help="the step's JSON result, merged in")
    step.add_argument("--md", default=None, help="the step's markdown table in OUT")
    step.add_argument("--command", default="")
    args = parser.parse_args(argv)
    if args.action == "start":
        start(args.summary, args.mode, args.budget_s, args.device_file)
    else:
        record_step(args.summary, args.name, args.status, args.seconds, args.limit_s, args)


if __name__ == "__main__":
    main()
