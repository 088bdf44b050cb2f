"""The robust hook on 5 Gloo ranks: invalid rows within and beyond f, and MixTailor's
commit-reveal draws (agreement, a cheating reveal, disagreeing pools, no waiting in bodies)."""
import time

import pytest
import torch
from _dist import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP

from commcomp import NUQSGD
from commcomp.codecs import TensorCodec
from commcomp.robust import (
    IPM,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MeanAroundMedian,
    MixTailor,
    NonFinite,
    TrimmedMean,
    build_pool,
)
from commcomp.robust import hook as robust_hook
from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes

WORLD = 5


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _train(rank, state, steps, ddp_kwargs=None, on_step=None):
    from common.data import load_digits_tensors

    train, _ = load_digits_tensors(flat=True)
    model = _model()
    ddp = DDP(model, **(ddp_kwargs or {}))
    ddp.register_comm_hook(state, robust_aggregation_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(100 + rank)
    loss = lambda: torch.nn.functional.cross_entropy(model(train.x), train.y).item()  # noqa: E731
    before = loss()
    for step in range(steps):
        idx = torch.randint(len(train), (32,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(train.x[idx]), train.y[idx]).backward()
        if on_step is not None:
            on_step(step, ddp)
        opt.step()
    return {"before": before, "after": loss(), "params": _flat(model), "state": state.state_dict()}


def _fixed_parameters(rank):
    # the three rules with a fixed size, drawn by MixTailor; rank 4 sends NaN every step, so
    # every bucket has 4 rows left (b = 2 trims, keep = 5 and m = 5 must shrink)
    mix = MixTailor([TrimmedMean(b=2), MeanAroundMedian(keep=5), Krum(m=5)])
    state = RobustAggregationState(mix, tolerance=1, byzantine_ranks=[4], attack=NonFinite())
    out = _train(rank, state, 30)  # 30 uniform draws miss one of 3 rules with p = 1.5e-5
    out["counts"] = list(mix.counts)
    return out


def _over_budget(rank):
    # two NaN ranks, tolerance 1: every bucket falls back to NaN (AMP would skip the step)
    state = RobustAggregationState(CoordinateMedian(), tolerance=1, byzantine_ranks=[3, 4], attack=NonFinite())
    grads = []

    def skip_like_amp(step, ddp):
        grads.append(torch.cat([p.grad.flatten() for p in ddp.parameters()]))
        for p in ddp.parameters():
            p.grad = None  # what GradScaler.step does with a non-finite gradient: no update

    out = _train(rank, state, 2, on_step=skip_like_amp)
    return {"grads": grads, "state": out["state"], "params": out["params"]}


class _Refusing(TensorCodec):
    """A codec that refuses every tensor (as a quantizer refuses a row whose norm overflows)."""

    def encode(self, tensor):
        raise ValueError("norm overflows float32")


def _refused(rank):
    # rank 2's own codec refuses its finite gradient: it sends the non-finite marker instead of
    # crashing, and the others drop its row
    codec = (_Refusing if rank == 2 else TensorCodec)(NUQSGD(4, 256), seed=rank)
    state = RobustAggregationState(CoordinateMedian(), tolerance=1, codec=codec)
    return _train(rank, state, 3)


def _commit_reveal(rank):
    # MixTailor over 5 members, rank 4 attacks with IPM through the spy round, 4-bit Elias
    # payloads, several buckets: every rank must draw the same members and end identical
    def run(steps):
        mix = MixTailor(build_pool(["krum", "median", "trimmed_mean", "geomed"], norms=[1, 2]))
        codec = TensorCodec(NUQSGD(4, 256), coding="elias-gamma", seed=rank)
        state = RobustAggregationState(mix, tolerance=1, byzantine_ranks=[4], attack=IPM(10.0), codec=codec)
        draws = []
        out = _train(rank, state, steps, {"bucket_cap_mb": 0.004}, on_step=lambda s, ddp: draws.append(mix.last_choice))
        out.update(draws=draws, counts=list(mix.counts))
        return out

    return run(30), run(10)


def _bad_reveal(rank):
    if rank == 1:  # reveals another nonce than the one it committed to
        robust_hook._revealed_nonce = lambda nonce: bytes(b ^ 1 for b in nonce)
    mix = MixTailor([CoordinateMedian(), TrimmedMean(), GeometricMedian()])
    state = RobustAggregationState(mix, tolerance=1)
    try:
        return _train(rank, state, 10, {"bucket_cap_mb": 0.004})
    finally:
        robust_hook._revealed_nonce = lambda nonce: nonce


class _TimedHook:
    def __init__(self):
        self.seconds = []
        self.__name__ = self.__qualname__ = "timed_robust_hook"

    def __call__(self, state, bucket: torch.distributed.GradBucket):
        start = time.monotonic()
        fut = robust_aggregation_hook(state, bucket)
        self.seconds.append(time.monotonic() - start)
        return fut


def _late_peer(rank):
    # rank 1 starts its backward 2 s late: no hook body on the others may wait for it
    mix = MixTailor([CoordinateMedian(), TrimmedMean(), Krum(p=1)])
    state = RobustAggregationState(mix, tolerance=1)
    timed = _TimedHook()
    ddp = DDP(_model(), bucket_cap_mb_list=[0.004] * 4, find_unused_parameters=True)
    ddp.register_comm_hook(state, timed)
    grads, per_step = [], []
    for step in range(3):
        gen = torch.Generator().manual_seed(10 * rank + step)
        x, y = torch.randn(16, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen)
        if rank == 1:
            time.sleep(2.0)  # in the first step too: the state's groups exist before any backward
        ddp.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in ddp.parameters()]))
        per_step.append(len(timed.seconds) - sum(per_step))
    return {"seconds": timed.seconds, "grads": grads, "buckets_per_step": min(per_step)}


def _pool_mismatch(rank):
    def one_step(mix):
        state = RobustAggregationState(mix, tolerance=1)
        ddp = DDP(_model())
        ddp.register_comm_hook(state, robust_aggregation_hook)
        try:
            torch.nn.functional.cross_entropy(ddp(torch.ones(4, 64)), torch.zeros(4, dtype=torch.long)).backward()
            return "ok", state.state_dict()
        except Exception as err:  # DDP re-raises the hook's error from backward()
            return str(err), state.state_dict()

    pool_a = lambda: [CoordinateMedian(), TrimmedMean()]  # noqa: E731
    pool_b = lambda: [CoordinateMedian(), TrimmedMean(b=1), Krum()]  # noqa: E731
    split = one_step(MixTailor(pool_a() if rank < 3 else pool_b()))  # 3 vs 2: no pool held by 4
    minority = one_step(MixTailor(pool_a() if rank < 4 else pool_b()))  # rank 4 alone differs
    return split, minority


def _all_scenarios(rank, world):
    return {
        "fixed": _fixed_parameters(rank),
        "over_budget": _over_budget(rank),
        "refused": _refused(rank),
        "commit_reveal": _commit_reveal(rank),
        "bad_reveal": _bad_reveal(rank),
        "late_peer": _late_peer(rank),
        "pool_mismatch": _pool_mismatch(rank),  # last: ranks raise in backward
    }


@pytest.fixture(scope="module")
def results(comm_mode):
    return run_ranks(_all_scenarios, WORLD, timeout=300)


def _same_params(results, key, index=None):
    got = [r[key] if index is None else r[key][index] for r in results]
    for other in got[1:]:
        assert torch.equal(other["params"], got[0]["params"]), key


def test_fixed_size_rules_survive_a_dropped_row_on_every_rank(results):
    _same_params(results, "fixed")
    for r in results:
        out = r["fixed"]
        assert out["state"]["rejected"] == [0, 0, 0, 0, 30] and out["state"]["skipped_buckets"] == 0
        assert out["after"] < 0.8 * out["before"]
        assert sum(out["counts"]) == 30 and min(out["counts"]) > 0  # every fixed-size rule ran


def test_more_invalid_rows_than_f_give_a_nan_bucket_and_are_counted(results):
    for r in results:
        out = r["over_budget"]
        assert all(bool(torch.isnan(g).all()) for g in out["grads"])  # AMP's GradScaler skips these
        assert out["state"]["skipped_buckets"] == 2 and out["state"]["rejected"] == [0, 0, 0, 2, 2]
        assert torch.equal(out["params"], _flat(_model()))  # both steps skipped, nothing crashed


def test_a_row_the_local_codec_refuses_is_sent_as_the_marker(results):
    _same_params(results, "refused")
    for r in results:
        assert r["refused"]["state"]["rejected"] == [0, 0, 3, 0, 0]
        assert r["refused"]["state"]["skipped_buckets"] == 0


def test_commit_reveal_draws_agree_and_parameters_stay_identical(results):
    _same_params(results, "commit_reveal", 0)
    _same_params(results, "commit_reveal", 1)
    first = results[0]["commit_reveal"]
    for r in results[1:]:
        assert r["commit_reveal"][0]["draws"] == first[0]["draws"]
        assert r["commit_reveal"][1]["draws"] == first[1]["draws"]
    long, short = first
    assert len(set(long["draws"])) >= 3 and sum(long["counts"]) == 30  # one draw per iteration
    assert short["draws"] != long["draws"][:10]  # fresh nonces: another run, other draws
    for r in results:
        assert r["commit_reveal"][0]["state"]["bad_reveals"] == [0] * WORLD
        assert r["commit_reveal"][0]["after"] < r["commit_reveal"][0]["before"]  # IPM x10 resisted


def test_a_reveal_that_does_not_open_its_commitment_marks_the_rank_invalid(results):
    _same_params(results, "bad_reveal")
    for r in results:
        state = r["bad_reveal"]["state"]
        assert state["bad_reveals"] == [0, 10, 0, 0, 0]
        rejected = state["rejected"]
        assert rejected[1] >= 10 and rejected[1] % 10 == 0 and rejected[0] == rejected[2] == 0  # every bucket
        assert state["skipped_buckets"] == 0


def test_hook_bodies_with_commit_reveal_never_wait_for_a_late_peer(results):
    out0 = results[0]["late_peer"]
    assert out0["buckets_per_step"] >= 2 and len(out0["seconds"]) >= 6
    assert max(out0["seconds"]) < 0.5, out0["seconds"]
    for r in results[1:]:
        for a, b in zip(r["late_peer"]["grads"], out0["grads"]):
            assert torch.equal(a, b)


def test_ranks_with_different_pools_get_a_clear_error(results):
    for rank, r in enumerate(results):
        (split_msg, _), (minority_msg, minority_state) = r["pool_mismatch"]
        assert "ranks disagree on the pool" in split_msg and "ranks [0, 1, 2]" in split_msg
        if rank == 4:
            assert "this rank's pool" in minority_msg and "ranks [0, 1, 2, 3]" in minority_msg
        else:
            assert minority_msg == "ok" and minority_state["bad_reveals"] == [0, 0, 0, 0, 1]
