"""Exact mid-epoch resume through the real CLI: stopped by the spot notice at step k, resumed by the same command.

The images are uniform colours (one per sample, label = sample index), so every random-resized crop and flip
of an image has the same pixels: FFCV draws its augmentations from numba's unseeded generator, which would
otherwise make even two uninterrupted runs differ. Mixing is off for the same reason. What is left is fully
determined by the data order, the weights and the optimizer state, so the resumed run must end with
bit-identical weights (EMA included) and see exactly the samples the interrupted epoch had left.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from resnet_ffcv.callbacks.spot import INTERRUPTED_EXIT_CODE

from .spot_support import CLIProcess, write_config

TRAIN, VAL, BATCH = 64, 16, 4
STEPS = TRAIN // BATCH  # 16 steps per epoch


class UniformColours:
    def __len__(self) -> int:
        return self.count

    def __init__(self, count: int, seed: int):
        self.count, self.seed = count, seed

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        rng = np.random.default_rng((self.seed, index))
        height, width = rng.integers(40, 64, size=2)
        colour = rng.integers(0, 256, size=3, dtype=np.uint8)
        return np.ascontiguousarray(np.broadcast_to(colour, (height, width, 3))), index


def write_uniform_ffcv(out: Path) -> Path:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    out.mkdir(parents=True)
    for name, count, seed in (("train", TRAIN, 0), ("val", VAL, 1)):
        fields = {"image": RGBImageField(write_mode="raw"), "label": IntField()}
        DatasetWriter(str(out / f"{name}.ffcv"), fields, num_workers=1).from_indexed_dataset(
            UniformColours(count, seed)
        )
    (out / "classes.json").write_text(
        json.dumps([{"index": i, "wnid": f"c{i}", "name": f"c{i}"} for i in range(TRAIN)])
    )
    return out


def steps_logged(run_dir: Path) -> list[tuple[int, int, list[int]]]:
    path = run_dir / "batches.txt"
    if not path.exists():
        return []
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(row[0]), int(row[1]), [int(x) for x in row[2:]]) for row in rows]


def digest(run_dir: Path) -> str:
    return json.loads((run_dir / "rank0.json").read_text())["digest"]


@pytest.mark.slow
def test_resume_after_spot_notice_matches_an_uninterrupted_run(tmp_path, imds):
    data = write_uniform_ffcv(tmp_path / "ffcv")
    probes = [
        {"class_path": "tests.probes.BatchLog", "init_args": {"out_dir": None}},
        {"class_path": "tests.probes.ParameterDigest", "init_args": {"out_dir": None}},
    ]
    spot = {"endpoint": imds.endpoint, "poll_interval": 0.2, "check_every_n_batches": 1}
    args = ["--trainer.max_epochs=2", "--model.cutmix_prob=0", "--model.mixup_alpha=0", f"--data.batch_size={BATCH}"]
    # A network without dropout: torch's global generator is not part of a checkpoint, so spot_config.yaml's
    # SqueezeNet (dropout before its classifier) resumes with other dropout masks, not bit-identically.
    args.append("--model.arch=resnet18")

    def config(name: str) -> Path:
        run = tmp_path / name
        run.mkdir()
        callbacks = [{**probe, "init_args": {"out_dir": str(run)}} for probe in probes]
        # The probes are trainer.callbacks; SpotInterruption (the spot: section) is added after them, so they
        # record a batch before it may stop at its end.
        path = write_config(run, data, extra_callbacks=callbacks, spot=spot)
        settings = yaml.safe_load(path.read_text())
        settings["summary"] = {"path": str(run / "summary.json")}
        path.write_text(yaml.safe_dump(settings))
        return path

    whole, split = config("whole"), config("split")
    uninterrupted = CLIProcess("fit", "--config", str(whole), *args)
    assert uninterrupted.finish() == 0, uninterrupted.output

    # Interrupted: the notice is armed once step 4 of epoch 1 has run; the stop comes a few batches later.
    first = CLIProcess("fit", "--config", str(split), *args)
    first.wait_for(lambda: len(steps_logged(split.parent)) >= STEPS + 5, "step 5 of epoch 1")
    imds.armed.set()
    assert first.finish() == INTERRUPTED_EXIT_CODE, first.output
    imds.armed.clear()
    before = steps_logged(split.parent)
    stopped_at = len(before)
    assert STEPS + 5 <= stopped_at < 2 * STEPS, f"stop after step {stopped_at}: not mid-epoch 1"

    resumed = CLIProcess("fit", "--config", str(split), *args)  # the same command
    assert resumed.finish() == 0, resumed.output
    after = steps_logged(split.parent)[stopped_at:]

    expected = steps_logged(whole.parent)
    assert [(e, b) for e, b, _ in after] == [(e, b) for e, b, _ in expected[stopped_at:]], "batch_idx continues"
    assert before + after == expected, "the resumed epoch must see exactly the samples it had left"
    epoch1 = [i for e, _, labels in before + after if e == 1 for i in labels]
    assert sorted(epoch1) == list(range(TRAIN)), "no repeats, no skips"
    assert digest(split.parent) == digest(whole.parent), "weights (EMA included) equal the uninterrupted run's"
    # The summary counts every image once across the stop (the interrupted batch was trained and saved).
    for run in (whole, split):
        assert json.loads((run.parent / "summary.json").read_text())["images_seen"] == len(expected) * BATCH
