#!/usr/bin/env bash
# Make this instance's NVMe instance store one filesystem at MOUNT and print MOUNT: the place to stage the dataset.
#
#   data_root=$(bash scripts/local_nvme.sh /mnt/nvme)      # sky/run.sh does this before staging
#
# Why: FFCV reads train.ffcv (~390 GB at the rn50 preset) in random order. The instance store of a p4d.24xlarge
# (8 x 1 TB), g5.12xlarge (1 x 3.8 TB) or g6.12xlarge (4 x 940 GB) reads at several GB/s, the root gp3 volume at
# 437 MB/s even at SkyPilot's `high` tier; where RAM cannot hold the file (g5/g6: 192 GB) every epoch reads it again.
#
# How: several drives become one striped (RAID 0) btrfs, one drive a plain btrfs. btrfs stripes by itself, so no
# mdadm and no md kernel module are needed, and one code path covers one drive and eight. Instance store is
# emptied when the instance stops, so nothing on it is ours to keep across a relaunch; within one instance a rerun
# mounts the filesystem it made (label resnet-ffcv-nvme) instead of formatting it again.
#
# Drives: the block devices whose model is "Amazon EC2 NVMe Instance Storage" (EBS volumes say "Amazon Elastic Block
# Store"); INSTANCE_STORE_DEVICES="/dev/a /dev/b" names them instead (other clouds, tests), and "none" uses none.
# A drive that is already mounted (some images mount the instance store themselves) is not formatted: a directory
# of ours under its mount point is printed instead.
#
# Exit codes: 0 mounted (the directory is printed on stdout), 3 this instance has no instance store (stage to the
# root disk instead), 2 it has one but it could not be made ready (the message says which step failed).
set -euo pipefail
PATH=$PATH:/usr/sbin:/sbin  # mkfs.btrfs, blkid, losetup live there; a non-login shell may not list them
MOUNT=${1:?usage: local_nvme.sh MOUNT_POINT}
LABEL=resnet-ffcv-nvme
READ_AHEAD_KB=${READ_AHEAD_KB:-128}
SUDO=$([[ $(id -u) == 0 ]] || echo sudo)
say() { printf 'local_nvme.sh: %s\n' "$*" >&2; }
fail() { say "$*"; exit 2; }

if mountpoint -q "$MOUNT"; then
  say "$MOUNT is already mounted: using it"
  echo "$MOUNT"
  exit 0
fi

if [[ ${INSTANCE_STORE_DEVICES:-} == none ]]; then
  drives=()
elif [[ -n ${INSTANCE_STORE_DEVICES:-} ]]; then
  read -r -a drives <<<"$INSTANCE_STORE_DEVICES"
else
  mapfile -t drives < <(lsblk -dnp -o NAME,MODEL | awk '/Amazon EC2 NVMe Instance Storage/ {print $1}')
fi
if [[ ${#drives[@]} -eq 0 ]]; then
  say "no NVMe instance store on this instance"
  exit 3
fi

in_use=$(lsblk -nr -o MOUNTPOINT "${drives[@]}" | awk '/^\// {print; exit}')  # a path, not [SWAP]
if [[ -n $in_use ]]; then
  say "the instance store is already mounted at $in_use: using it, formatting nothing"
  $SUDO install -d -o "$(id -u)" -g "$(id -g)" "$in_use/resnet-ffcv" || fail "cannot create $in_use/resnet-ffcv"
  echo "$in_use/resnet-ffcv"
  exit 0
fi

command -v mkfs.btrfs >/dev/null || fail "mkfs.btrfs not found: install btrfs-progs (make install does)"
if [[ $($SUDO blkid -o value -s LABEL "${drives[0]}" 2>/dev/null || true) == "$LABEL" ]]; then
  say "${drives[*]}: the $LABEL filesystem of an earlier run on this instance: mounting it as it is"
else
  profile=$([[ ${#drives[@]} -gt 1 ]] && echo raid0 || echo single)
  say "formatting ${drives[*]} as one btrfs ($profile over ${#drives[@]} drive(s))"
  # -K: no TRIM pass over every drive (a fresh instance store is already empty; TRIM of 8 TB takes minutes).
  $SUDO mkfs.btrfs -f -q -K -L "$LABEL" -d "$profile" -m "$profile" "${drives[@]}" >&2 || fail "mkfs.btrfs failed"
fi
# The kernel must know every member of a multi-drive btrfs before the mount (udev does this at boot only).
$SUDO btrfs device scan "${drives[@]}" >/dev/null || fail "btrfs device scan ${drives[*]} failed"
$SUDO mkdir -p "$MOUNT"
$SUDO mount -o noatime "${drives[0]}" "$MOUNT" || fail "mount ${drives[0]} $MOUNT failed"
$SUDO chown "$(id -u):$(id -g)" "$MOUNT"
# btrfs raises its read-ahead to 4 MiB. Where RAM cannot hold train.ffcv (g5/g6) the page cache drops what it read
# ahead before FFCV's random order gets there, and each memory-mapped sample (~302 KB) would pull in 4 MiB: 4.4x the
# file per epoch in benchmarks/os_cache_io.py (scaled), 1.15x at 128 KB. Set before `fit` opens the file.
uuid=$(findmnt -n -o UUID "$MOUNT")
echo "$READ_AHEAD_KB" | $SUDO tee "/sys/fs/btrfs/$uuid/bdi/read_ahead_kb" >/dev/null || fail "cannot set read-ahead"
size=$(df -h --output=size "$MOUNT" | tail -n1 | tr -d ' ')
say "$MOUNT: $size on ${#drives[@]} drive(s), read-ahead $READ_AHEAD_KB KB"
echo "$MOUNT"
