"""What a person watching a run sees: plain progress lines in a piped log, and none of the libraries' noise."""

from __future__ import annotations

import re

import pytest

from resnet_ffcv.callbacks.progress import format_duration

from .helpers import CONFIGS, run_cli

NOISE = (
    "LightningCLI's args parameter",  # jsonargparse caution about argv vs sys.argv
    "Tip: For seamless cloud",  # Lightning's litlogger / litmodels advertisement
    "LeafSpec",  # Lightning's use of torch's deprecated pytree API
    "anonymous setting has no effect",  # Lightning's WandbLogger passing anonymous=None to wandb
    "git root",  # wandb looking for git in a log directory not yet created
)


@pytest.mark.slow
def test_piped_fit_prints_plain_progress_lines_and_no_noise(ffcv_dir, tmp_path):
    result = run_cli(
        "fit",
        "--config",
        str(CONFIGS / "demo_cpu.yaml"),
        f"--data.data_dir={ffcv_dir}",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--progress.log_every_n_steps=1",
        "--cost.price_per_hour=3.6",
        "--data.batch_size=8",
        "--data.num_workers=1",
        cwd=tmp_path,  # the demo's relative output directories (W&B offline, checkpoints) land here
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout and "\r" not in result.stderr  # no redrawn bar in a log
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert any(line.startswith("epoch 1/2 step 2 (batch 2/3)") for line in lines), result.stdout[-2000:]
    last = lines[-1]
    assert last.startswith("epoch 2/2 step 6 (batch 3/3)"), lines
    for field in ("ETA ", "img/s ", "loss ", "lr ", "res 48px", "cost $"):
        assert field in last, f"{field!r} missing from {last!r}"
    assert re.search(r"ETA \d+:\d\d:\d\d", last)
    for noise in NOISE:
        assert noise not in result.stderr, f"{noise!r} printed:\n{result.stderr}"


def test_format_duration():
    assert format_duration(3723.4) == "1:02:03"
    assert format_duration(2 * 86400 + 5) == "2d 0:00:05"
    assert format_duration(-3) == "0:00:00"
