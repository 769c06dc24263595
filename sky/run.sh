#!/usr/bin/env bash
# The `run` of every sky/*.yaml task: stage the dataset to local disk, point the checkpoints at the bucket, then
# scripts/spot_training.sh (checks, then `resnet-ffcv fit`, which resumes from the bucket by itself).
#
# Settings come from the environment (the task's `envs:`, overridable with `sky jobs launch --env KEY=VALUE`):
#   FIT_CONFIGS     config files for `fit`, space-separated (e.g. "configs/p4d_78pct.yaml configs/instances/...")
#   FIT_ARGS        more `fit` arguments (optional)
#   DATA_URL        where write-dataset's output lives: s3://bucket/prefix or a directory
#   NVME_MOUNT      where scripts/local_nvme.sh mounts the instance store (NVMe); the data goes to NVME_MOUNT/ffcv-data
#   LOCAL_DATA      where the data goes on an instance without instance store (the root disk); becomes data.data_dir
#   CHECKPOINT_URL  checkpoint.dirpath: s3://bucket/run (object storage outlives the zone; EBS does not)
# SkyPilot's own variables: SKYPILOT_NODE_IPS (one IP a line, head node first), SKYPILOT_NODE_RANK,
# SKYPILOT_NUM_NODES. With more than one node, Lightning's own cluster environment takes MASTER_ADDR,
# MASTER_PORT and NODE_RANK and starts trainer.devices processes per node itself (as under SLURM, no launcher).
#
# Exit codes (SkyPilot's managed-job controller reads them, see job_recovery in the task files):
#   0 finished -> the job SUCCEEDS and ends          75 interrupted, checkpoint in the bucket -> recovered
#   76 stalled (watchdog) -> recovered; bounded by fit itself: the stall after watchdog.max_restarts exits 1
#   1 training failed -> retried max_restarts_on_errors times, then FAILED     2 a check failed (same as 1)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHON PYTHONUNBUFFERED=1

say() { printf 'sky/run.sh: %s\n' "$*" >&2; }
for name in FIT_CONFIGS DATA_URL LOCAL_DATA NVME_MOUNT CHECKPOINT_URL; do
  [[ -n ${!name:-} ]] || { say "check failed: $name is not set (task envs / sky jobs launch --env $name=...)"; exit 2; }
done

# 1. Data at disk speed: on the instance store where there is one (GB/s; p4d, g5, g6), else on the root disk
#    (p3). A rerun onto a disk that already holds the data copies nothing.
nvme=$(bash scripts/local_nvme.sh "$NVME_MOUNT")
case $? in
  0) LOCAL_DATA=$nvme/ffcv-data ;;
  3) say "no instance store: staging to the root disk" ;;
  *) say "check failed: the instance store could not be mounted (above)"; exit 2 ;;
esac
say "data: $DATA_URL -> $LOCAL_DATA"
"$PYTHON" scripts/stage_data.py "$DATA_URL" "$LOCAL_DATA" || exit 2

# 2. The configs as they are, with the local data and the bucket as the checkpoint directory (checkpoint.dirpath).
read -r -a configs <<<"$FIT_CONFIGS"
fit_args=("${configs[0]}")
for config in "${configs[@]:1}"; do fit_args+=(--config "$config"); done
fit_args+=(--data.data_dir "$LOCAL_DATA" --checkpoint.dirpath "$CHECKPOINT_URL")
# shellcheck disable=SC2206  # FIT_ARGS is a list of words on purpose
fit_args+=(${FIT_ARGS:-})

# 3. More than one node: Lightning's environment variables, from SkyPilot's.
if [[ ${SKYPILOT_NUM_NODES:-1} -gt 1 ]]; then
  MASTER_ADDR=$(printf '%s\n' "$SKYPILOT_NODE_IPS" | head -n1)
  export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500} NODE_RANK=${SKYPILOT_NODE_RANK:-0}
  say "node $NODE_RANK of $SKYPILOT_NUM_NODES, master $MASTER_ADDR:$MASTER_PORT"
fi

# 4. Train (or resume); SIGTERM from SkyPilot's cancel or the OS reaches fit through spot_training.sh.
bash scripts/spot_training.sh "${fit_args[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"
rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
exit "$rc"
