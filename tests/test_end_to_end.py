"""The walking skeleton's path: JPEGs -> our writer -> FFCV loader -> `resnet-ffcv fit` -> checkpoint -> validate."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_ffcv.cli import main
from resnet_ffcv.dataset.format import CLASSES_FILE, load_classes
from resnet_ffcv.dataset.writer import write_order

from .helpers import COMPILED, CONFIGS, run_cli
from .wandb_log import logged_keys

DEMO = str(CONFIGS / "demo_cpu.yaml")
TINY = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--data.batch_size=8",
    "--data.num_workers=1",
    "--data.train_resolution=32",
    "--resolution.stages=null",  # the demo's 48 -> 64 px schedule off: 32 px throughout
    "--data.val_resolution=32",
]


def files_by_split(image_folder: Path, split: str) -> list[tuple[Path, str]]:
    return [(p, p.parent.name) for p in sorted((image_folder / split).glob("*/*.JPEG"))]


def test_writer_round_trip(image_folder, ffcv_dir):
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import ToTensor

    classes = load_classes(ffcv_dir / CLASSES_FILE)
    assert classes == sorted(p.name for p in (image_folder / "train").iterdir())
    assert classes == sorted(p.name for p in (image_folder / "val").iterdir())

    for split in ("train", "val"):
        files = files_by_split(image_folder, split)
        if split == "train":  # written shuffled (pages mix classes), in the writer's fixed order; val as listed
            files = [files[i] for i in write_order(len(files))]
        path = str(ffcv_dir / f"{split}.ffcv")
        # Stored sizes are the originals (all <= the rn18 preset's 400 px), in the writer's file order.
        metadata = Reader(path).metadata["f0"]
        sizes = [Image.open(p).size for p, _ in files]
        assert len(metadata) == len(files)
        assert [(int(w), int(h)) for h, w in zip(metadata["height"], metadata["width"], strict=True)] == sizes

        loader = Loader(
            path,
            batch_size=16,
            num_workers=1,
            order=OrderOption.SEQUENTIAL,
            drop_last=False,  # FFCV's default is True
            pipelines={
                "image": [CenterCropRGBImageDecoder((32, 32), ratio=1.0), ToTensor()],
                "label": [IntDecoder(), ToTensor()],
            },
        )
        images, labels = zip(*loader, strict=True)
        images, labels = np.concatenate(images), np.concatenate(labels).ravel()
        assert images.shape == (len(files), 32, 32, 3) and images.dtype == np.uint8
        assert labels.tolist() == [classes.index(name) for _, name in files]


# What the W&B dashboard must answer (GPU memory is logged only on CUDA, so it cannot appear here).
EXPECTED_METRICS = {
    "train/loss_step",
    "train/lr",
    "train/resolution",
    "train/batch_size",
    "train/device/samples_per_sec",  # ThroughputMonitor (train/samples_per_sec too when world_size > 1)
    "images_per_sec",
    "time/epoch_seconds",
    "cost/elapsed_hours",
    "cost/usd",
    "val/acc1",
    "val/acc5",
    "val/acc1_ema",
    "val/acc5_ema",
}


@pytest.mark.slow
def test_fit_restart_and_validate_through_the_cli(ffcv_dir, tmp_path):
    steps = ["--trainer.limit_train_batches=10", "--trainer.log_every_n_steps=1"]  # fills ThroughputMonitor's window
    # W&B asked to go online with no credentials anywhere: it must fall back to offline, not prompt.
    fit = [
        "fit",
        "--config",
        DEMO,
        f"--data.data_dir={ffcv_dir}",
        "--trainer.logger.init_args.offline=false",
        *TINY,
        *steps,
    ]
    no_credentials = {
        "env": {"HOME": str(tmp_path), **COMPILED},
        "unset": ("WANDB_MODE", "WANDB_API_KEY"),
        "cwd": tmp_path,
    }
    first = run_cli(*fit, **no_credentials)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "logging offline" in first.stderr and "wandb sync" in first.stderr
    output = tmp_path / "demo_output" / "run"  # the demo config's run_dir
    checkpoint = output / "checkpoints" / "best_model.ckpt"
    assert checkpoint.is_file() and (output / "checkpoints" / "checkpoint_latest.ckpt").is_file()
    [run] = (output / "logs" / "wandb").glob("offline-run-*")
    history, config = logged_keys(run)
    assert history >= EXPECTED_METRICS, f"missing from W&B: {sorted(EXPECTED_METRICS - history)}"
    assert {"config", "lr", "arch", "batch_size"} <= config  # the resolved config and the hyperparameters

    # The same command once more with a larger budget: a spot restart into the same directories.
    second = run_cli(*fit, "--trainer.max_epochs=2", **no_credentials)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Resuming from" in second.stdout + second.stderr
    runs = sorted((output / "logs" / "wandb").glob("offline-run-*"))
    assert len({path.name.rsplit("-", 1)[-1] for path in runs}) == 1, "the restart continues the same W&B run"

    validate = run_cli(
        "validate", "--config", DEMO, f"--data.data_dir={ffcv_dir}", f"--ckpt_path={checkpoint}", *TINY,
        cwd=tmp_path, env=COMPILED,
    )  # fmt: skip
    assert validate.returncode == 0, validate.stderr[-3000:]
    assert "val/acc1" in validate.stdout and "val/acc1_ema" in validate.stdout
    # fit's callbacks (their states are in the checkpoint) are not built by validate: no warning about each.
    assert "Be aware that when using `ckpt_path`" not in validate.stderr, validate.stderr[-3000:]


def config_stacks() -> list[list[str]]:
    """Every file in configs/, as a user passes it: top-level files alone, the others over their bases."""
    p4d, rn50_base = CONFIGS / "p4d_78pct.yaml", CONFIGS / "ffcv" / "rn50_base.yaml"
    stacks = [[config] for config in sorted(CONFIGS.glob("*.yaml"))]
    for config in sorted(CONFIGS.glob("*/*.yaml")):
        needs_rn50_base = config.name.startswith("rn50_") and config != rn50_base
        stacks.append([p4d, *([rn50_base] if needs_rn50_base else []), config])
    return [[str(path) for path in stack] for stack in stacks]


@pytest.mark.parametrize("stack", config_stacks(), ids=lambda stack: Path(stack[-1]).name)
def test_print_config_of_every_config(stack, capsys):
    command = "write-dataset" if Path(stack[-1]).name.startswith("write_") else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([command, *[arg for config in stack for arg in ("--config", config)], "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert printed.strip(), f"{stack[-1]}: --print_config printed nothing"
    if command == "fit":  # the last file's values win over its bases'
        assert "max_epochs" in printed and "resolution:" in printed


def test_config_key_typo_is_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", DEMO, "--model.lrr=0.1", "--print_config"])
    assert exit_info.value.code != 0
    assert "lrr" in capsys.readouterr().err


def test_missing_data_is_named(ffcv_dir, tmp_path):
    # A user's mistake: one `resnet-ffcv fit: error:` line naming the file (SystemExit), no traceback.
    with pytest.raises(SystemExit, match=re.escape(str(tmp_path / "nowhere" / CLASSES_FILE))):
        main(["fit", "--config", DEMO, f"--data.data_dir={tmp_path / 'nowhere'}", *TINY])

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(ffcv_dir / CLASSES_FILE, partial)
    shutil.copy(ffcv_dir / "train.ffcv", partial)
    with pytest.raises(SystemExit, match=re.escape(str(partial / "val.ffcv"))):
        main(["fit", "--config", DEMO, f"--data.data_dir={partial}", "--trainer.logger=false", *TINY])
