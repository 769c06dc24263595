#!/usr/bin/env bash
# The one command to run, and rerun, on a spot instance: checks the machine, then starts or resumes training.
#
#   scripts/spot_training.sh configs/p4d_78pct.yaml [more `resnet-ffcv fit` arguments ...]
#
# Checks (before anything expensive, by `resnet-ffcv doctor`): the config parses; the GPUs the config asks for are
# visible to torch; the .ffcv files and classes.json exist; the checkpoint directory is writable with free space;
# and one line says whether this run resumes. Nothing is created before the checks pass.
# Then `resnet-ffcv fit` runs; with no --ckpt_path it resumes from checkpoint_latest.ckpt in the checkpoint dir.
# SIGTERM / SIGINT sent to this script are passed on, so training saves a checkpoint before it exits.
#
# Exit codes:
#   0   finished (max_epochs or the target accuracy reached)
#   75  interrupted (spot notice, SIGTERM, SIGINT) with checkpoint_latest.ckpt saved: rerun this same command
#   76  stalled (no progress for watchdog.stall_minutes, or a collective timed out); checkpoint_latest.ckpt is the
#       last one saved: rerun this same command. fit counts the stalls of a run in the checkpoint directory and
#       exits 1 after watchdog.max_restarts of them, so rerunning on 76 is bounded.
#   1   training failed
#   2   a check failed before training started
# Environment: PYTHON runs resnet_ffcv (default: the repository's .venv/bin/python if present, else python).
set -uo pipefail

INTERRUPTED=75
STALLED=76
repo_python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
[[ -x $repo_python ]] || repo_python=python
PYTHON=${PYTHON:-$repo_python}

say() { printf 'spot_training: %s\n' "$*" >&2; }
fail_check() { say "check failed: $*"; exit 2; }

[[ $# -ge 1 && -f $1 ]] || fail_check "usage: $0 CONFIG.yaml [resnet-ffcv fit arguments...] (config file '${1:-}' not found)"
config=$1
shift

# 1. `resnet-ffcv doctor`: the same parse `fit` will do (with the overrides), then GPUs, data files, the checkpoint
#    directory (writable, free space) and whether this run resumes. It creates nothing; neither does this script.
report=$("$PYTHON" -m resnet_ffcv.cli doctor --config "$config" "$@")  # its stderr (a parse error) shows as is
doctor_rc=$?
if [[ $doctor_rc -ne 0 && $doctor_rc -ne 1 ]]; then  # 1: a check failed; anything else: no checks ran
  fail_check "the config does not parse, or the checks could not run (resnet-ffcv doctor exit code $doctor_rc, above)"
fi
while IFS= read -r line; do
  case $line in
    "[FAIL] "*) say "check failed: ${line#\[FAIL\] }" ;;
    *) say "$line" ;;
  esac
done <<<"$report"
[[ $doctor_rc -eq 0 ]] || exit 2

# 2. Train, passing SIGTERM / SIGINT on to the trainer (it saves checkpoint_latest.ckpt and exits 75). fit handles
#    them from its first moment, start-up included, so 143/130 (killed by the signal) would be a real failure.
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
  "$STALLED")
    say "stalled (stacks in the run directory's stalls/, paragraph above); checkpoint_latest.ckpt is untouched:"
    say "rerun this same command to resume (fit allows watchdog.max_restarts stalls per run, then fails with 1)"
    exit "$STALLED" ;;
  2) say "a check before training refused (the error above says what to change)"; exit 2 ;;
  *) say "training failed (resnet-ffcv exit code $rc)"; exit 1 ;;
esac
