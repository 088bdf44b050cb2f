"""End-to-end DDP step time over a bandwidth-limited link: commcomp hooks against PyTorch's own.

    sudo benchmarks/bench_ddp.sh                                   # 1, 2.5, 10 Gbit/s, all contenders
    python benchmarks/bench_ddp.py --bandwidths 1 --contenders none fp16 nuqsgd:4
    sudo benchmarks/bench_ddp.sh --topology nodes --world-sizes 2 4 --bandwidths 1   # 2 "nodes"
    sudo benchmarks/bench_ddp.sh --bytes-table --world-sizes 2 4 8                   # bytes vs model
    python benchmarks/bench_ddp.py --device cuda                   # NCCL, no tc: kernel share instead

What it does, per bandwidth: create a private network namespace, bring its loopback up, shape it
with ``tc qdisc ... tbf rate <B>gbit`` and, inside it, run ``world_size`` Gloo ranks over
127.0.0.1 that train the same ~11M-parameter ResNet-18 (28x28 inputs, sklearn digits upsampled)
once per contender, from the same initial weights on the same batches. Every rank uses one
thread. Per contender: median step time (max over ranks, after ``--warmup`` untimed steps), bytes
that crossed the link per step (the namespace's ``lo`` counters: every rank's traffic, TCP/IP
headers included, nothing else is in the namespace), the bytes predicted by
:func:`link_bytes_per_step`, the speedup against fp32 allreduce, the ideal speedup the byte
reduction allows (:func:`ideal_speedup`), and the held-out loss after ``warmup + steps`` steps.

The tbf qdisc shapes *all* loopback traffic together, so the ranks share one link of the given
rate (both directions included): a conservative model of ranks behind one uplink.

``--topology nodes``: two namespaces ("nodes") of ``world_size / 2`` ranks each, joined by a veth
pair shaped with tbf at the given rate in each direction; inside a node, ranks talk over its
unshaped loopback. Bytes are those that crossed the veth (the inter-node link). This is the
setting of 8 GPUs per node behind a slow inter-node link, where ``rs-...`` hooks with
``hierarchical=True`` reduce in fp32 inside the node and compress across nodes only.

``--bytes-table``: one unshaped namespace, a small model (``--width 16``), and per contender the
bytes each rank put on the loopback per step against the analytic per-rank bytes of its
collective (``2(W-1)/W`` x the compressed bucket for ``rs-``).

Without root (or without ``ip``/``tc``) it exits with status 2 and says so; ``--no-netns`` runs on
the host loopback unshaped (counters then include other processes' traffic and are not reported).
Writes ``benchmarks/results/bench_ddp[_cuda].json`` and ``.png``.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"
FP32_SPEC = "none"
LOCAL_SPEC = "local"  # no communication at all: the compute-only lower bound of a step


# ----------------------------------------------------------------------------------------------
# Contenders
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Contender:
    """One way of reducing gradients: a ``--comm-hook`` spec plus how its traffic crosses the link.

    ``algorithm`` is the collective that carries the payload: ``"allreduce"`` (ring), ``"allgather"``
    or ``"none"`` (the local reference).
    """

    spec: str
    family: str  # "reference", "pytorch" or "commcomp"
    algorithm: str

    @property
    def label(self) -> str:
        return {FP32_SPEC: "fp32 allreduce", LOCAL_SPEC: "no communication"}.get(self.spec, self.spec)


FLAT_SUFFIX = "+flat"  # an rs- contender that stays flat (not hierarchical) in the nodes topology


def flat_spec(spec: str) -> tuple[str, bool]:
    """``(hook spec, flat)`` of a contender: ``rs-nuqsgd:4+flat`` is ``rs-nuqsgd:4`` run without
    ``hierarchical=True`` where ``--topology nodes`` would otherwise set it."""
    if spec.endswith(FLAT_SUFFIX):
        base = spec[: -len(FLAT_SUFFIX)]
        if not base.startswith("rs-"):
            raise ValueError(f"{FLAT_SUFFIX!r} applies to rs- contenders only, got {spec!r}")
        return base, True
    return spec, False


def contender_for(spec: str) -> Contender:
    """The :class:`Contender` a spec string names; ``ValueError`` for anything the hooks reject."""
    spec = spec.strip().lower()
    base, flat = flat_spec(spec)
    if flat:
        return Contender(spec, "commcomp", contender_for(base).algorithm)
    if spec == FP32_SPEC:
        return Contender(spec, "reference", "allreduce")
    if spec == LOCAL_SPEC:
        return Contender(spec, "reference", "none")
    if spec in ("fp16", "bf16") or spec.startswith("powersgd:"):
        return Contender(spec, "pytorch", "allreduce")
    if spec == "quant-pertensor":
        return Contender(spec, "pytorch", "allgather")
    from commcomp.hooks import hook_from_spec

    hook_from_spec(spec)  # validates the grammar (raises ValueError naming the spec)
    algorithm = "allreduce" if spec.startswith("allreduce-") else "reduce_scatter" if spec.startswith("rs-") else "allgather"
    return Contender(spec, "commcomp", algorithm)


def default_contenders(bits: Sequence[int] = (2, 3, 4)) -> list[Contender]:
    """The issue's line-up: references, PyTorch's hooks, commcomp's allgather hook (QSGD, NUQSGD,
    ALQ x fixed/Elias) and allreduce hook (QSGD, NUQSGD; ALQ's fitted levels are not on an
    integer grid, so it has no allreduce variant) at each of ``bits``."""
    specs = [FP32_SPEC, LOCAL_SPEC, "fp16", "powersgd:1", "powersgd:4", "quant-pertensor"]
    for b in bits:
        for scheme in ("qsgd", "nuqsgd", "alq"):
            specs += [f"{scheme}:{b}", f"{scheme}:{b}:elias"]
        specs += [f"allreduce-qsgd:{b}", f"allreduce-nuqsgd:{b}"]
        specs += [f"rs-qsgd:{b}", f"rs-nuqsgd:{b}", f"rs-nuqsgd:{b}:elias"]
    return [contender_for(s) for s in specs]


# ----------------------------------------------------------------------------------------------
# Byte accounting
# ----------------------------------------------------------------------------------------------
def link_bytes_per_step(algorithm: str, payload_bytes_per_rank: float, world_size: int, nodes: int = 1,
                        hierarchical: bool = False) -> float:
    """Bytes that cross the shaped link per step when every rank contributes ``payload_bytes_per_rank``.

    One shared link (``nodes=1``: every rank behind one shaped loopback):

    * ring allreduce (Gloo's and NCCL's large-message algorithm): reduce-scatter then all-gather,
      each rank sends ``2 (p-1)/p * N``, so all ranks together ``2 (p-1) N``;
    * all-gather (a ring in Gloo): each rank's payload reaches the ``p-1`` others, ``p (p-1) N``;
    * reduce-scatter + all-gather of compressed chunks (``rs-``): each rank sends ``(p-1)/p`` of
      its compressed bucket ``N`` in the all-to-all and its reduced chunk (``N/p``) to ``p-1``
      ranks in the all-gather, ``2 (p-1) N`` in all, as a ring allreduce of ``N``;
    * none: 0.

    Two nodes (``nodes=2``: ranks ``0..p/2-1`` on one, the rest on the other; only the link between
    them is shaped and counted). A ring over the ranks crosses it twice, once each way:

    * ring allreduce ``2 * 2 (p-1)/p N``; ring all-gather ``2 (p-1) N``;
    * ``rs-`` flat: the all-to-all sends ``N/p`` from every rank to each of the ``p/2`` ranks of
      the other node (``p N / 2``), the all-gather of the ``N/p`` chunks is a ring (``2 (p-1) N / p``);
    * ``rs-`` hierarchical (``hierarchical``: fp32 inside a node, compressed across): ``N`` is
      what a rank compresses, its share of the bucket; across the nodes each rank exchanges
      with its one peer half of it in the all-to-all and half in the all-gather: ``p N``.

    Excludes TCP/IP framing (a few % on loopback's 64 KiB MTU), which the interface counters include.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if payload_bytes_per_rank < 0:
        raise ValueError(f"payload_bytes_per_rank must be >= 0, got {payload_bytes_per_rank}")
    if nodes not in (1, 2) or world_size % nodes:
        raise ValueError(f"nodes must be 1 or 2 and divide world_size, got nodes={nodes}, world_size={world_size}")
    if algorithm not in ("allreduce", "reduce_scatter", "allgather", "none"):
        raise ValueError(f"algorithm must be 'allreduce', 'reduce_scatter', 'allgather' or 'none', got {algorithm!r}")
    p, n = world_size, payload_bytes_per_rank
    if algorithm == "none":
        return 0.0
    if nodes == 1:
        return (p * (p - 1) if algorithm == "allgather" else 2 * (p - 1)) * n
    if algorithm == "allreduce":
        return 4 * (p - 1) / p * n
    if algorithm == "allgather":
        return 2 * (p - 1) * n
    if hierarchical:
        return p * n
    return p * n / 2 + 2 * (p - 1) / p * n


def torch_hook_payload_bytes(spec: str, param_shapes: Sequence[Sequence[int]]) -> float:
    """Per-rank payload of fp32 allreduce or a PyTorch hook in a compressing iteration.

    PowerSGD (``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook``) views each >=2-D
    tensor as ``n x m`` (``n = shape[0]``) and sends ``P`` (n x r) and ``Q`` (m x r) in fp32 when
    ``n m >= 2 (n + m) r`` (its ``min_compression_rate``), the tensor itself otherwise; 1-D
    tensors go uncompressed. quant-pertensor sends one uint8 per element (plus 2 floats).
    """
    numel = sum(_prod(s) for s in param_shapes)
    if spec == FP32_SPEC:
        return 4.0 * numel
    if spec in ("fp16", "bf16"):
        return 2.0 * numel
    if spec == "quant-pertensor":
        return float(numel + 8)
    if spec.startswith("powersgd:"):
        r = int(spec.split(":", 1)[1])
        total = 0
        for s in param_shapes:
            n, m = (s[0], _prod(s[1:])) if len(s) >= 2 else (0, 0)
            total += (n + m) * r if len(s) >= 2 and n * m >= 2 * (n + m) * r else _prod(s)
        return 4.0 * total
    raise ValueError(f"no payload model for spec {spec!r} (commcomp hooks report state.bytes_sent)")


def ideal_speedup(fp32_step_s: float, compute_step_s: float, byte_ratio: float) -> float:
    """Speedup if communication shrank by ``byte_ratio`` and compression cost nothing:
    ``t_fp32 / (t_compute + (t_fp32 - t_compute) / byte_ratio)``, with ``t_compute`` the step time
    without communication. Pessimistic where fp32 communication overlaps backward compute."""
    if byte_ratio <= 0:
        raise ValueError(f"byte_ratio must be > 0, got {byte_ratio}")
    comm = max(fp32_step_s - compute_step_s, 0.0)
    return fp32_step_s / (min(compute_step_s, fp32_step_s) + comm / byte_ratio)


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def read_interface_bytes(interface: str = "lo", path: str = "/proc/net/dev") -> int:
    """Bytes that crossed ``interface`` in the caller's network namespace (``/proc/net/dev`` is
    per-namespace): for ``lo`` the transmitted bytes (each is also received once), for a veth
    end received + transmitted (traffic in both directions crosses the link once)."""
    with open(path) as f:
        for line in f:
            name, sep, rest = line.partition(":")
            if sep and name.strip() == interface:
                fields = rest.split()  # rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes
                return int(fields[8]) if interface == "lo" else int(fields[0]) + int(fields[8])
    raise ValueError(f"no {interface!r} interface in {path}")


def read_loopback_bytes(path: str = "/proc/net/dev") -> int:
    return read_interface_bytes("lo", path)


# ----------------------------------------------------------------------------------------------
# Model and data
# ----------------------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 1, stem_stride: int = 2) -> nn.Sequential:
    """ResNet-18 (4 stages x 2 basic blocks) for small grey images: a 3x3 stem of stride
    ``stem_stride`` and no max-pool. ``width=64``: 11.17M parameters, as torchvision's ResNet-18.
    Stride 2 keeps the compute of 28x28 inputs small, so the step is communication-heavy, as on
    the slow links the benchmark asks about (stride 1 quadruples the compute)."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, stride in enumerate((1, 2, 2, 2)):
        cout = width * 2**i
        layers += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def load_data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """sklearn digits upsampled to 1x28x28, standardized: (train x, train y, test x, test y)."""
    import _common  # noqa: F401  (puts examples/ on sys.path)
    from common.data import load_digits_tensors

    train, test = load_digits_tensors(test_fraction=0.25, seed=seed)

    def prep(x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(28, 28), mode="bilinear", align_corners=False)
        return (x - 0.3) / 0.4

    return prep(train.x), train.y.long(), prep(test.x), test.y.long()


# ----------------------------------------------------------------------------------------------
# One rank's work (runs inside the namespace)
# ----------------------------------------------------------------------------------------------
def _local_hook(_: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Skip communication: each rank keeps its own gradient (timing reference only)."""
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def make_hook(spec: str, refit_at: int = 1, hierarchical: bool = False) -> tuple[Any, Callable | None]:
    """``(state, hook)`` for a contender spec (``hook`` is None for fp32 allreduce).

    commcomp states get ``log_every=0`` (no variance measurement inside timed steps); adaptive
    quantizers (ALQ/AMQ) refit their levels at iteration ``refit_at`` (in the warm-up) instead of
    the default schedule's iteration 100, which a short benchmark never reaches. ``hierarchical``:
    ``rs-`` hooks reduce in fp32 inside a node (``LOCAL_WORLD_SIZE`` ranks) and compress across.
    """
    if spec == FP32_SPEC:
        return None, None
    if spec == LOCAL_SPEC:
        return None, _local_hook
    from commcomp.hooks import hook_from_spec
    from commcomp.hooks.state import CompressionState

    if contender_for(spec).family == "pytorch":
        return hook_from_spec(spec)
    spec, flat = flat_spec(spec)
    extra = {"hierarchical": True} if hierarchical and not flat and spec.startswith("rs-") else {}
    state, hook = hook_from_spec(spec, log_every=0, **extra)
    if isinstance(state, CompressionState) and hasattr(state.quantizer, "should_observe"):
        from commcomp.adaptive import UpdateSchedule
        from commcomp.hooks.spec import make_quantizer

        q = state.quantizer
        state.quantizer = make_quantizer(q.name, q.bits, q.bucket_size, update_schedule=UpdateSchedule(at=(refit_at,), every=None))
    return state, hook


def single_bucket_mb(spec: str) -> float | None:
    """DDP bucket cap for ``spec``: one bucket for PowerSGD, DDP's default (None) otherwise.

    ``powerSGD_hook`` issues its second allreduce (Q) from a future callback, on Gloo's thread,
    while the autograd thread issues the next bucket's collectives: with several buckets the two
    ranks can enqueue them in different orders, and Gloo aborts on the size mismatch (seen here
    for rank 4). One bucket leaves nothing to race with (and PowerSGD's traffic is tiny anyway).
    """
    return 1e4 if spec.startswith("powersgd:") else None


def _run_contender(spec: str, cfg: dict[str, Any], data: tuple[torch.Tensor, ...], device: torch.device) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    xtr, ytr, xte, yte = data
    torch.manual_seed(cfg["seed"])  # same initial weights for every contender
    model = resnet18(width=cfg.get("width", 64), stem_stride=cfg["stem_stride"]).to(device)
    shapes = [tuple(p.shape) for p in model.parameters()]
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              bucket_cap_mb=single_bucket_mb(spec))
    state, hook = make_hook(spec, hierarchical=cfg.get("nodes", 1) > 1 and cfg.get("local_ranks", 1) > 1)
    if hook is not None:
        ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=cfg["lr"], momentum=0.9)
    batch = cfg["batch_size"]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(i: int) -> float:
        # Rank r's i-th batch is the same slice of the (shuffled) training split for every contender.
        start = ((i * world + rank) * batch) % (len(xtr) - batch)
        x, y = xtr[start : start + batch].to(device), ytr[start : start + batch].to(device)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    total = cfg["warmup"] + cfg["steps"]
    for i in range(cfg["warmup"]):
        step(i)
    sync()
    dist.barrier()
    link0 = read_interface_bytes(cfg.get("interface", "lo")) if cfg["count_link"] else 0
    times, cpu = [], []
    for i in range(cfg["warmup"], total):
        t0, c0 = time.perf_counter(), time.process_time()
        step(i)
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # every thread of this rank: hook callbacks, Gloo, TCP
    dist.barrier()
    link1 = read_interface_bytes(cfg.get("interface", "lo")) if cfg["count_link"] else 0
    # A step lasts as long as its slowest rank.
    step_times = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(step_times, op=dist.ReduceOp.MAX)
    cpu_times = torch.tensor(cpu, dtype=torch.float64)
    dist.all_reduce(cpu_times)  # mean over ranks of each step's CPU time
    cpu_times /= world
    # Held-out loss with batch statistics: after a few dozen steps BatchNorm's running averages
    # are still far from the data's, and eval-mode losses would measure them, not the weights.
    with torch.no_grad():
        eval_loss = float(F.cross_entropy(model(xte.to(device)), yte.to(device)))
    # Profiled steps come last: the profiler's overhead stays out of the timings and the loss.
    op_share = _profile_share(step, total, cfg["profile_steps"], device) if cfg["profile_steps"] else None
    payload = getattr(state, "bytes_sent", None)
    if payload is None and spec != LOCAL_SPEC:
        payload = torch_hook_payload_bytes(spec, shapes)
    algorithm = contender_for(spec).algorithm
    ratio = getattr(state, "compression_ratio", None)
    return {
        "spec": spec,
        "family": contender_for(spec).family,
        "algorithm": algorithm,
        "params": sum(_prod(s) for s in shapes),
        "step_times_s": step_times.tolist(),
        "median_step_s": statistics.median(step_times.tolist()),
        "cpu_times_s": cpu_times.tolist(),
        "median_cpu_s": statistics.median(cpu_times.tolist()),
        "link_bytes_per_step": (link1 - link0) / cfg["steps"] if cfg["count_link"] else None,
        "payload_bytes_per_rank": payload,
        "model_link_bytes_per_step": link_bytes_per_step(algorithm, payload or 0.0, world, cfg.get("nodes", 1),
                                                         bool(getattr(state, "hierarchical", False))),
        "hook_compression_ratio": ratio,
        "loss_after_steps": eval_loss,
        "steps_trained": total,
        "world_size": world,
        "op_share": op_share,
    }


def _profile_share(step: Callable[[int], float], first: int, n: int, device: torch.device) -> dict[str, float]:
    """Share of ``n`` profiled steps spent in kernels: all device kernels (CUDA) and commcomp ops
    (their device time on CUDA, their CPU time on CPU). The commcomp share is a lower bound of the
    compression cost: the hooks' Python glue and plain torch ops around the ops are not counted,
    and on CPU the profiler sees only the training thread, not the ops that future callbacks run
    on the process group's threads (the ``CPU ms/step`` column counts every thread)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for i in range(first, first + n):
            step(i)
        sync()
        wall_us = (time.perf_counter() - t0) * 1e6
    events = prof.key_averages()
    if device.type == "cuda":
        kernel = sum(e.self_device_time_total for e in events if e.device_type.name == "CUDA")
        commcomp_us = sum(e.device_time_total for e in events if e.key.startswith("commcomp::"))
        return {"kernel_share": kernel / wall_us, "commcomp_kernel_share": commcomp_us / wall_us}
    commcomp_us = sum(e.cpu_time_total for e in events if e.key.startswith("commcomp::"))
    return {"commcomp_op_share": commcomp_us / wall_us}


def _link_check(device: torch.device, nbytes: int) -> float:
    """Gbit/s of one transfer of ``nbytes`` from the last rank to rank 0 (in another node with
    ``--topology nodes``): confirms the shaping took effect."""
    buf = torch.zeros(nbytes // 4, dtype=torch.float32, device=device)
    last = dist.get_world_size() - 1
    dist.barrier()
    t0 = time.perf_counter()
    if dist.get_rank() == last:
        dist.send(buf, 0)
    elif dist.get_rank() == 0:
        dist.recv(buf, last)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    return nbytes * 8 / (time.perf_counter() - t0) / 1e9


def _rank_main(local_rank: int, cfg: dict[str, Any]) -> None:
    local = cfg.get("local_ranks", cfg["world_size"])
    rank = cfg.get("node_rank", 0) * local + local_rank
    os.environ.update(MASTER_ADDR=cfg.get("master_addr", "127.0.0.1"), MASTER_PORT=str(cfg["port"]),
                      GLOO_SOCKET_IFNAME=cfg.get("socket_interface", "lo"),
                      LOCAL_WORLD_SIZE=str(local), LOCAL_RANK=str(local_rank))
    torch.set_num_threads(cfg["threads"])
    # DDP warns once per contender that 1x1-conv gradients have other strides than its buckets
    # (a copy it makes anyway); the benchmark's output should be the table.
    warnings.filterwarnings("ignore", message="Grad strides do not match")
    cuda = cfg["device"] == "cuda"
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=cfg["world_size"],
                            timeout=timedelta(seconds=cfg["collective_timeout_s"]))
    try:
        data = load_data(cfg["seed"])
        if rank == 0:
            gbps = _link_check(device, cfg["link_check_bytes"]) if cfg["world_size"] > 1 else None
            _append(cfg["out"], {"link_check_gbps": gbps})
        elif cfg["world_size"] > 1:
            _link_check(device, cfg["link_check_bytes"])
        # Rounds interleave the contenders, so a slow spell of a shared machine spreads over all.
        for spec in [s for _ in range(cfg.get("rounds", 1)) for s in cfg["contenders"]]:
            try:
                row = _run_contender(spec, cfg, data, device)
            except Exception as err:  # e.g. a PyTorch hook that fails on this backend: report, go on
                row = {"spec": spec, "error": f"{type(err).__name__}: {err}".splitlines()[0][:300]}
                dist.barrier()  # the failure is deterministic, so every rank reaches this point
            if rank == 0:
                _append(cfg["out"], row)
                status = row.get("error") or f"{row['median_step_s'] * 1e3:8.1f} ms/step"
                print(f"  {spec:>22}: {status}", flush=True)
    finally:
        dist.destroy_process_group()


def _append(path: str, row: dict[str, Any]) -> None:
    # One JSON line per finished contender: a run cut short by its timeout keeps what it measured.
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def worker_main(cfg_path: str) -> None:
    """Entry point inside the namespace: spawn the ranks, one thread each."""
    import torch.multiprocessing as mp

    cfg = json.loads(Path(cfg_path).read_text())
    mp.start_processes(_rank_main, args=(cfg,), nprocs=cfg.get("local_ranks", cfg["world_size"]), start_method="spawn")


# ----------------------------------------------------------------------------------------------
# Orchestration (outside the namespace)
# ----------------------------------------------------------------------------------------------
def can_shape() -> str | None:
    """None if this process may create namespaces and shape them; else why not."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root (run: sudo benchmarks/bench_ddp.sh)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) not found on PATH"
    return None


def tbf_burst_bytes(gbps: float) -> int:
    """tbf bucket size: at least one 64 KiB loopback frame (else tbf drops it) and ~4 ms of rate,
    above rate/HZ at any kernel HZ, so the shaper does not cap below the set rate."""
    if gbps <= 0:
        raise ValueError(f"bandwidth must be > 0 Gbit/s, got {gbps}")
    return max(4 * 65536, int(gbps * 1e9 / 8 * 0.004))


@contextlib.contextmanager
def shaped_namespace(name: str, gbps: float | None) -> Iterator[str]:
    """A fresh namespace ``name`` with loopback up, rate-limited to ``gbps`` (None: unshaped);
    deleted on exit whatever happened."""
    def ip(*a: str) -> None:
        subprocess.run(["ip", *a], check=True, capture_output=True, text=True, timeout=30)

    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)  # stale, from a killed run
    ip("netns", "add", name)
    try:
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        if gbps is not None:
            ip("netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf",
               "rate", f"{gbps * 1000:g}mbit", "burst", str(tbf_burst_bytes(gbps)), "latency", "200ms")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _run_worker(cfg: dict[str, Any], netns: str | Sequence[str] | None, timeout_s: float,
                per_node: Sequence[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], float | None, str | None]:
    """Run the workers of one setting (one per node: ``netns`` is a namespace, a list of them with
    ``--topology nodes``, or None); returns (rows, link check, error). Rank 0 writes the rows."""
    namespaces = [netns] if netns is None or isinstance(netns, str) else list(netns)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dict(cfg, out=str(Path(tmp) / "rows.jsonl"))
        procs = []
        for node, ns in enumerate(namespaces):
            cfg_path = Path(tmp) / f"cfg{node}.json"
            node_cfg = dict(per_node[node], out=cfg["out"]) if per_node is not None else cfg
            cfg_path.write_text(json.dumps(dict(node_cfg, node_rank=node)))
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(cfg_path)]
            if ns is not None:
                cmd = ["ip", "netns", "exec", ns] + cmd
            procs.append(subprocess.Popen(cmd, start_new_session=True))
        error = None
        deadline = time.monotonic() + timeout_s
        try:
            for proc in procs:
                if proc.wait(timeout=max(1.0, deadline - time.monotonic())) != 0 and error is None:
                    error = f"worker exited with status {proc.returncode}"
        except subprocess.TimeoutExpired:
            error = f"worker timed out after {timeout_s:.0f} s; kept the contenders it finished"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)  # the ranks are in the worker's session
                    proc.wait()
        rows, link = [], None
        out = Path(cfg["out"])
        for line in out.read_text().splitlines() if out.exists() else []:
            row = json.loads(line)
            if "link_check_gbps" in row:
                link = row["link_check_gbps"]
            else:
                rows.append(row)
    return rows, link, error


NODE_SUBNET = "10.77.0."


def _run_worker_nodes(cfg: dict[str, Any], namespaces: list[str], timeout_s: float):
    """:func:`_run_worker` with one worker per node namespace, each bound to its node's veth."""
    # Only the socket interface differs per node; _run_worker writes one config per node.
    per_node = [dict(cfg, socket_interface=f"cc{k}", interface=f"cc{k}") for k in range(len(namespaces))]
    return _run_worker(per_node[0], namespaces, timeout_s, per_node=per_node)


@contextlib.contextmanager
def shaped_nodes(name: str, gbps: float, nodes: int = 2) -> Iterator[list[str]]:
    """``nodes`` namespaces (two: one veth pair between them) with loopback up, the veth shaped to
    ``gbps`` in each direction; node ``k`` has address ``10.77.0.(k+1)`` on interface ``cc<k>``.
    Deleted on exit whatever happened."""
    if nodes != 2:
        raise ValueError(f"the nodes topology has 2 nodes, got {nodes}")

    def ip(*a: str) -> None:
        subprocess.run(["ip", *a], check=True, capture_output=True, text=True, timeout=30)

    names = [f"{name}n{k}" for k in range(nodes)]
    for ns in names:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    try:
        for ns in names:
            ip("netns", "add", ns)
            ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        ip("link", "add", "cc0", "netns", names[0], "type", "veth", "peer", "name", "cc1", "netns", names[1])
        for k, ns in enumerate(names):
            ip("netns", "exec", ns, "ip", "addr", "add", f"{NODE_SUBNET}{k + 1}/24", "dev", f"cc{k}")
            ip("netns", "exec", ns, "ip", "link", "set", f"cc{k}", "up")
            ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", f"cc{k}", "root", "tbf",
               "rate", f"{gbps * 1000:g}mbit", "burst", str(tbf_burst_bytes(gbps)), "latency", "200ms")
        yield names
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def merge_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per contender, in first-seen order: step times of all rounds pooled (median over
    the pool), link bytes and loss averaged; a contender that failed in any round stays failed."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["spec"], []).append(r)
    out = []
    for spec, group in groups.items():
        failed = [r for r in group if "error" in r]
        if failed:
            out.append(failed[0])
            continue
        merged = dict(group[-1], rounds=len(group))
        merged["step_times_s"] = [t for r in group for t in r["step_times_s"]]
        merged["median_step_s"] = statistics.median(merged["step_times_s"])
        if all("cpu_times_s" in r for r in group):
            merged["cpu_times_s"] = [t for r in group for t in r["cpu_times_s"]]
            merged["median_cpu_s"] = statistics.median(merged["cpu_times_s"])
        for key in ("link_bytes_per_step", "loss_after_steps"):
            if group[0].get(key) is not None:
                merged[key] = statistics.fmean(r[key] for r in group)
        out.append(merged)
    return out


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add speedup, byte ratio, ideal speedup and loss gap against fp32 allreduce to each
    measured row (rows holding an ``error`` pass through unchanged)."""
    by_spec = {r["spec"]: r for r in rows if "error" not in r}
    fp32, local = by_spec.get(FP32_SPEC), by_spec.get(LOCAL_SPEC)
    out = []
    for r in rows:
        r = dict(r)
        if "error" in r:
            out.append(r)
            continue
        if r["spec"] == LOCAL_SPEC:
            r["loss_after_steps"] = None  # ranks never averaged: the loss of rank 0's model alone
        if local is not None:
            r["vs_compute_only"] = r["median_step_s"] / local["median_step_s"]
        world = r.get("world_size")
        if world and r.get("link_bytes_per_step") is not None:
            r["measured_bytes_per_rank"] = r["link_bytes_per_step"] / world
        if world:
            r["model_bytes_per_rank"] = r["model_link_bytes_per_step"] / world
        if fp32 is not None:
            r["speedup"] = fp32["median_step_s"] / r["median_step_s"]
            if r["loss_after_steps"] is not None:
                r["loss_vs_fp32"] = r["loss_after_steps"] - fp32["loss_after_steps"]
            key = "link_bytes_per_step" if r.get("link_bytes_per_step") is not None else "model_link_bytes_per_step"
            mine, base = r.get(key), fp32.get(key)
            r["byte_ratio"] = base / mine if mine else None
            if local is not None and r["byte_ratio"]:
                r["ideal_speedup"] = ideal_speedup(fp32["median_step_s"], local["median_step_s"], r["byte_ratio"])
        out.append(r)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of summarized rows; failed contenders listed under it."""
    shares = [r.get("op_share") or {} for r in rows if "error" not in r]
    share_keys = [k for k in ("kernel_share", "commcomp_kernel_share", "commcomp_op_share") if any(k in s for s in shares)]
    lines = ["| contender | step ms | x compute-only | CPU ms/step | link MB/step measured | model MB/step | bytes ratio | speedup | ideal | loss after N | loss - fp32 |"
             + "".join(f" {k.replace('_', ' ')} |" for k in share_keys),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(share_keys)]

    def num(v: Any, fmt: str, suffix: str = "") -> str:
        return "-" if v is None else format(v, fmt) + suffix

    for r in rows:
        if "error" in r:
            continue
        link = r.get("link_bytes_per_step")
        lines.append(
            f"| {r['spec']} | {r['median_step_s'] * 1e3:.0f} | {num(r.get('vs_compute_only'), '.2f', 'x')} | "
            f"{num(None if r.get('median_cpu_s') is None else r['median_cpu_s'] * 1e3, '.0f')} | "
            f"{num(None if link is None else link / 1e6, '.2f')} | "
            f"{r['model_link_bytes_per_step'] / 1e6:.2f} | {num(r.get('byte_ratio'), '.1f', 'x')} | "
            f"{num(r.get('speedup'), '.2f', 'x')} | {num(r.get('ideal_speedup'), '.2f', 'x')} | "
            f"{num(r['loss_after_steps'], '.3f')} | {num(r.get('loss_vs_fp32'), '+.3f')} |"
            + "".join(f" {num((r.get('op_share') or {}).get(k), '.0%')} |" for k in share_keys)
        )
    lines += [f"\nFAILED {r['spec']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines)


def format_bytes_table(rows: list[dict[str, Any]]) -> str:
    """Per-rank bytes per step measured on the interface against the collective's analytic bytes."""
    lines = ["| contender | W | measured MB/rank/step | analytic MB/rank/step | measured / analytic | vs fp32 ring allreduce |",
             "|---|---:|---:|---:|---:|---:|"]
    fp32 = next((r for r in rows if r.get("spec") == FP32_SPEC and "error" not in r), None)
    for r in rows:
        if "error" in r or r.get("measured_bytes_per_rank") is None or r["spec"] == LOCAL_SPEC:
            continue
        measured, model = r["measured_bytes_per_rank"], r["model_bytes_per_rank"]
        vs = measured / fp32["measured_bytes_per_rank"] if fp32 else None
        lines.append(f"| {r['spec']} | {r['world_size']} | {measured / 1e6:.3f} | {model / 1e6:.3f} | "
                     f"{measured / model if model else float('nan'):.2f} | {'-' if vs is None else f'{vs:.3f}x'} |")
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 0.28 * max(len(r["rows"]) for r in runs) + 1.5),
                             squeeze=False, sharey=True)
    colors = {"reference": "grey", "pytorch": "tab:orange", "commcomp": "tab:blue"}
    for ax, run in zip(axes[0], runs):
        rows = [r for r in run["rows"] if "error" not in r]
        y = range(len(rows))
        ax.barh(list(y), [r.get("speedup", 0) for r in rows], color=[colors[r["family"]] for r in rows])
        ax.scatter([r.get("ideal_speedup") or float("nan") for r in rows], list(y), marker="|", color="k", s=80,
                   label="ideal (bytes only)", zorder=3)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(list(y), [r["spec"] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("speedup per step vs fp32 allreduce")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.set_title(f"{run['label']}, {run['world_size']} ranks")
        handles = [matplotlib.patches.Patch(color=c, label=f) for f, c in colors.items()]
        ax.legend(handles=handles + ax.get_legend_handles_labels()[0], fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bandwidths", type=float, nargs="+", default=[1.0, 2.5, 10.0], help="Gbit/s of the shaped link")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=None,
                        help="ranks per run (default: 2, and 4 when there are >= 4 cores)")
    parser.add_argument("--contenders", nargs="+", default=None, help="hook specs (default: the full line-up)")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4], help="bit widths of the default line-up")
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (PowerSGD compresses from step 2)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps; the loss is taken after warmup + steps")
    parser.add_argument("--rounds", type=int, default=1, help="passes over the contenders, interleaved; times pooled")
    parser.add_argument("--lr", type=float, default=0.005, help="SGD (momentum 0.9); 0.005 fits 11 steps of this model")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage (64: ResNet-18, 11.2M parameters)")
    parser.add_argument("--stem-stride", type=int, default=2, choices=(1, 2))
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cuda: NCCL, no namespace, no tc")
    parser.add_argument("--profile-steps", type=int, default=None,
                        help="profiled steps after the timed ones, for kernel/op shares of the step (default: 2 on cuda, 0 on cpu)")
    parser.add_argument("--topology", default="shared", choices=("shared", "nodes"),
                        help="shared: every rank behind one shaped loopback; nodes: 2 namespaces joined by a shaped veth")
    parser.add_argument("--bytes-table", action="store_true",
                        help="unshaped namespace, small model: per-rank bytes against the analytic model")
    parser.add_argument("--no-netns", action="store_true", help="run unshaped on the host loopback (no root needed)")
    parser.add_argument("--netns-name", default=f"ccbench{os.getpid()}")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per bandwidth before the run is killed")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/bench_ddp[_cuda].json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch_size", "steps", "threads", "width", "rounds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if any(b <= 0 for b in args.bandwidths):
        raise ValueError(f"--bandwidths must be > 0 Gbit/s, got {args.bandwidths}")
    if args.world_sizes is None:
        args.world_sizes = [2] + ([4] if (os.cpu_count() or 1) >= 4 else [])
    if any(w < 2 for w in args.world_sizes):
        raise ValueError(f"--world-sizes must be >= 2, got {args.world_sizes}")
    if args.topology == "nodes" and any(w % 2 for w in args.world_sizes):
        raise ValueError(f"--topology nodes needs even --world-sizes (2 nodes), got {args.world_sizes}")
    if args.bytes_table and args.contenders is None:
        args.contenders = [FP32_SPEC, LOCAL_SPEC, "fp16", "nuqsgd:4", "allreduce-qsgd:4", "rs-qsgd:4", "rs-nuqsgd:4", "rs-nuqsgd:4:elias"]
    args.contenders = (default_contenders(args.bits) if args.contenders is None
                       else [contender_for(s) for s in args.contenders])
    if args.profile_steps is None:
        args.profile_steps = 2 if args.device == "cuda" else 0
    return args


def _load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    cuda = args.device == "cuda"
    if cuda:
        # tc cannot shape NVLink/PCIe; NCCL between GPUs of one machine: report kernel shares.
        settings: list[tuple[str, float | None]] = [("NCCL, unshaped", None)]
        gpus = torch.cuda.device_count()
        if gpus < 1:
            print("bench_ddp: --device cuda but no CUDA device", file=sys.stderr)
            return 2
        world_sizes = [w for w in args.world_sizes if w <= gpus] or [gpus]
    else:
        why = None if args.no_netns else can_shape()
        if why is not None:
            print(f"bench_ddp: SKIPPED: {why}. Use --no-netns for an unshaped run on the host loopback.", file=sys.stderr)
            return 2
        if args.no_netns:
            settings = [("host loopback, unshaped", None)]
        elif args.bytes_table:
            settings = [("namespace loopback, unshaped", None)]
        else:
            where = "between 2 nodes" if args.topology == "nodes" else "shared loopback"
            settings = [(f"{b:g} Gbit/s {where}", b) for b in args.bandwidths]
        world_sizes = args.world_sizes
    import commcomp  # noqa: F401  (fail here, not in every rank, if the extension is missing)

    from _common import machine

    runs = []
    started = time.time()
    for world in world_sizes:
        for label, gbps in settings:
            cfg = dict(world_size=world, contenders=[c.spec for c in args.contenders], batch_size=args.batch_size,
                       warmup=args.warmup, steps=args.steps, rounds=args.rounds, lr=args.lr, width=args.width,
                       stem_stride=args.stem_stride,
                       threads=args.threads, seed=args.seed, device=args.device, profile_steps=args.profile_steps,
                       count_link=not (cuda or args.no_netns), link_check_bytes=16 << 20,
                       port=29511, collective_timeout_s=int(min(args.timeout, 600)), interface="lo")
            nodes = args.topology == "nodes" and not (cuda or args.no_netns or args.bytes_table)
            if nodes:
                cfg.update(nodes=2, local_ranks=world // 2, master_addr=f"{NODE_SUBNET}1", socket_interface="cc0",
                           interface="cc0")
            if args.no_netns or cuda:
                from socket import socket

                with socket() as s:  # the host loopback is shared: take a free port
                    s.bind(("127.0.0.1", 0))
                    cfg["port"] = s.getsockname()[1]
            print(f"bench_ddp: {label}, {world} ranks, {len(args.contenders)} contenders", flush=True)
            load_before = _load_average()
            if cuda or args.no_netns:
                rows, link, error = _run_worker(cfg, None, args.timeout)
            elif nodes:
                with shaped_nodes(args.netns_name, gbps) as namespaces:
                    # each node's ranks bind to their node's veth address: cc0 in node 0, cc1 in node 1
                    rows, link, error = _run_worker_nodes(cfg, namespaces, args.timeout)
            else:
                with shaped_namespace(args.netns_name, gbps) as ns:
                    rows, link, error = _run_worker(cfg, ns, args.timeout)
            rows = summarize(merge_rounds(rows))
            run = dict(label=label, gbps=gbps, world_size=world, link_check_gbps=link, error=error,
                       load_average_before=load_before, load_average_after=_load_average(), rows=rows)
            runs.append(run)
            print(f"\n### {label}, {world} ranks (link check: {link if link is None else round(link, 2)} Gbit/s)")
            print(format_bytes_table(rows) if args.bytes_table else format_table(rows))
            if error:
                print(f"bench_ddp: {error}", file=sys.stderr)
    payload = {
        "command": " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
        "machine": machine(torch.device("cuda" if cuda else "cpu")),
        "config": {k: v for k, v in vars(args).items() if k not in ("contenders", "worker")},
        "contenders": [asdict(c) for c in args.contenders],
        "wall_s": time.time() - started,
        "runs": runs,
    }
    out = Path(args.out) if args.out else RESULTS / f"bench_ddp{'_cuda' if cuda else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    if any(r["rows"] for r in runs):
        plot([r for r in runs if r["rows"]], out.with_suffix(".png"))
    print(f"wrote {out}")
    return 1 if any(r["error"] for r in runs) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
