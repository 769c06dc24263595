"""W&B falls back to offline without credentials and never prompts."""

from __future__ import annotations

import os

import pytest

from resnet_ffcv.run.wandb_setup import fall_back_to_offline_without_credentials, wandb_credentials, wandb_mode


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))


def test_offline_fallback_without_credentials(no_credentials):
    assert wandb_credentials() is None
    with pytest.warns(UserWarning, match="wandb sync logs/wandb/offline-run"):
        fall_back_to_offline_without_credentials({"save_dir": "logs", "offline": False})
    assert os.environ["WANDB_MODE"] == "offline"


def test_credentials_keep_online(no_credentials, tmp_path, monkeypatch):
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_credentials() == str(tmp_path / "netrc")
    fall_back_to_offline_without_credentials({"offline": False})
    assert "WANDB_MODE" not in os.environ
    assert wandb_mode({"offline": True}) == "offline"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_mode({"offline": False}) == "offline"
