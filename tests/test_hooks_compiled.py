"""DDP's per-parameter calls (compiled autograd with ``optimize_ddp="python_reducer"``): every hook
gives the gradients DDP's bucket path gives, bit for bit, and ends each iteration once.

The model has small-integer weights and inputs, so every gradient is an exact integer sum: the
compiled backward (AOT autograd's decompositions, another summation order) produces the same
bits as the eager one, and any difference in the averaged gradients is the hook's.
"""
import os

import pytest
import torch
import torch.distributed as dist
from _dist import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP

import commcomp
from commcomp.hooks import hook_from_spec, register_comm_hook
from commcomp.hooks._bucket import FlatBucket, ParameterGradients
from commcomp.robust import CoordinateMedian
from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes

STEPS = 4
# aot_eager: the same Dynamo, AOT autograd and compiled-autograd paths as inductor, without
# compiling C++ kernels on a 2-core machine.
BACKEND = os.environ.get("COMMCOMP_TEST_COMPILE_BACKEND", "aot_eager")


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape))
    return model


def _batch(rank, step):
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randint(-2, 3, (16, 64), generator=g).float(), torch.randint(-2, 3, (16, 8), generator=g).float()


def _state(name):
    if name == "robust-median":
        return RobustAggregationState(CoordinateMedian(), tolerance=0), robust_aggregation_hook
    spec, _, extra = name.partition("+")
    kwargs = dict(bucket_size=64, min_compression_numel=0, seed=3)
    if extra == "ef":
        kwargs["error_feedback"] = True
    if spec.startswith("alq") or spec.startswith("rs-alq"):
        kwargs["update_schedule"] = commcomp.UpdateSchedule(at=(1, 2), every=None)
    return hook_from_spec(spec, **kwargs)


def _summary(state):
    keys = ("iteration", "total_bytes_sent", "skipped_buckets")
    return {k: getattr(state, k) for k in keys if hasattr(state, k)}


def _train(rank, ddp, state, step_fn):
    grads = []
    for step in range(STEPS):
        ddp.zero_grad()
        x, c = _batch(rank, step)
        step_fn(x, c)
        grads.append([p.grad.clone() for p in ddp.module.parameters()])
    levels = getattr(getattr(state, "quantizer", None), "levels", None)
    return grads, _summary(state), levels.values if levels is not None else None


def _bucket_path(rank, world, names):
    out = {}
    for name in names:
        ddp = DDP(_model())
        state, hook = _state(name)
        register_comm_hook(ddp, state, hook)
        out[name] = _train(rank, ddp, state, lambda x, c: (ddp(x) * c).sum().backward())
    return out


def _compiled_path(rank, world, names):
    torch._dynamo.config.optimize_ddp = "python_reducer"
    torch._dynamo.config.compiled_autograd = True
    calls = _count_per_parameter_calls()
    out = {}
    for name in names:
        ddp = DDP(_model())
        assert ddp._use_python_reducer
        state, hook = _state(name)
        register_comm_hook(ddp, state, hook)
        compiled = torch.compile(ddp, backend=BACKEND)

        @torch.compile(backend=BACKEND)
        def step(x, c):
            (compiled(x) * c).sum().backward()

        before = calls[0]
        out[name] = _train(rank, ddp, state, step)
        # DDP did hand the hook one parameter at a time, every step
        assert calls[0] - before == STEPS * len(list(ddp.parameters())), name
        torch._dynamo.reset()
    return out


def _count_per_parameter_calls():
    calls = [0]
    add = ParameterGradients.add

    def counted(self, grad, param):
        calls[0] += 1
        return add(self, grad, param)

    ParameterGradients.add = counted
    return calls


COMPILED = ["nuqsgd:4", "qsgd:4:elias+ef", "allreduce-qsgd:4", "rs-nuqsgd:4", "rs-qsgd:3:elias", "alq:3", "robust-median"]


def test_compiled_autograd_python_reducer_gives_the_bucket_paths_gradients():
    eager = run_ranks(_bucket_path, 2, COMPILED)
    compiled = run_ranks(_compiled_path, 2, COMPILED, timeout=600)
    for rank in range(2):
        for name in COMPILED:
            (want, want_summary, want_levels), (got, got_summary, got_levels) = eager[rank][name], compiled[rank][name]
            assert got_summary == want_summary and got_summary["iteration"] == STEPS, name
            assert got_levels == want_levels, name  # ALQ refits at iterations 1 and 2 on both paths
            for step in range(STEPS):
                for a, b in zip(want[step], got[step]):
                    assert torch.equal(a, b), (name, rank, step)
    for name in COMPILED:  # and every rank holds the same average
        for step in range(STEPS):
            assert all(torch.equal(a, b) for a, b in zip(compiled[0][name][0][step], compiled[1][name][0][step]))


def _python_reducer_by_hand(rank, world, names):
    """What DDP's python reducer does, without compiling: after a plain backward, each
    parameter's (grad, param) goes to the hook, in backward order."""
    out = {}
    for name in names:
        model = _model()
        state, hook = _state(name)
        state.bind(model)
        out[name] = _train(rank, _Plain(model), state, lambda x, c, m=model, s=state, h=hook: _by_hand(m, s, h, x, c))
    return out


class _Plain:
    def __init__(self, model):
        self.module = model

    def zero_grad(self):
        self.module.zero_grad()


def _by_hand(model, state, hook, x, c):
    from _strict_nccl import as_ddp_calls_it

    hook = as_ddp_calls_it(hook)  # what DDP would call (wrapped in strict mode)
    (model(x) * c).sum().backward()
    for p in reversed(list(model.parameters())):
        fut = hook(state, (p.grad, p))
        assert fut.done()  # DDP drops it: the gradient is in place when the call returns


# reduce_scatter_hook with error feedback depends on the layout (its phase-2 residuals live on
# the chunk's owner, and DDP re-cuts its buckets after the first iteration): not compared here.
BY_HAND = ["nuqsgd:4:elias", "qsgdinf:3+ef", "amq:3", "allreduce-nuqsgd:3+ef", "rs-amq:3:elias-omega",
           "rs-nuqsgd:4", "qsgd:2:elias-delta"]


@pytest.mark.parametrize("world", [3])  # uneven chunks for reduce_scatter_hook
def test_per_parameter_calls_give_the_bucket_paths_gradients(world):
    eager = run_ranks(_bucket_path, world, BY_HAND)
    by_hand = run_ranks(_python_reducer_by_hand, world, BY_HAND)
    for rank in range(world):
        for name in BY_HAND:
            (want, want_summary, want_levels), (got, got_summary, got_levels) = eager[rank][name], by_hand[rank][name]
            assert got_summary == want_summary and got_levels == want_levels, name
            for step in range(STEPS):
                assert all(torch.equal(a, b) for a, b in zip(want[step], got[step])), (name, rank, step)


def _unbound(rank, world):
    model = _model()
    state, hook = hook_from_spec("nuqsgd:4")
    (model(_batch(rank, 0)[0]) * _batch(rank, 0)[1]).sum().backward()
    p = next(model.parameters())
    from _strict_nccl import as_ddp_calls_it

    try:
        as_ddp_calls_it(hook)(state, (p.grad, p))
    except ValueError as err:
        return str(err)
    return None


def test_per_parameter_calls_on_an_unbound_state_say_what_to_do():
    for message in run_ranks(_unbound, 2):
        assert "register_comm_hook" in message and "state.bind(ddp_model)" in message


def test_a_backward_pass_is_every_trainable_parameter():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2).half())
    model[1].bias.requires_grad_(False)
    gradients = ParameterGradients(model.named_parameters())
    w0, b0, w1, _ = list(model.parameters())
    grads = {id(p): torch.full_like(p, k + 1.0) for k, p in enumerate(model.parameters())}
    assert gradients.add(grads[id(w1)], w1) is None
    assert gradients.add(grads[id(b0)], b0) is None
    buckets = gradients.add(grads[id(w0)], w0)  # the frozen bias is not waited for
    # one bucket per dtype, parameters in module order, the last one ends the iteration
    assert [b.index() for b in buckets] == [0, 1] and [b.is_last() for b in buckets] == [False, True]
    assert [len(b.parameters()) for b in buckets] == [2, 1] and buckets[0].parameters()[0] is w0
    assert buckets[0].buffer().tolist() == [1.0] * 6 + [2.0] * 2 and buckets[1].buffer().dtype == torch.float16
    for b in buckets:
        b.write_back(b.buffer() * 10)
    assert grads[id(b0)].tolist() == [20.0, 20.0] and grads[id(w1)].unique().tolist() == [30.0]
    with pytest.raises(ValueError, match="returned 3 values for a bucket of 8"):
        buckets[0].write_back(torch.zeros(3))
    # a pass that ends without some gradient is reported when the next one starts, naming it
    gradients.add(grads[id(w0)], w0)
    with pytest.raises(RuntimeError, match=r"before 2 trainable parameter\(s\) got a gradient \(0.bias, 1.weight\)"):
        gradients.add(grads[id(w0)], w0)
    assert gradients.add(grads[id(w1)], w1) is None  # and the next pass starts clean
    with pytest.raises(ValueError, match="not among the parameters the state was bound to"):
        gradients.add(torch.zeros(3), torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match="one gradient per parameter"):
        FlatBucket([w0], [], index=0, last=True)
