"""The dataset writer on files written here: real-world image oddities, policies, atomic and resumable output,
the size check, Hugging Face sources, and a kill -9 in the middle of a write."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_ffcv.dataset.ffcv_io import WriteAborted
from resnet_ffcv.dataset.format import CLASSES_FILE, MANIFEST_FILE, load_classes
from resnet_ffcv.dataset.inspect import StoredImages
from resnet_ffcv.dataset.sources import list_imagefolder
from resnet_ffcv.dataset.writer import (
    PRESETS,
    REPORT_FILE,
    DatasetProblems,
    estimate_bytes,
    write_dataset,
    write_order,
)

from .helpers import REPO

RED, WHITE = (230, 20, 20), (255, 255, 255)
SIZE = (48, 40)  # width, height
ALL_SKIP = dict(on_unreadable="skip", on_stray_file="skip", on_empty_class="skip", on_class_mismatch="skip")


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rgba_half_transparent() -> Image.Image:
    image = Image.new("RGBA", SIZE, (0, 0, 0, 0))  # transparent black on the left
    image.paste(Image.new("RGBA", (SIZE[0] // 2, SIZE[1]), (*RED, 255)), (SIZE[0] // 2, 0))
    return image


# name -> (file bytes, expected (left colour, right colour)); None: not an image the writer can keep
A_CLASS = {
    "rgb.JPEG": (_jpeg(Image.new("RGB", SIZE, RED)), (RED, RED)),
    "gray.JPEG": (_jpeg(Image.new("L", SIZE, 128)), ((128,) * 3, (128,) * 3)),
    "cmyk.JPEG": (_jpeg(Image.new("CMYK", SIZE, (0, 255, 255, 0))), ((255, 0, 0), (255, 0, 0))),
    "palette.png": (_png(Image.new("RGB", SIZE, (20, 200, 40)).convert("P")), ((20, 200, 40),) * 2),
    "rgba.png": (_png(_rgba_half_transparent()), (WHITE, RED)),
    "png_named.JPEG": (_png(Image.new("RGB", SIZE, (10, 20, 230))), ((10, 20, 230),) * 2),
    "truncated.JPEG": (_jpeg(Image.new("RGB", (300, 200), RED))[:400], None),
    "garbage.JPEG": (b"this is not an image", None),
}
B_CLASS = {
    "one.jpg": (_jpeg(Image.new("RGB", SIZE, (0, 0, 255))), None),
    "two.jpg": (_jpeg(Image.new("RGB", SIZE, (0, 0, 255))), None),
    "deep16.png": (_png(Image.fromarray(np.full(SIZE[::-1], 40000, dtype=np.uint16))), None),
}


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    """An ImageFolder with every kind of real-world trouble the writer must handle."""
    root = tmp_path_factory.mktemp("messy")
    files = {
        **{f"train/a_cls/{name}": data for name, (data, _) in A_CLASS.items()},
        **{f"train/b_cls/{name}": data for name, (data, _) in B_CLASS.items()},
        "train/a_cls/notes.txt": b"a stray note",
        "train/a_cls/.DS_Store": b"\0\0",
        "train/README.txt": b"stray file beside the class folders",
        "val/a_cls/v.JPEG": A_CLASS["rgb.JPEG"][0],
        "val/b_cls/v.JPEG": B_CLASS["one.jpg"][0],
        "val/extra_cls/v.JPEG": A_CLASS["rgb.JPEG"][0],
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    (root / "train/empty_cls").mkdir()
    return root


MESSY_ARGS = dict(preset="rn18", write_mode="raw", num_workers=2, chunk_size=3, **ALL_SKIP)


@pytest.fixture(scope="module")
def messy_written(messy_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("messy_out")
    write_dataset(messy_folder, out, **MESSY_ARGS)
    return out


def _colour(image: np.ndarray, side: str) -> np.ndarray:
    half = image.shape[1] // 2
    region = image[:, 2 : half - 2] if side == "left" else image[:, half + 2 : -2]
    return region.reshape(-1, 3).mean(axis=0)


def _train_file_order() -> list[str]:
    """The messy train split's readable files in train.ffcv's order: the listing (class by class, names sorted)
    in the writer's fixed shuffled order (``write_order``), the unreadable files left out."""
    listed = sorted(A_CLASS) + sorted(B_CLASS)
    readable = {name for name, (_, expected) in A_CLASS.items() if expected} | set(B_CLASS)
    return [listed[i] for i in write_order(len(listed)) if listed[i] in readable]


def test_real_world_images_become_rgb_and_broken_files_are_skipped_and_reported(messy_written, messy_folder):
    train = StoredImages(messy_written / "train.ffcv")
    order = _train_file_order()
    assert len(train) == len(order) == len(A_CLASS) - 2 + len(B_CLASS)
    assert train.labels.tolist() == [0 if name in A_CLASS else 1 for name in order]
    for index, name in enumerate(order):
        image = train.image(index)
        assert image.shape == (SIZE[1], SIZE[0], 3), name
        if name in A_CLASS:  # class b's colours are not the point: its 16-bit PNG is checked below
            for side, expected in zip(("left", "right"), A_CLASS[name][1], strict=True):
                np.testing.assert_allclose(_colour(image, side), expected, atol=12, err_msg=f"{name} {side}")
    assert train.image(order.index("deep16.png")).mean() == pytest.approx(40000 >> 8, abs=1)  # keeps its top bits

    assert load_classes(messy_written / CLASSES_FILE) == ["a_cls", "b_cls"]
    assert StoredImages(messy_written / "val.ffcv").labels.tolist() == [0, 1]
    report = json.loads((messy_written / REPORT_FILE).read_text())
    left_out = {(p["kind"], Path(p["where"].split(" ")[0]).name) for p in report["problems"]}
    assert left_out == {
        ("unreadable", "truncated.JPEG"),
        ("unreadable", "garbage.JPEG"),
        ("stray_file", "notes.txt"),
        ("stray_file", ".DS_Store"),
        ("stray_file", "README.txt"),
        ("empty_class", "empty_cls"),
        ("class_mismatch", "extra_cls"),
    }
    assert all(p["action"] == "skipped" for p in report["problems"])
    manifest = json.loads((messy_written / MANIFEST_FILE).read_text())
    assert manifest["complete"] and manifest["splits"]["train"]["skipped"] == 2
    assert manifest["splits"]["train"]["images"] == len(train)
    assert manifest["writer"]["max_resolution"] == PRESETS["rn18"].max_resolution


def test_ffcv_loader_reads_a_file_with_skipped_samples(messy_written):
    """Skipping rewrites FFCV's metadata and allocation table: FFCV's own Loader must agree with it."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    loader = Loader(
        str(messy_written / "train.ffcv"),
        batch_size=4,
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        os_cache=False,  # the page-by-page reader, which goes through the allocation table
        pipelines={
            "image": [CenterCropRGBImageDecoder((16, 16), ratio=1.0), ToTensor()],
            "label": [IntDecoder()],
        },
    )
    labels, pixels = [], []
    for images, batch_labels in loader:
        labels += batch_labels.ravel().tolist()
        pixels += [image.float().mean(dim=(0, 1)).numpy() for image in images]
    assert labels == StoredImages(messy_written / "train.ffcv").labels.tolist()
    first = _train_file_order()[0]  # png_named.JPEG, the first file in the writer's fixed order
    np.testing.assert_allclose(pixels[0], A_CLASS[first][1][0], atol=12)


def test_rerun_keeps_the_report_of_the_splits_it_keeps(messy_written, messy_folder, capsys):
    before = json.loads((messy_written / REPORT_FILE).read_text())
    write_dataset(messy_folder, messy_written, **MESSY_ARGS)
    assert capsys.readouterr().out.count("skipping") == 2
    assert json.loads((messy_written / REPORT_FILE).read_text()) == before


@pytest.mark.parametrize(
    ("kind", "named"),
    [("stray_file", "notes.txt"), ("empty_class", "empty_cls"), ("class_mismatch", "extra_cls")],
)
def test_fail_policies_refuse_before_writing_and_name_the_paths(messy_folder, tmp_path, kind, named):
    with pytest.raises(DatasetProblems, match=named) as error:
        write_dataset(messy_folder, tmp_path, num_workers=1, **{**ALL_SKIP, f"on_{kind}": "fail"})
    assert f"on_{kind}: skip" in str(error.value)
    assert not list(tmp_path.glob("*.ffcv")) and not list(tmp_path.glob(".*.partial"))
    refused = [p for p in json.loads((tmp_path / REPORT_FILE).read_text())["problems"] if p["action"] == "refused"]
    assert refused and all(p["kind"] == kind for p in refused)


def test_unreadable_image_under_fail_policy_stops_with_its_path_and_leaves_no_file(messy_folder, tmp_path):
    with pytest.raises(WriteAborted, match=r"(truncated|garbage)\.JPEG"):
        write_dataset(messy_folder, tmp_path, num_workers=2, chunk_size=2, **{**ALL_SKIP, "on_unreadable": "fail"})
    assert sorted(path.name for path in tmp_path.iterdir() if "ffcv" in path.name) == []
    assert not (tmp_path / MANIFEST_FILE).exists()
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert any(p["kind"] == "unreadable" and "JPEG" in p["where"] for p in report["problems"])


def test_rerun_skips_complete_splits_refuses_other_outputs_and_overwrites_on_request(image_folder, tmp_path, capsys):
    names = tmp_path / "LOC_synset_mapping.txt"
    names.write_text("blue_triangle a blue triangle\nred_circle a red circle, round\n")
    args = dict(splits=("val",), preset="rn18", num_workers=1, class_names_file=str(names))
    write_dataset(image_folder, tmp_path / "out", **args)
    output = tmp_path / "out" / "val.ffcv"
    written = output.stat().st_mtime_ns
    classes = json.loads((tmp_path / "out" / CLASSES_FILE).read_text())
    assert classes[0] == {"index": 0, "wnid": "blue_triangle", "name": "a blue triangle"}
    assert load_classes(tmp_path / "out" / CLASSES_FILE)[7] == "a red circle, round"

    write_dataset(image_folder, tmp_path / "out", **args)
    assert "complete (manifest matches), skipping" in capsys.readouterr().out
    assert output.stat().st_mtime_ns == written

    with pytest.raises(FileExistsError, match="overwrite"):
        write_dataset(image_folder, tmp_path / "out", **{**args, "preset": "rn50"})
    assert output.stat().st_mtime_ns == written
    write_dataset(image_folder, tmp_path / "out", **{**args, "preset": "rn50"}, overwrite=True)
    assert json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())["writer"]["max_resolution"] == 500
    assert len(StoredImages(output)) == 40


def test_size_check_refuses_with_the_numbers_and_the_estimate_is_close(image_folder, ffcv_dir, tmp_path):
    with pytest.raises(OSError, match=r"needs about [\d.]+ GB .* and 0.00 GB are free"):
        write_dataset(image_folder, tmp_path, preset="rn18", num_workers=1, assume_free_bytes=1000)
    assert not list(tmp_path.glob("*.ffcv"))
    # The session fixture wrote train.ffcv with rn18 and 2 workers from the same images.
    _, listings = list_imagefolder(image_folder, ("train",))
    estimate = estimate_bytes(listings["train"].source, PRESETS["rn18"], samples=32, num_workers=2)
    assert 0.7 < estimate / (ffcv_dir / "train.ffcv").stat().st_size < 1.5


def test_bad_arguments_are_refused_by_name(image_folder, tmp_path):
    with pytest.raises(ValueError, match="on_unreadable='ignore'"):
        write_dataset(image_folder, tmp_path, on_unreadable="ignore")
    with pytest.raises(ValueError, match="max_resolution=5000"):
        write_dataset(image_folder, tmp_path, max_resolution=5000)
    with pytest.raises(FileNotFoundError, match="missing split folder"):
        write_dataset(image_folder, tmp_path, splits=("train", "test"))
    with pytest.raises(ValueError, match=r"shuffle_splits=\['trian'\]: \['trian'\] not among splits"):
        write_dataset(image_folder, tmp_path, shuffle_splits=("trian",))


def test_train_is_written_in_a_fixed_shuffled_order_so_pages_mix_classes(image_folder, ffcv_dir, tmp_path, capsys):
    """quasi_random reads whole pages: on a class-sorted file a page holds one or two classes (docs/data-loading.md)."""
    from resnet_ffcv.data.quasi_random import sample_pages

    _, listings = list_imagefolder(image_folder, ("train",))
    listed = np.array([label for _, label in listings["train"].source.samples])
    shuffled = StoredImages(ffcv_dir / "train.ffcv")  # the session's file: written with the defaults
    assert shuffled.labels.tolist() == listed[write_order(len(listed))].tolist() != sorted(listed.tolist())
    assert json.loads((ffcv_dir / MANIFEST_FILE).read_text())["writer"]["shuffle_splits"] == ["train"]

    write_dataset(image_folder, tmp_path, splits=("train",), preset="rn18", num_workers=2, shuffle_splits=())
    in_source_order = StoredImages(tmp_path / "train.ffcv")
    assert in_source_order.labels.tolist() == listed.tolist() == sorted(listed.tolist())

    def classes_per_page(stored: StoredImages) -> list[int]:
        pages = sample_pages(stored.reader)
        return [len(set(stored.labels[pages == page])) for page in np.unique(pages)]

    assert max(classes_per_page(in_source_order)) < min(classes_per_page(shuffled)), "pages do not mix classes"
    # Writing the same split the other way round is a different file: the rerun names the parameter.
    with pytest.raises(FileExistsError, match=r"shuffle_splits: \[\] in the manifest, \['train'\] now"):
        write_dataset(image_folder, tmp_path, splits=("train",), preset="rn18", num_workers=2)
    # A file written before shuffle_splits existed (its manifest lacks the key) is named the same way.
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    del manifest["writer"]["shuffle_splits"]
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=r"shuffle_splits: \(not recorded\) in the manifest, \['train'\] now"):
        write_dataset(image_folder, tmp_path, splits=("train",), preset="rn18", num_workers=2)


# -- Hugging Face --------------------------------------------------------------------------------------------
HF_NAMES = ["tench", "goldfish", "great white shark"]
HF_COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory) -> dict[str, Path]:
    """One dataset three ways: ``save_to_disk``, parquet shards (several row groups), datasets-cache arrow."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "label": ClassLabel(names=HF_NAMES)})

    def split(labels: list[int], broken_row: int | None) -> Dataset:
        images = [
            {"bytes": _png(Image.new("RGB", SIZE, HF_COLOURS[max(label, 0)])), "path": f"img{i}.png"}
            for i, label in enumerate(labels)
        ]
        if broken_row is not None:
            images[broken_row] = {"bytes": b"\xff\xd8 broken", "path": "broken.JPEG"}
        return Dataset.from_dict({"image": images, "label": labels}, features=features)

    data = DatasetDict(
        train=split([0, 1, 2, 0, 1, 2, 0, 1, 2, 2], broken_row=4),
        validation=split([2, 1, 0, -1], broken_row=None),  # -1: unlabeled, as in ImageNet's test split
    )
    root = tmp_path_factory.mktemp("hf")
    data.save_to_disk(str(root / "saved"))
    (root / "cache").mkdir()
    for name, part in data.items():
        part.to_parquet(str(root / "parquet" / "data" / f"{name}-00000-of-00001.parquet"), batch_size=3)
        # How the datasets cache names its arrow files after load_dataset("ILSVRC/imagenet-1k").
        arrow = next((root / "saved" / name).glob("*.arrow"))
        shutil.copy(arrow, root / "cache" / f"imagenet-1k-{name}-00000-of-00001.arrow")
    return {"saved": root / "saved", "parquet": root / "parquet", "cache": root / "cache"}


@pytest.mark.parametrize("layout", ["saved", "parquet", "cache"])
def test_huggingface_dataset_on_disk(hf_dirs, tmp_path, layout):
    write_dataset(
        hf_dirs[layout], tmp_path, preset="rn18", write_mode="raw", num_workers=2, chunk_size=4,
        on_unreadable="skip", on_class_mismatch="skip",
    )  # fmt: skip
    assert load_classes(tmp_path / CLASSES_FILE) == HF_NAMES
    train, val = StoredImages(tmp_path / "train.ffcv"), StoredImages(tmp_path / "val.ffcv")
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 2]  # row 4 is broken: left out of the shuffled order
    assert train.labels.tolist() == [labels[row] for row in write_order(len(labels)) if row != 4]
    assert val.labels.tolist() == [2, 1, 0]  # the unlabeled row is left out
    for stored in (train, val):
        for index, label in enumerate(stored.labels):
            np.testing.assert_allclose(_colour(stored.image(index), "left"), HF_COLOURS[label], atol=1)
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert any(p["where"] == "train[4]" and "broken.JPEG" in p["detail"] for p in report["problems"])
    assert any(p["split"] == "val" and "rows [3]" in p["detail"] for p in report["problems"])
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["source"]["kind"] == "huggingface"


def test_huggingface_columns_are_checked_by_name(hf_dirs, tmp_path):
    with pytest.raises(ValueError, match="no column 'img' \\(image_column\\)"):
        write_dataset(hf_dirs["saved"], tmp_path, image_column="img")


# -- kill -9 -------------------------------------------------------------------------------------------------
def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_kill_minus_9_mid_write_leaves_no_final_file_and_the_rerun_succeeds(tmp_path):
    source = tmp_path / "images"
    rng = np.random.default_rng(0)
    for label in range(2):
        (source / "train" / f"class{label}").mkdir(parents=True)
        photo = _jpeg(Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)))
        for n in range(300):  # stored raw: 230 kB each, 36 to a page, 17 pages in all
            (source / "train" / f"class{label}" / f"{n:04d}.JPEG").write_bytes(photo)
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "resnet_ffcv.dataset.writer", "--source_dir", str(source),
        "--output_dir", str(out), "--splits", "[train]", "--num_workers", "2", "--chunk_size", "10",
        "--write_mode", "raw",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    writer = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    partial = out / ".train.ffcv.partial"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.stat().st_size > 8 << 20):  # at least one image page written
        assert writer.poll() is None, writer.stdout.read().decode()
        assert time.monotonic() < deadline, "the writer never started writing"
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    time.sleep(0.5)
    assert writer.returncode == -signal.SIGKILL
    assert not (out / "train.ffcv").exists()
    assert not (out / MANIFEST_FILE).exists()
    assert _processes_mentioning(str(out)) == []  # the worker processes died with their parent

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert len(StoredImages(out / "train.ffcv")) == 600
    assert not partial.exists()
    assert json.loads((out / MANIFEST_FILE).read_text())["splits"]["train"]["images"] == 600


# -- configs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("write_*.yaml")))
def test_write_configs_parse(config, capsys):
    from resnet_ffcv.cli import main

    with pytest.raises(SystemExit) as done:
        main(["write-dataset", "--config", str(REPO / "configs" / config), "--print_config"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert "preset:" in printed and "on_unreadable:" in printed


@pytest.mark.slow
def test_write_throughput_benchmark_smoke():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "write_throughput.py"), "--smoke"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| resnet-ffcv write-dataset |" in result.stdout and "ratio ours / FFCV" in result.stdout


class _SourceWithABug:
    """Sample 5 is a float image: FFCV's field encoder raises, as a bug in a source would."""

    def __len__(self) -> int:
        return 12

    def describe(self, index: int) -> str:
        return f"sample-{index}"

    def __getitem__(self, index: int):
        image = np.zeros((8, 8, 3), dtype=np.float32 if index == 5 else np.uint8)
        return image, 0


def test_a_crashing_worker_stops_the_write_with_the_sample_named_instead_of_hanging(tmp_path):
    """FFCV 1.0.2's own loop waits forever when a worker dies; ours reports the sample and returns."""
    from resnet_ffcv.dataset.ffcv_io import write_ffcv
    from resnet_ffcv.dataset.writer import image_fields

    with pytest.raises(WriteAborted, match=r"sample-5: .*uint8"):
        write_ffcv(tmp_path / "x.ffcv", image_fields(PRESETS["rn18"]), _SourceWithABug(), 2, 2, True)


def test_flat_val_folder_gets_a_clear_error(tmp_path):
    (tmp_path / "train" / "n01440764").mkdir(parents=True)
    (tmp_path / "train" / "n01440764" / "a.JPEG").write_bytes(A_CLASS["rgb.JPEG"][0])
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(A_CLASS["rgb.JPEG"][0])
    with pytest.raises(FileNotFoundError, match=r"val: 1 files and no class folders.*valprep"):
        write_dataset(tmp_path, tmp_path / "out")
