"""FFCV's loaders as the datamodule uses them (:func:`train_loader`, :func:`eval_loader`), and what FFCV's
``Loader`` (1.0.2) does not do on its own under Lightning:

- Epoch order follows the trainer. FFCV shuffles by its own counter ``next_epoch``, which starts at 0 in every
  process and is bumped by every ``iter()``; Lightning calls ``iter()`` at different points (and sometimes
  twice) per epoch. :class:`EpochLoader` sets the epoch explicitly each time it starts one.
- Mid-epoch resume. The datamodule's ``state_dict`` (which Lightning stores in every checkpoint) holds the
  epoch and the batches Lightning had consumed in it; the next iterator for that epoch yields exactly the
  rest of the epoch's order (:class:`ResumableOrder`), without decoding what is skipped.
- No leaks. An FFCV ``EpochIterator`` that is not run to its end keeps its thread and its batch buffers alive
  forever (ffcv issues #345, #393): max_steps, limit_*_batches, early stopping and interruptions all do that.
  :class:`EpochLoader` keeps one live iterator and stops it (:func:`stop_epoch_iterator`) before starting the
  next, and the datamodule stops the last one on ``teardown``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from queue import Empty

import numpy as np
import torch

from resnet_ffcv.data.quasi_random import QuasiRandomOrder, sample_pages
from resnet_ffcv.dataset.format import IMAGE_FIELD, LABEL_FIELD
from resnet_ffcv.errors import InvalidValue


def cores_per_rank(devices_per_node: int) -> int:
    """The CPU cores this process may use, shared evenly by the ranks on this node (FFCV decode threads)."""
    return max(1, len(os.sched_getaffinity(0)) // max(1, devices_per_node))


class ResumableOrder:
    """FFCV's own order for an epoch, cut to whole batches, minus the samples a resumed run already consumed.

    Installed as ``loader.traversal_order`` after the Loader is built (its constructor cannot take a custom
    order instance in 1.0.2: it calls the instance); FFCV only ever calls ``sample_order`` on it.
    ``len(loader)`` still counts the whole epoch, which is what Lightning's fit loop needs on a resume.

    How Lightning's fit loop (2.6) resumes mid-epoch, which this matches: it restores ``batch_progress.current``
    (m batches done, saved by the datamodule's ``state_dict``), numbers the next batch ``batch_idx = m``, starts
    its fetcher's count at m, and ends the epoch when ``ready == num_training_batches`` (or the iterator is
    exhausted). So the loader's ``len()`` must stay the WHOLE epoch's batch count N while the iterator yields the
    N - m remaining batches. A loader whose len() shrank to N - m would end the epoch after N - 2m batches when
    m < N/2 and would number batches past its own len() otherwise.
    """

    def __init__(self, inner, batch_size: int, drop_last: bool):
        self.inner = inner
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.skip: tuple[int, int] | None = None  # (epoch, samples already consumed in it)

    def resume(self, state: dict[str, int] | None, epoch: int, world_size: int) -> None:
        """Skips, in ``epoch``, the batches an interrupted run had consumed of it (``state``: the datamodule's
        saved ``{epoch, batches, batch_size, world_size}``); nothing for another epoch or a fresh start.

        Exact when batch size and world size are those of the interrupted run; otherwise the rest of the epoch
        is approximate (the consumed count is in samples of the old batches), and a warning says so. An order
        that differs per world size (``quasi_random``) refuses another world size, naming both: an InvalidValue
        raised on every rank, before any batch of the epoch is served.
        """
        self.skip = None
        if state is None or state["epoch"] != epoch or state["batches"] == 0:
            return
        if state["world_size"] != world_size and getattr(self.inner, "depends_on_world_size", False):
            raise InvalidValue(
                f"the checkpoint stopped in epoch {epoch} after {state['batches']} batches on "
                f"{state['world_size']} ranks; this run has {world_size} ranks. data.order=quasi_random gives each "
                "world size its own order of an epoch, so the rest of that epoch cannot be served exactly: resume "
                f"on {state['world_size']} ranks (trainer.devices x trainer.num_nodes), or from a checkpoint "
                "written at an epoch's end"
            )
        if state["batch_size"] != self.batch_size or state["world_size"] != world_size:
            warnings.warn(
                f"resuming epoch {epoch + 1} after {state['batches']} batches of {state['batch_size']} on "
                f"{state['world_size']} ranks with batches of {self.batch_size} on {world_size} ranks: "
                "the rest of the epoch is approximate (some samples repeat or are skipped)",
                stacklevel=2,
            )
        self.skip = (epoch, state["batches"] * self.batch_size)

    def sample_order(self, epoch: int) -> np.ndarray:
        order = np.asarray(self.inner.sample_order(epoch))
        if self.drop_last:
            order = order[: len(order) // self.batch_size * self.batch_size]
        if self.skip is not None and self.skip[0] == epoch:
            order = order[self.skip[1] :]
        return order


class EpochLoader:
    """One FFCV ``Loader`` with at most one live ``EpochIterator``, the epoch set explicitly each time.

    The FFCV iterator starts at the first ``next()``, not at ``iter()``: Lightning calls ``iter()`` twice on
    epochs that reload dataloaders and creates the train iterator before ``on_train_epoch_start`` on the first
    epoch and after a resume, so starting lazily decodes nothing twice and sees the state the epoch hooks set.

    Args:
        loader: the FFCV Loader.
        before_epoch: called just before an epoch starts; returns the epoch whose order to serve.
    """

    def __init__(
        self, loader, before_epoch: Callable[[EpochLoader], int] | None = None, block_after: int | None = None
    ):
        self.loader = loader
        self.before_epoch = before_epoch
        self.block_after = block_after  # the test seam below: hang before batch block_after + 1 of this process
        self.served = 0
        self.order: ResumableOrder | None = (
            loader.traversal_order if isinstance(loader.traversal_order, ResumableOrder) else None
        )
        self._live = None
        self.epoch: int | None = None
        self.batches_done = 0  # batches of ``epoch`` handed out so far, including those skipped on a resume

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        self.close()
        return self._batches()

    def _batches(self) -> Iterator:
        epoch = self.before_epoch(self) if self.before_epoch is not None else 0
        self.loader.next_epoch = epoch
        skip = self.order.skip if self.order is not None else None
        skipped = skip[1] // self.batch_size if skip is not None and skip[0] == epoch else 0
        self.close()
        self.epoch, self.batches_done = epoch, skipped
        live = self._live = iter(self.loader)
        try:
            for batch in live:
                if self.block_after is not None and self.served >= self.block_after:
                    block_forever_for_tests()
                self.served += 1
                self.batches_done += 1
                yield batch
        finally:
            # Runs when the epoch ends, and when this generator is closed or collected half-way (maybe after a
            # newer epoch started: stop only this generator's own iterator).
            stop_epoch_iterator(live)
            if self._live is live:
                self._live = None

    def close(self) -> None:
        """Stops the live FFCV iterator's thread and frees its buffers."""
        iterator, self._live = self._live, None
        if iterator is not None:
            stop_epoch_iterator(iterator)

    # Lightning's fit loop warns that a mid-epoch checkpoint cannot resume unless every train loader has
    # state_dict/load_state_dict. This one does resume exactly; its state lives in FFCVDataModule.state_dict.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


# Test seam: the training loader of this process hands out this many batches, then blocks forever in C code (a
# read from a pipe nobody writes), as a deadlocked loader or a dead disk would. The stall watchdog's tests only.
BLOCK_AFTER_ENV = "RESNET_FFCV_TEST_TRAIN_LOADER_BLOCKS_AFTER"


def block_after_from_env() -> int | None:
    value = os.environ.get(BLOCK_AFTER_ENV, "").strip()
    return int(value) if value else None


def block_forever_for_tests() -> None:
    """Never returns: ``os.read`` of an empty pipe waits in the kernel with the GIL released."""
    never_written, _keep_open = os.pipe()
    os.read(never_written, 1)


def stop_epoch_iterator(iterator) -> None:
    """Ends an FFCV ``EpochIterator`` within one batch: its thread exits, so its buffers can be freed.

    Left alone, an abandoned iterator lives forever: its thread holds it (so ``__del__`` never runs) and waits
    on its full output queue (ffcv #345, #393). FFCV's ``close()`` only sets an event that the thread reads
    once its queue has stayed full for 0.5 s. Instead: cut its batch list and keep its queue empty until the
    thread exits (its last ``put`` has no timeout); then release the memory context once, when no batch is
    being decoded. An iterator that ran to its end was closed by FFCV already and only needs the join.
    """
    closed_by_ffcv = iterator.terminate_event.is_set()  # EpochIterator.__next__ closes it at the epoch's end
    iterator.terminate_event.set()
    iterator.iter_ixes = iter(())
    while iterator.is_alive():
        with suppress(Empty):
            while True:
                iterator.output_queue.get_nowait()
        iterator.join(timeout=0.001)
    if not (closed_by_ffcv or iterator.closed):
        iterator.close()
    iterator.closed = True  # FFCV's close() never sets it: without this, __del__ would exit the context again
    iterator.memory_allocations = None


# -- building the loaders ----------------------------------------------------------------------------------------
def pipelines(image_decoder, augment: bool, device: torch.device) -> dict[str, list]:
    """uint8 to the end (normalized on the device by the module: a normalize inside FFCV's pipeline can hang
    forever on the CPU in ffcv 1.0.2, and uint8 moves 4x fewer bytes to the GPU)."""
    from ffcv.fields.decoders import IntDecoder
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    image = [image_decoder, *([RandomHorizontalFlip()] if augment else []), ToTensor()]
    # Squeeze(1), not Squeeze(): a last batch of one sample must keep its batch dimension.
    label = [IntDecoder(), ToTensor(), Squeeze(1)]
    if device.type == "cuda":
        image.append(ToDevice(device, non_blocking=True))
        label.append(ToDevice(device, non_blocking=True))
    image.append(ToTorchImage())
    return {IMAGE_FIELD: image, LABEL_FIELD: label}


def train_loader(
    path: Path,
    resolution: int,
    batch_size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    order: str,
    drop_last: bool,
    distributed: bool,
    device: torch.device,
    before_epoch: Callable[[EpochLoader], int],
    ranks: tuple[int, int] = (0, 1),
    quasi_random_pages: int = 512,
    **loader_args,
) -> EpochLoader:
    """Random-resized crops (and flips) of ``path``; ``decoder.output_size`` changes the resolution per epoch.

    ``distributed=True``: FFCV's DistributedSampler gives each rank a disjoint shard of one permutation (it needs
    the process group, so this runs inside ``train_dataloader``). ``order="quasi_random"``: our
    :class:`~resnet_ffcv.data.quasi_random.QuasiRandomOrder` for this rank of ``ranks`` (rank, world size) with
    ``quasi_random_pages`` open pages, on one device too (FFCV's own refuses ``distributed=True``).
    ``loader_args``: FFCV ``Loader`` arguments.
    """
    from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    quasi = order == "quasi_random"
    decoder = RandomResizedCropRGBImageDecoder((resolution, resolution), scale=tuple(scale), ratio=tuple(ratio))
    loader = Loader(
        str(path),
        batch_size=batch_size,
        order=OrderOption.SEQUENTIAL if quasi else OrderOption[order.upper()],  # quasi: replaced below
        drop_last=drop_last,
        pipelines=pipelines(decoder, augment=True, device=device),
        distributed=distributed and not quasi,
        **loader_args,
    )
    inner = loader.traversal_order
    if quasi:
        rank, world_size = ranks
        inner = QuasiRandomOrder(
            sample_pages(loader.reader), loader.indices, loader.seed, rank, world_size, quasi_random_pages
        )
        loader.first_traversal_order = inner.sample_order(0)  # what FFCV's len() counts: this rank's share
    loader.traversal_order = ResumableOrder(inner, batch_size, drop_last)
    wrapped = EpochLoader(loader, before_epoch=before_epoch, block_after=block_after_from_env())
    wrapped.decoder = decoder
    return wrapped


def eval_loader(
    path: Path, resolution: int, crop_ratio: float, batch_size: int, indices: np.ndarray, device, **loader_args
) -> EpochLoader:
    """Centre crops at ``resolution`` of the samples ``indices`` of ``path``, in file order, nothing dropped."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    decoder = CenterCropRGBImageDecoder((resolution, resolution), ratio=crop_ratio)
    loader = Loader(
        str(path),
        batch_size=batch_size,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines=pipelines(decoder, augment=False, device=device),
        indices=indices,
        **loader_args,
    )
    return EpochLoader(loader)
