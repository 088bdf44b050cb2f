"""The robust DDP comm hook on 4 Gloo ranks, one of them Byzantine; untrusted payloads."""
import pytest
import torch
from _dist import run_ranks

from commcomp.robust import IPM, CoordinateMedian, GeometricMedian, Mean, MixTailor, TrimmedMean
from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook

from common.data import load_digits_tensors

STEPS = 60


from commcomp import NUQSGD
from commcomp.codecs import TensorCodec

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes

class FP16Codec:
    """A trivial codec: fp16 bytes; decode checks the length like a real decoder must."""

    def encode(self, tensor):
        return tensor.to(torch.float16).view(torch.uint8).clone()

    def decode(self, payload, numel):
        if payload.numel() != 2 * numel:
            raise ValueError(f"payload has {payload.numel()} bytes, expected {2 * numel}")
        return payload.clone().view(torch.float16).float()


class GarbageCodec(FP16Codec):
    """Sends 7 bytes: every receiver's decode raises."""

    def encode(self, tensor):
        return torch.arange(7, dtype=torch.uint8)


class OversizedCodec(FP16Codec):
    """Announces a payload far above the receivers' cap: never allocated, rejected."""

    def encode(self, tensor):
        return torch.zeros(8 * tensor.numel() + 10_000, dtype=torch.uint8)


class NaNCodec(FP16Codec):
    """Sends a well-formed payload of NaN: decodes, then fails the finite check."""

    def encode(self, tensor):
        return super().encode(torch.full_like(tensor, float("nan")))


class TakingTurns(FP16Codec):
    """Sends like ``bad`` on every third call starting at ``phase``, honestly otherwise: one
    invalid row per step, within the tolerance f = 1 (more would make the bucket NaN)."""

    def __init__(self, bad, phase):
        self.bad, self.phase, self.calls = bad, phase, 0

    def encode(self, tensor):
        turn = self.calls % 3 == self.phase
        self.calls += 1
        return self.bad.encode(tensor) if turn else super().encode(tensor)


def _loss(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y).item()


def _train(rank, world_size, scenario):
    torch.manual_seed(0)  # same init on every rank (DDP also broadcasts it)
    train, test = load_digits_tensors(flat=True)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    pool = MixTailor([CoordinateMedian(), TrimmedMean(), GeometricMedian()], seed=3)
    if scenario == "ipm":
        # rank 3 pushes -10 x the honest mean: plain averaging would ascend the loss. Gradients
        # travel as 4-bit NUQSGD payloads with Elias coding (commcomp.codecs), own stream per rank.
        codec = TensorCodec(NUQSGD(4, 256), coding="elias-gamma", seed=rank)
        state = RobustAggregationState(pool, tolerance=1, byzantine_ranks=[3], attack=IPM(10.0), codec=codec)
    else:
        # ranks 1, 2, 3 take turns: undecodable bytes, an oversized payload, NaN; every step
        # has one invalid row, dropped and counted, and every rank keeps going on the others
        codec = {0: FP16Codec(), 1: TakingTurns(GarbageCodec(), 0), 2: TakingTurns(OversizedCodec(), 1),
                 3: TakingTurns(NaNCodec(), 2)}[rank]
        state = RobustAggregationState(pool, tolerance=1, codec=codec)
    ddp.register_comm_hook(state, robust_aggregation_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(100 + rank)
    mine = torch.arange(rank, len(train), world_size)
    before = _loss(model, train.x, train.y)
    for _ in range(STEPS):
        idx = mine[torch.randint(len(mine), (32,), generator=gen)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(train.x[idx]), train.y[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    return {
        "before": before,
        "after": _loss(model, train.x, train.y),
        "acc": acc,
        "params": flat,
        "rejected": list(state.rejected),
        "state": state.state_dict(),
    }


def _all_scenarios(rank, world_size):
    out = {s: _train(rank, world_size, s) for s in ("ipm", "bad_payloads")}
    out["bulyan_error"] = _bulyan_on_four(rank, world_size)  # last: it leaves DDP mid-backward
    return out


@pytest.fixture(scope="module")
def results(comm_mode):
    return run_ranks(_all_scenarios, 4, timeout=240)


def test_converges_with_one_byzantine_rank(results):
    for r in results:
        out = r["ipm"]
        assert out["after"] < 0.35 * out["before"], (out["before"], out["after"])
        assert out["acc"] > 0.8
        assert out["rejected"] == [0, 0, 0, 0]
        assert out["state"]["iteration"] == STEPS


def test_all_ranks_hold_identical_parameters(results):
    for scenario in ("ipm", "bad_payloads"):
        first = results[0][scenario]["params"]
        for r in results[1:]:
            assert torch.equal(r[scenario]["params"], first), scenario


def test_bad_payloads_are_dropped_counted_and_never_crash(results):
    for r in results:
        out = r["bad_payloads"]
        assert out["rejected"] == [0, STEPS // 3, STEPS // 3, STEPS // 3]
        assert out["state"]["skipped_buckets"] == 0
        assert out["after"] < 0.5 * out["before"]  # training continued on the valid rows


def test_state_validation_and_round_trip():
    with pytest.raises(ValueError, match="attack"):
        RobustAggregationState(Mean(), 1, byzantine_ranks=[1])
    with pytest.raises(ValueError, match="invalid_policy"):
        RobustAggregationState(Mean(), 1, invalid_policy="ignore")
    with pytest.raises(ValueError, match="codec"):
        RobustAggregationState(Mean(), 1, codec=object())
    with pytest.raises(ValueError, match="aggregator"):
        RobustAggregationState("median", 1)
    mix = MixTailor([CoordinateMedian(), TrimmedMean()], seed=5)
    state = RobustAggregationState(mix, 1)
    state.iteration, state.rejected = 17, [0, 2]
    saved = state.state_dict()
    fresh = RobustAggregationState(MixTailor([CoordinateMedian(), TrimmedMean()], seed=0), 1)
    fresh.load_state_dict(saved)
    assert fresh.iteration == 17 and fresh.rejected == [0, 2] and fresh.aggregator.seed == 5
    assert fresh.aggregator.for_step(17) is fresh.aggregator.pool[mix.choose(17)]
    with pytest.raises(ValueError, match="keys"):
        fresh.load_state_dict({"iteration": 1})
    assert not hasattr(state, "__dict__")  # __slots__ only


def _bulyan_on_four(rank, world_size):
    from commcomp.robust import Bulyan

    state = RobustAggregationState(Bulyan(), tolerance=1)
    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    ddp.register_comm_hook(state, robust_aggregation_hook)
    try:
        ddp(torch.ones(2, 3)).sum().backward()
    except Exception as err:  # DDP may wrap the hook's ValueError
        return str(err)
    return "no error"


def test_rule_requirement_is_checked_against_world_size(results):
    msgs = [r["bulyan_error"] for r in results]
    assert all("4f + 3" in m for m in msgs), msgs
