"""ResolutionSchedule: FFCV's ramp and explicit stages, per epoch, applied by the datamodule through Lightning and
a resume, logged by ResolutionMonitor."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from jsonargparse import ArgumentParser

from resnet_ffcv.callbacks import ResolutionMonitor
from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.resolution import ResolutionSchedule, Stage, ramp_resolution
from resnet_ffcv.lightning_cli import ResNetCLI, parse_config_only
from resnet_ffcv.recipe.module import ImageClassifier

from .data_helpers import ProbeModule, write_indexed_ffcv
from .helpers import CONFIGS, quiet_trainer

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see test_data.py


def test_ramp_is_ffcvs_rn50_schedule():
    # ffcv-imagenet rn50 configs: min_res 160, max_res 192, start_ramp 65 (epochs), end_ramp 76.
    expected = {0: 160, 65: 160, 66: 160, 70: 160, 71: 192, 75: 192, 76: 192, 87: 192}
    assert {epoch: ramp_resolution(epoch, 160, 192, 65, 76) for epoch in expected} == expected
    # A longer ramp passes through the multiples of 32 in between.
    assert [ramp_resolution(e, 160, 224, 10, 20) for e in (10, 12, 15, 18, 20)] == [160, 160, 192, 224, 224]
    assert ResolutionSchedule(min_res=160, max_res=192, start_ramp=65, end_ramp=76).at(70) == (160, None)


def test_stages_pick_the_latest_started_stage():
    schedule = ResolutionSchedule(stages=[Stage(0, 160), Stage(20, 192), Stage(40, 224, batch_size=128)])
    assert [schedule.at(epoch) for epoch in (0, 19, 20, 39, 40, 99)] == [
        (160, None),
        (160, None),
        (192, None),
        (192, None),
        (224, 128),
        (224, 128),
    ]
    assert schedule.stage_batch_sizes() == {"resolution.stages[2].batch_size": 128}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": [Stage(1, 160)]}, r"stages\[0\]\.start_epoch=1: expected 0"),
        ({"stages": [Stage(0, 160), Stage(0, 192)]}, r"stages\[1\]\.start_epoch=0: expected start epochs"),
        (
            {"stages": [Stage(0, 160), Stage(5, 100)]},
            r"stages\[1\]\.resolution=100: expected a positive multiple",
        ),
        ({"stages": [Stage(0, 160, batch_size=0)]}, r"stages\[0\]\.batch_size=0: expected >= 1"),
        ({"min_res": 200, "max_res": 192, "start_ramp": 5, "end_ramp": 8}, r"min_res=200, max_res=192"),
        (
            {"min_res": 160, "max_res": 190, "start_ramp": 5, "end_ramp": 8},
            r"max_res=190: expected a positive multiple of 8",
        ),
        ({"min_res": 160, "max_res": 192}, r"a ramp needs .* missing \['start_ramp', 'end_ramp'\]"),
    ],
)
def test_bad_schedules_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ResolutionSchedule(**kwargs)


def test_no_stages_and_no_ramp_is_off():
    schedule = ResolutionSchedule()
    assert not schedule.active
    with pytest.raises(ValueError, match="schedule is off"):
        schedule.at(0)


def test_stages_parse_from_yaml_config():
    parser = ArgumentParser()
    parser.add_class_arguments(ResolutionSchedule, "resolution")
    config = parser.parse_string(
        "resolution:\n  stages:\n    - {start_epoch: 0, resolution: 160}\n"
        "    - {start_epoch: 20, resolution: 192, batch_size: 512}\n"
    )
    schedule = parser.instantiate(config).resolution
    assert schedule.at(25) == (192, 512)


def test_the_cli_gives_the_datamodule_its_schedule_and_the_trainer_the_monitor(indexed_dir, tmp_path, monkeypatch):
    """Single keys of the ``resolution:`` section compose over a config (as configs/ffcv/*.yaml do) and reach
    the datamodule as one schedule object; ``data.resolution`` is linked, never a key of its own."""
    monkeypatch.chdir(tmp_path)  # the demo config's checkpoint and log folders
    ramp = tmp_path / "ramp.yaml"
    ramp.write_text("resolution:\n  stages: null\n  min_res: 32\n  max_res: 64\n  start_ramp: 1\n")
    argv = ["--config", str(CONFIGS / "demo_cpu.yaml"), "--config", str(ramp), "--resolution.end_ramp=3"]
    argv += [f"--data.data_dir={indexed_dir}", "--trainer.logger=false"]
    assert "resolution" not in vars(parse_config_only(argv).data)
    cli = ResNetCLI(
        ImageClassifier,
        FFCVDataModule,
        run=False,
        args=argv,
        save_config_callback=None,
        auto_configure_optimizers=False,
    )
    assert cli.datamodule.resolution == ResolutionSchedule(min_res=32, max_res=64, start_ramp=1, end_ramp=3)
    assert [type(c) for c in cli.trainer.callbacks].count(ResolutionMonitor) == 1


@pytest.fixture(scope="module")
def indexed_dir(tmp_path_factory) -> Path:
    return write_indexed_ffcv(tmp_path_factory.mktemp("indexed"), train=64, val=8)


def datamodule(data_dir: Path, schedule: ResolutionSchedule | None = None) -> FFCVDataModule:
    # train_resolution 64 is what the schedule must override, from the very first batch.
    return FFCVDataModule(
        str(data_dir), batch_size=8, num_workers=2, train_resolution=64, val_resolution=32, resolution=schedule
    )


def test_batch_size_stages_need_reloading_loaders(indexed_dir):
    schedule = ResolutionSchedule(stages=[Stage(0, 32), Stage(1, 40, batch_size=16)])
    trainer = quiet_trainer(max_epochs=1)
    with pytest.raises(ValueError, match=r"set trainer\.reload_dataloaders_every_n_epochs: 1 \(now 0\)"):
        trainer.fit(ProbeModule(), datamodule=datamodule(indexed_dir, schedule))
    too_big = ResolutionSchedule(stages=[Stage(0, 32), Stage(1, 40, batch_size=128)])
    with pytest.raises(ValueError, match=r"resolution\.stages\[1\]\.batch_size=128: .* 64 samples"):
        quiet_trainer(max_epochs=1, reload_dataloaders_every_n_epochs=1).fit(
            ProbeModule(), datamodule=datamodule(indexed_dir, too_big)
        )


class RecordingDataModule(FFCVDataModule):
    """Records (trainer.current_epoch, the epoch the datamodule builds for) per train_dataloader()."""

    def train_dataloader(self):
        self.built = [*getattr(self, "built", []), (self.trainer.current_epoch, self.train_epoch())]
        return super().train_dataloader()


class SaveAtEpochEnd(L.Callback):
    """Writes a checkpoint in on_train_epoch_end, where ModelCheckpoint writes its end-of-epoch ones."""

    def __init__(self, path: Path, epoch: int):
        self.path, self.epoch = path, epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def seen_per_epoch(module: ProbeModule) -> dict[int, tuple[set[int], set[int], int]]:
    """epoch -> (resolutions, batch sizes, batches)."""
    out: dict[int, tuple[set[int], set[int], int]] = {}
    for epoch, _, resolution, labels in module.train_seen:
        resolutions, sizes, count = out.get(epoch, (set(), set(), 0))
        out[epoch] = (resolutions | {resolution}, sizes | {len(labels)}, count + 1)
    return out


def test_stages_through_lightning_and_a_resume(indexed_dir, tmp_path):
    """Epoch 0 gets stage 0 (not the datamodule's 64 px); the first epoch after a resume gets its own stage.

    Resuming from an end-of-epoch checkpoint is the case where Lightning builds the loader while
    ``trainer.current_epoch`` still reads the finished epoch.
    """
    schedule = ResolutionSchedule(stages=[Stage(0, 32), Stage(1, 40), Stage(2, 48, batch_size=16)])
    checkpoint = tmp_path / "epoch1.ckpt"
    common = {"reload_dataloaders_every_n_epochs": 1, "limit_val_batches": 0}

    first = ProbeModule()
    callbacks = [ResolutionMonitor(), SaveAtEpochEnd(checkpoint, 1)]
    quiet_trainer(max_epochs=2, callbacks=callbacks, **common).fit(first, datamodule=datamodule(indexed_dir, schedule))
    assert seen_per_epoch(first) == {0: ({32}, {8}, 8), 1: ({40}, {8}, 8)}

    second = ProbeModule()
    resumed = RecordingDataModule(
        str(indexed_dir), batch_size=8, num_workers=2, train_resolution=64, resolution=schedule
    )
    trainer = quiet_trainer(max_epochs=4, callbacks=[ResolutionMonitor()], **common)
    trainer.fit(second, datamodule=resumed, ckpt_path=checkpoint)
    assert seen_per_epoch(second) == {2: ({48}, {16}, 4), 3: ({48}, {16}, 4)}
    # Lightning builds the first loader while current_epoch still reads 1; the datamodule knows it is epoch 2.
    assert resumed.built[0] == (1, 2)
    assert trainer.callback_metrics["train/resolution"].item() == 48
    assert trainer.callback_metrics["train/batch_size"].item() == 16
