"""NCCL's rules (docs/hooks.md, "NCCL"): the strict mode checks itself, every hook keeps one global
launch order when completions arrive at skewed times, host reads are counted per step, and every
CUDA binding guards the device of the stream it launches on."""
import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _dist import run_ranks
from _hook_fixtures import batch, flat_grad, small_model
from torch.nn.parallel import DistributedDataParallel as DDP

ROOT = Path(__file__).resolve().parents[1]
# The mutation check (tests/nccl_mutation_check.py) points this at a mutated copy of csrc/.
CSRC = Path(os.environ.get("COMMCOMP_CSRC", ROOT / "csrc"))


# -- the static rule: CUDAGuard before the current stream ---------------------------------------
def _innermost_scope(text: str, position: int) -> tuple[int, int]:
    """``(open, close)`` offsets of the innermost brace pair around ``position``."""
    stack, pairs = [], {}
    for i, ch in enumerate(text):
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            pairs[stack.pop()] = i
    around = [(o, c) for o, c in pairs.items() if o < position < c]
    return max(around) if around else (-1, len(text))


def unguarded_streams(text: str) -> list[int]:
    """Line numbers where ``getCurrentCUDAStream`` is called with no ``CUDAGuard`` alive before it
    (declared earlier in a scope that still encloses the call)."""
    code = re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), text)  # comments out, offsets kept
    guards = [m.start() for m in re.finditer(r"\bc10::cuda::(?:Optional)?CUDAGuard\b", code)]
    bad = []
    for call in re.finditer(r"getCurrentCUDAStream\s*\(", code):
        alive = any(g < call.start() and _innermost_scope(code, g)[1] > call.start() > _innermost_scope(code, g)[0]
                    for g in guards)
        if not alive:
            bad.append(code.count("\n", 0, call.start()) + 1)
    return bad


def test_every_cuda_binding_guards_the_device_of_the_stream_it_launches_on():
    # Without a CUDAGuard the current stream is the current device's: a tensor on another device
    # gets its kernel enqueued on the wrong device's stream.
    bindings = sorted((CSRC / "cuda").glob("*_binding.cpp"))
    assert bindings, CSRC
    found = {p.name: unguarded_streams(p.read_text()) for p in bindings}
    assert all(not lines for lines in found.values()), found


def test_the_guard_rule_sees_scopes():
    ok = "void f(const at::Tensor& x) {\n  const c10::cuda::CUDAGuard g(x.device());\n  auto s = c10::cuda::getCurrentCUDAStream();\n}"
    assert unguarded_streams(ok) == []
    elsewhere = "void g() { const c10::cuda::CUDAGuard g(d); }\nvoid f() {\n  auto s = c10::cuda::getCurrentCUDAStream();\n}"
    assert unguarded_streams(elsewhere) == [3]
    ended = "void f() {\n  { const c10::cuda::CUDAGuard g(d); }\n  auto s = c10::cuda::getCurrentCUDAStream();\n}"
    assert unguarded_streams(ended) == [3]
    commented = "void f() {\n  // c10::cuda::CUDAGuard g(d);\n  auto s = c10::cuda::getCurrentCUDAStream();\n}"
    assert unguarded_streams(commented) == [3]


# -- the strict mode's own checks ----------------------------------------------------------------
def _violating_hook(kind):
    """A hook that breaks one rule, else averages the bucket as PyTorch's default hook does."""
    from commcomp.hooks._streams import on_comm_stream

    def hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        buffer = bucket.buffer()
        if kind == "outside stream":
            buffer.mul_(1.0)
        with on_comm_stream(buffer.device):
            if kind == "host tensor in a collective":
                dist.all_reduce(torch.zeros(4), async_op=True)
            if kind == "mixed devices":
                buffer.add_(torch.zeros(buffer.numel()))
            if kind == "group created in a hook":
                dist.new_group()
            if kind == "host reads over budget":
                buffer.sum().item()
            buffer.div_(dist.get_world_size())
            fut = dist.all_reduce(buffer, async_op=True).get_future()
            if kind == "collect_all value":
                joined = torch.futures.collect_all([fut])
                return joined.then(lambda f: f.value()[0].value()[0])
            return fut.then(lambda f: f.value()[0])

    return hook


def _run_violating(rank, world, kind):
    ddp = DDP(small_model())
    ddp.register_comm_hook(None, _violating_hook(kind))
    x, y = batch(rank)
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    return flat_grad(ddp)


VIOLATIONS = {
    "host tensor in a collective": "R2 devices",
    "mixed devices": "R2 devices",
    "group created in a hook": "R7 groups",
    "collect_all value": "R6 futures",
    "outside stream": "streams",
    "host reads over budget": "R5 host reads",
}


@pytest.mark.parametrize("kind", list(VIOLATIONS))
def test_the_strict_mode_catches_each_rule(kind):
    with pytest.raises(AssertionError, match=re.escape(VIOLATIONS[kind])):
        run_ranks(_run_violating, 2, kind, mode="strict", timeout=60)


def test_a_hook_that_keeps_the_rules_passes_and_averages():
    plain, strict = (run_ranks(_run_violating, 2, "none", mode=m, timeout=60) for m in ("native", "strict"))
    assert torch.equal(plain[0], strict[0]) and torch.equal(strict[0], strict[1])


def _counted_reads(rank, world):
    import _strict_nccl
    from commcomp import ops
    from commcomp.hooks._streams import on_comm_stream

    counts = []

    def hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        strict = _strict_nccl.current()
        buffer = bucket.buffer()
        with on_comm_stream(buffer.device):
            before = strict.body_reads[-1]
            t = buffer[:64].clone()
            t.sum().item(), t.tolist(), bool(t[0] > 0), int(t[0] > 0), float(t[1]), t.nonzero(), t[t > 0], t.cpu()
            host = torch.ones(8)
            host.sum().item(), host.tolist(), host.nonzero()  # host data: no device read
            levels = torch.tensor([0.0, 0.5, 1.0], device=buffer.device)
            norms, symbols = ops.quantize(t, levels, 16, "l2", 0, 0, None, True)  # levels: 1 read
            out = torch.zeros(64, device=buffer.device)
            ops.dequantize_accumulate(out, [norms, norms], [symbols, symbols], levels, 16, 1.0)  # 1 + 2*2 + 1
            counts.append(strict.body_reads[-1] - before)
            buffer.div_(dist.get_world_size())
            return dist.all_reduce(buffer, async_op=True).get_future().then(lambda f: f.value()[0])

    ddp = DDP(small_model())
    ddp.register_comm_hook(None, hook)
    x, y = batch(rank)
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    return counts


def test_host_reads_are_counted_one_by_one_and_inside_commcomps_ops():
    # item, tolist, bool, int, float, nonzero, a mask, a copy to the host: 8; quantize with levels on
    # the device: 1; dequantize_accumulate of 2 payloads: levels + 2 x (nonzero, min) + the error flag
    for counts in run_ranks(_counted_reads, 2, mode={"max_body_reads": None}, timeout=60):
        assert counts and all(c == 8 + 1 + 6 for c in counts), counts


def test_the_order_check_finds_a_different_order_a_size_and_a_split():
    from _strict_nccl import _compare_logs, _Launch

    def launch(op, group="g", numel=(4, 2), splits=None, members=(0, 1)):
        return _Launch(group=group, members=members, op=op, dtype="torch.uint8", numel=numel, splits=splits, step=0)

    same = [launch("all_gather_single"), launch("all_reduce", group="h", numel=(8,))]
    assert _compare_logs([same, list(same)]) == []
    swapped = [same[1], same[0]]
    assert "R4 launch order" in _compare_logs([same, swapped])[0]
    other_size = [launch("all_gather_single", numel=(6, 3)), same[1]]
    assert "R3 shapes" in _compare_logs([same, other_size])[0]
    a = [launch("all_to_all_single", splits=((2, 3), (2, 4)))]
    b = [launch("all_to_all_single", splits=((4, 1), (3, 1)))]  # a sends b 3, b expects 3: fine
    assert _compare_logs([a, b]) == []
    b_wrong = [launch("all_to_all_single", splits=((4, 1), (5, 1)))]
    assert "R3 shapes" in _compare_logs([a, b_wrong])[0]
    fewer = same[:1]
    assert any("launched 2" in p for p in _compare_logs([same, fewer]))
    # ranks outside a group compare only the groups they share
    private = [launch("all_reduce", group="p", members=(0,))] + same
    assert _compare_logs([private, same]) == []


# -- every hook under skewed completions ------------------------------------------------------------
SKEWED = {
    "allgather-fixed": ("qsgd:4", {}),
    "allgather-elias": ("nuqsgd:4:elias", {}),
    "allreduce": ("allreduce-qsgd:4", {}),
    "reduce-scatter": ("rs-nuqsgd:4", {}),
    "reduce-scatter-elias": ("rs-qsgd:4:elias", {}),
    "alq-refits": ("alq:4", "refit every step"),
    "rs-amq-refits": ("rs-amq:4:elias", "refit every step"),
    "robust-mixtailor": ("robust", {}),
}


def _hooked(spec, kwargs, rank):
    if spec == "robust":
        from commcomp import NUQSGD
        from commcomp.codecs import TensorCodec
        from commcomp.robust import MixTailor, build_pool
        from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook

        pool = MixTailor(build_pool(["median", "trimmed_mean"]))
        state = RobustAggregationState(pool, tolerance=0, codec=TensorCodec(NUQSGD(4, 128), seed=rank))
        return state, robust_aggregation_hook
    from commcomp import UpdateSchedule
    from commcomp.hooks import hook_from_spec

    if kwargs == "refit every step":
        kwargs = {"update_schedule": UpdateSchedule(at=(), every=1)}
    return hook_from_spec(spec, bucket_size=64, min_compression_numel=0, **kwargs)


def _skewed_steps(rank, world, spec, kwargs, steps):
    ddp = DDP(small_model(), bucket_cap_mb_list=[0.004] * 4, find_unused_parameters=True)  # several buckets
    state, hook = _hooked(spec, kwargs, rank)
    ddp.register_comm_hook(state, hook)
    grads = []
    for step in range(steps):
        x, y = batch(rank, step)
        ddp.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        grads.append(flat_grad(ddp))
    return grads


@pytest.mark.parametrize("name", list(SKEWED))
def test_every_hook_launches_in_one_global_order_whenever_data_arrives(name):
    # strict mode with each collective's completion delayed by a rank-dependent time: finish()
    # compares the ranks' launch logs entry for entry (R3, R4)
    spec, kwargs = SKEWED[name]
    results = run_ranks(_skewed_steps, 2, spec, kwargs, 3, mode={"skew": True}, timeout=120)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_hierarchical_mode_launches_in_one_global_order_with_a_reduce_scatter_in_the_node():
    results = run_ranks(_hierarchical_launches, 4, mode={"skew": True}, timeout=180)
    for grads, ops in results:
        assert torch.equal(grads[-1], results[0][0][-1])
        # fp32 reduce-scatter and all-gather inside the node, the compressed phases across
        assert ops[:3] == [("reduce_scatter_single", "intra"), ("all_to_all_single", "inter"),
                           ("all_gather_single", "inter")], ops[:4]
        assert ops[3] == ("all_gather_single", "intra"), ops[:4]


def _hierarchical_launches(rank, world):
    import _strict_nccl

    grads = _skewed_steps(rank, world, "rs-nuqsgd:4", {"hierarchical": True, "local_world_size": 2}, 2)
    strict = _strict_nccl.current()
    names = {}
    for launch in strict.launches:
        size = len(launch.members)
        names.setdefault(launch.group, "intra" if launch.members == tuple(range(rank // 2 * 2, rank // 2 * 2 + 2))
                         else "inter" if size == 2 else "world")
    return grads, [(launch.op, names[launch.group]) for launch in strict.launches]


# -- R5: what each hook reads on the host, per step ------------------------------------------------
READ_SPECS = ["qsgd:4", "nuqsgd:4:elias", "allreduce-qsgd:4", "rs-nuqsgd:4", "rs-qsgd:4:elias", "alq:4", "robust"]


def _reads(rank, world, specs, steps):
    import _strict_nccl

    strict = _strict_nccl.current()
    out = {}
    for spec in specs:
        first_body, first_comm = len(strict.body_reads), sum(strict.comm_reads)
        kwargs = "refit every step" if spec.startswith("alq") else {}
        _skewed_steps(rank, world, spec, kwargs, steps)
        body = strict.body_reads[first_body - 1 : -1]  # one entry per backward pass
        comm = sum(strict.comm_reads) - first_comm
        out[spec] = {"body_per_step": body, "comm_per_step": comm / steps}
    return out


def test_host_reads_per_step_of_every_hook_are_counted_and_printed():
    # Hook bodies (what backward runs) read nothing of the device, whatever the hook and coding:
    # the communication thread does the reads the protocol needs (validation, Elias sizes, the
    # robust rows), and they are counted there. Printed for docs/hooks.md ("NCCL").
    steps = 3
    results = run_ranks(_reads, 2, READ_SPECS, steps, mode="strict", timeout=240)
    table = results[0]
    print("\nhost reads per step (2 ranks, small_model, 4 DDP buckets, 3 steps):")
    for spec, row in table.items():
        print(f"  {spec:20s} hook body {row['body_per_step']}  commcomp-comm {row['comm_per_step']:.1f}")
    for spec, row in table.items():
        assert row["body_per_step"] == [0] * steps, (spec, row)
        assert row["comm_per_step"] > 0, spec  # the protocol does read: counted where it runs


# -- the robust hook's non-finite marker -------------------------------------------------------
def _robust_with_a_nan_row(rank, world):
    from commcomp import NUQSGD
    from commcomp.codecs import TensorCodec
    from commcomp.robust import CoordinateMedian
    from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook

    model = small_model()
    if rank == 1:  # this rank's gradient holds a NaN: it sends the non-finite marker
        model[0].weight.register_hook(lambda g: g.index_put((torch.tensor([3]), torch.tensor([7])), torch.tensor(float("nan"))))
    ddp = DDP(model)
    state = RobustAggregationState(CoordinateMedian(), tolerance=1, codec=TensorCodec(NUQSGD(4, 128), seed=rank))
    ddp.register_comm_hook(state, robust_aggregation_hook)
    x, y = batch(rank)
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    return flat_grad(ddp), list(state.rejected)


def test_the_robust_hook_sends_its_nonfinite_marker_from_the_device():
    # three ranks, one NaN row: the marker travels in the same all-gather as the others' payloads
    results = run_ranks(_robust_with_a_nan_row, 3, mode="strict", timeout=90)
    for grad, rejected in results:
        assert torch.isfinite(grad).all() and torch.equal(grad, results[0][0])
        assert rejected == [0, 1, 0]
