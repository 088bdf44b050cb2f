"""The wire layer every hook shares: capped sizes from peers, one policy for undecodable payloads,
one way to send a non-finite bucket, and hook bodies that never wait for a peer."""
import resource
import threading
import time

import pytest
import torch
import torch.distributed as dist
from _dist import run_ranks
from _hook_fixtures import batch, flat_grad, small_model
from torch.nn.parallel import DistributedDataParallel as DDP

from commcomp import NUQSGD, QSGD
from commcomp.codecs import TensorCodec
from commcomp.hooks import CompressionState, PeerPayloadError, allgather_hook, allreduce_hook, hook_from_spec
from commcomp.hooks import _wire
from commcomp.robust import CoordinateMedian
from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes


_model, _batch = small_model, batch


def _huge_announcement(rank, world):
    if rank == 1:  # a hostile peer: announces 2^40 bytes for its payload
        _wire._announced_size = lambda frame: 2**40
    ddp = DDP(_model(), bucket_cap_mb=0.01)
    state, hook = hook_from_spec("nuqsgd:4:elias", bucket_size=128, min_compression_numel=0)
    ddp.register_comm_hook(state, hook)
    x, y = _batch(rank)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    try:
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        error = None
    except Exception as err:  # DDP re-raises the hook's error from backward()
        error = str(err)
    elapsed = time.monotonic() - start
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    return error, elapsed, grown_kib, state.payload_cap(ddp.module[0].weight.numel())


def test_a_huge_announced_size_raises_naming_the_rank_before_any_allocation():
    for error, elapsed, grown_kib, cap in run_ranks(_huge_announcement, 2, timeout=60):
        assert error is not None and "invalid payload from rank 1" in error, error
        assert f"announced {2**40} bytes" in error
        assert elapsed < 10.0
        assert grown_kib < 64 * 1024  # nothing near the announcement (1 TiB) was ever allocated
        assert cap < 2**20


def test_decode_frames_policy_raise_names_the_rank_and_mark_keeps_going():
    cpu = torch.device("cpu")
    good = _wire.make_frame(torch.arange(5, dtype=torch.uint8), cpu)
    marker = _wire.make_frame(None, cpu)
    bogus = torch.tensor([7, 1, 2], dtype=torch.uint8)  # unknown frame kind

    def decode(rank, body):
        if body.numel() != 5:
            raise ValueError("wrong length")
        return body.sum().item()

    rows, nonfinite = _wire.decode_frames([good, marker, good], decode, "raise", "test_hook")
    assert rows == [10, None, 10] and nonfinite
    with pytest.raises(PeerPayloadError, match="test_hook: invalid payload from rank 2: unknown frame kind 7") as info:
        _wire.decode_frames([good, good, bogus], decode, "raise", "test_hook")
    assert info.value.rank == 2 and isinstance(info.value, RuntimeError)
    rows, nonfinite = _wire.decode_frames([bogus, good, None, good[:3]], decode, "mark", "test_hook")
    assert rows == [None, 10, None, None] and not nonfinite
    with pytest.raises(ValueError, match="does not fit"):
        _wire.make_frame(torch.zeros(10, dtype=torch.uint8), cpu, size=5)


NONFINITE_SPECS = [f"{s}:4:{c}" for s in ("qsgd", "qsgdinf", "nuqsgd", "alq", "amq")
                   for c in ("fixed", "elias-gamma", "elias-delta", "elias-omega")]
# allreduce + ALQ/AMQ is refused at construction (its refits leave the integer grid): see
# test_hooks.py::test_allreduce_refuses_what_it_cannot_run
NONFINITE_SPECS += [f"allreduce-{s}:4" for s in ("qsgd", "qsgdinf", "nuqsgd")]
NONFINITE_SPECS += [f"rs-{s}:4:{c}" for s in ("qsgd", "qsgdinf", "nuqsgd", "alq", "amq") for c in ("fixed", "elias-gamma")]
NONFINITE_SPECS += ["rs-nuqsgd:4:elias-delta", "rs-qsgd:3:elias-omega"]


def _nonfinite_buckets(rank, world, specs):
    """One inf/NaN in one gradient of rank 1: what does each hook deliver, against plain DDP?"""
    out = {}
    for spec in specs:
        for bad in (float("nan"), float("inf")):
            results = []
            for hooked in (True, False):
                model = _model()
                if rank == 1:  # before DDP's reducer sees the gradient: one coordinate overflows
                    model[0].weight.register_hook(lambda g: g.index_put((torch.tensor([3]), torch.tensor([7])), torch.tensor(bad)))
                ddp = DDP(model, bucket_cap_mb_list=[0.004] * 4, find_unused_parameters=True)
                if hooked:
                    # allreduce-nuqsgd:4 sums int32 at 2 ranks: opted in, this test is about inf/NaN
                    wide = {"allow_wide_sums": True} if spec.startswith("allreduce-") else {}
                    state, hook = hook_from_spec(spec, bucket_size=128, min_compression_numel=0, **wide)
                    ddp.register_comm_hook(state, hook)
                x, y = _batch(rank)
                torch.nn.functional.cross_entropy(ddp(x), y).backward()
                results.append(flat_grad(ddp))
            out[(spec, str(bad))] = results
    return out


def test_a_nonfinite_value_reaches_every_rank_as_pytorchs_fp32_average():
    # every quantizer x hook x coding; the bucket with the inf/NaN is reduced as DDP would
    for per_rank in run_ranks(_nonfinite_buckets, 2, NONFINITE_SPECS, timeout=240):
        for (spec, bad), (hooked, plain) in per_rank.items():
            assert not bool(torch.isfinite(hooked).all()), (spec, bad)
            bad_bucket = ~torch.isfinite(plain)
            torch.testing.assert_close(hooked[bad_bucket], plain[bad_bucket], rtol=0, atol=0, equal_nan=True)
            # the inf/NaN lands where fp32 allreduce puts it, not spread or turned finite
            assert torch.equal(~torch.isfinite(hooked), bad_bucket), (spec, bad)


class _TimedHook:
    """Wraps a hook; records how long each call of its body takes."""

    def __init__(self, hook):
        self.hook, self.seconds = hook, []
        self.__name__ = self.__qualname__ = hook.__name__

    def __call__(self, state, bucket: torch.distributed.GradBucket):
        start = time.monotonic()
        fut = self.hook(state, bucket)
        self.seconds.append(time.monotonic() - start)
        return fut


def _late_peer(rank, world, which):
    if which == "robust":
        state = RobustAggregationState(CoordinateMedian(), tolerance=0,
                                       codec=TensorCodec(NUQSGD(4, 128), coding="elias-gamma", seed=rank))
        hook = robust_aggregation_hook
    else:
        spec = {"allgather": "qsgd:4", "allgather-elias": "nuqsgd:4:elias", "allreduce": "allreduce-qsgd:4",
                "reduce-scatter": "rs-nuqsgd:4", "reduce-scatter-elias": "rs-qsgd:4:elias"}[which]
        state, hook = hook_from_spec(spec, bucket_size=128, min_compression_numel=0)
    timed = _TimedHook(hook)
    ddp = DDP(_model(), bucket_cap_mb_list=[0.004] * 4, find_unused_parameters=True)  # several buckets
    ddp.register_comm_hook(state, timed)
    grads = []
    for step in range(3):
        x, y = _batch(rank, step)
        if rank == 1:
            time.sleep(2.0)  # this rank starts its backward 2 s after its peer, in the first step too
        ddp.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        grads.append(flat_grad(ddp))
    return timed.seconds, grads


@pytest.mark.parametrize("which", ["allgather", "allgather-elias", "allreduce", "reduce-scatter", "reduce-scatter-elias", "robust"])
def test_hook_bodies_never_wait_for_a_late_peer(which):
    (seconds, grads0), (_, grads1) = run_ranks(_late_peer, 2, which, timeout=120)
    assert len(seconds) >= 6  # every body of every step, the first included (groups exist already)
    assert max(seconds) < 0.5, seconds  # rank 0's bodies return at once; rank 1 is 2 s late
    for a, b in zip(grads0, grads1):
        assert torch.equal(a, b)


def test_elias_is_skipped_for_a_while_where_it_saves_little():
    from commcomp.hooks._params import ParamSlice, Piece
    from commcomp.hooks._payload import EliasChoice

    q = NUQSGD(4, 256)
    x = torch.randn(4096)
    sparse = torch.where(torch.rand(4096) < 0.9, torch.zeros(4096), x)
    dense, sparse = q.quantize(x, seed=1), q.quantize(sparse, seed=1)
    pieces = [Piece(ParamSlice("a", 0, 0, 4096), 0, 4096), Piece(ParamSlice("b", 1, 4096, 4096), 4096, 4096)]
    choice = EliasChoice(min_saving=0.05, retry_every=10)
    body = choice.encode([dense, sparse], pieces, "elias-gamma", iteration=0)
    assert choice._skip_until == {"a": 10}  # dense: no saving, retried at iteration 10
    calls = []
    import commcomp.codecs as codecs_module

    honest = codecs_module.encode

    def counting(qt, coding="fixed", **kw):
        calls.append(coding)
        return honest(qt, coding, **kw)

    codecs_module.encode = counting
    try:
        choice.encode([dense, sparse], pieces, "elias-gamma", iteration=5)
        assert calls == ["fixed", "elias-gamma"]  # "a" is not even tried
        calls.clear()
        choice.encode([dense, sparse], pieces, "elias-gamma", iteration=10)
        assert calls == ["elias-gamma", "elias-gamma"]
    finally:
        codecs_module.encode = honest
    assert body.numel() < 2 * commcomp_fixed_bytes(dense)
    with pytest.raises(ValueError, match="elias_min_saving"):
        CompressionState(QSGD(4), elias_min_saving=1.5)


def commcomp_fixed_bytes(qt):
    from commcomp import codecs

    return codecs.fixed_payload_bytes(qt.numel, qt.bucket_size, qt.levels)


def _follow_ups_on_the_comm_thread(rank, world):
    from commcomp.hooks._comm_thread import THREAD_NAME
    from commcomp.hooks._groups import private_copy
    from commcomp.hooks._wire import BucketWire

    wire = BucketWire(private_copy(None), stages=2, device=torch.device("cpu"))
    threads = []

    def launch(group):
        return dist.all_reduce(torch.ones(4), group=group, async_op=True)

    def note(value):
        threads.append(threading.current_thread().name)
        return value

    done = wire.chain(wire.start(0, launch), lambda _: wire.chain(wire.start(1, launch), note))
    done.wait()
    del wire, done
    dist.destroy_process_group()  # the groups go while nothing of commcomp runs on their threads
    return threads, THREAD_NAME


@pytest.mark.native_only  # about Gloo's own threads; it drives the wire with host tensors, outside a hook
def test_follow_ups_run_on_the_comm_thread_not_on_the_process_groups_threads():
    # Python run by a Gloo worker thread (a callback, or the release of its closure) can still be
    # running when the main thread exits, and aborts the process then: nothing of commcomp runs there.
    for threads, name in run_ranks(_follow_ups_on_the_comm_thread, 2, timeout=30):
        assert threads == [name]
