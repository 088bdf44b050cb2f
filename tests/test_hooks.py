"""DDP communication hooks on Gloo: unbiasedness, agreement across ranks, convergence, AMP, resume."""
import copy
import math

import pytest
import torch
from _dist import run_ranks
from _hook_fixtures import batch, flat_grad, flat_params, small_model, train_steps
from torch.nn.parallel import DistributedDataParallel as DDP

import commcomp
from commcomp import NUQSGD, QSGD, FixedLevels, QSGDInf
from commcomp.hooks import CompressionState, allgather_hook, allreduce_hook, hook_from_spec, level_grid
from commcomp.hooks.allreduce import wire_dtype

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes


_model, _batch = small_model, batch


def _hooked_ddp(spec, **kw):
    ddp = DDP(_model(), bucket_cap_mb=0.01)  # several buckets
    state, hook = hook_from_spec(spec, bucket_size=128, min_compression_numel=0, **kw)
    ddp.register_comm_hook(state, hook)
    return ddp, state


def _unbiased_and_identical(rank, world, spec, trials):
    x, y = _batch(rank)
    plain = DDP(_model(), bucket_cap_mb=0.01)
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    exact = flat_grad(plain).double()
    ddp, state = _hooked_ddp(spec)
    draws = []
    for _ in range(trials):
        ddp.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        draws.append(flat_grad(ddp).double())
    draws = torch.stack(draws)
    return exact, draws.mean(0), draws.var(0), draws[-1], state.compression_ratio, state.iteration


@pytest.mark.parametrize("spec", ["nuqsgd:4", "qsgd:3:elias-gamma", "allreduce-qsgd:4", "allreduce-nuqsgd:3"])
def test_hooked_gradient_is_unbiased_and_identical_on_all_ranks(spec):
    trials = 300
    results = run_ranks(_unbiased_and_identical, 2, spec, trials)
    exact, mean, var, last, ratio, iterations = results[0]
    assert iterations == trials
    keep = var > 0
    z = ((mean - exact)[keep] ** 2 / (var[keep] / trials)).sum().item()
    dof = int(keep.sum())
    assert z < dof + 6 * math.sqrt(2 * dof), f"z={z:.0f} dof={dof}"
    for other in results[1:]:
        assert torch.equal(other[0], exact)  # DDP's own average agrees
        assert torch.equal(other[3], last)  # hooked gradients bit-identical across ranks
    assert ratio > 3.0


def _train(rank, world, spec, steps):
    from common.data import load_digits_tensors

    train, test = load_digits_tensors(seed=0, flat=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    ddp = DDP(model)
    if spec != "none":
        state, hook = hook_from_spec(spec, bucket_size=256, min_compression_numel=0)
        ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    shard = torch.arange(rank, len(train), world)
    g = torch.Generator().manual_seed(rank)
    for _ in range(steps):
        idx = shard[torch.randint(0, len(shard), (32,), generator=g)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(train.x[idx]), train.y[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = (model(test.x).argmax(1) == test.y).float().mean().item()
    return acc, flat_params(model)


@pytest.mark.parametrize("spec", ["nuqsgd:4:elias", "allreduce-qsgd:4"])
def test_four_ranks_converge_with_identical_parameters(spec):
    results = run_ranks(_train, 4, spec, 150, timeout=240)
    accs = [r[0] for r in results]
    assert min(accs) > 0.85, accs
    for _, params in results[1:]:
        assert torch.equal(params, results[0][1])


def _amp_inf_step(rank, world):
    ddp, state = _hooked_ddp("nuqsgd:4")
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = [p.detach().clone() for p in ddp.parameters()]
    x, y = _batch(rank)
    loss = torch.nn.functional.cross_entropy(ddp(x), y)
    if rank == 1:
        loss = loss * float("inf")  # this rank's gradients overflow
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    unchanged = all(torch.equal(a, b) for a, b in zip(before, ddp.parameters()))
    # The next, finite step is taken normally.
    opt.zero_grad()
    scaler.scale(torch.nn.functional.cross_entropy(ddp(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    changed = not all(torch.equal(a, b) for a, b in zip(before, ddp.parameters()))
    return unchanged, scaler.get_scale(), changed


def test_grad_scaler_skips_step_with_inf_on_one_rank():
    for unchanged, scale, changed in run_ranks(_amp_inf_step, 2):
        assert unchanged, "the step with an inf gradient must be skipped on every rank"
        assert scale == 512.0  # GradScaler backed off once
        assert changed


def _resume(rank, world, spec, steps, stop, layout, error_feedback=True):
    def make():
        # DDP's default layout changes after the first iteration, so the resumed run's first step
        # has another layout than the uninterrupted run's step `stop`: the hooks quantize per
        # parameter, so that must not matter. "fixed": explicit caps keep one layout throughout.
        if layout == "default":
            ddp = DDP(_model(), bucket_cap_mb=0.004)
        else:
            ddp = DDP(_model(), bucket_cap_mb_list=[0.004] * 4, find_unused_parameters=True)
        # allreduce-nuqsgd:4 sums int32 at 2 ranks (saves nothing): this test exercises that path
        wide = {"allow_wide_sums": True} if spec.startswith("allreduce-") else {}
        state, hook = hook_from_spec(spec, bucket_size=128, min_compression_numel=0, error_feedback=error_feedback, seed=5, **wide)
        ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
        return ddp, state, opt

    ddp, state, opt = make()
    train_steps(ddp, opt, rank, 0, steps)
    straight = flat_params(ddp)

    ddp, state, opt = make()
    train_steps(ddp, opt, rank, 0, stop)
    checkpoint = copy.deepcopy({"model": ddp.module.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict()})
    ddp, state, opt = make()  # a fresh process would start here
    ddp.module.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    state.load_state_dict(checkpoint["hook"])
    train_steps(ddp, opt, rank, stop, steps)
    resumed = flat_params(ddp)
    residuals = checkpoint["hook"]["residuals"]["local"]
    return torch.equal(straight, resumed), sorted(residuals), len(list(ddp.parameters()))


@pytest.mark.parametrize("layout", ["default", "fixed"])
@pytest.mark.parametrize("spec", ["qsgd:4:elias-delta", "allreduce-nuqsgd:4", "rs-qsgd:3:elias"])
def test_stop_and_resume_is_bit_identical(spec, layout):
    # reduce_scatter_hook's phase-2 residuals live on the chunk's owner: exact with a fixed layout
    error_feedback = not (spec.startswith("rs-") and layout == "default")
    for identical, residual_keys, params in run_ranks(_resume, 2, spec, 8, 3, layout, error_feedback):
        if error_feedback:
            assert residual_keys == sorted(f"#{k}" for k in range(params))  # one residual per parameter
        assert identical


def test_spec_parsing_and_errors():
    state, hook = hook_from_spec("allreduce-qsgdinf:3", bucket_size=64)
    assert hook is allreduce_hook and isinstance(state.quantizer, QSGDInf) and state.quantizer.bits == 3
    state, hook = hook_from_spec("nuqsgd:4:elias")
    assert hook is allgather_hook and state.coding == "elias-gamma"
    _, torch_hook = hook_from_spec("fp16")
    assert torch_hook.__name__ == "fp16_compress_hook"
    for bad, match in [("zip:4", "scheme must be one of"), ("qsgd", "must look like"), ("qsgd:4:huffman", "coding"),
                       ("allreduce-qsgd:4:elias", "drop"), ("qsgd:12", "bits must be"), ("powersgd:0", "RANK >= 1")]:
        with pytest.raises(ValueError, match=match):
            hook_from_spec(bad)
    with pytest.raises(ValueError, match="coding must be one of"):
        CompressionState(QSGD(4), coding="lz4")
    with pytest.raises(ValueError, match="start_iter must be a non-negative int"):
        CompressionState(QSGD(4), start_iter=-1)


def test_level_grid_and_wire_dtype():
    unit, ints = level_grid(QSGD(4).levels)
    assert ints.tolist() == list(range(8)) and unit == pytest.approx(1 / 7)
    unit, ints = level_grid(NUQSGD(4).levels)
    assert ints.tolist() == [0, 1, 2, 4, 8, 16, 32, 64] and unit == 2.0**-6
    with pytest.raises(ValueError, match="integer grid"):
        level_grid(FixedLevels([0.0, 0.3, 1.0]).levels)
    assert wire_dtype(7, 2) == torch.int8 and wire_dtype(63, 2) == torch.int8
    assert wire_dtype(64, 2) == torch.int32  # a sum of two 64s overflows int8


def test_corrupt_payload_names_the_rank():
    from commcomp.hooks._params import ParamSlice
    from commcomp.hooks.allgather import _average_frames

    state = CompressionState(NUQSGD(4, 128))
    slices = [ParamSlice("#0", 0, 0, 1000)]
    q = state.quantizer.quantize(torch.randn(1000), seed=1)
    good = torch.cat([torch.tensor([1], dtype=torch.uint8), commcomp.codecs.encode(q)])
    bad = good.clone()
    bad[1:5] = 0  # destroys the codec header's magic
    total = _average_frames(state, [good, good], slices, 1000, torch.device("cpu"))
    decoded = state.quantizer.dequantize(q, torch.float32)
    assert torch.equal(total, (torch.zeros(1000) + 0.5 * decoded) + 0.5 * decoded)  # the kernel's order
    with pytest.raises(RuntimeError, match="invalid payload from rank 1"):
        _average_frames(state, [good, bad], slices, 1000, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="rank 0.*frame kind"):
        _average_frames(state, [torch.tensor([0, 1, 2], dtype=torch.uint8), good], slices, 1000, torch.device("cpu"))


def test_frames_with_other_levels_blame_their_sender_even_alone():
    # Every frame is checked against this rank's quantizer, not against the first frame: rank 0
    # sending other levels is blamed (not the honest ranks after it), and a lone frame is checked too.
    from commcomp.hooks._params import ParamSlice
    from commcomp.hooks.allgather import _average_frames

    state = CompressionState(QSGD(4, 128))
    slices = [ParamSlice("#0", 0, 0, 1000)]
    x = torch.randn(1000)

    def frame(quantizer):
        return torch.cat([torch.tensor([1], dtype=torch.uint8), commcomp.codecs.encode(quantizer.quantize(x, seed=1))])

    honest, other = frame(state.quantizer), frame(NUQSGD(4, 128))  # same width, other level values
    with pytest.raises(RuntimeError, match="invalid payload from rank 0: .*other levels"):
        _average_frames(state, [other, honest, honest], slices, 1000, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="invalid payload from rank 2: .*other levels"):
        _average_frames(state, [honest, honest, other], slices, 1000, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="invalid payload from rank 0: .*other levels"):
        _average_frames(state, [other], slices, 1000, torch.device("cpu"))


def _rank0_with_other_levels(rank, world):
    quantizer = NUQSGD(4, 128) if rank == 0 else QSGD(4, 128)
    ddp = DDP(small_model())
    ddp.register_comm_hook(CompressionState(quantizer, min_compression_numel=0), allgather_hook)
    x, y = batch(rank)
    try:
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
    except RuntimeError as err:  # DDP re-raises the hook's error from backward()
        return str(err)
    return None


def test_three_ranks_blame_the_rank_whose_levels_differ():
    errors = run_ranks(_rank0_with_other_levels, 3, timeout=60)
    for error in errors[1:]:
        assert error is not None and "invalid payload from rank 0" in error, error
    assert errors[0] is not None and "other levels" in errors[0]  # rank 0 sees everyone else differ


def test_state_dict_rejects_other_quantizer():
    state = CompressionState(QSGD(4))
    with pytest.raises(ValueError, match="checkpoint was made with"):
        CompressionState(NUQSGD(4)).load_state_dict(state.state_dict())


def _adaptive_run(rank, world, scheme):
    from commcomp.hooks import CompressionState

    q = (commcomp.ALQ if scheme == "alq" else commcomp.AMQ)(3, 128, update_schedule=commcomp.UpdateSchedule(at=(1, 3), every=None))
    initial = q.levels
    ddp = DDP(_model())
    state = CompressionState(q, min_compression_numel=0, coding="elias-omega", start_iter=1)
    ddp.register_comm_hook(state, allgather_hook)
    train_steps(ddp, torch.optim.SGD(ddp.parameters(), lr=0.05), rank, 0, 5)
    return initial.values, q.levels.values, q.updates, state.state_dict()["quantizer"]["levels"], flat_params(ddp)


@pytest.mark.parametrize("scheme", ["alq", "amq"])
def test_adaptive_levels_refit_identically_on_all_ranks(scheme):
    results = run_ranks(_adaptive_run, 2, scheme)
    initial, fitted, updates, saved, params = results[0]
    assert updates == 2 and fitted != initial and tuple(saved) == fitted
    for other in results[1:]:
        assert other[1] == fitted
        assert torch.equal(other[4], params)


def _spec_checks_in_a_gloo_group(rank, world):
    from common import runtime

    out = {}
    try:
        hook_from_spec("quant-pertensor")
    except ValueError as err:
        out["pertensor"] = str(err)
    state, _ = hook_from_spec("alq:3", update_schedule=commcomp.UpdateSchedule(at=(1,), every=None))
    out["schedule"] = state.quantizer.update_schedule.at
    ctx = runtime.DistContext(rank, world, torch.device("cpu"))
    ddp = runtime.wrap_ddp(_model(), ctx, "powersgd:1")
    out["powersgd_buckets_cap"] = ddp.bucket_bytes_cap
    # int32 sums (2^14 x 1 rank > 127) save nothing: refused where the world size is known, the
    # spec's construction in an initialized group (this was a RuntimeWarning in the first backward)
    try:
        hook_from_spec("allreduce-nuqsgd:5", min_compression_numel=0)
    except ValueError as err:
        out["int32"] = str(err)
    ddp = DDP(_model())
    state, hook = hook_from_spec("allreduce-nuqsgd:5", min_compression_numel=0, allow_wide_sums=True)
    ddp.register_comm_hook(state, hook)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp(torch.randn(4, 64)).sum().backward()
    out["warnings"] = [str(w.message) for w in caught]
    numel = sum(p.numel() for p in ddp.parameters())
    out["int32_bytes"] = state.bytes_sent >= 4 * numel  # opted in: 4 bytes a coordinate, as fp32
    return out


def test_spec_guards_pytorch_hooks_and_passes_schedules():
    out = run_ranks(_spec_checks_in_a_gloo_group, 1)[0]
    assert "fails on Gloo" in out["pertensor"]
    assert out["schedule"] == (1,)
    assert out["powersgd_buckets_cap"] >= 10**12  # one bucket for PowerSGD on Gloo
    assert "int32" in out["int32"] and "allow_wide_sums=True" in out["int32"]
    assert not any("int32" in w for w in out["warnings"]) and out["int32_bytes"]


def test_spec_accepts_none_fp32_and_lists_every_form_when_refusing():
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    for spec in ("none", "fp32", " FP32 "):
        group, hook = hook_from_spec(spec)
        assert group is None and hook is default_hooks.allreduce_hook
    for bad in ("zip:4", "qsgd", "qsgd:4:huffman", "nuqsgd:x", "", "allreduce-qsgd:4:elias"):
        with pytest.raises(ValueError) as info:
            hook_from_spec(bad)
        message = str(info.value)
        for form in ("none", "fp32", "fp16", "bf16", "powersgd:RANK", "quant-pertensor", "rs-", "allreduce-",
                     "qsgd", "qsgdinf", "nuqsgd", "alq", "amq", "elias-gamma", "elias-delta", "elias-omega",
                     "elias (= elias-gamma)"):
            assert form in message, (bad, form)
    with pytest.raises(ValueError, match="spec must be a string"):
        hook_from_spec(4)


def test_one_coding_alias_table_everywhere():
    from commcomp.codecs import CODING_ALIASES, TensorCodec

    for alias, coding in CODING_ALIASES.items():
        assert CompressionState(QSGD(4), coding=alias).coding == coding
        assert hook_from_spec(f"qsgd:4:{alias}")[0].coding == coding
        assert TensorCodec(QSGD(4), coding=alias).coding == coding


def test_allreduce_refuses_what_it_cannot_run():
    from commcomp.hooks.allreduce import check_allreduce_state

    schedule = commcomp.UpdateSchedule(at=(1,), every=None)
    for scheme in ("alq", "amq"):  # accepted once, crashed at the first refit
        with pytest.raises(ValueError, match=f"refits move the levels off the integer grid.*'rs-{scheme}:3'"):
            hook_from_spec(f"allreduce-{scheme}:3")
        with pytest.raises(ValueError, match="off the integer grid"):
            check_allreduce_state(CompressionState(commcomp.make_quantizer(scheme, 3, update_schedule=schedule)), None)
    for bits in (7, 8):  # accepted once, failed inside the first backward
        with pytest.raises(ValueError, match="integer grid"):
            hook_from_spec(f"allreduce-nuqsgd:{bits}")
    with pytest.raises(ValueError, match="integer grid"):
        check_allreduce_state(CompressionState(FixedLevels([0.0, 0.3, 1.0])), 2)
    check_allreduce_state(CompressionState(FixedLevels([0.0, 0.25, 0.5, 1.0])), 2)  # on the grid: fine
    with pytest.raises(ValueError, match="coding='elias-gamma' would be ignored"):
        check_allreduce_state(CompressionState(QSGD(4), coding="elias"), 2)
    # int32 sums: 64 x 2 ranks > 127 (silently sent int32 before); int8 at one rank
    with pytest.raises(ValueError, match="needs int32 sums.*allow_wide_sums=True"):
        check_allreduce_state(CompressionState(NUQSGD(4)), 2)
    check_allreduce_state(CompressionState(NUQSGD(4)), 1)
    check_allreduce_state(CompressionState(NUQSGD(4), allow_wide_sums=True), 2)
    check_allreduce_state(CompressionState(QSGD(4)), 18)  # 7 x 18 = 126: int8
    with pytest.raises(ValueError, match="needs int32"):
        check_allreduce_state(CompressionState(QSGD(4)), 19)
    with pytest.raises(ValueError, match="overflow int32"):  # NUQSGD(6): 2^30 x 2 ranks, even opted in
        check_allreduce_state(CompressionState(NUQSGD(6), allow_wide_sums=True), 2)
    with pytest.raises(ValueError, match="needs a commcomp.hooks.CompressionState"):
        check_allreduce_state(object(), 2)


def test_options_a_hook_would_ignore_are_refused():
    from commcomp.hooks import reduce_scatter_hook

    state = CompressionState(QSGD(4), hierarchical=True)
    for hook in (allgather_hook, allreduce_hook):
        with pytest.raises(ValueError, match="hierarchical=True is an option of reduce_scatter_hook"):
            hook.check_state(state, 4)
    reduce_scatter_hook.check_state(state, 4)


def _int32_on_first_call(rank, world):
    # a state built by hand (no spec, no register_comm_hook): the hook's first call refuses it
    # on every rank before any collective starts, so no rank waits for the other
    ddp = DDP(_model())
    ddp.register_comm_hook(CompressionState(NUQSGD(4), min_compression_numel=0), allreduce_hook)
    try:
        torch.nn.functional.cross_entropy(ddp(_batch(rank)[0]), _batch(rank)[1]).backward()
    except Exception as err:  # DDP's reducer may re-raise it as a RuntimeError
        return str(err)
    return None


def test_hand_built_state_is_checked_on_the_first_call():
    for message in run_ranks(_int32_on_first_call, 2, timeout=60):
        assert message is not None and "needs int32 sums" in message
