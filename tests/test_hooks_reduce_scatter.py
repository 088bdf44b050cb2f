"""reduce_scatter_hook on Gloo: unbiased, bit-identical on every rank, uneven chunks, every
quantizer and coding, hierarchical groups, adaptive refits, a corrupt peer payload."""
import pytest
import torch
from _dist import run_ranks
from _hook_fixtures import batch, flat_grad, flat_params, small_model, train_steps
from torch.nn.parallel import DistributedDataParallel as DDP

import commcomp
from commcomp.hooks import CompressionState, hook_from_spec, reduce_scatter_hook
from commcomp.hooks._params import ParamSlice, chunk_bounds, cut_unit

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes

TRIALS = 200


_model, _batch = small_model, batch


def _draws(rank, world, cases, trials):
    x, y = _batch(rank)
    plain = DDP(_model(), bucket_cap_mb=0.004)
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    out = {"exact": flat_grad(plain).double()}
    for spec, kwargs in cases:
        ddp = DDP(_model(), bucket_cap_mb_list=[0.004] * 4, find_unused_parameters=True)  # several buckets
        state, hook = hook_from_spec(spec, bucket_size=64, min_compression_numel=0, **kwargs)
        ddp.register_comm_hook(state, hook)
        adaptive = hasattr(state.quantizer, "should_observe")  # a refit may embed a level table
        draws, sent = [], []
        for _ in range(trials):
            ddp.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            draws.append(flat_grad(ddp).double())
            sent.append(state.bytes_sent)
        draws = torch.stack(draws)
        out[spec + str(kwargs)] = (draws.mean(0), draws.var(0), draws[-1], state.compression_ratio,
                                   (sent, state.total_bytes_sent, state.coding == "fixed" and not adaptive))
    return out


def _check(results, cases, trials):
    exact = results[0]["exact"]
    for spec, kwargs in cases:
        mean, var, last, ratio, (sent, total, constant) = results[0][spec + str(kwargs)]
        # Pooled test: sum of squared deviations of the mean against its expectation under no
        # bias (sum of variances / trials); robust to the few-valued noise of a few ranks.
        pooled = float(((mean - exact) ** 2).sum() / (var.sum() / trials))
        assert pooled < 1.3, (spec, kwargs, pooled)
        for other in results[1:]:
            assert torch.equal(other[spec + str(kwargs)][2], last), (spec, kwargs)  # bit-identical
        assert ratio > 2.0, (spec, ratio)
        # Each backward pass's bytes are counted in that pass, even those a callback records after
        # the last bucket's body ended the iteration (hierarchical mode): fixed width is the same
        # every pass (fixed levels), and the passes add up to the total.
        assert min(sent) > 0 and sum(sent) == total, (spec, kwargs, sent[:5], total)
        if constant:
            assert len(set(sent)) == 1, (spec, kwargs, sorted(set(sent)))


CASES_2 = [("rs-nuqsgd:4", {}), ("rs-qsgdinf:3:elias-delta", {}), ("rs-amq:3", {})]
CASES_3 = [("rs-qsgd:4:elias-gamma", {}), ("rs-nuqsgd:2:elias-omega", {})]  # uneven chunks
CASES_5 = [("rs-nuqsgd:4", {}), ("rs-qsgd:3:elias", {})]
CASES_4_HIERARCHICAL = [("rs-nuqsgd:4", {"hierarchical": True, "local_world_size": 2}),
                        ("rs-qsgd:4:elias", {"hierarchical": True, "local_world_size": 2})]


@pytest.mark.parametrize("world,cases", [(2, CASES_2), (3, CASES_3), (5, CASES_5), (4, CASES_4_HIERARCHICAL)],
                         ids=["w2", "w3-uneven", "w5-uneven", "w4-2x2-nodes"])
def test_unbiased_and_bit_identical_on_every_rank(world, cases):
    results = run_ranks(_draws, world, cases, TRIALS, timeout=600)
    _check(results, cases, TRIALS)


def test_chunks_cut_on_parameter_boundaries_or_whole_quantization_buckets():
    slices = [ParamSlice("#0", 0, 0, 1000), ParamSlice("#1", 1, 1000, 37), ParamSlice("#2", 2, 1037, 3000)]
    for parts in (1, 2, 3, 5, 8, 40):
        bounds = chunk_bounds(slices, 0, 4037, 96, parts)
        assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == 4037
        assert all(a <= b for a, b in bounds) and all(b == c for (_, b), (c, _) in zip(bounds, bounds[1:]))
        for a, _ in bounds[1:]:
            inside = [s for s in slices if s.start < a < s.start + s.numel]
            assert not inside or (a - inside[0].start) % cut_unit(96) == 0, (parts, a)
    assert cut_unit(96) == 96 and cut_unit(100) == 200 and cut_unit(7) == 56


def _adaptive(rank, world, scheme):
    q = (commcomp.ALQ if scheme == "alq" else commcomp.AMQ)(3, 64, update_schedule=commcomp.UpdateSchedule(at=(1, 3), every=None))
    initial = q.levels
    ddp = DDP(_model(), bucket_cap_mb_list=[0.004] * 4, find_unused_parameters=True)
    state = CompressionState(q, min_compression_numel=0, coding="elias-gamma", start_iter=1)
    ddp.register_comm_hook(state, reduce_scatter_hook)
    train_steps(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05), rank, 0, 5)
    return initial.values, q.levels.values, q.updates, flat_params(ddp)


@pytest.mark.parametrize("scheme", ["alq", "amq"])
def test_adaptive_levels_refit_identically(scheme):
    results = run_ranks(_adaptive, 3, scheme)
    initial, fitted, updates, params = results[0]
    assert updates == 2 and fitted != initial
    for other in results[1:]:
        assert other[1] == fitted and torch.equal(other[3], params)


def _corrupt_chunk(rank, world):
    import commcomp.hooks.reduce_scatter as rs

    if rank == 2:  # a hostile rank: garbles the payload it sends rank 0, and only that one
        honest = rs.write_pieces
        calls = []

        def write_then_garble(payloads, out):
            n = honest(payloads, out)
            if not calls:
                out[:4] = 0  # the first piece's magic
            calls.append(n)
            return n

        rs.write_pieces = write_then_garble
    ddp = DDP(_model(), bucket_cap_mb=25)
    state, hook = hook_from_spec("rs-nuqsgd:4", bucket_size=64, min_compression_numel=0)
    ddp.register_comm_hook(state, hook)
    x, y = _batch(rank)
    try:
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
    except Exception as err:
        return str(err)
    return None


def test_a_corrupt_chunk_seen_by_one_rank_raises_the_same_error_on_every_rank():
    errors = run_ranks(_corrupt_chunk, 3, timeout=120)
    for err in errors:
        assert err is not None and "invalid payload from rank 2" in err, err
    assert "reported by rank 0" in errors[1]  # ranks 1 and 2 learned it from rank 0's frame


def test_state_validates_hierarchical_options():
    with pytest.raises(ValueError, match="need hierarchical=True"):
        CompressionState(commcomp.QSGD(4), local_world_size=2)
    with pytest.raises(ValueError, match="both intra_node_group and inter_node_group"):
        CompressionState(commcomp.QSGD(4), hierarchical=True, intra_node_group=object())
    with pytest.raises(ValueError, match="local_world_size must be a positive int"):
        CompressionState(commcomp.QSGD(4), hierarchical=True, local_world_size=0)
