"""``data.order: quasi_random`` on any number of ranks: each rank reads its own pages of the file, once per epoch.

Why: where RAM cannot hold train.ffcv (g5/g6.12xlarge, p3.8xlarge at the rn50 preset), a ``random`` order reads
a page for one sample and comes back to it much later; the page cache has dropped it by then
(``benchmarks/ddp_memory_limit.py``: tens of times the file per epoch). FFCV's ``QUASI_RANDOM`` serves samples
from a small buffer of open pages instead, but raises ``NotImplementedError`` under ``distributed=True``.

Epoch k on ``world_size`` ranks, the same on every rank without any communication:

1. A permutation of the file's pages drawn from ``(seed, k)``.
2. The samples in that page order (each page's in file order) are cut into ``world_size`` runs of
   ``n // world_size``; rank r serves run r. So each rank's pages are one stretch of the permutation, disjoint
   from the others' but for the ``world_size - 1`` pages at the cuts, whose samples two neighbouring ranks share
   out (a different sample set each, never the same sample). The ``n % world_size`` samples past the last cut
   (fewer than the ranks, the last ones of the page order: others each epoch) are not served in epoch k. Every
   rank thus serves the same count: DDP needs equal batch counts, and no sample is served twice (FFCV's
   ``distributed=True`` pads with repeats instead).
3. Within a rank, FFCV's own quasi-random generator: at most ``buffer_pages`` pages open at a time, each next
   sample taken from a random open page, a page closed when its last sample is out; seeded by
   ``(seed, k, world_size, rank)``.

The order of epoch k depends on ``(seed, k, world_size)`` and the file's layout only: not on the batch size, so
a resumed run skips exactly the samples it had consumed whatever its batch size; a different world size gives
a different order, which :class:`~resnet_ffcv.data.loading.ResumableOrder` refuses mid-epoch.
"""

from __future__ import annotations

import numpy as np


def sample_pages(reader) -> np.ndarray:
    """The page (index into the file's ``page_size`` blocks) holding each sample's first byte of data.

    A sample with no allocation (all its fields in the metadata table) needs no page: it gets a page of its own
    so that it is shuffled like any other.
    """
    table = reader.alloc_table
    shift = int(np.log2(reader.page_size))
    none = np.iinfo(np.int64).max
    pages = np.full(int(reader.num_samples), none, dtype=np.int64)
    np.minimum.at(pages, table["sample_id"].astype(np.int64), (table["ptr"] >> shift).astype(np.int64))
    missing = np.flatnonzero(pages == none)
    pages[missing] = (pages[pages != none].max(initial=-1) + 1) + np.arange(len(missing))
    return pages


class QuasiRandomOrder:
    """One rank's quasi-random order of ``indices`` (see the module docstring); FFCV only calls ``sample_order``.

    Args:
        pages: page of each sample of the file (:func:`sample_pages`).
        indices: the samples to serve (all of the file's for training).
        seed: ``data.seed`` (>= 0), the same on every rank.
        rank, world_size: this rank and the ranks sharing the epoch.
        buffer_pages: pages a rank holds open at once; with ``os_cache: false`` FFCV keeps about this many pages
            (plus those of the batches it prepares ahead) in process memory.
    """

    #: Epoch k's order on another world size is another order: a mid-epoch resume there cannot be exact.
    depends_on_world_size = True

    def __init__(
        self, pages: np.ndarray, indices: np.ndarray, seed: int, rank: int, world_size: int, buffer_pages: int
    ):
        if not 0 <= rank < world_size or buffer_pages < 1 or seed < 0:
            raise ValueError(f"rank {rank} of {world_size}, buffer_pages={buffer_pages}, seed={seed}")
        self.seed, self.rank, self.world_size, self.buffer_pages = seed, rank, world_size, buffer_pages
        indices = np.asarray(indices, dtype=np.int64)
        # Pages renumbered 0..P-1; samples sorted by (page, index) once, so that each epoch only permutes pages.
        _, page_ids = np.unique(np.asarray(pages)[indices], return_inverse=True)
        by_page = np.lexsort((indices, page_ids))
        self.samples, self.sample_page = indices[by_page], page_ids[by_page]
        self.num_pages = int(page_ids.max()) + 1 if len(indices) else 0

    def __len__(self) -> int:
        return len(self.samples) // self.world_size

    def rank_samples(self, epoch: int, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Step 2: (samples, their page) that ``rank`` (default: this one) serves in ``epoch``, in page order."""
        rank = self.rank if rank is None else rank
        position = np.random.default_rng((self.seed, epoch)).permutation(self.num_pages)
        in_page_order = np.argsort(position[self.sample_page], kind="stable")
        mine = in_page_order[rank * len(self) : (rank + 1) * len(self)]
        return self.samples[mine], self.sample_page[mine]

    def sample_order(self, epoch: int, rank: int | None = None) -> np.ndarray:
        """Step 3: the order ``rank`` (default: this one) serves its samples of ``epoch`` in."""
        from ffcv.traversal_order.quasi_random import generate_order_inner

        rank = self.rank if rank is None else rank
        samples, pages = self.rank_samples(epoch, rank)
        if not len(samples):
            return samples
        starts = np.flatnonzero(np.r_[True, pages[1:] != pages[:-1]])
        sizes = np.diff(np.r_[starts, len(samples)]).astype(np.int64)
        table = np.zeros((len(starts), int(sizes.max())), dtype=np.int64)  # one row per page: its samples
        row = np.repeat(np.arange(len(starts)), sizes)
        table[row, np.arange(len(samples)) - starts[row]] = samples
        seed = int(np.random.SeedSequence((self.seed, epoch, self.world_size, rank)).generate_state(1)[0])
        order = np.empty(len(samples), dtype=np.int64)
        generate_order_inner(seed, table, sizes, order, self.buffer_pages)
        return order


def max_open_pages(order: np.ndarray, pages: np.ndarray) -> int:
    """The most pages open at once along ``order`` (a page is open from its first sample to its last): what a
    reader must hold to read each page once."""
    if not len(order):
        return 0
    of_step = np.asarray(pages)[np.asarray(order)]
    first = {page: step for step, page in reversed(list(enumerate(of_step.tolist())))}
    last = {page: step for step, page in enumerate(of_step.tolist())}
    opens = np.zeros(len(order) + 1, dtype=np.int64)
    np.add.at(opens, list(first.values()), 1)
    np.add.at(opens, [step + 1 for step in last.values()], -1)
    return int(np.cumsum(opens).max())
