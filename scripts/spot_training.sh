#!/usr/bin/env bash
# The one command to run, and rerun, on a spot instance: checks the machine, then starts or resumes training.
#
#   scripts/spot_training.sh configs/p4d_78pct.yaml [more `resnet-ffcv fit` arguments ...]
#
# Checks (before anything expensive): the config parses; the GPUs the config asks for are visible to torch; the
# .ffcv files and classes.json exist; the checkpoint directory is writable (and says whether this run resumes).
# Then `resnet-ffcv fit` runs; with no --ckpt_path it resumes from checkpoint_latest.ckpt in the checkpoint dir.
# SIGTERM / SIGINT sent to this script are passed on, so training saves a checkpoint before it exits.
#
# Exit codes:
#   0   finished (max_epochs or the target accuracy reached)
#   75  interrupted (spot notice, SIGTERM, SIGINT) with checkpoint_latest.ckpt saved: rerun this same command
#   1   training failed
#   2   a check failed before training started
# Environment: PYTHON runs resnet_ffcv (default: the repository's .venv/bin/python if present, else python).
set -uo pipefail

INTERRUPTED=75
repo_python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
[[ -x $repo_python ]] || repo_python=python
PYTHON=${PYTHON:-$repo_python}

say() { printf 'spot_training: %s\n' "$*" >&2; }
fail_check() { say "check failed: $*"; exit 2; }

[[ $# -ge 1 && -f $1 ]] || fail_check "usage: $0 CONFIG.yaml [resnet-ffcv fit arguments...] (config file '${1:-}' not found)"
config=$1
shift

# 1. The resolved config: the same parse `fit` will do, with the command-line overrides.
errors=$(mktemp)
resolved=$("$PYTHON" -m resnet_ffcv.cli fit --config "$config" "$@" --print_config 2>"$errors") \
  || fail_check "the config does not parse:"$'\n'"$(cat "$errors")"
rm -f "$errors"

# 2-4. GPUs, data files, checkpoint directory: read from the resolved config by a few lines of Python.
RESOLVED_CONFIG=$resolved "$PYTHON" - <<'PY' || exit 2
import os, shutil, sys
from pathlib import Path

import yaml

config = yaml.safe_load(os.environ["RESOLVED_CONFIG"])
trainer, data = config.get("trainer", {}), config.get("data", {})
problems = []

def note(message):
    print(f"spot_training: {message}", file=sys.stderr)

accelerator, devices = str(trainer.get("accelerator", "auto")), trainer.get("devices", "auto")
if accelerator in ("gpu", "cuda", "auto"):
    import torch

    visible = torch.cuda.device_count()
    wanted = visible if devices in ("auto", -1, "-1") else (len(devices) if isinstance(devices, list) else int(devices))
    if accelerator != "auto" and visible == 0:
        problems.append("trainer.accelerator asks for GPUs but torch sees none (driver? CUDA_VISIBLE_DEVICES?)")
    elif visible < wanted:
        problems.append(f"trainer.devices={devices} but torch sees {visible} GPU(s)")
    else:
        note(f"{visible} GPU(s) visible, using {wanted}")

data_dir = Path(data.get("data_dir", ""))
for name in (data.get("train_file", "train.ffcv"), data.get("val_file", "val.ffcv"), "classes.json"):
    path = data_dir / name
    if not path.is_file() or path.stat().st_size == 0:
        problems.append(f"{path}: missing or empty (data.data_dir / data.train_file / data.val_file)")

checkpoint_dirs = [
    (callback.get("init_args") or {}).get("dirpath")
    for callback in trainer.get("callbacks") or []
    if isinstance(callback, dict) and "Checkpoint" in callback.get("class_path", "")
]
checkpoint_dirs = [d for d in checkpoint_dirs if d]
if not checkpoint_dirs:
    problems.append("no checkpoint callback with a dirpath in trainer.callbacks: a restart could not resume")
elif "://" in str(checkpoint_dirs[0]):  # object storage (resnet_ffcv/storage.py): checked when fit starts
    note(f"checkpoints in {checkpoint_dirs[0]} (object storage)")
else:
    directory = Path(checkpoint_dirs[0])
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".spot_training_write_probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        problems.append(f"{directory}: checkpoint directory not writable ({error})")
    else:
        free_gb = shutil.disk_usage(directory).free / 1e9
        if free_gb < 2:
            problems.append(f"{directory}: only {free_gb:.1f} GB free; checkpoints need a few GB")
        latest = directory / "checkpoint_latest.ckpt"
        note(f"checkpoints in {directory} ({free_gb:.0f} GB free): "
             + ("resuming from checkpoint_latest.ckpt" if latest.is_file() else "no checkpoint_latest.ckpt yet"))

for problem in problems:
    note(f"check failed: {problem}")
sys.exit(2 if problems else 0)
PY

# 5. Train, passing SIGTERM / SIGINT on to the trainer (it saves checkpoint_latest.ckpt and exits 75).
say "starting: resnet-ffcv fit --config $config $*"
"$PYTHON" -m resnet_ffcv.cli fit --config "$config" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"
rc=$?
while kill -0 "$child" 2>/dev/null; do  # wait returned early because a trapped signal arrived
  wait "$child"
  rc=$?
done

case $rc in
  0) say "finished"; exit 0 ;;
  "$INTERRUPTED") say "interrupted; checkpoint_latest.ckpt saved: rerun this same command to resume"; exit "$INTERRUPTED" ;;
  *) say "training failed (resnet-ffcv exit code $rc)"; exit 1 ;;
esac
