"""scripts/local_nvme.sh on real block devices: loop devices over sparse files stand in for the instance store's
NVMe drives (what cannot exist here is only the AWS drive model name; a stand-in `lsblk` supplies it once).

Needs root (losetup, mkfs, mount), as the script does on the instance through sudo; `make install` installs
btrfs-progs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import REPO

SCRIPT = REPO / "scripts" / "local_nvme.sh"
NO_INSTANCE_STORE = 3

NEEDS_ROOT = "loop devices and mount need root (CI runs as root)"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)


def _sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def loop_drives(tmp_path) -> Iterator[Callable[[int], list[str]]]:
    """make(n): n fresh 256 MB drives (/dev/loopN over sparse files); all unmounted and detached afterwards."""
    if os.geteuid() != 0:  # also for the tests in other modules that use this fixture
        pytest.skip(NEEDS_ROOT)
    made: list[str] = []

    def make(count: int) -> list[str]:
        for index in range(count):
            backing = tmp_path / f"drive{len(made)}-{index}.img"
            with open(backing, "wb") as f:
                f.truncate(256 << 20)
            made.append(_sh("losetup", "--find", "--show", str(backing)))
        return made[-count:]

    yield make
    for target in _sh("findmnt", "-rn", "-o", "TARGET").splitlines():
        if target.startswith(str(tmp_path)):
            subprocess.run(["umount", target], check=False)
    if made:
        subprocess.run(["btrfs", "device", "scan", "--forget", *made], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", *made], check=False)


def local_nvme(mount: Path, drives: list[str] | str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "INSTANCE_STORE_DEVICES": drives if isinstance(drives, str) else " ".join(drives)}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(["bash", str(SCRIPT), str(mount)], capture_output=True, text=True, env=env, timeout=120)


def test_drives_become_one_striped_filesystem_that_a_rerun_keeps(tmp_path, loop_drives):
    drives, mount = loop_drives(2), tmp_path / "nvme"
    first = local_nvme(mount, drives)
    assert first.returncode == 0 and first.stdout.strip() == str(mount), first.stderr
    assert _sh("findmnt", "-n", "-o", "FSTYPE", str(mount)) == "btrfs"
    assert "Data, RAID0" in _sh("btrfs", "filesystem", "df", str(mount))  # striped over both drives
    assert int(_sh("df", "--output=size", "-B1M", str(mount)).split()[-1]) > 400  # 2 x 256 MB, one filesystem
    uuid = _sh("findmnt", "-n", "-o", "UUID", str(mount))
    assert Path(f"/sys/fs/btrfs/{uuid}/bdi/read_ahead_kb").read_text().strip() == "128"  # btrfs's own is 4096
    (mount / "train.ffcv").write_bytes(b"staged")

    # The same instance, `run` again (mounted, then after an unmount): the data is kept, nothing is formatted.
    again = local_nvme(mount, drives)
    assert again.returncode == 0 and "already mounted" in again.stderr
    subprocess.run(["umount", str(mount)], check=True)
    remount = local_nvme(mount, drives)
    assert remount.returncode == 0 and "mounting it as it is" in remount.stderr, remount.stderr
    assert (mount / "train.ffcv").read_bytes() == b"staged"


def test_a_drive_the_image_mounted_is_used_where_it_is_and_not_formatted(tmp_path, loop_drives):
    [drive] = loop_drives(1)
    subprocess.run(["mkfs.ext4", "-q", drive], check=True)
    elsewhere = tmp_path / "image-mount"
    elsewhere.mkdir()
    subprocess.run(["mount", drive, str(elsewhere)], check=True)
    (elsewhere / "kept").write_text("yes")
    result = local_nvme(tmp_path / "nvme", [drive])
    assert result.returncode == 0 and result.stdout.strip() == str(elsewhere / "resnet-ffcv"), result.stderr
    assert "formatting nothing" in result.stderr and (elsewhere / "kept").read_text() == "yes"
    assert _sh("findmnt", "-n", "-o", "FSTYPE", str(elsewhere)) == "ext4"


def test_drives_are_found_by_their_aws_model_and_ebs_volumes_are_not(tmp_path, loop_drives):
    """Without INSTANCE_STORE_DEVICES the script asks lsblk for drive models; here a stand-in lsblk answers that
    question as an instance with one instance-store drive and one EBS volume would, and passes on every other."""
    [drive] = loop_drives(1)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "lsblk").write_text(
        "#!/bin/sh\n"
        'if [ "$*" = "-dnp -o NAME,MODEL" ]; then\n'
        "  echo '/dev/no-such-ebs-volume Amazon Elastic Block Store'\n"
        f"  echo '{drive} Amazon EC2 NVMe Instance Storage'\n"
        "  exit 0\n"
        "fi\n"
        f'exec {_sh("which", "lsblk")} "$@"\n'
    )
    (fake / "lsblk").chmod(0o755)
    result = local_nvme(tmp_path / "nvme", "", path=f"{fake}:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert f"formatting {drive} as one btrfs (single over 1 drive(s))" in result.stderr
    assert _sh("findmnt", "-n", "-o", "SOURCE", str(tmp_path / "nvme")) == drive


def test_no_instance_store_says_so_with_its_own_exit_code(tmp_path):
    result = local_nvme(tmp_path / "nvme", "none")
    assert result.returncode == NO_INSTANCE_STORE and "no NVMe instance store" in result.stderr
    assert result.stdout == "" and not (tmp_path / "nvme").exists()


def test_a_drive_that_cannot_be_formatted_fails_the_check(tmp_path, loop_drives):
    [drive] = loop_drives(1)
    subprocess.run(["truncate", "-s", "8M", _sh("losetup", "-n", "-O", "BACK-FILE", drive)], check=True)
    subprocess.run(["losetup", "-c", drive], check=True)  # the drive shrinks to 8 MB: too small for btrfs
    result = local_nvme(tmp_path / "nvme", [drive])
    assert result.returncode == 2 and "mkfs.btrfs failed" in result.stderr, result.stderr
