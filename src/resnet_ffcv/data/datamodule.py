"""The FFCV LightningDataModule: ``train.ffcv`` / ``val.ffcv`` -> uint8 NCHW (channels_last) batches.

Every ``*_dataloader`` is one call into :mod:`resnet_ffcv.data.loading`, which builds FFCV's loaders (uint8 to the
end: the LightningModule normalizes on the device) and adds what FFCV's ``Loader`` does not do on its own under
Lightning (epoch order, exact mid-epoch resume, no leaked iterators). Loaders are built inside the dataloader
hooks because ``distributed=True`` needs the process group. The file format and its checks are
:mod:`resnet_ffcv.dataset.format`; the image-folder input of ``predict`` is :mod:`resnet_ffcv.data.image_files`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from resnet_ffcv.data.image_files import (
    IndexedBatches,
    image_files_loader,
    predict_image_files,
    predict_workers,
    relative_names,
)
from resnet_ffcv.data.loading import EpochLoader, cores_per_rank, eval_loader, train_loader
from resnet_ffcv.data.resolution import ResolutionSchedule, check_resolution
from resnet_ffcv.dataset.format import CLASSES_FILE, load_classes, validate_ffcv
from resnet_ffcv.errors import InputNotFound, InvalidValue

Order = Literal["random", "quasi_random", "sequential"]


class FFCVDataModule(L.LightningDataModule):
    """ImageNet-style classification from FFCV files written by ``resnet-ffcv write-dataset``.

    Args:
        data_dir: folder holding ``train_file``, ``val_file`` and ``classes.json``.
        train_file: training split, relative to ``data_dir``.
        val_file: validation split, relative to ``data_dir``.
        batch_size: per device (the global batch is ``batch_size * devices * num_nodes``).
        global_batch_size: if set, replaces ``batch_size``: split evenly over all ranks (must divide).
        val_batch_size: per device for validation; defaults to the training batch size.
        num_workers: FFCV decode threads per rank; default: the CPU cores divided by the ranks on this node.
        train_resolution: side of the random-resized crop, in pixels (a multiple of 8), when ``resolution``
            is off.
        val_resolution: side of the centre crop, in pixels (a multiple of 8).
        val_crop_ratio: centre crop side / short image side (224/256 as in the classic ImageNet protocol).
        scale: random-resized-crop area range, as a fraction of the image.
        ratio: random-resized-crop aspect ratio range.
        order: training order: ``random`` (one permutation; under DDP FFCV's DistributedSampler shards it),
            ``quasi_random`` (each rank reads its own pages in bursts of ``quasi_random_pages``, on any number of
            ranks: :mod:`resnet_ffcv.data.quasi_random`; for data larger than RAM, with ``os_cache: false``) or
            ``sequential``.
        quasi_random_pages: pages each rank keeps open at once in ``quasi_random`` order (FFCV's own order uses
            2 x batch size; a fixed count keeps the order independent of the batch size). With ``os_cache:
            false`` about this many pages (8 MiB each as our writer writes them) per rank are held in memory.
        os_cache: memory-map train.ffcv and let the OS page cache hold what fits (val.ffcv always is: each rank's
            slice of it touches every page, and the page cache shares one read). Where RAM < file: ``random``
            needs it on (``false``, FFCV's own cache, would hold nearly the whole file in process memory), but
            then reads the file many times per epoch; ``quasi_random`` with ``false`` reads each page once
            (benchmarks/ddp_memory_limit.py, docs/data-loading.md).
        batches_ahead: batches FFCV prepares ahead of the one in use.
        drop_last: drop the last incomplete training batch (each rank's).
        seed: shuffling seed (>= 0), identical on all ranks; epoch k's order depends only on (seed, k), and on
            the world size with ``quasi_random``.
        num_classes: class count; by default the length of ``classes.json``.
        predict_path: what ``resnet-ffcv predict`` reads: a folder of images (searched recursively), one
            image, or a ``.ffcv`` file; each is centre-cropped as at validation (``image_files.py``).
        resolution: the training resolution (and batch size) per epoch; the CLI builds it from the config's
            ``resolution:`` section. None, or a schedule with neither stages nor ramp: ``train_resolution``.
    """

    def __init__(
        self,
        data_dir: str = "/data/ffcv",
        train_file: str = "train.ffcv",
        val_file: str = "val.ffcv",
        batch_size: int = 256,
        global_batch_size: int | None = None,
        val_batch_size: int | None = None,
        num_workers: int | None = None,
        train_resolution: int = 160,
        val_resolution: int = 224,
        val_crop_ratio: float = 224 / 256,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        order: Order = "random",
        quasi_random_pages: int = 512,
        os_cache: bool = True,
        batches_ahead: int = 3,
        drop_last: bool = True,
        seed: int = 0,
        num_classes: int | None = None,
        predict_path: str | None = None,
        resolution: ResolutionSchedule | None = None,
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.train_path = self.data_dir / train_file
        self.val_path = self.data_dir / val_file
        self.classes_path = self.data_dir / CLASSES_FILE
        self.num_classes = num_classes if num_classes is not None else self._count_classes()
        # num_classes is logged with the model's hparams (the CLI links it there); here it may read None. The
        # schedule is an object: the config that built it is logged and saved whole by the CLI.
        self.save_hyperparameters(ignore=["num_classes", "resolution"])
        self.train_resolution = check_resolution(train_resolution, "data.train_resolution")
        check_resolution(val_resolution, "data.val_resolution")
        if batch_size < 1 or (global_batch_size is not None and global_batch_size < 1):
            raise InvalidValue(
                f"data.batch_size={batch_size}, data.global_batch_size={global_batch_size}: expected >= 1"
            )
        if quasi_random_pages < 1:
            raise InvalidValue(f"data.quasi_random_pages={quasi_random_pages}: expected >= 1")
        self.resolution = resolution if resolution is not None else ResolutionSchedule()  # off: train_resolution
        self._train_loaders: dict[int, EpochLoader] = {}  # by batch size: a new size means a new (compiled) Loader
        self._val_loader: EpochLoader | None = None
        self._standalone_epoch = 0  # the epoch counter when no Trainer is attached
        self._resume: dict[str, int] | None = None
        self._last_train: EpochLoader | None = None
        self._sizes: dict[Path, int] = {}
        self._placement: tuple | None = None  # (rank, world size, device) the cached loaders were built for
        self.predict_path = Path(predict_path) if predict_path is not None else None
        self._predict_files: list[Path] | None = None  # None: predict_path is a .ffcv file
        self._predict_loader = None

    def _count_classes(self) -> int:
        if not self.classes_path.is_file():
            raise InputNotFound(
                f"{self.classes_path}: missing (written by `resnet-ffcv write-dataset`); "
                "set data.num_classes or data.data_dir to the folder holding it"
            )
        return len(load_classes(self.classes_path))

    @property
    def class_names(self) -> list[str] | None:
        return load_classes(self.classes_path) if self.classes_path.is_file() else None

    # -- ranks -----------------------------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def global_rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def configured_batch_size(self) -> int:
        """Per-device training batch size from ``batch_size`` or ``global_batch_size``."""
        global_batch = self.hparams.global_batch_size
        if global_batch is None:
            return self.hparams.batch_size
        if global_batch % self.world_size:
            raise InvalidValue(
                f"data.global_batch_size={global_batch} does not divide across {self.world_size} ranks "
                "(trainer.devices x trainer.num_nodes)"
            )
        return global_batch // self.world_size

    # -- the shapes it serves (the compile plan and `plan` ask these too) ------------------------------------
    def train_shape(self, epoch: int) -> tuple[int, int]:
        """(resolution, per-device batch size) of training epoch ``epoch``."""
        return self.resolution.train_shape(epoch, self.train_resolution, self.configured_batch_size())

    def val_shape(self) -> tuple[int, int]:
        """(resolution, per-device batch size) of every evaluation batch but a shorter last one."""
        return self.hparams.val_resolution, self.hparams.val_batch_size or self.configured_batch_size()

    # -- checks before training ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Fails fast, naming the file / key / value, before any pipeline is compiled or a GPU is touched."""
        placement = (self.global_rank, self.world_size, str(self._device()))
        if placement != self._placement:  # e.g. the same datamodule handed to another Trainer
            self.teardown(stage)
            self._train_loaders, self._val_loader, self._placement = {}, None, placement
        if stage == "predict":
            self._predict_files = predict_image_files(self.predict_path)  # every image's header, checked
            if self._predict_files is None:
                self._samples(self.predict_path)
            return
        for path in [self.train_path, self.val_path] if stage == "fit" else [self.val_path]:
            self._samples(path)
        if stage == "fit":
            self._check_train_batch_size(self.configured_batch_size(), "data.batch_size")
            self._check_schedule()
        if self._sizes[self.val_path] < self.world_size:
            raise InvalidValue(
                f"{self.val_path}: {self._sizes[self.val_path]} samples for {self.world_size} ranks: "
                "expected at least one per rank"
            )

    def _samples(self, path: Path) -> int:
        """Sample count of ``path``, checked once (schema, labels in range) before any loader reads it."""
        if path not in self._sizes:
            if not path.is_file():
                raise InputNotFound(
                    f"{path}: missing .ffcv file (check data.data_dir / data.train_file / data.val_file)"
                )
            self._sizes[path] = validate_ffcv(path, self.num_classes)
        return self._sizes[path]

    def _check_train_batch_size(self, batch_size: int, key: str) -> None:
        """Each rank must get at least one full batch of ``batch_size``; ``key`` names the setting."""
        samples = self._samples(self.train_path)
        # quasi_random drops the remainder (each sample at most once); FFCV's DistributedSampler pads it.
        per_rank = (
            samples // self.world_size if self.hparams.order == "quasi_random" else math.ceil(samples / self.world_size)
        )
        if self.hparams.drop_last and per_rank < batch_size:
            raise InvalidValue(
                f"{key}={batch_size}: {self.train_path} has {samples} samples, {per_rank} per rank for "
                f"{self.world_size} ranks: not one full batch (lower it or set data.drop_last: false)"
            )

    def _check_schedule(self) -> None:
        """Stages that change the batch size need a loader per stage, and a full batch on every rank."""
        sizes = self.resolution.stage_batch_sizes()
        reload = self.trainer.reload_dataloaders_every_n_epochs if self.trainer is not None else 1
        if sizes and reload != 1:
            raise InvalidValue(
                "resolution.stages change the batch size: set trainer.reload_dataloaders_every_n_epochs: 1 "
                f"(now {reload}) so each stage gets its own loader"
            )
        for key, batch_size in sizes.items():
            self._check_train_batch_size(batch_size, key)

    # -- the per-epoch training resolution -------------------------------------------------------------------
    def set_train_resolution(self, resolution: int) -> None:
        """Takes effect when the next training epoch starts, without recompiling the pipeline (``resolution``
        overrides it when a schedule is set)."""
        self.train_resolution = check_resolution(resolution, "train resolution")

    def _apply_schedule(self, epoch: int) -> int:
        """Sets epoch k's resolution and returns its batch size. Called both when a train loader is built and when
        its epoch starts: Lightning builds the loader (batch size) and creates its iterator before
        ``on_train_epoch_start`` on the first epoch, after a resume and after a reload, so an epoch hook alone
        would give the first resumed epoch the previous stage's settings."""
        resolution, batch_size = self.train_shape(epoch)
        self.set_train_resolution(resolution)
        return batch_size

    def train_epoch(self) -> int:
        """The epoch whose order the next training iterator serves.

        Under a Trainer this is ``fit_loop.epoch_progress.current.processed``, the value Lightning itself
        gives ``sampler.set_epoch``: ``current_epoch`` still holds the previous epoch when the first iterator
        is created after resuming from an end-of-epoch checkpoint.
        """
        if self.trainer is not None:
            return self.trainer.fit_loop.epoch_progress.current.processed
        return self._standalone_epoch

    # -- resume state (Lightning stores it in every checkpoint) ----------------------------------------------
    def state_dict(self) -> dict[str, int]:
        """The training epoch in progress and the batches already consumed in it (Lightning's own count), which
        :meth:`~resnet_ffcv.data.loading.ResumableOrder.resume` skips in a resumed process."""
        loader = self._last_train
        if loader is None or loader.epoch is None:
            return {}
        if self.trainer is not None:
            # ``processed`` counts the batches whose step has run: it is m at on_train_batch_end of the m-th
            # batch (``completed`` lags by one there), and N at the epoch's end.
            batches = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        else:
            batches = loader.batches_done
        return {
            "epoch": loader.epoch,
            "batches": batches,
            "batch_size": loader.batch_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            self._resume = None
            return
        self._resume = {key: int(value) for key, value in state_dict.items()}
        self._standalone_epoch = self._resume["epoch"]

    # -- loaders ---------------------------------------------------------------------------------------------
    def _loader_args(self, train: bool = False) -> dict[str, Any]:
        """The FFCV ``Loader`` arguments every split shares; ``os_cache`` is the train file's only.

        Evaluation always memory-maps: in file order, each rank's slice ``rank::world`` touches every page, so
        FFCV's own cache would read the whole file once per rank, where the page cache shares one read.
        """
        devices = self.trainer.num_devices if self.trainer is not None else 1
        return {
            "num_workers": self.hparams.num_workers or cores_per_rank(devices),
            "os_cache": self.hparams.os_cache if train else True,
            "seed": self.hparams.seed,
            "batches_ahead": self.hparams.batches_ahead,
        }

    def _build_train_loader(self, batch_size: int) -> EpochLoader:
        self._check_train_batch_size(batch_size, "train batch size")
        return train_loader(
            self.train_path,
            self.train_resolution,
            batch_size,
            self.hparams.scale,
            self.hparams.ratio,
            order=self.hparams.order,
            drop_last=self.hparams.drop_last,
            distributed=self.world_size > 1,
            device=self._device(),
            before_epoch=self._start_train_epoch,
            ranks=(self.global_rank, self.world_size),
            quasi_random_pages=self.hparams.quasi_random_pages,
            **self._loader_args(train=True),
        )

    def _start_train_epoch(self, loader: EpochLoader) -> int:
        epoch = self.train_epoch()
        expected = self._apply_schedule(epoch)
        if expected != loader.batch_size:
            raise RuntimeError(
                f"epoch {epoch + 1} wants a per-device batch size of {expected}, the train loader has "
                f"{loader.batch_size}: set trainer.reload_dataloaders_every_n_epochs: 1 to rebuild it"
            )
        loader.decoder.output_size = (self.train_resolution, self.train_resolution)
        loader.order.resume(self._resume, epoch, self.world_size)
        if self.trainer is None:
            self._standalone_epoch = epoch + 1
        self._last_train = loader
        return epoch

    def _eval_loader(self, path: Path) -> EpochLoader:
        """Each rank evaluates its own slice (rank, rank + world, ...) of ``path``, every sample exactly once.

        Not FFCV's ``distributed=True``: its DistributedSampler pads the ranks' shares to equal length by
        repeating samples, and the synced metrics would count those twice.
        """
        resolution, batch_size = self.val_shape()
        shard = np.arange(self.global_rank, self._samples(path), self.world_size)
        crop_ratio = self.hparams.val_crop_ratio
        return eval_loader(path, resolution, crop_ratio, batch_size, shard, self._device(), **self._loader_args())

    def train_dataloader(self) -> EpochLoader:
        batch_size = self._apply_schedule(self.train_epoch())
        if batch_size not in self._train_loaders:
            self._train_loaders[batch_size] = self._build_train_loader(batch_size)
        for other in self._train_loaders.values():
            other.close()
        return self._train_loaders[batch_size]

    def val_dataloader(self) -> EpochLoader:
        self._val_loader = self._val_loader or self._eval_loader(self.val_path)
        return self._val_loader

    def test_dataloader(self) -> EpochLoader:
        return self.val_dataloader()

    @property
    def predict_names(self) -> list[str] | None:
        """Names of the predicted samples by index: image paths relative to ``predict_path``; None for a .ffcv."""
        return None if self._predict_files is None else relative_names(self.predict_path, self._predict_files)

    def predict_dataloader(self):
        """``(uint8 images, sample index)`` batches of ``predict_path``, centre-cropped as at validation."""
        if self._predict_files is None:
            loader = self._eval_loader(self.predict_path)
            self._predict_loader = IndexedBatches(loader, loader.loader.indices)
        else:
            resolution, batch_size = self.val_shape()
            workers = predict_workers(self.hparams.num_workers, cores_per_rank(1))
            self._predict_loader = image_files_loader(
                self._predict_files,
                resolution,
                self.hparams.val_crop_ratio,
                batch_size,
                workers,
                self._device().type == "cuda",
            )
        return self._predict_loader

    def teardown(self, stage: str) -> None:
        """Stops any iterator an early end (max_steps, limits, early stop, interruption) left running."""
        for loader in [*self._train_loaders.values(), self._val_loader, self._predict_loader]:
            if hasattr(loader, "close"):
                loader.close()

    def on_exception(self, exception: BaseException) -> None:
        """An interruption (exception, SIGTERM, Ctrl-C) skips ``teardown``: stop the iterators here."""
        self.teardown("fit")
