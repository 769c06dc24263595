"""The FFCV LightningDataModule: ``train.ffcv`` / ``val.ffcv`` -> uint8 NCHW (channels_last) batches.

FFCV's pipelines end in uint8: normalization happens on the device in the LightningModule (a normalize inside
the pipeline can hang forever on the CPU in ffcv 1.0.2, and uint8 moves 4x fewer bytes to the GPU).
Loaders are built inside the dataloader hooks because ``distributed=True`` needs the process group. What FFCV's
``Loader`` does not do on its own under Lightning (epoch order, exact mid-epoch resume, no leaked iterators)
lives in :mod:`resnet_ffcv.ffcv_loading`; the file format and its checks in :mod:`resnet_ffcv.dataset_format`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch

from resnet_ffcv.dataset_format import CLASSES_FILE, IMAGE_FIELD, LABEL_FIELD, load_classes, validate_ffcv
from resnet_ffcv.errors import InputNotFound, InvalidValue
from resnet_ffcv.ffcv_loading import EpochLoader, ResumableOrder, cores_per_rank
from resnet_ffcv.resolution import ResolutionSchedule, check_resolution

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
        order: training order on one device: ``random``, ``quasi_random`` (reads pages in bursts; for data
            that does not fit in RAM, with ``os_cache: false``) or ``sequential``. Under DDP always
            ``random`` (FFCV has no distributed quasi-random).
        os_cache: memory-map the file and let the OS page cache hold what fits. Keep it on under DDP also where
            RAM < file: ``false`` (FFCV's own cache) in ``random`` order holds nearly the whole file in process
            memory over an epoch (benchmarks/os_cache_io.py); ``false`` pays off only with ``quasi_random``.
        batches_ahead: batches FFCV prepares ahead of the one in use.
        drop_last: drop the last incomplete training batch (each rank's).
        seed: shuffling seed, identical on all ranks; epoch k's order depends only on (seed, k).
        num_classes: class count; by default the length of ``classes.json``.
        predict_path: what ``resnet-ffcv predict`` reads: a folder of images (searched recursively), one
            image, or a ``.ffcv`` file; each is centre-cropped as at validation (``predict.py``).
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
        self.resolution = resolution if resolution is not None and resolution.active else None
        self._stage_batch_size: int | None = None  # from a resolution stage; None: the configured one
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

    def _distributed(self) -> bool:
        return self.world_size > 1

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

    # -- checks before training ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Fails fast, naming the file / key / value, before any pipeline is compiled or a GPU is touched."""
        placement = (self.global_rank, self.world_size, str(self._device()))
        if placement != self._placement:  # e.g. the same datamodule handed to another Trainer
            self.teardown(stage)
            self._train_loaders, self._val_loader, self._placement = {}, None, placement
        if stage == "predict":
            self._check_predict_input()
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
        per_rank = math.ceil(samples / self.world_size)
        if self.hparams.drop_last and per_rank < batch_size:
            raise InvalidValue(
                f"{key}={batch_size}: {self.train_path} has {samples} samples, {per_rank} per rank for "
                f"{self.world_size} ranks: not one full batch (lower it or set data.drop_last: false)"
            )

    def _check_schedule(self) -> None:
        """Stages that change the batch size need a loader per stage, and a full batch on every rank."""
        sizes = self.resolution.stage_batch_sizes() if self.resolution is not None else {}
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

    def _apply_schedule(self, epoch: int) -> None:
        """Sets epoch k's resolution and batch size. Called both when a train loader is built and when its
        epoch starts: Lightning builds the loader (batch size) and creates its iterator before
        ``on_train_epoch_start`` on the first epoch, after a resume and after a reload, so an epoch hook alone
        would give the first resumed epoch the previous stage's settings."""
        if self.resolution is not None:
            resolution, batch_size = self.resolution.at(epoch)
            self.set_train_resolution(resolution)
            self._stage_batch_size = batch_size

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
        """The training epoch in progress and the batches already consumed in it (Lightning's own count).

        How Lightning's fit loop (2.6) resumes mid-epoch, which this matches: it restores
        ``batch_progress.current`` (m batches done), numbers the next batch ``batch_idx = m``, starts its
        fetcher's count at m, and ends the epoch when ``ready == num_training_batches`` (or the iterator is
        exhausted). So the loader's ``len()`` must stay the WHOLE epoch's batch count N while the iterator
        yields the N - m remaining batches. A loader whose len() shrank to N - m would end the epoch after N -
        2m batches when m < N/2 and would number batches past its own len() otherwise.
        """
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

    def _skip_for(self, epoch: int, batch_size: int) -> tuple[int, int] | None:
        resume = self._resume
        if resume is None or resume["epoch"] != epoch or resume["batches"] == 0:
            return None
        if resume["batch_size"] != batch_size or resume["world_size"] != self.world_size:
            warnings.warn(
                f"resuming epoch {epoch} after {resume['batches']} batches of {resume['batch_size']} on "
                f"{resume['world_size']} ranks with batches of {batch_size} on {self.world_size} ranks: "
                "the rest of the epoch is approximate (some samples repeat or are skipped)",
                stacklevel=2,
            )
        return epoch, resume["batches"] * batch_size

    # -- loaders ---------------------------------------------------------------------------------------------
    def _pipelines(self, image_decoder, augment: bool) -> dict[str, list]:
        from ffcv.fields.decoders import IntDecoder
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        image = [image_decoder, *([RandomHorizontalFlip()] if augment else []), ToTensor()]
        # Squeeze(1), not Squeeze(): a last batch of one sample must keep its batch dimension.
        label = [IntDecoder(), ToTensor(), Squeeze(1)]
        device = self._device()
        if device.type == "cuda":
            image.append(ToDevice(device, non_blocking=True))
            label.append(ToDevice(device, non_blocking=True))
        image.append(ToTorchImage())
        return {IMAGE_FIELD: image, LABEL_FIELD: label}

    def _ffcv_loader(self, path: Path, pipelines, batch_size: int, order, drop_last: bool, **kwargs):
        from ffcv.loader import Loader

        devices = self.trainer.num_devices if self.trainer is not None else 1
        return Loader(
            str(path),
            batch_size=batch_size,
            num_workers=self.hparams.num_workers or cores_per_rank(devices),
            order=order,
            os_cache=self.hparams.os_cache,
            drop_last=drop_last,
            pipelines=pipelines,
            seed=self.hparams.seed,
            batches_ahead=self.hparams.batches_ahead,
            **kwargs,
        )

    def _build_train_loader(self, batch_size: int) -> EpochLoader:
        from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
        from ffcv.loader import OrderOption

        order = OrderOption.RANDOM if self._distributed() else OrderOption[self.hparams.order.upper()]
        decoder = RandomResizedCropRGBImageDecoder(
            (self.train_resolution, self.train_resolution),
            scale=tuple(self.hparams.scale),
            ratio=tuple(self.hparams.ratio),
        )
        pipelines = self._pipelines(decoder, augment=True)
        # distributed=True: FFCV's DistributedSampler gives each rank a disjoint shard of one permutation.
        loader = self._ffcv_loader(
            self.train_path,
            pipelines,
            batch_size,
            order,
            self.hparams.drop_last,
            distributed=self._distributed(),
        )
        loader.traversal_order = ResumableOrder(loader.traversal_order, batch_size, self.hparams.drop_last)
        wrapped = EpochLoader(loader, before_epoch=self._start_train_epoch)
        wrapped.decoder = decoder
        return wrapped

    def _start_train_epoch(self, loader: EpochLoader) -> int:
        epoch = self.train_epoch()
        self._apply_schedule(epoch)
        expected = self._stage_batch_size or self.configured_batch_size()
        if expected != loader.batch_size:
            raise RuntimeError(
                f"epoch {epoch} wants a per-device batch size of {expected}, the train loader has "
                f"{loader.batch_size}: set trainer.reload_dataloaders_every_n_epochs: 1 to rebuild it"
            )
        loader.decoder.output_size = (self.train_resolution, self.train_resolution)
        loader.order.skip = self._skip_for(epoch, loader.batch_size)
        if self.trainer is None:
            self._standalone_epoch = epoch + 1
        self._last_train = loader
        return epoch

    def train_dataloader(self) -> EpochLoader:
        self._apply_schedule(self.train_epoch())
        batch_size = self._stage_batch_size or self.configured_batch_size()
        if batch_size not in self._train_loaders:
            self._check_train_batch_size(batch_size, "train batch size")
            self._train_loaders[batch_size] = self._build_train_loader(batch_size)
        for other in self._train_loaders.values():
            other.close()
        return self._train_loaders[batch_size]

    def val_dataloader(self) -> EpochLoader:
        """Each rank evaluates its own slice (rank, rank + world, ...) of the file, every sample exactly once.

        Not FFCV's ``distributed=True``: its DistributedSampler pads the ranks' shares to equal length by
        repeating samples, and the synced metrics would count those twice.
        """
        if self._val_loader is None:
            self._val_loader = self._eval_loader(self.val_path)
        return self._val_loader

    def _eval_loader(self, path: Path) -> EpochLoader:
        """Centre crops at ``val_resolution``, in file order, this rank's slice of ``path``."""
        from ffcv.fields.decoders import CenterCropRGBImageDecoder
        from ffcv.loader import OrderOption

        resolution = self.hparams.val_resolution
        decoder = CenterCropRGBImageDecoder((resolution, resolution), ratio=self.hparams.val_crop_ratio)
        samples = self._samples(path)
        shard = np.arange(self.global_rank, samples, self.world_size)
        batch_size = self.hparams.val_batch_size or self.configured_batch_size()
        loader = self._ffcv_loader(
            path,
            self._pipelines(decoder, augment=False),
            batch_size,
            OrderOption.SEQUENTIAL,
            drop_last=False,
            indices=shard,
        )
        return EpochLoader(loader)

    def test_dataloader(self) -> EpochLoader:
        return self.val_dataloader()

    # -- prediction (resnet-ffcv predict) --------------------------------------------------------------------
    def _check_predict_input(self) -> None:
        """Lists and checks ``predict_path`` before a model runs: every image's header, or the .ffcv file."""
        from resnet_ffcv.predict import predict_image_files

        self._predict_files = predict_image_files(self.predict_path)
        if self._predict_files is None:
            self._samples(self.predict_path)

    @property
    def predict_names(self) -> list[str] | None:
        """Names of the predicted samples by index: image paths relative to ``predict_path``; None for a .ffcv."""
        if self._predict_files is None:
            return None
        root = self.predict_path if self.predict_path.is_dir() else self.predict_path.parent
        return [path.relative_to(root).as_posix() for path in self._predict_files]

    def predict_dataloader(self):
        """``(uint8 images, sample index)`` batches of ``predict_path``, centre-cropped as at validation."""
        from resnet_ffcv.predict import ImageFiles, IndexedBatches, image_files_loader, predict_workers

        if self._predict_files is None:
            loader = self._eval_loader(self.predict_path)
            self._predict_loader = IndexedBatches(loader, loader.loader.indices)
        else:
            dataset = ImageFiles(self._predict_files, self.hparams.val_resolution, self.hparams.val_crop_ratio)
            self._predict_loader = image_files_loader(
                dataset,
                batch_size=self.hparams.val_batch_size or self.configured_batch_size(),
                num_workers=predict_workers(self.hparams.num_workers, cores_per_rank(1)),
                pin_memory=self._device().type == "cuda",
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
