"""``resnet-ffcv write-dataset`` (and ``predict``) on odd input trees, through the real CLI: symlink loops and
links between class folders, images too elongated for FFCV's resize, and every image format Pillow reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_ffcv.data.image_files import list_images
from resnet_ffcv.dataset.ffcv_io import MIN_SIDE
from resnet_ffcv.dataset.inspect import StoredImages

from .helpers import CONFIGS, run_cli, trained_checkpoint

RED, BLUE = (220, 30, 30), (30, 30, 220)
COLOURS = {"a_red": RED, "b_blue": BLUE}  # class folder -> colour of its images; labels 0, 1 by name
WRITE = ["write-dataset", "--splits=[train]", "--num_workers=1", "--preset=rn18", "--write_mode=raw"]


def _tree(root: Path, per_class: int = 3) -> Path:
    """train/a_red and train/b_blue, ``per_class`` small PNGs each, plain colours."""
    for folder, colour in COLOURS.items():
        (root / "train" / folder).mkdir(parents=True)
        for index in range(per_class):
            Image.new("RGB", (32 + 8 * index, 24), colour).save(root / "train" / folder / f"{index}.png")
    return root


def _write(source: Path, output: Path, *options: str):
    return run_cli(*WRITE, f"--source_dir={source}", f"--output_dir={output}", *options, timeout=300)


def _assert_colours_match_labels(stored: StoredImages) -> None:
    """Each stored image has its class's colour: no image went in under another class's label."""
    colours = list(COLOURS.values())
    for index in range(len(stored)):
        mean = stored.image(index).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, colours[stored.labels[index]], atol=6, err_msg=f"sample {index}")


@pytest.fixture
def looped_tree(tmp_path) -> tuple[Path, list[Path], Path]:
    """Loops back to the split folder and to the dataset root (``os.walk`` follows them until the path is too
    long: each image ~100 times over) and a link from class b to class a (a's images again, under b's label)."""
    root = _tree(tmp_path / "src")
    loops = [root / "train" / "a_red" / "loop", root / "train" / "b_blue" / "up"]
    loops[0].symlink_to(Path("..", "..", "train"), target_is_directory=True)
    loops[1].symlink_to(Path("..", ".."), target_is_directory=True)
    cross = root / "train" / "b_blue" / "also_a"
    cross.symlink_to(Path("..", "a_red"), target_is_directory=True)
    return root, loops, cross


def test_symlink_loop_is_refused_by_default_naming_the_link(looped_tree, tmp_path):
    root, loops, cross = looped_tree
    result = _write(root, tmp_path / "out")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = {line.split(": ", 1)[0].split("] ", 1)[-1]: line for line in result.stderr.splitlines()}
    assert all("symlink loop" in lines[str(loop)] for loop in loops)
    assert "already listed" in lines[str(cross)] and str(root / "train" / "a_red") in lines[str(cross)]
    assert all(len(line) < 400 for line in result.stderr.splitlines())  # never a path that goes round the loop
    assert "on_stray_file: skip" in result.stderr
    assert not list((tmp_path / "out").glob("*.ffcv"))


def test_symlink_loop_under_skip_writes_each_image_once_under_its_own_label(looped_tree, tmp_path):
    root, _, _ = looped_tree
    result = _write(root, tmp_path / "out", "--on_stray_file=skip")
    assert result.returncode == 0, result.stderr[-3000:]
    stored = StoredImages(tmp_path / "out" / "train.ffcv")
    assert sorted(stored.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # train.ffcv is written shuffled
    _assert_colours_match_labels(stored)
    assert "left out: {'stray_file': 3}" in result.stdout


def test_elongated_and_one_pixel_images_are_kept_and_ffcv_centre_crops_them(tmp_path):
    """6000x5 at max side 400 would be 400x0 px (OpenCV aborts the write); a 1 px side (the 1x1 image, or
    6000x12 -> 400x0.8) gives an empty centre crop at validation, which aborts the loader process."""
    root = _tree(tmp_path / "src")
    odd = {"strip.png": (6000, 5), "tall.png": (5, 6000), "dot.png": (1, 1), "line.png": (300, 1)}
    for name, size in odd.items():
        Image.new("RGB", size, RED).save(root / "train" / "a_red" / name)
    result = _write(root, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    stored = StoredImages(tmp_path / "out" / "train.ffcv")
    assert sorted(stored.labels.tolist()) == [0] * 7 + [1] * 3  # train.ffcv is written shuffled
    _assert_colours_match_labels(stored)
    shapes = {(int(m["height"]), int(m["width"])) for m in stored.meta}
    assert {(MIN_SIDE, 400), (400, MIN_SIDE), (MIN_SIDE, MIN_SIDE), (MIN_SIDE, 300)} <= shapes
    # Every stored image through FFCV's decoders' crop arithmetic and C resize, in a child process since an
    # empty crop aborts it: the centre crop at the usual 224/256, and random-resized crops.
    script = f"""
import numpy as np
from ffcv.fields.rgb_image import get_center_crop, get_random_crop
from ffcv.libffcv import resize_crop
from resnet_ffcv.dataset.inspect import StoredImages
stored = StoredImages({str(tmp_path / "out" / "train.ffcv")!r})
out = np.empty((16, 16, 3), np.uint8)
for index in range(len(stored)):
    image = stored.image(index)
    for i, j, h, w in [get_center_crop(*image.shape[:2], None, 224 / 256)] + [
        get_random_crop(*image.shape[:2], (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(20)
    ]:
        resize_crop(image, i, i + h, j, j + w, out)
print("cropped", len(stored))
"""
    cropped = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert cropped.returncode == 0 and "cropped 10" in cropped.stdout, cropped.stderr[-3000:]


def _animated_gif(path: Path) -> None:
    """Two frames, red then blue: the first frame is the image."""
    frames = [Image.new("RGB", (32, 24), RED), Image.new("RGB", (32, 24), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 2


def _formats_tree(root: Path) -> Path:
    """Class a: GIF (animated), BMP, TIFF, WebP, PPM, JFIF, and a PNG with no suffix (found by content);
    class b: a still GIF with a palette, a lossless WebP, and a text file that must stay a stray file."""
    a, b = root / "train" / "a_red", root / "train" / "b_blue"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    _animated_gif(a / "animated.gif")
    red = Image.new("RGB", (40, 30), RED)
    red.save(a / "bitmap.bmp")
    red.save(a / "scan.tiff")
    red.save(a / "web.webp", lossless=True)
    red.save(a / "portable.ppm")
    red.save(a / "photo.jfif", format="JPEG", quality=95)
    red.save(a / "no_suffix", format="PNG")
    Image.new("RGB", (40, 30), BLUE).convert("P").save(b / "still.GIF")
    Image.new("RGB", (40, 30), BLUE).save(b / "web.WEBP", lossless=True)
    (b / "notes.txt").write_text("not an image")
    return root


def test_every_format_pillow_reads_is_written_by_content(tmp_path):
    root = _formats_tree(tmp_path / "src")
    refused = _write(root, tmp_path / "refused")
    assert refused.returncode != 0 and "notes.txt" in refused.stderr and "Traceback" not in refused.stderr
    assert "no_suffix" not in refused.stderr and ".gif" not in refused.stderr.lower()  # only the text file
    result = _write(root, tmp_path / "out", "--on_stray_file=skip")
    assert result.returncode == 0, result.stderr[-3000:]
    stored = StoredImages(tmp_path / "out" / "train.ffcv")
    assert sorted(stored.labels.tolist()) == [0] * 7 + [1] * 2  # train.ffcv is written shuffled
    _assert_colours_match_labels(stored)  # the animated GIF's first frame (red), not its second (blue)


def test_predict_lists_gifs_and_suffixless_images_once_despite_a_loop(tmp_path):
    root = _formats_tree(tmp_path / "src") / "train"
    (root / "a_red" / "loop").symlink_to(Path(".."), target_is_directory=True)
    (root / "b_blue" / "up").symlink_to(Path("..", ".."), target_is_directory=True)  # above the listed folder
    names = [path.relative_to(root).as_posix() for path in list_images(root)]
    assert names == [
        "a_red/animated.gif",
        "a_red/bitmap.bmp",
        "a_red/no_suffix",
        "a_red/photo.jfif",
        "a_red/portable.ppm",
        "a_red/scan.tiff",
        "a_red/web.webp",
        "b_blue/still.GIF",
        "b_blue/web.WEBP",
    ]


def test_predict_on_a_gif_through_the_cli(tmp_path):
    checkpoint = trained_checkpoint(tmp_path / "model.ckpt", batch=4, resolution=32, zero_init_residual=False)
    gif = tmp_path / "animated.gif"
    _animated_gif(gif)
    (tmp_path / "data").mkdir()  # no classes.json: classes are named by index
    result = run_cli(
        "predict",
        *["--config", str(CONFIGS / "demo_cpu.yaml"), "--config", str(CONFIGS / "predict.yaml")],
        f"--data.data_dir={tmp_path / 'data'}",
        f"--ckpt_path={checkpoint}",
        f"--data.predict_path={gif}",
        "--data.num_classes=10",
        "--data.val_resolution=32",
        "--data.num_workers=1",
        "--trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # A checkpoint outside a run's checkpoints/ folder: the predictions go to the working directory.
    rows = (tmp_path / "predictions" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("animated.gif,")
