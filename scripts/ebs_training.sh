#!/usr/bin/env bash
# On a fresh p4d: find and mount the EBS volume holding the .ffcv files, verify them, print the next commands.
#
#   sudo scripts/ebs_training.sh [DEVICE]     # DEVICE e.g. /dev/nvme1n1; found automatically when omitted
#
# Environment: MOUNT_POINT (/data), DATA_DIR ($MOUNT_POINT/ffcv), CONFIG (configs/p4d_78pct.yaml),
#   MIN_TRAIN_GB (100) / MIN_VAL_GB (4): smaller files mean an incomplete copy (full ImageNet, rn50 preset: ~390 GB / ~15 GB).
#   DEVICE=none: the data is already in place, mount nothing.
# On Nitro instances (p4d) EBS volumes show up as /dev/nvme<N>n1, not the /dev/sdf named at attach time; the
# p4d's own instance-store NVMe disks have no filesystem and are skipped.
set -euo pipefail
MOUNT_POINT=${MOUNT_POINT:-/data}
DATA_DIR=${DATA_DIR:-$MOUNT_POINT/ffcv}
CONFIG=${CONFIG:-configs/p4d_78pct.yaml}
MIN_TRAIN_GB=${MIN_TRAIN_GB:-100}
MIN_VAL_GB=${MIN_VAL_GB:-4}
DEVICE=${1:-${DEVICE:-}}
fail() { echo "ebs_training: $*" >&2; exit 1; }

find_data_device() {  # unmounted disks that carry a filesystem
  lsblk -dpno NAME,TYPE | awk '$2 == "disk" {print $1}' | while read -r dev; do
    [ -z "$(lsblk -no MOUNTPOINT "$dev" | tr -d '[:space:]')" ] || continue
    [ -n "$(blkid -o value -s TYPE "$dev" 2>/dev/null)" ] && echo "$dev"
  done
}

if [ "$DEVICE" != none ] && ! mountpoint -q "$MOUNT_POINT"; then
  if [ -z "$DEVICE" ]; then
    mapfile -t candidates < <(find_data_device)
    [ "${#candidates[@]}" -gt 0 ] || fail "no unmounted disk with a filesystem found (lsblk below); is the volume attached?
$(lsblk -o NAME,SIZE,TYPE,FSTYPE,MOUNTPOINT)"
    [ "${#candidates[@]}" -eq 1 ] || fail "several candidate disks (${candidates[*]}): pass one, e.g. $0 ${candidates[0]}"
    DEVICE=${candidates[0]}
  fi
  echo "mounting $DEVICE at $MOUNT_POINT"
  mkdir -p "$MOUNT_POINT"
  mount -o noatime "$DEVICE" "$MOUNT_POINT" || fail "mount $DEVICE $MOUNT_POINT failed"
fi

size_gb() { awk -v b="$(stat -c %s "$1")" 'BEGIN {printf "%.1f", b / 1e9}'; }
check_file() {  # name minimum_gb
  local path="$DATA_DIR/$1"
  [ -f "$path" ] || fail "$path is missing (expected train.ffcv, val.ffcv and classes.json in $DATA_DIR)"
  local gb; gb=$(size_gb "$path")
  awk -v s="$gb" -v m="$2" 'BEGIN {exit !(s >= m)}' || fail "$path is $gb GB, expected >= $2 GB (an incomplete copy?)"
  echo "ok  $path  $gb GB"
}
check_file train.ffcv "$MIN_TRAIN_GB"
check_file val.ffcv "$MIN_VAL_GB"
check_file classes.json 0
echo "free at $MOUNT_POINT: $(df -h --output=avail "$MOUNT_POINT" | tail -1 | tr -d ' ')"
cat <<NEXT

next:
  resnet-ffcv doctor --config $CONFIG --data.data_dir $DATA_DIR
  scripts/tmux_training_setup.sh $CONFIG        # training + gpu/logs/system/checkpoint windows
  # or without tmux: scripts/spot_training.sh $CONFIG
NEXT
