"""``resnet-ffcv write-dataset``: ImageNet (ImageFolder or Hugging Face dataset on disk) -> ``.ffcv`` files.

    <output_dir>/train.ffcv, val.ffcv     images (RGBImageField ``image``) and labels (IntField ``label``)
    <output_dir>/classes.json             one class index for all splits: index, wnid, readable name
    <output_dir>/write_report.json        every input that was left out or refused, and why
    <output_dir>/manifest.json            written last: counts, class-map hash, parameters, versions, times

Writing ImageNet takes hours, so the run is built to survive: every problem that can be found by listing
files is found (and, by policy, refused) before any image is decoded; the output size is estimated and checked
against the free space; each split is written under a temporary name and renamed when complete; a rerun of the
same command skips splits that the manifest records as complete and starts the others afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from resnet_ffcv import atomic
from resnet_ffcv.dataset.ffcv_io import WriteAborted
from resnet_ffcv.dataset.format import (
    CLASSES_FILE,
    IMAGE_FIELD,
    LABEL_FIELD,
    MANIFEST_FILE,
    class_entries,
    classes_sha256,
    save_classes,
)
from resnet_ffcv.dataset.sources import (
    ClassInfo,
    Problem,
    list_huggingface,
    list_imagefolder,
    looks_like_huggingface,
    read_class_names,
)
from resnet_ffcv.errors import InputNotFound, InvalidValue, NotEnoughSpace, OutputExists, UserError

REPORT_FILE = "write_report.json"
LOCK_FILE = ".write-dataset.lock"
PARTIAL_SUFFIX = ".partial"
PAGE_SIZE = 1 << 23  # FFCV's default page (8 MiB); one sample must fit in a page
WRITE_ORDER_SEED = 0  # the order of a shuffled split: fixed, so a rerun writes the same file
# The cores this process may use (a container or taskset may allow fewer than the machine has).
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

Policy = Literal["fail", "skip"]
WriteMode = Literal["proportion", "jpg", "raw"]


@dataclass(frozen=True)
class Preset:
    """FFCV's ImageNet writer settings (libffcv/ffcv-imagenet, rn50 and rn18 configs)."""

    max_resolution: int
    compress_probability: float
    jpeg_quality: int
    write_mode: str = "proportion"


PRESETS = {
    "rn50": Preset(max_resolution=500, compress_probability=0.5, jpeg_quality=90),
    "rn18": Preset(max_resolution=400, compress_probability=0.1, jpeg_quality=90),
}


class DatasetProblems(UserError, ValueError):
    """Inputs refused by a ``fail`` policy; the message lists them and names the report file."""


def image_fields(preset: Preset) -> dict:
    from ffcv.fields import IntField, RGBImageField

    return {
        IMAGE_FIELD: RGBImageField(
            write_mode=preset.write_mode,
            max_resolution=preset.max_resolution,
            compress_probability=preset.compress_probability,
            jpeg_quality=preset.jpeg_quality,
        ),
        LABEL_FIELD: IntField(),
    }


def _sha256(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


# -- size estimate -------------------------------------------------------------------------------------------
def estimate_bytes(source, preset: Preset, samples: int, num_workers: int, seed: int = 0) -> int:
    """Expected ``.ffcv`` size from the headers of a sample of images (no decoding, so ~1 ms per image).

    A raw image takes exactly width x height x 3 bytes after FFCV's downscale to ``max_resolution``; a JPEG
    one is taken as the source file's bytes per pixel times the stored pixels (ImageNet's own JPEGs are of
    similar quality to FFCV's 90). Raw images dominate the total at both presets.
    """
    count = len(source)
    if count == 0:
        return 0
    rng = random.Random(seed)
    n = min(samples, count)
    if getattr(source, "contiguous_probe", False):
        start = rng.randrange(count - n + 1)
        picks = range(start, start + n)
    else:
        picks = rng.sample(range(count), n)
    jpeg_share = {"jpg": 1.0, "raw": 0.0}.get(preset.write_mode, preset.compress_probability)
    sizes = []
    for index in picks:
        try:
            width, height, encoded = source.probe(index)
        except Exception:  # unreadable: found again, and handled by policy, during the write
            continue
        scale = min(1.0, preset.max_resolution / max(width, height))
        pixels = int(width * scale) * int(height * scale)
        jpeg = encoded * pixels / max(1, width * height)
        sizes.append(jpeg_share * jpeg + (1 - jpeg_share) * 3 * pixels)
    mean = float(np.mean(sizes)) if sizes else 0.0
    # Page tails: a sample that does not fit the rest of a page starts a new one (about half a sample wasted).
    per_image = mean * (1 + mean / 2 / PAGE_SIZE) + 64  # metadata + allocation-table entry
    # The data region starts on a page boundary after the header; each worker's last page is partly filled.
    return int(count * per_image + PAGE_SIZE + num_workers * PAGE_SIZE / 2)


def check_free_space(output_dir: Path, needed: int, free: int | None, margin: float = 1.05) -> None:
    free = shutil.disk_usage(output_dir).free if free is None else free
    if needed * margin > free:
        raise NotEnoughSpace(
            f"{output_dir}: not enough free space: the output needs about {needed / 1e9:.2f} GB "
            f"(+{(margin - 1) * 100:.0f}% margin, estimated from a sample of images) "
            f"and {free / 1e9:.2f} GB are free; "
            "free some space or choose another output_dir"
        )


# -- problems and report -------------------------------------------------------------------------------------
def _enforce(problems: list[Problem], policies: dict[str, Policy], report: Path) -> None:
    refused = [problem for problem in problems if policies[problem.kind] == "fail"]
    if not refused:
        return
    lines = [f"  [{p.kind}] {p.where}: {p.detail}" for p in refused[:30]]
    more = f"\n  ... and {len(refused) - 30} more" if len(refused) > 30 else ""
    kinds = sorted({problem.kind for problem in refused})
    raise DatasetProblems(
        f"{len(refused)} input problem(s) refused by policy (full list in {report}):\n"
        + "\n".join(lines)
        + more
        + f"\nFix the inputs, or set {', '.join(f'on_{kind}: skip' for kind in kinds)} to leave them out."
    )


def _write_report(
    path: Path, problems: list[Problem], policies: dict[str, Policy], written: dict[str, int] | None = None
) -> None:
    """``counts``: images written per split (``train/written``) and inputs left out per split and kind."""
    entries = [{**asdict(p), "action": "refused" if policies[p.kind] == "fail" else "skipped"} for p in problems]
    counts = Counter(f"{p.split}/{p.kind}" for p in problems) + Counter(
        {f"{split}/written": images for split, images in (written or {}).items()}
    )
    atomic.write_text(path, json.dumps({"counts": dict(sorted(counts.items())), "problems": entries}, indent=1))


# -- manifest ------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("resnet-ffcv", "ffcv", "numpy", "pillow", "opencv-python", "datasets", "pyarrow"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


def _read_manifest(output_dir: Path) -> dict:
    path = output_dir / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _is_complete(output: Path, recorded: dict | None, fingerprint: str) -> bool:
    return (
        recorded is not None
        and recorded.get("fingerprint") == fingerprint
        and output.is_file()
        and output.stat().st_size == recorded.get("bytes")
    )


# -- the command ---------------------------------------------------------------------------------------------
def write_dataset(
    source_dir: str | Path,
    output_dir: str | Path,
    splits: tuple[str, ...] = ("train", "val"),
    source: Literal["auto", "imagefolder", "huggingface"] = "auto",
    image_column: str = "image",
    label_column: str = "label",
    class_names_file: str | None = None,
    preset: Literal["rn50", "rn18"] = "rn50",
    write_mode: WriteMode | None = None,
    max_resolution: int | None = None,
    compress_probability: float | None = None,
    jpeg_quality: int | None = None,
    shuffle_splits: tuple[str, ...] | None = None,
    num_workers: int = CORES,
    chunk_size: int = 100,
    on_unreadable: Policy = "skip",
    on_stray_file: Policy = "fail",
    on_empty_class: Policy = "fail",
    on_class_mismatch: Policy = "fail",
    overwrite: bool = False,
    check_space: bool = True,
    size_sample: int = 256,
    assume_free_bytes: int | None = None,
) -> dict[str, Path]:
    """Write each split to ``<output_dir>/<split>.ffcv``, with classes.json, write_report.json, manifest.json.

    Returns the ``.ffcv`` paths by split.

    Args:
        source_dir: an ImageFolder root (``<split>/<class>/<image>``), or a Hugging Face dataset on local
            disk: a ``save_to_disk`` folder, or a folder of parquet / arrow files (e.g. a hub snapshot).
        output_dir: where the outputs go (created if missing).
        splits: splits to write, also the output names; the first one defines the class index. A Hugging Face
            split ``validation`` is found for ``val``.
        source: ``auto`` picks ``huggingface`` when ``source_dir`` holds ``dataset_dict.json``,
            ``state.json`` or parquet/arrow files, else ``imagefolder``.
        image_column: Hugging Face column with the images.
        label_column: Hugging Face column with integer (``ClassLabel``) labels.
        class_names_file: readable class names by class id (ImageNet's ``LOC_synset_mapping.txt`` lines
            ``n01440764 tench, Tinca tinca``, or a JSON object); default: the folder / label names.
        preset: FFCV's ImageNet settings: ``rn50`` (longest side 500 px, half of the images stored as JPEG at
            quality 90, the rest raw) or ``rn18`` (400 px, 10% JPEG).
        write_mode: overrides the preset: ``proportion`` (JPEG at ``compress_probability``), ``jpg``, ``raw``.
        max_resolution: overrides the preset: longest stored side in pixels (larger images are downscaled).
        compress_probability: overrides the preset: share of images stored as JPEG under ``proportion``.
        jpeg_quality: overrides the preset: JPEG quality of the compressed images.
        shuffle_splits: splits written in a fixed random order (seeded, the same on every rerun) instead of the
            source's class-by-class order, so that each FFCV page mixes classes: ``data.order: quasi_random``
            reads whole pages, and on a class-sorted file its batches would hold a few classes each
            (docs/data-loading.md). Default: ``train`` where it is written; the other splits keep the source order.
        num_workers: writer processes (decode, resize, encode); default: all cores.
        chunk_size: images per work unit handed to a writer process.
        on_unreadable: a truncated or undecodable image: ``skip`` it (recorded in the report) or ``fail`` at
            the first one.
        on_stray_file: a non-image file among the class folders: ``fail`` before writing, or ``skip`` it.
        on_empty_class: a class folder without images: ``fail``, or ``skip`` (left out of the class index).
        on_class_mismatch: a later split whose classes differ from the first one's: ``fail``, or ``skip`` its
            images of unknown classes.
        overwrite: replace existing outputs; otherwise only splits the manifest records as complete with the
            same parameters are kept (and skipped), and any other existing output is refused.
        check_space: estimate the output size and refuse to start when the destination lacks the space.
        size_sample: images per split whose headers are read to estimate the output size.
        assume_free_bytes: free space to assume at the destination instead of asking the file system (for
            mounts that misreport it, and for tests).
    """
    started = time.time()
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    _check_arguments(source_dir, splits, chunk_size, num_workers, shuffle_splits)
    params = _resolve_preset(preset, write_mode, max_resolution, compress_probability, jpeg_quality)
    policies = _check_policies(
        unreadable=on_unreadable, stray_file=on_stray_file, empty_class=on_empty_class, class_mismatch=on_class_mismatch
    )
    names = read_class_names(class_names_file) if class_names_file else None
    source, classes, listings = _list_source(source_dir, tuple(splits), source, image_column, label_column, names)
    output_dir.mkdir(parents=True, exist_ok=True)
    shuffled = tuple(split for split in splits if split in (("train",) if shuffle_splits is None else shuffle_splits))
    job = _Job(source, source_dir, output_dir, classes, listings, params, policies, shuffled)
    report = _Report(output_dir / REPORT_FILE, policies)
    with _exclusive(output_dir):
        report.refuse_listed(listings)
        for split, listing in listings.items():
            if len(listing.source) == 0:
                raise InputNotFound(f"{source_dir}: split {split!r} has no images to write")
        done = _complete_splits(job, overwrite)
        todo = [split for split in splits if split not in done]
        for split, record in done.items():
            report.count(split, record.get("images", 0))
        report.keep_left_out_of(done)
        # Leftovers of a killed run: its workers died with it, so these are garbage.
        for leftover in output_dir.glob(f".*{PARTIAL_SUFFIX}"):
            leftover.unlink()
        if check_space and todo:
            needed = sum(estimate_bytes(listings[s].source, params, size_sample, num_workers) for s in todo)
            check_free_space(output_dir, needed, assume_free_bytes)
        save_classes(output_dir / CLASSES_FILE, classes)
        manifest = job.manifest(done)
        for split in todo:
            record = _write_reported_split(job, split, report, num_workers, chunk_size, on_unreadable)
            report.count(split, record["images"])
            manifest["splits"][split] = {**record, "fingerprint": job.fingerprints[split], "classes": len(classes)}
            atomic.write_text(output_dir / MANIFEST_FILE, json.dumps(manifest, indent=1))
        manifest.update(
            complete=True,
            duration_s=round(time.time() - started, 1),
            finished=time.strftime("%FT%TZ", time.gmtime()),
        )
        atomic.write_text(output_dir / MANIFEST_FILE, json.dumps(manifest, indent=1))
    left_out = Counter(problem.kind for problem in report.problems)
    if left_out:
        print(f"left out: {dict(left_out)}; details in {report.path}")
    return job.outputs


def write_order(count: int) -> np.ndarray:
    """The source index of each sample of a shuffled split, in file order, before any unreadable one is left out
    (the file keeps this order less those): the same permutation on every run."""
    return np.random.default_rng(WRITE_ORDER_SEED).permutation(count)


def _check_arguments(
    source_dir: Path, splits: tuple[str, ...], chunk_size: int, num_workers: int, shuffle_splits: tuple[str, ...] | None
) -> None:
    if not source_dir.is_dir():
        raise InputNotFound(f"source_dir={source_dir}: not a directory")
    if not splits:
        raise InvalidValue("splits: expected at least one split name")
    if chunk_size < 1 or num_workers < 1:
        raise InvalidValue(f"chunk_size={chunk_size}, num_workers={num_workers}: expected positive integers")
    unknown = [split for split in shuffle_splits or () if split not in splits]
    if unknown:
        raise InvalidValue(f"shuffle_splits={list(shuffle_splits)}: {unknown} not among splits={list(splits)}")


def _list_source(source_dir: Path, splits: tuple[str, ...], source: str, image_column, label_column, names):
    """(source kind, the class index, each split's listing): every file found, nothing decoded yet."""
    if source == "auto":
        source = "huggingface" if looks_like_huggingface(source_dir) else "imagefolder"
    if source == "huggingface":
        classes, listings = list_huggingface(source_dir, splits, image_column, label_column, names)
    else:
        classes, listings = list_imagefolder(source_dir, splits, names)
    if not classes:
        raise InputNotFound(f"{source_dir}: no classes with images in split {splits[0]!r}")
    return source, classes, listings


def _check_policies(**policies: Policy) -> dict[str, Policy]:
    """The ``on_<kind>`` arguments by problem kind."""
    for kind, policy in policies.items():
        if policy not in ("fail", "skip"):
            raise InvalidValue(f"on_{kind}={policy!r}: expected 'fail' or 'skip'")
    return policies


@dataclass
class _Job:
    """What one ``write_dataset`` call writes, resolved: identifies a complete split on a rerun."""

    source: str
    source_dir: Path
    output_dir: Path
    classes: list[ClassInfo]
    listings: dict
    params: Preset
    policies: dict[str, Policy]
    shuffle_splits: tuple[str, ...]  # resolved: those of ``listings`` written shuffled, in their order

    @property
    def outputs(self) -> dict[str, Path]:
        return {split: self.output_dir / f"{split}.ffcv" for split in self.listings}

    @property
    def writer_params(self) -> dict:
        policies = {f"on_{k}": v for k, v in self.policies.items()}
        return {**asdict(self.params), "page_size": PAGE_SIZE, **policies, "shuffle_splits": list(self.shuffle_splits)}

    @property
    def classes_sha256(self) -> str:
        return classes_sha256(class_entries(self.classes))

    @cached_property
    def fingerprints(self) -> dict[str, str]:
        """A split is the same when its source, size, class index and writer settings are."""
        source_path, classes, params = str(self.source_dir.resolve()), self.classes_sha256, self.writer_params
        return {
            split: _sha256(json.dumps([self.source, source_path, split, len(listing.source), classes, params]))
            for split, listing in self.listings.items()
        }

    def manifest(self, done: dict) -> dict:
        """The manifest before the missing splits are written (``complete`` turns true after the last one)."""
        return {
            "complete": False,
            "source": {"kind": self.source, "path": str(self.source_dir.resolve())},
            "num_classes": len(self.classes),
            "classes_sha256": self.classes_sha256,
            "writer": self.writer_params,
            "versions": _versions(),
            "splits": done,
        }


@dataclass
class _Report:
    """``write_report.json``: every input left out or refused, rewritten at each change so a crash keeps it."""

    path: Path
    policies: dict[str, Policy]
    problems: list[Problem] = field(default_factory=list)
    previous: list[Problem] = field(default_factory=list)
    written: dict[str, int] = field(default_factory=dict)  # images per split in the output files

    def add(self, problems: list[Problem]) -> None:
        self.problems += problems
        _write_report(self.path, self.problems, self.policies, self.written)

    def count(self, split: str, images: int) -> None:
        self.written[split] = images
        self.add([])

    def refuse_listed(self, listings: dict) -> None:
        """Records what listing the inputs found, then refuses it if a ``fail`` policy says so."""
        self.previous = _read_report(self.path)
        self.add([problem for listing in listings.values() for problem in listing.problems])
        _enforce(self.problems, self.policies, self.path)

    def keep_left_out_of(self, done: dict) -> None:
        """What the earlier run left out of the splits it completed is still left out of them."""
        self.add([p for p in self.previous if p.kind == "unreadable" and p.split in done])


def _write_reported_split(job: _Job, split: str, report: _Report, num_workers, chunk_size, on_unreadable) -> dict:
    """Writes one split; the images it skipped, or the one that stopped it, go into the report."""
    source = job.listings[split].source
    order = write_order(len(source)) if split in job.shuffle_splits else None
    try:
        record, skipped = _write_split(
            source, job.outputs[split], job.params, num_workers, chunk_size, on_unreadable, split, order
        )
    except WriteAborted as error:
        report.add([Problem("unreadable", split, str(error).split(": ")[0], str(error))])
        raise
    report.add([Problem("unreadable", split, where, reason) for where, reason in skipped])
    return record


def _complete_splits(job: _Job, overwrite: bool) -> dict:
    """Manifest records of the splits a previous run completed with the same inputs and parameters; refuses
    (without ``overwrite``) any other existing output, naming what differs."""
    output_dir, outputs, fingerprints = job.output_dir, job.outputs, job.fingerprints
    manifest = {} if overwrite else _read_manifest(output_dir)
    recorded = manifest.get("splits", {})
    done = {
        split: recorded[split]
        for split in outputs
        if _is_complete(outputs[split], recorded.get(split), fingerprints[split])
    }
    existing = [str(path) for split, path in outputs.items() if split not in done and path.exists()]
    if existing and not overwrite:
        differences = _differences(manifest, job)
        what = f" ({'; '.join(differences)})" if differences else ""
        raise OutputExists(
            f"{', '.join(existing)} already exist and {output_dir / MANIFEST_FILE} does not record them as "
            f"written with these inputs and parameters{what}; pass --overwrite true to replace them, or "
            "another --output_dir"
        )
    for split, path in outputs.items():
        if split in done:
            print(f"{split}: {path} is complete (manifest matches), skipping")
    return done


def _differences(manifest: dict, job: _Job) -> list[str]:
    """``max_resolution: 500 in the manifest, 400 now`` for each writer parameter; the source and the classes."""
    recorded, now = manifest.get("writer", {}), job.writer_params
    newer = [key for key in now if recorded and key not in recorded]  # parameters added since it was written
    found = [
        f"{key}: {recorded.get(key, '(not recorded)')} in the manifest, {now.get(key)} now"
        for key in [*recorded, *newer]
        if recorded.get(key) != now.get(key)
    ]
    source = manifest.get("source", {}).get("path")
    if source is not None and source != str(job.source_dir.resolve()):
        found.append(f"source_dir: {source} in the manifest, {job.source_dir.resolve()} now")
    if manifest.get("classes_sha256") not in (None, job.classes_sha256):
        found.append("the class list (classes.json) differs")
    return found


def _read_report(report: Path) -> list[Problem]:
    try:
        entries = json.loads(report.read_text())["problems"]
        return [Problem(e["kind"], e["split"], e["where"], e["detail"]) for e in entries]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return []


def _resolve_preset(preset, write_mode, max_resolution, compress_probability, jpeg_quality) -> Preset:
    if preset not in PRESETS:
        raise InvalidValue(f"preset={preset!r}: expected one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    params = Preset(
        max_resolution=base.max_resolution if max_resolution is None else max_resolution,
        compress_probability=base.compress_probability if compress_probability is None else compress_probability,
        jpeg_quality=base.jpeg_quality if jpeg_quality is None else jpeg_quality,
        write_mode=base.write_mode if write_mode is None else write_mode,
    )
    if params.write_mode not in ("proportion", "jpg", "raw"):
        raise InvalidValue(f"write_mode={params.write_mode!r}: expected 'proportion', 'jpg' or 'raw'")
    if not params.max_resolution >= 16 or params.max_resolution**2 * 3 > PAGE_SIZE:
        # A stored image must fit in one FFCV page (8 MiB): 1672 px square, raw.
        raise InvalidValue(f"max_resolution={params.max_resolution}: expected 16..1672 pixels")
    if not 0.0 <= params.compress_probability <= 1.0:
        raise InvalidValue(f"compress_probability={params.compress_probability}: expected 0..1")
    if not 1 <= params.jpeg_quality <= 100:
        raise InvalidValue(f"jpeg_quality={params.jpeg_quality}: expected 1..100")
    return params


def _write_split(source, output: Path, params: Preset, num_workers, chunk_size, on_unreadable, split, order):
    from resnet_ffcv.dataset.ffcv_io import write_ffcv  # noqa: I001

    partial = output.with_name(f".{output.name}{PARTIAL_SUFFIX}")
    start = time.perf_counter()
    try:
        result = write_ffcv(
            partial,
            image_fields(params),
            source,
            num_workers=min(num_workers, max(1, len(source))),
            chunk_size=chunk_size,
            skip_unreadable=on_unreadable == "skip",
            desc=split,
            page_size=PAGE_SIZE,
            order=order,
        )
        if result.written == 0:
            raise RuntimeError(f"{split}: every image was unreadable; nothing written")
        os.replace(partial, output)
        atomic.fsync_dir(output.parent)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    size = output.stat().st_size
    rate = len(source) / seconds
    classes = len(set(_labels_of(source)))
    print(
        f"{split}: {result.written} images ({len(result.skipped)} skipped), {classes} classes, "
        f"{size / 1e9:.3f} GB "
        f"in {seconds:.1f} s ({rate:.0f} images/s) -> {output}"
    )
    record = {
        "file": output.name,
        "images": result.written,
        "skipped": len(result.skipped),
        "bytes": size,
        "seconds": round(seconds, 2),
        "images_per_second": round(rate, 1),
    }
    return record, result.skipped


def _labels_of(source) -> list[int]:
    if hasattr(source, "samples"):
        return [label for _, label in source.samples]
    return source.labels[source.rows].tolist()


class _exclusive:
    """One writer per output directory: a second concurrent run fails at once instead of sharing temp files.
    The OS drops the lock when the process dies, so a killed run never blocks its rerun."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK_FILE

    def __enter__(self):
        self.file = open(self.path, "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise RuntimeError(f"{self.path.parent}: another write-dataset run is writing here") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m resnet_ffcv.dataset.writer``: the same command as ``resnet-ffcv write-dataset``, without importing
    Lightning (seconds saved on a CPU box that only writes data)."""
    from jsonargparse import auto_cli

    auto_cli(write_dataset, args=argv, as_positional=False, prog="python -m resnet_ffcv.dataset.writer")


if __name__ == "__main__":
    main()
