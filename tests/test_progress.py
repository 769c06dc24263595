"""What a person watching a run sees: plain progress lines in a piped log, and none of the libraries' noise."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from torch import nn

from resnet_ffcv.callbacks.progress import ProgressPrinter, format_duration
from resnet_ffcv.data.resolution import ResolutionSchedule
from resnet_ffcv.tools.throughput import RepeatedBatches, synthetic_batch

from .helpers import CONFIGS, quiet_trainer, run_cli

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


BATCH, BATCHES = 2, 4  # images per batch, batches per epoch


class TinyClassifier(L.LightningModule):
    """The cheapest real training step: a linear layer on the images' mean colour."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return nn.functional.cross_entropy(self.layer(images.float().mean((2, 3))), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class ScheduledBatches(L.LightningDataModule):
    """Each epoch's batches at its resolution from ``train_shape`` (what ProgressPrinter asks, as of FFCVDataModule)."""

    def __init__(self, schedule: ResolutionSchedule):
        super().__init__()
        self.resolution = schedule

    def train_shape(self, epoch: int) -> tuple[int, int]:
        return self.resolution.train_shape(epoch, 32, BATCH)

    def train_dataloader(self):
        side = self.train_shape(self.trainer.current_epoch)[0]
        return RepeatedBatches(synthetic_batch(BATCH, side, 2, torch.device("cpu")), BATCHES)


class EtaRecorder(L.Callback):
    """After ProgressPrinter has timed a batch: its ETA and the seconds and pixels it measured, per batch."""

    def __init__(self, printer: ProgressPrinter):
        self.printer, self.seen = printer, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        eta = self.printer.eta_seconds(trainer, BATCH, int(batch[0].shape[-1]), batch_idx)
        seconds_per_pixel = self.printer._seconds / self.printer._pixels if self.printer._pixels else None
        self.seen[trainer.current_epoch, batch_idx] = (eta, seconds_per_pixel, trainer.global_step)


@pytest.mark.parametrize(
    ("max_steps", "accumulate", "batches_left"),
    [
        (-1, 1, None),  # max_epochs ends the run: this epoch's rest, then every later epoch whole
        (6, 1, 4),  # max_steps comes first, inside epoch 1 (at 48 px): 2 batches at 32 px, 2 at 48 px
        (3, 2, 4),  # 3 optimizer steps of 2 batches: 6 batches, 4 left after batch 1 (step 1), 2 of them at 48 px
    ],
)
def test_eta_weighs_each_remaining_epoch_by_its_scheduled_pixels(max_steps, accumulate, batches_left):
    """The ETA on a real Trainer's state: remaining pixels x measured seconds per pixel, the pixels of each
    later epoch at the resolution the schedule gives it, counted only up to max_steps when that comes first."""
    schedule = ResolutionSchedule(
        stages=[
            {"start_epoch": 0, "resolution": 32},
            {"start_epoch": 1, "resolution": 48},
            {"start_epoch": 2, "resolution": 64},
        ]
    )
    printer = ProgressPrinter(lines="never")
    recorder = EtaRecorder(printer)
    trainer = quiet_trainer(
        max_epochs=3,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        callbacks=[printer, recorder],
        reload_dataloaders_every_n_epochs=1,  # each epoch's loader at its resolution
    )
    trainer.fit(TinyClassifier(), datamodule=ScheduledBatches(schedule))
    eta, seconds_per_pixel, step = recorder.seen[0, 1]  # batch 0 is not timed: the first one with a rate
    assert eta is not None and seconds_per_pixel > 0
    pixels = [BATCH * schedule.at(epoch)[0] ** 2 for epoch in range(3)]  # one batch of each epoch
    if batches_left is None:
        remaining = (BATCHES - 2) * pixels[0] + BATCHES * (pixels[1] + pixels[2])
    else:
        assert (max_steps - step) * accumulate == batches_left
        in_this_epoch = min(BATCHES - 2, batches_left)
        remaining = in_this_epoch * pixels[0] + (batches_left - in_this_epoch) * pixels[1]
    assert eta == pytest.approx(remaining * seconds_per_pixel, rel=1e-9)
    # The schedule matters here: the same batches all at 32 px would give a clearly smaller figure.
    all_at_current = (BATCHES - 2 + 2 * BATCHES if batches_left is None else batches_left) * pixels[0]
    assert remaining > 1.5 * all_at_current
