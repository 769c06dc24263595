"""``resnet-ffcv doctor --config ...``: preflight checks, one pass/fail line each, before paying for GPU time.

Reads the config exactly as ``fit`` would (same parser, same overrides) but instantiates nothing and creates
nothing, so a missing data file is reported as a failed line instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_ffcv.callbacks.watchdog import describe_run_safety
from resnet_ffcv.config_checks import fit_config_problems
from resnet_ffcv.dataset.format import CLASSES_FILE, load_classes, validate_ffcv
from resnet_ffcv.lightning_cli import checkpoint_dirpath, parse_config_only, parse_tool_args
from resnet_ffcv.run.resume import LATEST_NAME, NoLoadableCheckpoint, find_resume_checkpoint
from resnet_ffcv.run.storage import is_url
from resnet_ffcv.run.wandb_setup import is_wandb_logger, wandb_credentials, wandb_mode
from resnet_ffcv.tools import disk_speed
from resnet_ffcv.tools.memory_fit import random_order_warning

DESCRIPTION = """\
Preflight checks before paying for GPU time, one PASS/FAIL/WARN line each: the GPUs the config asks for, CUDA
and NCCL, the data files (train, val, classes.json), whether the order suits a train file larger than the
memory, the checkpoint directory (writable, free space), whether this run resumes and from which file, shared
memory, and W&B credentials. Reads the config as `fit` would and
creates nothing. Exit code 0: no check failed (warnings allowed); 1: a check failed."""

# A full ResNet-50 checkpoint (weights, SGD momentum, EMA copy) is ~300 MB; keep room for the periodic ones too.
MIN_CHECKPOINT_FREE_GB = 5.0
# NCCL and the DataLoader need more than Docker's default 64 MB of shared memory.
MIN_SHM_GB = 1.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warn: bool = False  # passes, but worth a look (W&B will log offline)

    def line(self) -> str:
        return f"[{'FAIL' if not self.ok else 'WARN' if self.warn else 'PASS'}] {self.name}: {self.detail}"


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def check_gpus(devices, num_nodes: int, accelerator: str) -> Check:
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if accelerator == "cpu":
        return Check("GPUs", True, "config trains on the CPU (trainer.accelerator=cpu)")
    wanted = available if devices in ("auto", -1, "-1") else devices
    if isinstance(wanted, (list, tuple)):
        wanted = len(wanted)
    wanted = int(wanted)
    ok = available >= wanted and available > 0
    return Check("GPUs", ok, f"config wants {wanted} per node x {num_nodes} node(s); this machine has {available}")


def check_cuda_nccl(accelerator: str, strategy: str) -> Check:
    if accelerator == "cpu":
        return Check("CUDA/NCCL", True, "not needed (CPU)")
    if not torch.cuda.is_available():
        return Check("CUDA/NCCL", False, f"torch {torch.__version__} sees no CUDA device")
    nccl = torch.distributed.is_available() and torch.distributed.is_nccl_available()
    detail = f"CUDA {torch.version.cuda}, NCCL {'available' if nccl else 'missing'}, strategy {strategy}"
    return Check("CUDA/NCCL", nccl or "ddp" not in str(strategy), detail)


def check_data(data_dir: Path, files: list[str]) -> list[Check]:
    """Each file present and readable as the format says: ``.ffcv`` files schema-checked (labels within
    ``classes.json``'s classes when it is there), ``classes.json`` parsed; header and metadata only, fast."""
    classes_path = data_dir / CLASSES_FILE
    try:
        num_classes = len(load_classes(classes_path)) if classes_path.is_file() else None
    except (ValueError, KeyError, TypeError):  # reported by its own line below
        num_classes = None
    checks = []
    for name in files:
        path = data_dir / name
        if not path.is_file():
            checks.append(Check(f"data {name}", False, f"{path} is missing"))
            continue
        try:
            if path.suffix == ".ffcv":
                found = f"{validate_ffcv(path, num_classes, classes_key='len(classes.json)')} samples"
            elif path.name == CLASSES_FILE:
                found = f"{len(load_classes(path))} classes"
            else:
                found = "present"
        except (ValueError, KeyError, TypeError) as error:
            detail = str(error) if str(error).startswith(str(path)) else f"{path}: unreadable ({error!r})"
            checks.append(Check(f"data {name}", False, detail))
            continue
        checks.append(Check(f"data {name}", True, f"{path} ({_gb(path.stat().st_size)}, {found})"))
    return checks


def _nearest_existing(directory: Path) -> Path:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def check_on_mount(name: str, directory: Path | None) -> Check | None:
    """A path like ``/data/checkpoints`` whose top folder is missing would be created on the root disk.

    That is the volume the config expects (``/data``) not being mounted: files written there are lost with the
    instance, and the free-space line would measure the wrong disk. Relative paths and paths that exist (or
    whose top folder exists) are not judged: nothing says which disk they were meant for.
    """
    if directory is None or not directory.is_absolute() or len(directory.parts) < 3:
        return None
    existing = _nearest_existing(directory)
    if existing != Path(directory.anchor):
        return None
    top = Path(*directory.parts[:2])
    return Check(
        f"{name} mount",
        False,
        f"{directory} would be created on the root filesystem {existing}: {top} does not exist "
        f"(mount the volume at {top}, or configure a path on an existing disk)",
    )


def check_checkpoint_writable(directory: Path | None) -> Check:
    """Writable without writing: the directory, or the nearest existing parent it would be created in."""
    if directory is None:
        return Check("checkpoint dir", False, "no checkpoint callback with a dirpath: a restart could not resume")
    existing = _nearest_existing(directory)
    where = "exists" if existing == directory else f"to be created in {existing}"
    if not existing.is_dir():
        return Check("checkpoint dir", False, f"{directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only mount
        return Check("checkpoint dir", False, f"{directory} ({where}): not writable by this user")
    return Check("checkpoint dir", True, f"{directory} ({where}): writable")


def check_resume(directory: Path | None, latest_name: str, auto_resume: bool, ckpt_path: str | None) -> Check:
    """The line that says whether ``fit`` will resume, and from which file (the same choice ``fit`` makes)."""
    if ckpt_path is not None:
        local = "://" not in ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry")
        if local and not Path(ckpt_path).is_file():
            return Check("resume", False, f"--ckpt_path {ckpt_path} does not exist")
        return Check("resume", True, f"resumes from {ckpt_path} (--ckpt_path)")
    if directory is None:
        return Check("resume", True, "starts from scratch (no checkpoint directory)")
    if not auto_resume:
        return Check("resume", True, f"starts from scratch (auto_resume is off; checkpoints go to {directory})")
    try:
        return Check("resume", True, find_resume_checkpoint(directory, latest_name)[1])  # fit prints the same line
    except NoLoadableCheckpoint as error:  # fit refuses to start over such a directory: say so before GPU time
        return Check("resume", False, str(error))


def check_free_disk(directory: Path | None) -> Check:
    if directory is None:
        return Check("checkpoint disk", False, "no checkpoint directory configured (checkpoints are lost with the run)")
    existing = _nearest_existing(directory)
    free = shutil.disk_usage(existing).free
    ok = free >= MIN_CHECKPOINT_FREE_GB * 1e9
    where = "" if existing == directory else f" on {existing}"
    detail = f"{directory}: {_gb(free)} free{where} (need >= {MIN_CHECKPOINT_FREE_GB:.0f} GB)"
    return Check("checkpoint disk", ok, detail)


def check_shared_memory(path: Path = Path("/dev/shm")) -> Check:
    if not path.exists():
        return Check("shared memory", False, f"{path} does not exist")
    total = shutil.disk_usage(path).total
    return Check("shared memory", total >= MIN_SHM_GB * 1e9, f"{path}: {_gb(total)} (need >= {MIN_SHM_GB:.0f} GB)")


def check_wandb(logger_class: str | None, logger_init_args) -> Check:
    if not is_wandb_logger({"class_path": logger_class}):
        return Check("W&B", True, f"not used (logger {logger_class or 'none'})")
    mode = wandb_mode(logger_init_args)
    if mode != "online":
        return Check("W&B", True, f"{mode} mode: nothing is uploaded during the run (`wandb sync` later)")
    source = wandb_credentials()
    if source:
        return Check("W&B", True, f"API key from {source}")
    # Not a failure: the run falls back to offline by itself (wandb_setup), and a spot restart must not stop here.
    return Check("W&B", True, "not logged in: the run logs offline (`wandb login` now, or `wandb sync` later)", True)


def check_config_values(config) -> Check:
    """What ``fit`` would stop on before training: a monitor never logged, a warmup past max_epochs, ..."""
    problems = fit_config_problems(config)
    return Check("config values", not problems, " ".join(problems) or "monitors, LR schedule and class count agree")


def check_order_fits_memory(order: str, train_path: Path, instance_type: str | None) -> Check:
    """A warning (never a failure) when ``random`` order meets a train file larger than the memory."""
    warning = random_order_warning(order, train_path, instance_type)
    if warning:
        return Check("data vs memory", True, warning, warn=True)
    if order != "random":
        return Check("data vs memory", True, f"data.order={order}: reads each page of {train_path.name} once an epoch")
    return Check("data vs memory", True, f"data.order=random: {train_path.name} fits in memory")


def run_checks(config, ckpt_path: str | None = None) -> list[Check]:
    trainer, data = config.trainer, config.data
    logger = trainer.logger if hasattr(trainer.logger, "get") else None
    logger_class = logger.get("class_path") if logger is not None else None
    if is_url(str(config.checkpoint.dirpath or "")):  # object storage: fit downloads and uploads it itself
        directory = None
        checkpoint_checks = [
            Check("checkpoint dir", True, f"{config.checkpoint.dirpath}: object storage (checked when fit starts)")
        ]
    else:
        directory = checkpoint_dirpath(config)  # the `checkpoint:` section: always present for fit
        auto_resume = bool(config.checkpoint.auto_resume)
        checkpoint_checks = [
            check_checkpoint_writable(directory),
            check_free_disk(directory),
            check_resume(directory, LATEST_NAME, auto_resume, ckpt_path),
        ]
    log_dir = (logger.get("init_args") or {}).get("save_dir") if logger is not None else None
    mounts = [
        check_on_mount(name, Path(path))
        for name, path in (("checkpoint dir", directory), ("data dir", data.data_dir), ("log dir", log_dir))
        if path is not None
    ]
    return [
        check_gpus(trainer.devices, trainer.num_nodes or 1, str(trainer.accelerator)),
        check_cuda_nccl(str(trainer.accelerator), str(trainer.strategy)),
        *[check for check in mounts if check is not None],
        *check_data(Path(data.data_dir), [data.train_file, data.val_file, "classes.json"]),
        Check("data read speed", *disk_speed.doctor_check(Path(data.data_dir), data.train_file)),
        check_order_fits_memory(data.order, Path(data.data_dir) / data.train_file, config.cost.instance_type),
        *checkpoint_checks,
        check_shared_memory(),
        check_wandb(logger_class, logger.get("init_args") if logger is not None else None),
        check_config_values(config),
        Check("run safety", True, describe_run_safety(config, _gpus(trainer), float(config.cost.price_per_hour))),
    ]


def _gpus(trainer) -> int:
    """Devices per node x nodes, as the config asks (``auto``: one per visible GPU, at least one)."""
    devices = trainer.devices
    if isinstance(devices, (list, tuple)):
        devices = len(devices)
    elif devices in ("auto", -1, "-1", None):
        devices = max(1, torch.cuda.device_count())
    return int(devices) * int(trainer.num_nodes or 1)


def doctor(argv: list[str]) -> int:
    """Parse ``argv`` like ``resnet-ffcv fit`` (without the subcommand), print the checks, return 0 if none fail."""
    own = argparse.ArgumentParser(prog="resnet-ffcv doctor", add_help=False, allow_abbrev=False)
    own.add_argument("--ckpt_path", default=None, help="the checkpoint `fit` will be given (default: fit's own choice)")
    args, fit_argv = parse_tool_args(own, argv, DESCRIPTION)
    checks = run_checks(parse_config_only(fit_argv), args.ckpt_path)
    for check in checks:
        print(check.line())
    print(tally(checks))
    return 1 if any(not check.ok for check in checks) else 0


def tally(checks: list[Check]) -> str:
    """``11 passed, 1 warning`` (``; failed: NAMES``): a WARN is not counted as a plain pass."""
    failed = [check.name for check in checks if not check.ok]
    warnings = sum(check.ok and check.warn for check in checks)
    passed = len(checks) - len(failed) - warnings
    parts = [f"{passed} passed"]
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings > 1 else ''}")
    if failed:
        parts.append(f"{len(failed)} failed")
    return ", ".join(parts) + (f"; failed: {', '.join(failed)}" if failed else "")
