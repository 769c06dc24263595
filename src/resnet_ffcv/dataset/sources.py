"""What the writer reads: an ImageFolder tree or a Hugging Face dataset on disk, as (RGB, label) samples.

Sources are indexable and picklable, so FFCV-style writer processes can read them after a fork. Each one
decodes with :func:`decode_rgb`, which turns every real-world oddity of ImageNet (grayscale, CMYK, palette,
RGBA, a PNG named ``.JPEG``) into RGB and raises :class:`UnreadableImage` naming the file for anything it
cannot decode. Problems found while listing (stray files, symlink loops, empty class folders, classes that
differ between splits) are returned as :class:`Problem` records; the writer decides by policy whether they are fatal.
"""

from __future__ import annotations

import bisect
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from resnet_ffcv.errors import InputNotFound, InvalidValue

# Formats Pillow identifies but cannot decode here: stubs without a decoder (BUFR, GRIB, HDF5; WMF outside
# Windows), EPS (needs Ghostscript), MPEG (video, header only). Files of these stay stray files, not images.
_NO_DECODER = {"BUFR", "GRIB", "HDF5", "WMF", "EPS", "MPEG"}


def _decodable_formats() -> dict[str, bool]:
    """Formats Pillow can open and decode here -> whether it checks a magic number before trying (TGA, IM,
    SPIDER... accept any bytes and could take a stray file for an image)."""
    Image.init()  # registers every plugin (Image.open alone only loads them lazily)
    return {fmt: accept is not None for fmt, (_, accept) in Image.OPEN.items() if fmt not in _NO_DECODER}


_FORMATS = _decodable_formats()
# Content sniffing (for files whose name says nothing) trusts only formats with a magic number.
_SNIFF_FORMATS = tuple(sorted(fmt for fmt, has_magic in _FORMATS.items() if has_magic))
# The fast path by name: torchvision's ImageFolder extensions (plus .jpe) and every extension Pillow registers
# for a format it decodes (.gif, .jfif, .tga, .qoi, ...). Decoding is by content whatever the name says.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"} | {
    suffix for suffix, fmt in Image.registered_extensions().items() if fmt in _FORMATS
}
# Other names a split may be stored under in a Hugging Face dataset.
SPLIT_ALIASES = {"val": ("validation", "valid", "dev"), "validation": ("val", "valid"), "test": ("testing",)}


class UnreadableImage(Exception):
    """A sample that cannot be decoded; the message starts with the file (or dataset row) it came from."""


@dataclass(frozen=True)
class Problem:
    """One questionable input: ``kind`` is the policy it falls under, ``where`` a path or ``split[row]``."""

    kind: str  # stray_file | empty_class | class_mismatch | unreadable
    split: str
    where: str
    detail: str


@dataclass
class ClassInfo:
    """One entry of the class index: ``wnid`` is the folder / dataset class id, ``name`` a readable name."""

    wnid: str | None
    name: str


@dataclass
class SplitListing:
    """A split ready to write: the source to index, and what was left out while listing it."""

    source: object  # an indexable sample source
    problems: list[Problem] = field(default_factory=list)


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def decode_rgb(data: str | Path | bytes, where: str) -> np.ndarray:
    """Decode a file path or encoded bytes to an RGB uint8 HWC array, by content whatever the file name says.

    Any format Pillow decodes is read; an animated one (GIF, APNG, WebP, multi-page TIFF) gives its first
    frame, as a viewer's thumbnail does. Transparent images are laid on white (what a person sees in a viewer)
    rather than on whatever colour the transparent pixels happen to hold. 16-bit images keep their top 8 bits.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()  # decode now, so a truncated file fails here with its name
            mode = image.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
                rgb = _composite_on_white(image)
            elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                rgb = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
                rgb = rgb.convert("RGB")
            else:
                rgb = image if mode == "RGB" else image.convert("RGB")
            array = np.asarray(rgb)
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError...); all mean "unreadable"
        raise UnreadableImage(f"{where}: cannot decode image ({type(error).__name__}: {error})") from error
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise UnreadableImage(f"{where}: decoded to an unexpected shape {array.shape}")
    return array


# -- ImageFolder ---------------------------------------------------------------------------------------------
class ImageFolderSource:
    """(RGB array, label) pairs from a list of files."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        return decode_rgb(path, path), label

    def probe(self, index: int) -> tuple[int, int, int]:
        """(width, height, encoded bytes) from the file header: no decode."""
        path = self.samples[index][0]
        with Image.open(path) as image:
            return image.width, image.height, os.path.getsize(path)


def is_image_file(path: str, name: str) -> bool:
    """By name (the fast path: ImageNet is all ``.JPEG``), else by content for names that say nothing."""
    # Hidden files include macOS "._x.JPEG" resource forks, which carry an image suffix but no image.
    if name.startswith("."):
        return False
    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
        return True
    try:
        with Image.open(path, formats=_SNIFF_FORMATS):
            return True
    except Exception:  # not identified, or not a readable file: a stray file either way
        return False


DirId = tuple[int, int]  # (st_dev, st_ino): one real directory however it is reached


def _dir_id(path: str) -> DirId | None:
    try:
        stat = os.stat(path)  # follows links: the directory a link leads to
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _revisit(path: str, first: str) -> str:
    """Why a directory already listed (as ``first``) is not listed again through ``path``: a short reason that
    names the link's target, never the endless path a loop would make."""
    if not os.path.islink(path):
        return f"the same directory as {first}, reached twice (a bind mount?); not listed again"
    target = os.readlink(path)
    here = os.path.realpath(os.path.dirname(path)) + os.sep
    if here.startswith(os.path.realpath(first).rstrip(os.sep) + os.sep):
        return f"symlink loop: links to {target}, a folder that contains it; not followed"
    return (
        f"symlink to {target}, the same folder as {first}, which is already listed; not followed "
        "(its images would be written twice)"
    )


def _walk_class(top: str, seen: dict[DirId, str], split: str, problems: list[Problem]) -> list[str]:
    """Image files under one class folder, sorted folder by folder like ``os.walk`` + sort, following links but
    listing each real directory once: a link to a folder already seen (a loop, or another class's folder,
    whose images would get this class's label) is a stray-file problem naming the link, and is not followed."""
    found: list[str] = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            problems.append(Problem("unreadable", split, folder, f"cannot list this folder ({error.strerror})"))
            continue
        subfolders = []
        for entry in entries:
            if entry.is_dir():  # follows links, as torchvision's ImageFolder does
                ident = _dir_id(entry.path)
                if ident in seen:
                    problems.append(Problem("stray_file", split, entry.path, _revisit(entry.path, seen[ident])))
                elif ident is not None:
                    seen[ident] = entry.path
                    subfolders.append(entry.path)
            elif is_image_file(entry.path, entry.name):
                found.append(entry.path)
            else:
                problems.append(Problem("stray_file", split, entry.path, "not an image (by name or content)"))
        stack.extend(reversed(subfolders))  # files of a folder first, then its subfolders in name order
    return found


def scan_imagefolder_split(split_dir: Path) -> tuple[dict[str, list[str]], list[Problem]]:
    """Image files per class folder (recursive, sorted, like torchvision's ImageFolder) and stray entries.

    Each real directory is listed once (by ``st_dev, st_ino``), so a symlink loop (a link to this split folder
    or any folder above it) or a link to another class's folder never writes an image twice or under the wrong
    label. Class folders are claimed before any is
    walked, so a link from class ``a`` into class ``b`` is the duplicate, not ``b`` itself.
    """
    split = split_dir.name
    files: dict[str, list[str]] = {}
    problems: list[Problem] = []
    # The split folder and every folder above it count as listed: a link to any of them is a loop.
    seen: dict[DirId, str] = {}
    for folder in (split_dir, *split_dir.resolve().parents):
        ident = _dir_id(str(folder))
        if ident is not None:
            seen.setdefault(ident, str(folder))
    entries = sorted(os.scandir(split_dir), key=lambda entry: entry.name)
    classes = []
    # Real folders claim their identity before links to them, so a class that is a link to another is the copy.
    for entry in sorted((e for e in entries if e.is_dir()), key=lambda e: (e.is_symlink(), e.name)):
        ident = _dir_id(entry.path)
        if ident in seen:
            problems.append(Problem("stray_file", split, entry.path, _revisit(entry.path, seen[ident])))
        elif ident is not None:
            seen[ident] = entry.path
            classes.append(entry)
    for entry in entries:
        if not entry.is_dir():
            problems.append(Problem("stray_file", split, entry.path, "a file beside the class folders"))
    for entry in sorted(classes, key=lambda entry: entry.name):
        files[entry.name] = _walk_class(entry.path, seen, split, problems)
    return files, problems


def list_imagefolder(
    source_dir: Path, splits: tuple[str, ...], class_names: dict[str, str] | None = None
) -> tuple[list[ClassInfo], dict[str, SplitListing]]:
    """Class index (from the first split's non-empty class folders) and one listing per split."""
    scans = {}
    for split in splits:
        split_dir = source_dir / split
        if not split_dir.is_dir():
            raise InputNotFound(f"{split_dir}: missing split folder (expected <class>/<image files> inside)")
        scans[split] = scan_imagefolder_split(split_dir)
        files, problems = scans[split]
        loose = sum(1 for problem in problems if problem.detail == "a file beside the class folders")
        if not files and loose:
            raise InputNotFound(
                f"{split_dir}: {loose} files and no class folders; images must be sorted into <class>/ "
                "folders (ImageNet's flat val/: move each image into its wnid folder first, e.g. valprep.sh)"
            )
    first_files, _ = scans[splits[0]]
    if not first_files:
        raise InputNotFound(f"{source_dir / splits[0]}: no class folders (expected <class>/<image files>)")
    wnids = [name for name, found in first_files.items() if found]
    index = {wnid: label for label, wnid in enumerate(wnids)}

    listings = {}
    for split, (files, problems) in scans.items():
        problems = list(problems)
        samples = []
        for folder, found in files.items():
            if not found:
                problems.append(Problem("empty_class", split, str(source_dir / split / folder), "no image files"))
            elif folder not in index:
                problems.append(
                    Problem(
                        "class_mismatch",
                        split,
                        str(source_dir / split / folder),
                        f"class not in {splits[0]} ({len(found)} images left out)",
                    )
                )
            else:
                samples.extend((path, index[folder]) for path in found)
        if split != splits[0]:
            for wnid in sorted(set(index) - set(name for name, found in files.items() if found)):
                problems.append(Problem("class_mismatch", split, str(source_dir / split / wnid), "class has no images"))
        listings[split] = SplitListing(ImageFolderSource(samples), problems)
    names = class_names or {}
    return [ClassInfo(wnid, names.get(wnid, wnid)) for wnid in wnids], listings


# -- Hugging Face datasets on local disk ---------------------------------------------------------------------
def looks_like_huggingface(source_dir: Path) -> bool:
    """``save_to_disk`` output, or a folder of parquet / arrow files (a hub snapshot or a datasets cache)."""
    if any((source_dir / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        return True
    # Two levels only (``data/train-00000-of-00257.parquet``): never walk a million-file ImageFolder here.
    patterns = ("*.parquet", "*/*.parquet", "*.arrow", "*/*.arrow")
    return any(next(source_dir.glob(pattern), None) for pattern in patterns)


def _find_split(available: list[str], split: str, source_dir: Path) -> str:
    for candidate in (split, *SPLIT_ALIASES.get(split, ())):
        if candidate in available:
            return candidate
    raise InputNotFound(f"{source_dir}: no split {split!r} (found {sorted(available)})")


def _split_data_files(source_dir: Path) -> dict[str, list[str]]:
    """Data files per split, named the way ``datasets`` names them (``train-00000-of-00257.parquet`` ...)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    patterns = get_data_patterns(str(source_dir))
    resolved = DataFilesDict.from_patterns(patterns, base_path=str(source_dir))
    return {
        str(split): sorted(f for f in files if f.endswith((".parquet", ".arrow"))) for split, files in resolved.items()
    }


class ParquetSource:
    """Rows of parquet files, read one row group at a time with pyarrow: no copy into the ``datasets`` cache
    (``datasets`` would convert ImageNet's ~150 GB of parquet to arrow first)."""

    def __init__(self, files: list[str], image_column: str, labels: np.ndarray, keep: np.ndarray, split: str):
        import pyarrow.parquet as pq

        self.files, self.image_column, self.split = files, image_column, split
        self.labels = labels
        self.rows = np.flatnonzero(keep)  # dataset row of each sample
        self.group_starts: list[int] = []  # first dataset row of each (file, row group)
        self.groups: list[tuple[int, int]] = []
        start = 0
        for file_index, path in enumerate(files):
            metadata = pq.ParquetFile(path).metadata
            for group in range(metadata.num_row_groups):
                self.group_starts.append(start)
                self.groups.append((file_index, group))
                start += metadata.row_group(group).num_rows
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}

    def describe(self, index: int) -> str:
        return f"{self.split}[{self.rows[index]}]"

    def _column(self, group_index: int):
        key = (os.getpid(), group_index)  # after a fork, each process reads its own copy
        if key not in self._cache:
            import pyarrow.parquet as pq

            self._cache.clear()
            file_index, group = self.groups[group_index]
            table = pq.ParquetFile(self.files[file_index]).read_row_group(group, columns=[self.image_column])
            self._cache[key] = table.column(self.image_column)
        return self._cache[key]

    # Probing reads whole row groups: the size estimate takes a contiguous run of rows.
    contiguous_probe = True

    def _cell(self, row: int) -> dict:
        group_index = bisect.bisect_right(self.group_starts, row) - 1
        return self._column(group_index)[row - self.group_starts[group_index]].as_py()

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        row = int(self.rows[index])
        return _decode_cell(self._cell(row), f"{self.split}[{row}]"), int(self.labels[row])

    def probe(self, index: int) -> tuple[int, int, int]:
        return _probe_cell(self._cell(int(self.rows[index])))


class ArrowDatasetSource:
    """Rows of a memory-mapped ``datasets.Dataset`` (``save_to_disk`` output or cached ``.arrow`` files)."""

    def __init__(self, dataset, image_column: str, labels: np.ndarray, keep: np.ndarray, split: str):
        from datasets import Image as ImageFeature

        # Raw bytes, so that decoding (and its failures) goes through decode_rgb like every other source.
        self.dataset = dataset.select_columns([image_column]).cast_column(image_column, ImageFeature(decode=False))
        self.image_column, self.split = image_column, split
        self.labels = labels
        self.rows = np.flatnonzero(keep)

    def __len__(self) -> int:
        return len(self.rows)

    def describe(self, index: int) -> str:
        return f"{self.split}[{self.rows[index]}]"

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        row = int(self.rows[index])
        cell = self.dataset[row][self.image_column]
        return _decode_cell(cell, f"{self.split}[{row}]"), int(self.labels[row])

    def probe(self, index: int) -> tuple[int, int, int]:
        return _probe_cell(self.dataset[int(self.rows[index])][self.image_column])


def _probe_cell(cell: dict) -> tuple[int, int, int]:
    data = cell.get("bytes") or Path(cell["path"]).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return image.width, image.height, len(data)


def _decode_cell(cell, where: str) -> np.ndarray:
    if isinstance(cell, dict):
        if cell.get("path"):
            where = f"{where} ({cell['path']})"
        if cell.get("bytes") is not None:
            return decode_rgb(cell["bytes"], where)
        if cell.get("path") and Path(cell["path"]).is_file():
            return decode_rgb(cell["path"], where)
    raise UnreadableImage(f"{where}: no image bytes in this row")


def _label_names(features, label_column: str, labels: np.ndarray) -> list[str]:
    from datasets import ClassLabel

    feature = features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(label) for label in range(int(labels.max()) + 1 if len(labels) else 0)]


def _open_splits(datasets, source_dir: Path, splits: tuple[str, ...]) -> dict[str, tuple[str, object]]:
    """split -> ("arrow", memory-mapped Dataset) or ("parquet", file list); nothing is copied."""
    opened: dict[str, tuple[str, object]] = {}
    if (source_dir / "dataset_dict.json").is_file() or (source_dir / "state.json").is_file():
        loaded = datasets.load_from_disk(str(source_dir))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        for split in splits:
            opened[split] = ("arrow", loaded[_find_split(list(loaded), split, source_dir)])
        return opened
    files = _split_data_files(source_dir)
    for split in splits:
        found = files[_find_split([s for s in files if files[s]], split, source_dir)]
        if all(path.endswith(".arrow") for path in found):
            parts = [datasets.Dataset.from_file(path) for path in found]
            opened[split] = ("arrow", datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0])
        elif all(path.endswith(".parquet") for path in found):
            opened[split] = ("parquet", found)
        else:
            raise InvalidValue(f"{source_dir}: split {split!r} mixes parquet and arrow files: {found[:4]}")
    return opened


def _features_and_labels(datasets, kind: str, data, label_column: str) -> tuple[dict, np.ndarray]:
    import pyarrow.parquet as pq

    if kind == "arrow":
        features = data.features
        if label_column not in features:
            return features, np.zeros(0, np.int64)
        return features, np.asarray(data.with_format("numpy")[label_column], dtype=np.int64)
    features = datasets.Features.from_arrow_schema(pq.read_schema(data[0]))
    if label_column not in features:
        return features, np.zeros(0, np.int64)
    parts = [pq.read_table(path, columns=[label_column]).column(label_column).to_numpy() for path in data]
    return features, np.concatenate(parts).astype(np.int64)


def list_huggingface(
    source_dir: Path,
    splits: tuple[str, ...],
    image_column: str = "image",
    label_column: str = "label",
    class_names: dict[str, str] | None = None,
) -> tuple[list[ClassInfo], dict[str, SplitListing]]:
    """Class index from the first split's label feature (``ClassLabel`` names), and one listing per split.

    Labels outside the index (e.g. ImageNet's unlabeled test split, label -1) and a split whose class names
    differ from the first split's are ``class_mismatch`` problems; their rows are left out.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            f"{source_dir} is a Hugging Face dataset: install the `datasets` package (pip install 'resnet-ffcv[hf]')"
        ) from error

    listings: dict[str, SplitListing] = {}
    index_names: list[str] = []
    for split, (kind, data) in _open_splits(datasets, source_dir, splits).items():
        features, labels = _features_and_labels(datasets, kind, data, label_column)
        for column, key in ((image_column, "image_column"), (label_column, "label_column")):
            if column not in features:
                raise InvalidValue(
                    f"{source_dir} split {split!r}: no column {column!r} ({key}); columns: {sorted(features)}"
                )
        names = _label_names(features, label_column, labels)
        problems: list[Problem] = []
        if not index_names:
            index_names = names
        elif names != index_names:
            # Same class, same label: translate this split's labels by class name.
            lookup = {name: label for label, name in enumerate(index_names)}
            translate = np.array([lookup.get(name, -1) for name in names] or [-1], dtype=np.int64)
            in_range = (labels >= 0) & (labels < len(names))
            labels = np.where(in_range, translate[np.clip(labels, 0, len(translate) - 1)], -1)
            unknown = sorted(set(names) - set(lookup))
            problems.append(
                Problem(
                    "class_mismatch",
                    split,
                    f"{source_dir}:{split}",
                    f"class names differ from the first split's; not in the index: {unknown[:20]}",
                )
            )
        keep = (labels >= 0) & (labels < len(index_names))
        if not keep.all():
            rows = np.flatnonzero(~keep)
            problems.append(
                Problem(
                    "class_mismatch",
                    split,
                    f"{source_dir}:{split}",
                    f"{len(rows)} rows with labels outside the class index, e.g. rows {rows[:20].tolist()}",
                )
            )
        source_class = ArrowDatasetSource if kind == "arrow" else ParquetSource
        listings[split] = SplitListing(source_class(data, image_column, labels, keep, split), problems)

    known = class_names or {}
    return [ClassInfo(None, known.get(name, name)) for name in index_names], listings


def read_class_names(path: str | Path) -> dict[str, str]:
    """Readable names by class id: ImageNet's ``LOC_synset_mapping.txt`` lines
    (``n01440764 tench, Tinca tinca``) or a JSON object ``{"n01440764": "tench", ...}``."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        names = json.loads(text)
        if not isinstance(names, dict):
            raise InvalidValue(f"{path}: expected a JSON object mapping class ids to names")
        return {str(key): str(value) for key, value in names.items()}
    names = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            if not name:
                raise InvalidValue(f"{path}:{number}: expected '<class id> <name>', got {line!r}")
            names[wnid] = name.strip()
    return names
