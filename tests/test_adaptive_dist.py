"""ALQ/AMQ across 4 Gloo ranks: every rank fits the same levels, bit for bit, from different data."""
import struct

import numpy as np
import torch

from _dist import run_ranks

import commcomp  # noqa: F401
from commcomp.ops import level_stats
from commcomp.adaptive import ALQ, AMQ, UpdateSchedule
from commcomp.adaptive.fit import Histogram, to_float32_levels


def rank_gradient(rank: int, step: int) -> torch.Tensor:
    # Ranks see differently shaped data, so unsynchronized fits would disagree.
    g = torch.Generator().manual_seed(1000 * rank + step)
    scale = torch.rand(6000, generator=g).pow(1 + rank)
    return torch.randn(6000, generator=g) * scale


def fit_on_rank(rank: int, world_size: int, cls_name: str) -> dict:
    cls = {"alq": ALQ, "amq": AMQ}[cls_name]
    q = cls(bits=4, bucket_size=256, update_schedule=UpdateSchedule(at=(2,), every=3))
    changes = []
    for it in range(7):  # updates at iterations 2, 3 and 6
        if q.should_observe(it):
            q.observe(rank_gradient(rank, it)[:3000])
            q.observe(rank_gradient(rank, it)[3000:])  # two DDP buckets of one iteration
        if rank == 3 and it == 6:
            q._pending = None  # a rank may have nothing to add; it still joins the collective
        changes.append(q.maybe_update(it))
    # Raw float32 bytes of the table: equality below is bit-for-bit.
    return {"levels": struct.pack(f"{len(q.levels)}f", *q.levels.values), "changes": changes,
            "values": q.levels.values}


def all_checks_on_rank(rank: int, world_size: int) -> dict:
    # One spawn of 4 ranks for every check: starting processes dominates the run time.
    return {"alq": fit_on_rank(rank, world_size, "alq"), "amq": fit_on_rank(rank, world_size, "amq"),
            "first": first_update(rank)}


def first_update(rank: int) -> tuple:
    q = ALQ(bits=4, bucket_size=256, update_schedule=UpdateSchedule(at=(0,), every=None))
    q.observe(rank_gradient(rank, 2)[:3000])
    q.observe(rank_gradient(rank, 2)[3000:])
    q.maybe_update(0)
    return q.levels.values


def test_levels_identical_on_all_ranks_and_fitted_to_the_summed_statistics():
    results = run_ranks(all_checks_on_rank, 4)
    for name in ("alq", "amq"):
        assert len({r[name]["levels"] for r in results}) == 1, [r[name]["values"] for r in results]
        assert results[0][name]["changes"] == [False, False, True, True, False, False, True]

    # The first update equals a single-process fit on the summed statistics of the 4 ranks (up to
    # the summation order of all_reduce), and differs from a fit on rank 0's statistics alone.
    def fit(stats):
        return to_float32_levels(ALQ(bits=4, bucket_size=256)._fit(Histogram.from_stats(stats)).levels)

    per_rank = [level_stats(rank_gradient(r, 2)[:3000], 256) + level_stats(rank_gradient(r, 2)[3000:], 256)
                for r in range(4)]
    joint, alone = fit(sum(per_rank)), fit(per_rank[0])
    synced = [r["first"] for r in results]
    assert len(set(synced)) == 1
    np.testing.assert_allclose(synced[0], joint, rtol=1e-6, atol=1e-9)
    assert np.max(np.abs(np.array(synced[0]) - np.array(alone))) > 1e-3
