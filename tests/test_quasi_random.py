"""``data.order: quasi_random`` on several ranks: the order's properties on a real many-page .ffcv file, an exact
mid-epoch resume on 2 CPU DDP ranks, the refusal of another world size, a run inside a real memory limit, and
the doctor / plan warning for ``random`` over a file larger than the memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_ffcv.data.datamodule import FFCVDataModule
from resnet_ffcv.data.quasi_random import QuasiRandomOrder, max_open_pages, sample_pages
from resnet_ffcv.errors import InvalidValue
from resnet_ffcv.tools import memory_fit
from resnet_ffcv.tools.doctor import check_order_fits_memory

from .data_helpers import write_paged_ffcv
from .helpers import quiet_trainer, run_ddp_probe

PROBE = Path(__file__).with_name("ddp_quasi_probe.py")
BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "ddp_memory_limit.py"
SAMPLES, PAGES = 400, 4  # ~19 pages of ~21 samples; 4 open at once per rank


@pytest.fixture(scope="module")
def paged_dir(tmp_path_factory) -> Path:
    return write_paged_ffcv(tmp_path_factory.mktemp("paged"), train=SAMPLES)


@pytest.fixture(scope="module")
def page_of(paged_dir) -> np.ndarray:
    from ffcv.reader import Reader

    return sample_pages(Reader(str(paged_dir / "train.ffcv")))


def rank_orders(page_of, epoch: int, world: int, seed: int = 0, pages: int = PAGES) -> list[np.ndarray]:
    """Each rank builds its own order object, as each DDP process does."""
    return [
        QuasiRandomOrder(page_of, np.arange(SAMPLES), seed, rank, world, pages).sample_order(epoch)
        for rank in range(world)
    ]


# -- the order ---------------------------------------------------------------------------------------------------
def test_two_ranks_get_disjoint_equal_shares_in_bounded_bursts_of_pages(page_of):
    assert len(np.unique(page_of)) >= 15, "the file spans many pages (else nothing here is tested)"
    first = rank_orders(page_of, 0, 2)
    assert [len(order) for order in first] == [200, 200], "equal counts: DDP needs equal batch counts"
    assert not set(first[0]) & set(first[1]), "no sample on both ranks"
    assert sorted(np.concatenate(first).tolist()) == list(range(SAMPLES)), "together every sample, once"
    pages = [set(page_of[order].tolist()) for order in first]
    assert len(pages[0] & pages[1]) <= 1, "page sets disjoint but for the one page at the cut"
    for order in first:
        assert max_open_pages(order, page_of) <= PAGES, "a rank holds at most PAGES pages open at once"
        # Bursts, not file order: samples are shuffled within the open pages.
        assert order.tolist() != sorted(order.tolist(), key=lambda i: (page_of[i], i))

    assert [o.tolist() for o in rank_orders(page_of, 0, 2)] == [o.tolist() for o in first], (
        "a function of (seed, epoch)"
    )
    second = rank_orders(page_of, 1, 2)
    assert all(a.tolist() != b.tolist() for a, b in zip(first, second, strict=True)), "another order each epoch"
    assert set(first[0]) != set(second[0]), "ranks get other samples each epoch, not a fixed shard"
    other_seed = rank_orders(page_of, 0, 2, seed=1)
    assert all(a.tolist() != b.tolist() for a, b in zip(first, other_seed, strict=True)), "the seed matters"


def test_three_ranks_drop_fewer_samples_than_ranks_never_repeat_one(page_of):
    for epoch in (0, 1):
        orders = rank_orders(page_of, epoch, 3)
        assert [len(order) for order in orders] == [133] * 3  # 400 // 3: one sample left out this epoch
        served = np.concatenate(orders)
        assert len(set(served.tolist())) == 399, "no sample twice"
        pages = [set(page_of[order].tolist()) for order in orders]
        shared = sum(len(a & b) for i, a in enumerate(pages) for b in pages[i + 1 :])
        assert shared <= 2, "only the pages at the two cuts are shared"


# -- exact resume on 2 DDP ranks -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_resume_mid_epoch_serves_exactly_the_rest_of_the_uninterrupted_order(paged_dir, page_of, tmp_path):
    ranks = run_ddp_probe(PROBE, paged_dir, tmp_path / "out")
    for rank, record in enumerate(ranks):
        # What the real loaders served is the order module's order for this rank: epoch 0 whole, epoch 1 split
        # over the two fits, the resumed fit numbering its batches on from 3.
        expected = [rank_orders(page_of, epoch, 2, pages=2)[rank].tolist() for epoch in (0, 1)]
        epoch0 = [x for e, _, _, labels in record["first"] if e == 0 for x in labels]
        assert epoch0 == expected[0], f"rank {rank}: epoch 0 is not the quasi-random order of (seed 0, epoch 0)"
        head = [x for e, _, _, labels in record["first"] if e == 1 for x in labels]
        assert len(head) == 3 * 10
        assert [(e, i) for e, i, _, _ in record["second"]] == [(1, i) for i in range(3, 20)]
        tail = [x for _, _, _, labels in record["second"] for x in labels]
        assert head + tail == expected[1], f"rank {rank}: the resumed epoch differs from the uninterrupted one"
        # FFCV's own cache (os_cache false) held the 2 open pages, the ~2 that enter over the 3 batches it reads
        # ahead (30 samples, ~21 a page) and one closing: far fewer than the ~10 pages of the rank's share.
        assert all(slots <= 2 + 3 for slots in record["slots"]), record["slots"]
    served = [x for record in ranks for e, _, _, labels in record["first"] + record["second"] if e == 1 for x in labels]
    assert sorted(served) == list(range(SAMPLES)), "epoch 1 across both ranks and both fits: every sample once"


def test_resume_on_another_world_size_is_refused_naming_both(paged_dir):
    data = FFCVDataModule(
        str(paged_dir), batch_size=20, num_workers=1, train_resolution=32, order="quasi_random", quasi_random_pages=4
    )
    data.trainer = quiet_trainer(max_epochs=3)  # one rank; only its counters are read
    data.setup("fit")
    data.load_state_dict({"epoch": 0, "batches": 3, "batch_size": 20, "world_size": 2})
    with pytest.raises(InvalidValue, match=r"epoch 0 after 3 batches on 2 ranks; this run has 1 ranks"):
        next(iter(data.train_dataloader()))
    data.teardown("fit")


# -- inside a real memory limit --------------------------------------------------------------------------------
def cgroup_unavailable() -> str | None:
    sys.path.insert(0, str(BENCHMARK.parent))
    from ddp_memory_limit import MemoryCgroup

    return MemoryCgroup.why_not()


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space: only its size is read by the memory checks."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_cgroup_limit_below_the_file_is_read_and_warned_from_inside_the_cgroup(tmp_path):
    why = cgroup_unavailable()
    if why:
        pytest.skip(f"no cgroup-v1 memory cgroup can be made here: {why}")
    from ddp_memory_limit import MemoryCgroup

    train = sparse_file(tmp_path / "train.ffcv", 2 << 30)
    cgroup = MemoryCgroup(f"resnet-ffcv-test-{os.getpid()}", 1 << 30)  # 1 GiB: above what the process needs
    code = (
        "import sys; from pathlib import Path; from resnet_ffcv.tools import memory_fit; "
        "print(memory_fit.cgroup_limit_bytes()); "
        "print(memory_fit.random_order_warning('random', Path(sys.argv[1]), None))"
    )
    try:
        inside = subprocess.run(
            [sys.executable, "-c", code, str(train)], preexec_fn=cgroup.preexec, capture_output=True, text=True
        )
    finally:
        cgroup.remove()
    assert inside.returncode == 0, inside.stderr[-2000:]
    limit, warning = inside.stdout.splitlines()
    assert int(limit) == 1 << 30
    assert f"{train}: 2 GiB > this container's memory limit (1 GiB) and data.order is random" in warning


# -- doctor and plan ---------------------------------------------------------------------------------------------
def test_random_order_over_a_file_larger_than_the_memory_is_warned(paged_dir, tmp_path):
    check = check_order_fits_memory("random", paged_dir / "train.ffcv", None)
    assert check.ok and not check.warn, "a 40 MB file fits this machine"

    ram = memory_fit.memory_bytes()
    huge = sparse_file(tmp_path / "train.ffcv", 2 * ram)  # twice this machine's RAM, as a g5 has with ImageNet
    check = check_order_fits_memory("random", huge, None)
    assert check.ok and check.warn and check.line().startswith("[WARN] data vs memory:")
    assert "data.order: quasi_random and data.os_cache: false" in check.detail
    assert "this machine's RAM" in check.detail or "this container's memory limit" in check.detail
    assert not check_order_fits_memory("quasi_random", huge, None).warn, "quasi_random is the remedy"

    # No file here (plan on a laptop): ImageNet's size at the rn50 preset against the instance's RAM.
    missing = tmp_path / "missing" / "train.ffcv"
    assert "360 GiB > g5.12xlarge's RAM (192 GiB)" in memory_fit.random_order_warning("random", missing, "g5.12xlarge")
    assert memory_fit.random_order_warning("random", missing, "p4d.24xlarge") is None, "1.1 TB holds it"
    assert memory_fit.random_order_warning("random", missing, None) is None, "nothing to compare against"


@pytest.mark.slow
def test_benchmark_smoke_inside_a_memory_limit(tmp_path):
    """benchmarks/ddp_memory_limit.py --smoke: 2 ranks of quasi_random inside a real cgroup limit (32 s on the
    2-core dev box when quiet; 103 s under other sessions' load: two fresh rank processes each compile a pipeline)."""
    why = cgroup_unavailable()
    if why:
        pytest.skip(f"no cgroup-v1 memory cgroup can be made here: {why}")
    result = subprocess.run(
        [sys.executable, str(BENCHMARK), "--smoke", "--cases", "quasi_random, os_cache=false"],
        env={**os.environ, "NUMBA_OPT": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cgroup-v1 memory limit" in result.stdout
    [row] = [line for line in result.stdout.splitlines() if line.startswith("| quasi_random")]
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    assert float(cells[1].rstrip("x")) <= 1.1, row  # each page read once
    assert float(cells[2].replace(",", "")) > 0, row  # the cgroup's own peak: the ranks ran inside it
