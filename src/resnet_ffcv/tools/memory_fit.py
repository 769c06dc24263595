"""Does train.ffcv fit in memory, and if not, is the order one that survives it? (``doctor`` and ``plan``)

Where the page cache cannot hold the file, ``data.order: random`` reads pages for one sample each and comes back
to them after the cache dropped them: many times the file per epoch, a loader-bound run by design
(benchmarks/ddp_memory_limit.py, docs/data-loading.md). ``quasi_random`` with ``os_cache: false`` reads each
page once. The memory that counts is the smaller of the instance's RAM (the config's ``cost.instance_type``,
when it is one of the shipped instances) and what this process may use here: the machine's RAM or the
container's cgroup memory limit (v1 ``memory.limit_in_bytes`` or v2 ``memory.max``, parents included).
"""

from __future__ import annotations

from pathlib import Path

from resnet_ffcv.tools.disk_speed import memory_bytes

GIB = 1 << 30
# RAM of the instances configs/instances/ ship for (AWS's figures, GiB).
INSTANCE_RAM_BYTES = {
    "g5.12xlarge": 192 << 30,
    "g6.12xlarge": 192 << 30,
    "p3.8xlarge": 244 << 30,
    "p4d.24xlarge": 1152 << 30,
}
# ImageNet's train split at the rn50 preset: 1,281,167 images at ~302 KB each (README "Dataset size").
IMAGENET_RN50_BYTES = 1_281_167 * 302_000
UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a number near 2**63


def cgroup_limit_bytes(
    proc_cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")
) -> int | None:
    """The smallest memory limit on this process's cgroup and its parents (v1 or v2), or None if there is none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            bases, name = [root / "memory"], "memory.limit_in_bytes"
        elif controllers == "":
            bases, name = [root, root / "unified"], "memory.max"
        else:
            continue
        parts = Path(path.lstrip("/")).parts
        for base in bases:
            for depth in range(len(parts) + 1):
                file = base.joinpath(*parts[:depth], name)
                text = file.read_text().strip() if file.is_file() else "max"
                if text != "max" and int(text) < UNLIMITED:
                    limits.append(int(text))
    return min(limits) if limits else None


def usable_memory_here() -> tuple[int, str] | None:
    """(bytes, what they are) this process may fill with page cache at most: RAM or the cgroup limit."""
    ram, limit = memory_bytes(), cgroup_limit_bytes()
    if limit is not None and (ram is None or limit < ram):
        return limit, "this container's memory limit"
    return (ram, "this machine's RAM") if ram is not None else None


def random_order_warning(order: str, train_path: Path, instance_type: str | None) -> str | None:
    """The warning for ``data.order: random`` over a train file larger than the memory; None when it fits or
    the order is not random.

    With the file here, its size against this machine's memory and the instance's RAM; without it (``plan`` on a
    laptop), ImageNet's size at the rn50 preset against the instance's RAM only.
    """
    if order != "random":
        return None
    memories = []
    if instance_type in INSTANCE_RAM_BYTES:
        memories.append((INSTANCE_RAM_BYTES[instance_type], f"{instance_type}'s RAM"))
    if train_path.is_file():
        size, what = train_path.stat().st_size, str(train_path)
        here = usable_memory_here()
        memories += [here] if here is not None else []
    else:
        size, what = IMAGENET_RN50_BYTES, f"ImageNet at the rn50 preset ({train_path} is not here)"
    if not memories or size <= min(memories)[0]:
        return None
    memory, whose = min(memories)
    return (
        f"{what}: {size / GIB:.0f} GiB > {whose} ({memory / GIB:.0f} GiB) and data.order is random: every epoch then "
        "reads the file many times over from disk (81x in benchmarks/ddp_memory_limit.py), a loader-bound run. Set "
        "data.order: quasi_random and data.os_cache: false (each page read once; docs/data-loading.md)"
    )
