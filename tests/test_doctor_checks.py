"""doctor's checks that ``scripts/spot_training.sh`` relies on: checkpoint dir, the resume line, W&B; real files."""

from __future__ import annotations

from resnet_ffcv.run.resume import LATEST_NAME, periodic_name
from resnet_ffcv.tools.doctor import check_checkpoint_writable, check_resume, check_wandb


def test_checkpoint_dir_is_checked_without_creating_it(tmp_path):
    missing = tmp_path / "a" / "b"
    check = check_checkpoint_writable(missing)
    assert check.ok and f"to be created in {tmp_path}" in check.detail
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    blocked = check_checkpoint_writable(tmp_path / "file" / "checkpoints")
    assert not blocked.ok and "is not a directory" in blocked.detail
    assert not check_checkpoint_writable(None).ok


def test_resume_line_says_what_fit_will_do(tmp_path):
    assert "starting from scratch" in check_resume(tmp_path, LATEST_NAME, True, None).detail
    (tmp_path / LATEST_NAME).write_bytes(b"truncated")
    (tmp_path / periodic_name(4)).write_bytes(b"also truncated")
    unloadable = check_resume(tmp_path, LATEST_NAME, True, None)  # fit would refuse to start over these: a FAIL
    assert not unloadable.ok and "--fresh_start" in unloadable.detail
    assert (
        f"{LATEST_NAME} is unreadable" in unloadable.detail and f"{periodic_name(4)} is unreadable" in unloadable.detail
    )
    assert "auto_resume is off" in check_resume(tmp_path, LATEST_NAME, False, None).detail
    gone = check_resume(tmp_path, LATEST_NAME, True, str(tmp_path / "nope.ckpt"))
    assert not gone.ok and "does not exist" in gone.detail
    given = check_resume(tmp_path, LATEST_NAME, True, str(tmp_path / LATEST_NAME))
    assert given.ok and "(--ckpt_path)" in given.detail


def test_wandb_without_credentials_warns_and_passes(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    check = check_wandb("lightning.pytorch.loggers.WandbLogger", {"offline": False})
    assert check.ok and check.line().startswith("[WARN] W&B: not logged in")
    assert check_wandb(None, None).line() == "[PASS] W&B: not used (logger none)"
