#!/usr/bin/env bash
# One tmux session to start and watch a run: windows training | gpu | logs | system | checkpoints.
#
#   scripts/tmux_training_setup.sh [--dry-run] --config A.yaml [--config B.yaml ...] [fit overrides ...]
#   scripts/tmux_training_setup.sh configs/p4d_78pct.yaml          # a bare first file is --config FILE
#
# The configs and overrides are those of `resnet-ffcv fit` (later ones win). The log and checkpoint directories
# are read from the resolved config (`resnet-ffcv fit ... --print_config`): the checkpoint directory from the
# `checkpoint:` section (else <run_dir>/checkpoints), the log directory from the logger's save_dir (else
# run_dir). The training window runs scripts/spot_training.sh with the same arguments, its output appended to
# LOG_DIR/train.log. A window whose tool is missing (no nvidia-smi on a CPU box, no htop) says so and stays open.
#
# Options:
#   --dry-run   print the resolved directories and the tmux commands; start nothing
#   -h, --help  this text
# Environment (each optional):
#   SESSION         tmux session name (training)
#   LOG_DIR         overrides the log directory read from the config
#   CHECKPOINT_DIR  overrides the checkpoint directory read from the config
#   TRAIN_CMD       the training window's command (default: bash scripts/spot_training.sh ARGS)
#   NO_ATTACH=1     leave the session detached (it also stays detached when stdout is not a terminal)
#   TMUX_SOCKET     a separate tmux server (tests)
#   PYTHON          runs resnet_ffcv (default: the repository's .venv/bin/python if present, else python)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
dry_run=
args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --dry-run) dry_run=1 ;;
    *) args+=("$1") ;;
  esac
  shift
done
[[ ${#args[@]} -eq 0 ]] && args=(--config configs/p4d_78pct.yaml)
[[ ${args[0]} == -* ]] || args=(--config "${args[@]}")  # a bare first file is a config
if [[ ${args[0]} != --config && ${args[0]} != --config=* && ${args[0]} != -c ]]; then
  echo "tmux_training_setup: the first argument must be a config (--config FILE); got '${args[0]}'" >&2
  exit 2
fi
first_config=${args[1]}
[[ ${args[0]} == --config=* ]] && first_config=${args[0]#--config=}
[[ -x .venv/bin/python ]] && default_python=$repo/.venv/bin/python || default_python=python
PYTHON=${PYTHON:-$default_python}

# The directories `fit` would use, from the same parse `fit` does.
if ! resolved=$(PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m resnet_ffcv.cli fit "${args[@]}" --print_config \
  | "$PYTHON" -c '
import sys, yaml
config = yaml.safe_load(sys.stdin) or {}
trainer = config.get("trainer") or {}
run_dir = config.get("run_dir")
# As fit decides (resnet_ffcv/run_dir.py): a path set on its own wins, else it lives under run_dir.
checkpoint = (config.get("checkpoint") or {}).get("dirpath")
loggers = trainer.get("logger")
loggers = loggers if isinstance(loggers, list) else [loggers]
save_dirs = [(l.get("init_args") or {}).get("save_dir") for l in loggers if isinstance(l, dict)]
log = next((d for d in save_dirs if d), None) or run_dir or "logs"
print(log)
print(checkpoint or (f"{run_dir}/checkpoints" if run_dir else "checkpoints"))
'); then
  echo "tmux_training_setup: the config does not parse (resnet-ffcv fit ${args[*]} --print_config, above)" >&2
  exit 2
fi
{ read -r config_log_dir; read -r config_checkpoint_dir; } <<<"$resolved"
LOG_DIR=${LOG_DIR:-$config_log_dir}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-$config_checkpoint_dir}
SESSION=${SESSION:-training}
rest=("${args[@]:2}")
[[ ${args[0]} == --config=* ]] && rest=("${args[@]:1}")
TRAIN_CMD=${TRAIN_CMD:-"bash scripts/spot_training.sh $(printf '%q ' "$first_config" "${rest[@]}")"}
log="$LOG_DIR/train.log"

# Runs TOOL's command if TOOL exists, else explains; either way the window stays for the user.
watch_or_explain() {  # name tool command...
  local tool=$1; shift
  printf 'if command -v %q >/dev/null; then %s; else echo "%s not found on this machine: this window has nothing to show"; fi; exec bash' \
    "$tool" "$*" "$tool"
}
every() {  # seconds command: a portable `watch`
  printf 'while true; do clear; date; %s; sleep %s; done' "$2" "$1"
}
windows=(
  "training|( $TRAIN_CMD ) 2>&1 | tee -a $log"
  "gpu|$(watch_or_explain nvidia-smi "$(every 2 nvidia-smi)")"
  "logs|touch $log; tail -F $log"
  "system|if command -v htop >/dev/null; then htop; else echo 'htop not found, using top'; top; fi; exec bash"
  "checkpoints|$(every 30 "ls -lh --time-style=+%H:%M:%S $CHECKPOINT_DIR 2>&1; df -h $CHECKPOINT_DIR 2>&1 | tail -1")"
)

if [[ -n $dry_run ]]; then
  echo "log dir:        $LOG_DIR (training output: $log)"
  echo "checkpoint dir: $CHECKPOINT_DIR"
  echo "tmux session '$SESSION', windows:"
  for window in "${windows[@]}"; do printf '  %-12s %s\n' "${window%%|*}" "${window#*|}"; done
  exit 0
fi

tmux_() { tmux ${TMUX_SOCKET:+-L "$TMUX_SOCKET"} "$@"; }
command -v tmux >/dev/null || { echo "tmux is not installed (apt-get install -y tmux)" >&2; exit 1; }
if tmux_ has-session -t "$SESSION" 2>/dev/null; then
  echo "tmux session '$SESSION' already exists: tmux attach -t $SESSION" >&2
  exit 1
fi
mkdir -p "$LOG_DIR"

tmux_ new-session -d -s "$SESSION" -n training -x 200 -y 50
tmux_ send-keys -t "$SESSION:training" "${windows[0]#*|}" Enter
for window in "${windows[@]:1}"; do
  tmux_ new-window -t "$SESSION:" -n "${window%%|*}" "${window#*|}"
done
tmux_ select-window -t "$SESSION:training"

echo "tmux session '$SESSION': windows training, gpu, logs, system, checkpoints (log: $log; checkpoints: $CHECKPOINT_DIR)"
echo "  attach: tmux attach -t $SESSION    switch windows: Ctrl-b <n>    detach: Ctrl-b d"
[ -n "${NO_ATTACH:-}" ] || [ ! -t 1 ] || exec tmux ${TMUX_SOCKET:+-L "$TMUX_SOCKET"} attach -t "$SESSION"
