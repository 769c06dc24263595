"""``resnet-ffcv inspect-dataset`` on the session's real .ffcv files, through the command line."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from resnet_ffcv.dataset.inspect import StoredImages
from resnet_ffcv.dataset.sources import decode_rgb

from .helpers import run_cli


def test_inspect_dataset_prints_counts_and_draws_a_captioned_grid(ffcv_dir, tmp_path):
    grid, summary = tmp_path / "grid.png", tmp_path / "summary.json"
    result = run_cli(
        "inspect-dataset", "--path", str(ffcv_dir / "val.ffcv"), "--grid", str(grid), "--grid_images", "12",
        "--json_out", str(summary),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "40 images" in result.stdout and "10/10 classes present" in result.stdout
    found = json.loads(summary.read_text())
    assert found["images"] == 40 and found["classes"] == 10
    assert found["fields"] == {"image": "RGBImageField", "label": "IntField"}
    assert found["labels"]["per_class"] == {"min": 4, "median": 4.0, "mean": 4.0, "max": 4}
    assert found["decode_check"] == {"sampled": 40, "failed": [], "failed_count": 0}
    assert 64 <= found["stored_size"]["width"]["min"] <= found["stored_size"]["width"]["max"] <= 400
    with Image.open(grid) as image:
        assert image.size == (6 * 164, 2 * 180)
        assert np.asarray(image.convert("L")).std() > 10  # pictures, not a blank sheet


def test_stored_images_match_the_source_files(image_folder, ffcv_dir):
    """The first val image of each class, read back, is the source image (raw) or close to it (JPEG)."""
    stored = StoredImages(ffcv_dir / "val.ffcv")
    classes = sorted(path.name for path in (image_folder / "val").iterdir())
    for label, name in enumerate(classes):
        index = int(np.flatnonzero(stored.labels == label)[0])
        source = decode_rgb(sorted((image_folder / "val" / name).iterdir())[0], name)
        image = stored.image(index)
        assert image.shape == source.shape
        assert np.abs(image.astype(int) - source).mean() < 4
