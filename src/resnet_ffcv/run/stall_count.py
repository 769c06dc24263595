"""How many times this run has stalled, in a small file beside its checkpoints, so the count outlives relaunches.

A stall exits 76 and the launcher (``scripts/spot_training.sh``, SkyPilot's ``recover_on_exit_codes``) starts the
run again from ``checkpoint_latest.ckpt``. A run that stalls every time would be relaunched forever, paying for
the GPUs during every stall; so each stall is appended here, and the stall past ``watchdog.max_restarts`` is a
failure (exit 1) instead. The file lives in the checkpoint directory (the bucket's mirror for an ``s3://`` one,
uploaded at once): the one place that survives a new instance. ``--fresh_start`` moves it aside with the
checkpoints; deleting it allows ``max_restarts`` more.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from resnet_ffcv import atomic

STALL_COUNT_FILE = "stall_restarts.json"


def stalls_so_far(directory: Path) -> list[dict]:
    """The stalls recorded in ``directory`` (oldest first); an unreadable file counts as none, with no error:
    this runs in the watchdog thread of a process that is about to end."""
    try:
        return list(json.loads((Path(directory) / STALL_COUNT_FILE).read_text())["stalls"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def record_stall(directory: Path, **details) -> int:
    """Appends one stall (with ``details``: step, epoch, the stack file) and returns how many there are now."""
    stalls = [*stalls_so_far(directory), {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **details}]
    Path(directory).mkdir(parents=True, exist_ok=True)
    atomic.write_text(Path(directory) / STALL_COUNT_FILE, json.dumps({"stalls": stalls}, indent=1) + "\n")
    return len(stalls)
