"""W&B without surprises: no credentials means offline with one warning line, never a login prompt."""

from __future__ import annotations

import os
import warnings
from pathlib import Path


def is_wandb_logger(logger_config) -> bool:
    """Whether a config's ``trainer.logger`` entry (a class_path/init_args mapping) is a W&B logger."""
    return hasattr(logger_config, "get") and "Wandb" in str(logger_config.get("class_path"))


def wandb_credentials() -> str | None:
    """Where W&B would find an API key (the same places ``wandb login`` writes), or None."""
    if os.environ.get("WANDB_API_KEY"):
        return "WANDB_API_KEY"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return str(netrc)
    return None


def wandb_mode(logger_init_args) -> str:
    """``online``, ``offline`` or ``disabled`` as the run would see it (the env var wins, as in wandb itself)."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return "offline" if mode == "dryrun" else mode
    return "offline" if logger_init_args is not None and logger_init_args.get("offline") else "online"


def fall_back_to_offline_without_credentials(logger_init_args) -> None:
    """Switch W&B to offline mode (one warning, with the sync command) when it would otherwise prompt."""
    if wandb_mode(logger_init_args) != "online" or wandb_credentials():
        return
    os.environ["WANDB_MODE"] = "offline"
    save_dir = (logger_init_args.get("save_dir") if logger_init_args is not None else None) or "."
    warnings.warn(
        f"W&B: no API key (WANDB_API_KEY or ~/.netrc), logging offline; upload later with "
        f"`wandb sync {save_dir}/wandb/offline-run-*`",
        stacklevel=2,
    )


def prepare_wandb_logger(logger) -> None:
    """Two W&B console warnings on every run, avoided where they start.

    Lightning's ``WandbLogger`` always passes ``anonymous`` to ``wandb.init`` (None when unset), which wandb >= 0.19
    answers with "The anonymous setting has no effect": the key is dropped when it says nothing. And wandb looks
    for a git repository from ``save_dir`` before anything creates it ("git root ... does not exist"): created here.
    """
    init = getattr(logger, "_wandb_init", None)
    if not isinstance(init, dict):
        return
    if init.get("anonymous") is None:
        init.pop("anonymous", None)
    if init.get("dir"):
        Path(init["dir"]).mkdir(parents=True, exist_ok=True)
