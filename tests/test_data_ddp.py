"""FFCVDataModule under DDP on 2 CPU processes: disjoint covering train shards, every val sample once."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import DistributedSampler

from .data_helpers import write_indexed_ffcv
from .helpers import run_ddp_probe

PROBE = Path(__file__).with_name("ddp_probe.py")


@pytest.mark.slow
def test_ddp_shards_orders_resolution_and_validation(tmp_path):
    data_dir = write_indexed_ffcv(tmp_path / "data", train=80, val=41)  # 41: the ranks' val shares differ
    ranks = run_ddp_probe(PROBE, data_dir, tmp_path / "out")

    for epoch in (0, 1):
        seen = [[x for e, _, _, labels in rank["train"] if e == epoch for x in labels] for rank in ranks]
        assert not set(seen[0]) & set(seen[1]), f"epoch {epoch}: the ranks' training samples overlap"
        assert sorted(seen[0] + seen[1]) == list(range(80)), f"epoch {epoch}: the ranks do not cover the data"
        for rank, order in enumerate(seen):
            # FFCV's distributed RANDOM order is torch's DistributedSampler(seed=0) at set_epoch(epoch).
            sampler = DistributedSampler(range(80), num_replicas=2, rank=rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            assert order == list(sampler), f"rank {rank} epoch {epoch}: not the order of epoch {epoch}"
        resolutions = {res for rank in ranks for e, _, res, _ in rank["train"] if e == epoch}
        assert resolutions == {32 if epoch == 0 else 64}, f"epoch {epoch}: resolutions {resolutions}"

    # Validation ran after each of the 2 epochs: each rank its own slice, together every sample exactly once.
    # Rank 0's 21 samples in batches of 10 end in a batch of one: it keeps its batch dimension.
    assert [len(batch) for batch in ranks[0]["val"]] == [10, 10, 1] * 2
    per_rank = [[x for batch in rank["val"] for x in batch] for rank in ranks]
    assert sorted(per_rank[0]) == sorted(list(range(0, 41, 2)) * 2)
    assert sorted(per_rank[1]) == sorted(list(range(1, 41, 2)) * 2)
    for rank in ranks:
        assert rank["val_synced"] == [list(range(41))] * 2, "torchmetrics' synced state counts each sample once"
