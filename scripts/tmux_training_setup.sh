#!/usr/bin/env bash
# One tmux session "training" to watch a run: training | gpu | logs | system | checkpoints.
# A window whose tool is missing (no nvidia-smi on a CPU box, no htop) says so and stays open.
#
#   scripts/tmux_training_setup.sh [CONFIG]        # default configs/p4d_78pct.yaml; attaches when done
#
# Environment: SESSION (training), LOG_DIR (/data/logs), CHECKPOINT_DIR (/data/checkpoints),
#   TRAIN_CMD (default: scripts/spot_training.sh CONFIG), NO_ATTACH=1 to leave it detached,
#   TMUX_SOCKET to use a separate tmux server (tests).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/p4d_78pct.yaml}
SESSION=${SESSION:-training}
LOG_DIR=${LOG_DIR:-/data/logs}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-/data/checkpoints}
TRAIN_CMD=${TRAIN_CMD:-"bash scripts/spot_training.sh $CONFIG"}
tmux_() { tmux ${TMUX_SOCKET:+-L "$TMUX_SOCKET"} "$@"; }

command -v tmux >/dev/null || { echo "tmux is not installed (apt-get install -y tmux)" >&2; exit 1; }
if tmux_ has-session -t "$SESSION" 2>/dev/null; then
  echo "tmux session '$SESSION' already exists: tmux attach -t $SESSION" >&2
  exit 1
fi
mkdir -p "$LOG_DIR"
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

tmux_ new-session -d -s "$SESSION" -n training -x 200 -y 50
tmux_ send-keys -t "$SESSION:training" "( $TRAIN_CMD ) 2>&1 | tee -a $log" Enter
tmux_ new-window -t "$SESSION:" -n gpu "$(watch_or_explain nvidia-smi "$(every 2 nvidia-smi)")"
tmux_ new-window -t "$SESSION:" -n logs "touch $log; tail -F $log"
tmux_ new-window -t "$SESSION:" -n system \
  "if command -v htop >/dev/null; then htop; else echo 'htop not found, using top'; top; fi; exec bash"
tmux_ new-window -t "$SESSION:" -n checkpoints "$(every 30 "ls -lh --time-style=+%H:%M:%S $CHECKPOINT_DIR 2>&1; df -h $CHECKPOINT_DIR 2>&1 | tail -1")"
tmux_ select-window -t "$SESSION:training"

echo "tmux session '$SESSION': windows training, gpu, logs, system, checkpoints (log: $log)"
echo "  attach: tmux attach -t $SESSION    switch windows: Ctrl-b <n>    detach: Ctrl-b d"
[ -n "${NO_ATTACH:-}" ] || [ ! -t 1 ] || exec tmux ${TMUX_SOCKET:+-L "$TMUX_SOCKET"} attach -t "$SESSION"
