"""``resnet-ffcv doctor --config ...``: preflight checks, one pass/fail line each, before paying for GPU time.

Reads the config exactly as ``fit`` would (same parser, same overrides) but instantiates nothing, so a missing
data file is reported as a failed line instead of a traceback.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from resnet_ffcv import disk_speed
from resnet_ffcv.wandb_setup import wandb_credentials, wandb_mode

# A full ResNet-50 checkpoint (weights, SGD momentum, EMA copy) is ~300 MB; keep room for the periodic ones too.
MIN_CHECKPOINT_FREE_GB = 5.0
# NCCL and the DataLoader need more than Docker's default 64 MB of shared memory.
MIN_SHM_GB = 1.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"[{'PASS' if self.ok else 'FAIL'}] {self.name}: {self.detail}"


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
    checks = []
    for name in files:
        path = data_dir / name
        if path.is_file():
            checks.append(Check(f"data {name}", path.stat().st_size > 0, f"{path} ({_gb(path.stat().st_size)})"))
        else:
            checks.append(Check(f"data {name}", False, f"{path} is missing"))
    return checks


def check_free_disk(directory: Path | None) -> Check:
    if directory is None:
        return Check("checkpoint disk", False, "no checkpoint directory configured (checkpoints are lost with the run)")
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    ok = free >= MIN_CHECKPOINT_FREE_GB * 1e9
    return Check("checkpoint disk", ok, f"{directory}: {_gb(free)} free (need >= {MIN_CHECKPOINT_FREE_GB:.0f} GB)")


def check_shared_memory(path: Path = Path("/dev/shm")) -> Check:
    if not path.exists():
        return Check("shared memory", False, f"{path} does not exist")
    total = shutil.disk_usage(path).total
    return Check("shared memory", total >= MIN_SHM_GB * 1e9, f"{path}: {_gb(total)} (need >= {MIN_SHM_GB:.0f} GB)")


def check_wandb(logger_class: str | None, logger_init_args) -> Check:
    if not logger_class or "Wandb" not in logger_class:
        return Check("W&B", True, f"not used (logger {logger_class or 'none'})")
    mode = wandb_mode(logger_init_args)
    if mode != "online":
        return Check("W&B", True, f"{mode} mode: nothing is uploaded during the run (`wandb sync` later)")
    source = wandb_credentials()
    if source:
        return Check("W&B", True, f"API key from {source}")
    return Check("W&B", False, "not logged in: `wandb login`, or the run falls back to offline (`wandb sync` later)")


def checkpoint_dir_from(callbacks) -> Path | None:
    """The first configured callback argument that names a checkpoint directory."""
    for callback in callbacks or []:
        init_args = callback.get("init_args", {}) if isinstance(callback, dict) else getattr(callback, "init_args", {})
        for key in ("checkpoint_dir", "dirpath"):
            value = init_args.get(key) if hasattr(init_args, "get") else getattr(init_args, key, None)
            if value:
                return Path(value)
    return None


def run_checks(config) -> list[Check]:
    trainer, data = config.trainer, config.data
    logger = trainer.logger if hasattr(trainer.logger, "get") else None
    logger_class = logger.get("class_path") if logger is not None else None
    data_dir = Path(data.data_dir)
    return [
        check_gpus(trainer.devices, trainer.num_nodes or 1, str(trainer.accelerator)),
        check_cuda_nccl(str(trainer.accelerator), str(trainer.strategy)),
        *check_data(data_dir, [data.train_file, data.val_file, "classes.json"]),
        Check("data read speed", *disk_speed.doctor_check(data_dir, data.train_file)),
        check_free_disk(checkpoint_dir_from(trainer.callbacks)),
        check_shared_memory(),
        check_wandb(logger_class, logger.get("init_args") if logger is not None else None),
    ]


def doctor(argv: list[str]) -> int:
    """Parse ``argv`` like ``resnet-ffcv fit`` (without the subcommand), print the checks, return 0 if all pass."""
    from resnet_ffcv.cli import parse_config_only

    checks = run_checks(parse_config_only(argv))
    for check in checks:
        print(check.line())
    failed = [check.name for check in checks if not check.ok]
    summary = f"{len(checks) - len(failed)} of {len(checks)} checks passed"
    print(summary + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
