"""The dataset format, defined once: what ``write-dataset`` writes and what training, inspection and doctor read.

    <data_dir>/train.ffcv, val.ffcv    FFCV files with two fields: ``image`` (RGBImageField), ``label`` (IntField)
    <data_dir>/classes.json            [{index, wnid, name}, ...]: one class index for all splits
    <data_dir>/manifest.json           written last by the writer: counts, hashes, parameters, versions

The schema check reads only a file's header and per-sample metadata (labels live there), so it takes well under
a second even for ImageNet's 1.28 M samples.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from resnet_ffcv import atomic
from resnet_ffcv.errors import InputNotFound, InvalidValue

if TYPE_CHECKING:
    from ffcv.reader import Reader

IMAGE_FIELD = "image"
LABEL_FIELD = "label"
CLASSES_FILE = "classes.json"
MANIFEST_FILE = "manifest.json"


class NamedClass(Protocol):
    """One class of the index (``resnet_ffcv.dataset.sources.ClassInfo`` is one): its WordNet id and readable name."""

    wnid: str | None
    name: str


def field_types() -> dict[str, type]:
    """The FFCV field class of each field (imported lazily: FFCV takes seconds to import)."""
    from ffcv.fields import IntField, RGBImageField

    return {IMAGE_FIELD: RGBImageField, LABEL_FIELD: IntField}


# -- classes.json ----------------------------------------------------------------------------------------------
def class_entries(classes: list[NamedClass]) -> list[dict]:
    return [{"index": index, "wnid": info.wnid, "name": info.name} for index, info in enumerate(classes)]


def classes_sha256(entries: list[dict]) -> str:
    """The class map's hash in manifest.json (``classes_sha256``): the writer records it, staging checks it."""
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def save_classes(path: Path, classes: list[NamedClass]) -> None:
    atomic.write_text(path, json.dumps(class_entries(classes), indent=1))


def load_classes(path: str | Path) -> list[str]:
    """Class names by label index from a ``classes.json``."""
    entries = json.loads(Path(path).read_text())
    return [entry["name"] for entry in sorted(entries, key=lambda entry: entry["index"])]


# -- .ffcv schema ----------------------------------------------------------------------------------------------
def open_ffcv(path: str | Path) -> Reader:
    """FFCV's reader of ``path``, after checking that it is a readable .ffcv file with our two fields."""
    from ffcv.reader import Reader

    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{path}: no such .ffcv file")
    try:
        reader = Reader(str(path))
    except Exception as error:  # numpy / ffcv errors say nothing about which file
        raise InvalidValue(f"{path}: not a readable .ffcv file ({type(error).__name__}: {error})") from error
    found = {name: type(handler).__name__ for name, handler in reader.handlers.items()}
    for name, field_type in field_types().items():
        if name not in reader.handlers:
            raise InvalidValue(
                f"{path}: no field {name!r} (fields: {found}); expected {IMAGE_FIELD!r} and {LABEL_FIELD!r}"
            )
        if not isinstance(reader.handlers[name], field_type):
            raise InvalidValue(f"{path}: field {name!r} is {found[name]}, expected {field_type.__name__}")
    return reader


def field_metadata(reader: Reader, name: str) -> np.ndarray:
    """The per-sample metadata of field ``name`` (the label itself for an IntField; sizes for an image)."""
    return reader.metadata[f"f{reader.field_names.index(name)}"]


def validate_ffcv(path: str | Path, num_classes: int | None, classes_key: str = "data.num_classes") -> int:
    """Checks the schema, that there are samples and that labels lie in ``0..num_classes-1``; returns the count.

    ``classes_key`` names where ``num_classes`` came from, for the message; ``None`` skips the label check.
    """
    reader = open_ffcv(path)
    if reader.num_samples == 0:
        raise InvalidValue(f"{path}: holds no samples")
    if num_classes is not None:
        labels = field_metadata(reader, LABEL_FIELD)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise InvalidValue(
                f"{path}: label {int(labels[bad[0]])} at sample {int(bad[0])} is outside 0..{num_classes - 1} "
                f"({classes_key}={num_classes}; {bad.size} samples out of range)"
            )
    return int(reader.num_samples)
