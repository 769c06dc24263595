"""``resnet-ffcv predict`` through the real CLI: a folder of real image files and a real .ffcv -> CSV and table."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from resnet_ffcv.callbacks import PredictionWriter
from resnet_ffcv.cli import main
from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.image_files import ImageFiles, collate_channels_last
from resnet_ffcv.dataset.format import CLASSES_FILE, load_classes
from resnet_ffcv.recipe.module import ImageClassifier

from .helpers import COMPILED, CONFIGS, quiet_trainer, run_cli, trained_checkpoint

PREDICT = ["--config", str(CONFIGS / "demo_cpu.yaml"), "--config", str(CONFIGS / "predict.yaml")]
RESOLUTION = 32
SMALL = [
    f"--data.val_resolution={RESOLUTION}",
    "--data.val_batch_size=16",
    "--data.num_workers=1",
    "--trainer.enable_progress_bar=false",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of the demo's network after 3 SGD steps, its EMA (decay 0.5) unlike its raw weights."""
    path = tmp_path_factory.mktemp("predict_checkpoint") / "best_model.ckpt"
    return trained_checkpoint(path, batch=8, resolution=RESOLUTION, zero_init_residual=False)


@pytest.fixture(scope="module")
def images(image_folder, tmp_path_factory) -> Path:
    """The val JPEGs in their class folders (val.ffcv's order), then odd files in ``zz_odd/`` (sorted last)."""
    root = tmp_path_factory.mktemp("predict_images")
    shutil.copytree(image_folder / "val", root, dirs_exist_ok=True)
    odd = root / "zz_odd"
    odd.mkdir()
    rgb = (np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3)
    Image.fromarray(rgb).save(odd / "a_photo.png")
    Image.fromarray(rgb).save(odd / "b_png_named.JPEG", format="PNG")  # decoded by content, not by name
    Image.fromarray(rgb[..., 0]).save(odd / "c_gray.jpg")  # one channel
    Image.fromarray(rgb).save(odd / "d_wide.webp")
    (odd / "notes.txt").write_text("not an image, not listed")
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def top(row: dict[str, str], k: int = 5) -> tuple[list[str], list[float]]:
    return [row[f"class_{i}"] for i in range(1, k + 1)], [float(row[f"prob_{i}"]) for i in range(1, k + 1)]


@pytest.mark.slow
def test_predict_folder_and_ffcv_through_the_cli(checkpoint, images, ffcv_dir, tmp_path):
    classes = load_classes(ffcv_dir / CLASSES_FILE)
    common = [*PREDICT, f"--data.data_dir={ffcv_dir}", f"--ckpt_path={checkpoint}", *SMALL]

    folder = run_cli("predict", *common, f"--data.predict_path={images}", cwd=tmp_path, env=COMPILED)
    assert folder.returncode == 0, folder.stderr[-3000:]
    # The checkpoint is in no run's checkpoints/ folder: the working directory, not the demo config's run_dir.
    predictions = tmp_path / "predictions"
    rows = read_csv(predictions / "predictions.csv")
    files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.suffix != ".txt" and p.is_file())
    assert [row["path"] for row in rows] == files  # class folders sort before zz_odd/ here
    assert files[-4:] == ["zz_odd/a_photo.png", "zz_odd/b_png_named.JPEG", "zz_odd/c_gray.jpg", "zz_odd/d_wide.webp"]
    for row in rows:
        names, probabilities = top(row)
        assert set(names) <= set(classes) and len(set(names)) == 5
        assert all(0 < p <= 1 for p in probabilities) and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1 + 1e-5
    assert "top-1" in folder.stdout and "zz_odd/c_gray.jpg" not in folder.stdout  # the table shows 20 of 44
    assert f"{len(files)} predictions (top 5) written to predictions/predictions.csv" in folder.stdout
    assert (predictions / "config.yaml").is_file()  # what produced the CSV, checkpoint included

    ffcv = run_cli(
        "predict",
        *common,
        f"--data.predict_path={ffcv_dir / 'val.ffcv'}",
        "--trainer.callbacks.init_args.output=from_ffcv.csv",
        cwd=tmp_path,
        env=COMPILED,
    )
    assert ffcv.returncode == 0, ffcv.stderr[-3000:]
    from_ffcv = read_csv(tmp_path / "from_ffcv.csv")
    assert [row["index"] for row in from_ffcv] == [str(i) for i in range(40)]

    # Images the writer stored raw reach the network with the same pixels both ways: same predictions.
    from ffcv.reader import Reader

    raw = Reader(str(ffcv_dir / "val.ffcv")).metadata["f0"]["mode"] == 1  # RGBImageField: 0 JPEG, 1 raw
    assert raw.sum() >= 30
    for stored_raw, from_folder, from_file in zip(raw, rows, from_ffcv, strict=False):
        if stored_raw:
            folder_names, folder_probabilities = top(from_folder)
            file_names, file_probabilities = top(from_file)
            assert folder_names == file_names
            np.testing.assert_allclose(folder_probabilities, file_probabilities, rtol=1e-4, atol=1e-6)


def test_predict_uses_ema_weights_by_default(checkpoint, images, ffcv_dir):
    module = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert module.hparams.predict_with_ema and module.predict_network is module.ema.module
    files = sorted(images.glob("*/*.JPEG"))[:6]
    batch = collate_channels_last([ImageFiles(files, RESOLUTION, 0.875)[i] for i in range(len(files))])
    with torch.no_grad():
        ema = module.predict_step(batch, 0)
        expected = module.ema.module(module.normalize(batch[0])).softmax(1).topk(5, dim=1)
        module.hparams.predict_with_ema = False
        raw = module.predict_step(batch, 0)
    torch.testing.assert_close(ema["probabilities"], expected.values)
    assert torch.equal(ema["classes"], expected.indices)
    assert not torch.allclose(ema["probabilities"], raw["probabilities"])  # EMA (decay 0.5) != raw weights


def test_image_files_match_ffcv_val_batches(images):
    files = [images / "zz_odd" / name for name in ("a_photo.png", "b_png_named.JPEG", "c_gray.jpg")]
    images_batch, indices = collate_channels_last([ImageFiles(files, 24, 0.875)[i] for i in range(3)])
    assert images_batch.shape == (3, 3, 24, 24) and images_batch.dtype == torch.uint8
    assert images_batch.is_contiguous(memory_format=torch.channels_last)  # as FFCV's ToTorchImage
    assert indices.tolist() == [0, 1, 2]
    assert torch.equal(images_batch[0], images_batch[1])  # a PNG named .JPEG is still that PNG
    gray = images_batch[2]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_bad_predict_input_is_named_before_any_work(images, ffcv_dir, tmp_path):
    def setup(path) -> FFCVDataModule:
        data = FFCVDataModule(data_dir=str(ffcv_dir), predict_path=None if path is None else str(path))
        data.setup("predict")
        return data

    broken = tmp_path / "broken"
    shutil.copytree(images / "zz_odd", broken)
    (broken / "e_truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"e_truncated\.jpg: not a readable image"):
        setup(broken)
    with pytest.raises(ValueError, match="data.predict_path is not set"):
        setup(None)
    with pytest.raises(FileNotFoundError, match=r"nowhere: expected a folder of images"):
        setup(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no image files in this folder \(\.jpg, \.jpeg, \.png"):
        setup(empty)
    one = setup(images / "zz_odd" / "c_gray.jpg")
    assert one.predict_names == ["c_gray.jpg"]


def test_without_classes_json_classes_are_named_by_index(checkpoint, images, tmp_path):
    data_dir = tmp_path / "no_classes"
    data_dir.mkdir()
    data = FFCVDataModule(
        data_dir=str(data_dir), num_classes=10, predict_path=str(images / "zz_odd"), val_resolution=32, num_workers=0
    )
    module = ImageClassifier.load_from_checkpoint(checkpoint, map_location="cpu")
    output = tmp_path / "out" / "by_index.csv"
    trainer = quiet_trainer(callbacks=[PredictionWriter(output=str(output), print_rows=2)])
    with pytest.warns(UserWarning, match="no classes.json in data.data_dir"):
        trainer.predict(module, datamodule=data, return_predictions=False)
    rows = read_csv(output)
    assert [row["path"] for row in rows] == ["a_photo.png", "b_png_named.JPEG", "c_gray.jpg", "d_wide.webp"]
    assert all(set(top(row)[0]) <= {str(i) for i in range(10)} for row in rows)


def test_predict_overlay_on_the_p4d_config(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(CONFIGS / "p4d_78pct.yaml"), *PREDICT[2:], "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    trainer = config["trainer"]
    assert [callback["class_path"] for callback in trainer["callbacks"]] == ["resnet_ffcv.callbacks.PredictionWriter"]
    assert (trainer["devices"], trainer["num_nodes"], trainer["strategy"], trainer["logger"]) == (1, 1, "auto", False)
    assert config["model"]["arch"] == "resnet50" and config["model"]["predict_with_ema"] is True


def test_prediction_writer_refuses_ddp(checkpoint):
    class TwoRanks:
        world_size = 2

    module = ImageClassifier(arch="resnet18", num_classes=10)
    with pytest.raises(ValueError, match="set trainer.devices: 1"):
        PredictionWriter().setup(TwoRanks(), module, "predict")
