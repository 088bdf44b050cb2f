"""Error feedback lands on the right parameters with DDP's default bucket layout (which changes
after the first iteration): the telescoping identity of error feedback holds per parameter."""
import pytest
import torch
from _dist import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP

from commcomp.hooks import hook_from_spec

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes

STEPS = 6


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 10))


def _run(rank, world, spec, bind):
    ddp = DDP(_model(), bucket_cap_mb=0.004)  # default layout: DDP rebuilds it after step 0
    plain = _model()  # this rank's own gradients, for the identity
    state, hook = hook_from_spec(spec, bucket_size=64, min_compression_numel=0, error_feedback=True)
    if bind:
        state.bind(ddp.module)
    ddp.register_comm_hook(state, hook)
    hooked = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in ddp.module.named_parameters()}
    own = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in plain.named_parameters()}
    for step in range(STEPS):  # lr = 0: every step's gradient is taken at the same parameters
        g = torch.Generator().manual_seed(100 * rank + step)
        x, y = torch.randn(16, 64, generator=g), torch.randint(0, 10, (16,), generator=g)
        for model, total in ((ddp, hooked), (plain, own)):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            for n, p in (model.module if model is ddp else model).named_parameters():
                total[n] += p.grad.double()
    names = [n for n, _ in ddp.module.named_parameters()]
    keys = names if bind else [f"#{k}" for k in range(len(names))]
    order = {key: name for key, name in zip(keys, names)} if bind else None
    residuals = {}
    for kind in ("local", "reduced"):
        stored = getattr(state.residuals, kind)
        residuals[kind] = {n: stored[k].double().reshape(-1) if k in stored else None for k, n in _key_to_name(state, ddp, bind)}
    return hooked, own, residuals, order


def _key_to_name(state, ddp, bind):
    # the state's key of every parameter, through the same lookup the hooks use
    keys = state.parameters
    return [(keys._key(p)[0], n) for n, p in ddp.module.named_parameters()]


@pytest.mark.parametrize("bind", [False, True])
@pytest.mark.parametrize("spec", ["nuqsgd:4", "qsgd:4:elias", "allreduce-qsgd:4", "rs-nuqsgd:4", "rs-qsgd:3:elias"])
def test_error_feedback_identity_holds_per_parameter_with_the_default_layout(spec, bind):
    results = run_ranks(_run, 2, spec, bind)
    world = len(results)
    hooked = results[0][0]
    for name in hooked:
        # sum_t hooked_t + mean_r(local residual_r) + sum_r(reduced residual_r) = mean_r(sum_t g_t^r)
        expected = sum(r[1][name] for r in results).reshape(-1) / world
        got = hooked[name].reshape(-1).clone()
        for _, _, residuals, _ in results:
            if residuals["local"][name] is not None:
                got += residuals["local"][name] / world
            if residuals["reduced"][name] is not None:
                got += residuals["reduced"][name]
        scale = expected.abs().max().item() + 1e-12
        assert (got - expected).abs().max().item() <= 2e-5 * scale * STEPS, (spec, name)
