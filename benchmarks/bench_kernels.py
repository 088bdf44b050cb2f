"""How close do the commcomp kernels come to memory speed? Quantize, dequantize, dequantize_accumulate
and bucket norms against a warm ``copy_`` (the memory roofline), per CPU kernel path and bit width,
next to what a user would write without commcomp (``torch.quantize_per_tensor``, a pure-torch QSGD).

    python benchmarks/bench_kernels.py                       # CPU: 16M elements, 1 thread, every path
    python benchmarks/bench_kernels.py --sizes 1e6 16e6 --threads 2
    python benchmarks/bench_kernels.py --device cuda --sizes 16e6 64e6

The baseline is ``y.copy_(x)`` into a preallocated output that has been written before (no page
faults), fp32 in and out: it reads 4 and writes 4 bytes per element. Every figure is the best of
``--repeats`` calls, the contenders interleaved (one call of each per round), so all ratios come
from the same minutes of the same machine. GB/s counts fp32 *input* bytes per second (how fast a
gradient is consumed); "% of copy" is the copy's time over the contender's, i.e. the ratio of
those input rates. On the CPU with one thread both clocks are kept: wall time and this thread's
CPU time (``time.thread_time``, which other processes on a shared machine do not inflate); the
tables use CPU time unless ``--wall``.

Contenders: quantize (the norm pass included) and dequantize (which allocates and first-touches its
fp32 output, as the op does), ``dequantize_accumulate`` into a warm fp32 buffer, ``bucket_norms``
(L2), at ``--bits`` (NUQSGD levels below 8 bits, QSGD at 8, bucket ``--bucket-size``), on every CPU
kernel path this machine supports (``COMMCOMP_CPU_PATH``: scalar, avx2, avx512); ``clone`` (the same
copy plus first-touch page faults of a fresh output); ``torch.quantize_per_tensor`` to int8
(deterministic, given a scale); a pure-torch stochastic QSGD at 4 bits (norms, scaled magnitudes,
``rand_like``, unpacked int8 levels).

Writes ``benchmarks/results/bench_kernels_<device>.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Callable

import torch

from commcomp import NUQSGD, QSGD, ops

from _common import RESULTS, machine, write_json  # also puts examples/ on sys.path
from common.runtime import pyplot  # noqa: E402

CPU_PATHS = ("scalar", "avx2", "avx512")
KERNEL_OPS = ("bucket_norms", "quantize", "dequantize", "dequantize_accumulate")
TARGETS = {  # issue 16, CPU, one thread, % of the warm copy's input bandwidth
    ("quantize", 2): 25, ("quantize", 3): 25, ("quantize", 4): 25, ("quantize", 8): 15,
    ("dequantize", None): 40, ("bucket_norms", None): 60,
}


def torch_qsgd(x: torch.Tensor, bits: int, bucket_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic QSGD as a user would write it in plain torch: per-bucket L2 norms, scaled
    magnitudes rounded up with probability equal to their fractional part, signed int8 levels."""
    s = 2 ** (bits - 1) - 1
    xb = x.view(-1, bucket_size)
    norms = torch.linalg.vector_norm(xb, dim=1, keepdim=True)
    scaled = xb.abs() / norms.clamp_min(torch.finfo(x.dtype).tiny) * s
    low = scaled.floor()
    level = low + (torch.rand_like(scaled) < scaled - low)
    return norms, (level * xb.sign()).to(torch.int8)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Contender:
    def __init__(self, op: str, path: str | None, bits: int | None, fn: Callable[[], object], note: str = ""):
        self.op, self.path, self.bits, self.fn, self.note = op, path, bits, fn, note
        self.wall = float("inf")
        self.cpu = float("inf")

    def run(self, sync: Callable[[], None]) -> None:
        if self.path is not None:
            os.environ["COMMCOMP_CPU_PATH"] = self.path
        wall, cpu = time.perf_counter(), time.thread_time()
        self.fn()
        sync()
        self.wall = min(self.wall, time.perf_counter() - wall)
        self.cpu = min(self.cpu, time.thread_time() - cpu)

    @property
    def label(self) -> str:
        parts = [self.op] + ([f"{self.bits}b"] if self.bits else []) + ([self.path] if self.path else [])
        return " ".join(parts)


def contenders_for(x: torch.Tensor, args, paths: list[str]) -> list[Contender]:
    numel = x.numel()
    y = torch.empty_like(x)
    y.copy_(x)  # touched: no page faults in the timed copies
    acc = torch.zeros_like(x)
    found = [Contender("copy_", None, None, lambda: y.copy_(x), "warm output"),
             Contender("clone", None, None, lambda: x.clone(), "fresh output: page faults")]
    if x.device.type == "cpu":
        scale = float(x.abs().max()) / 127
        found.append(Contender("torch.quantize_per_tensor", None, 8,
                               lambda: torch.quantize_per_tensor(x, scale, 0, torch.qint8), "int8, deterministic"))
    usable = numel - numel % args.bucket_size
    found.append(Contender("torch QSGD", None, 4, lambda: torch_qsgd(x[:usable], 4, args.bucket_size),
                           "pure torch, stochastic, int8 out"))
    for path in paths:
        if path is not None:
            os.environ["COMMCOMP_CPU_PATH"] = path
        found.append(Contender("bucket_norms", path, None, lambda: ops.bucket_norms(x, args.bucket_size, "l2")))
        for bits in args.bits:
            q = NUQSGD(bits, args.bucket_size) if bits < 8 else QSGD(bits, args.bucket_size)
            lv = q.levels.tensor(x.device)
            norms, symbols = ops.quantize(x, lv, q.bucket_size, q.norm, 1, 0)
            found.append(Contender("quantize", path, bits,
                                   lambda lv=lv, q=q: ops.quantize(x, lv, q.bucket_size, q.norm, 1, 0)))
            found.append(Contender("dequantize", path, bits,
                                   lambda lv=lv, n=norms, s=symbols: ops.dequantize(n, s, lv, args.bucket_size, numel),
                                   "fresh fp32 output"))
            found.append(Contender("dequantize_accumulate", path, bits,
                                   lambda lv=lv, n=norms, s=symbols: ops.dequantize_accumulate(
                                       acc, [n], [s], lv, args.bucket_size, 1.0), "warm fp32 output"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=float, nargs="+", default=[16e6])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    parser.add_argument("--bucket-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the targets are per thread)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--paths", nargs="+", default=None, help="CPU kernel paths (default: all supported)")
    parser.add_argument("--wall", action="store_true", help="tables from wall time (CPU time otherwise)")
    parser.add_argument("--out", default=None, help="JSON path (default results/bench_kernels_<device>.json)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cpu_clock = device.type == "cpu" and args.threads == 1 and not args.wall
    supported = list(torch.ops.commcomp._cpu_paths())
    paths = [None] if device.type == "cuda" else [p for p in (args.paths or CPU_PATHS) if p in supported]
    load_before = os.getloadavg()
    rows = []
    previous = os.environ.get("COMMCOMP_CPU_PATH")
    try:
        for size in args.sizes:
            numel = int(size)
            x = torch.randn(numel, device=device)
            contenders = contenders_for(x, args, paths)
            for c in contenders:  # warm-up: code, caches, allocator
                c.run(sync)
                c.wall = c.cpu = float("inf")
            for _ in range(args.repeats):
                for c in contenders:
                    c.run(sync)
            copy = contenders[0]
            for c in contenders:
                t = c.cpu if cpu_clock else c.wall
                t_copy = copy.cpu if cpu_clock else copy.wall
                rows.append(dict(
                    numel=numel, op=c.op, path=c.path, bits=c.bits, note=c.note,
                    wall_s=c.wall, cpu_s=c.cpu if device.type == "cpu" else None,
                    input_gbps=numel * 4 / t / 1e9, ns_per_coord=t / numel * 1e9,
                    pct_of_copy=100 * t_copy / t,
                    pct_of_copy_wall=100 * copy.wall / c.wall,
                    copy_rw_gbps=numel * 8 / t_copy / 1e9,
                ))
    finally:
        if previous is None:
            os.environ.pop("COMMCOMP_CPU_PATH", None)
        else:
            os.environ["COMMCOMP_CPU_PATH"] = previous
    load_after = os.getloadavg()
    clock = "thread CPU time" if cpu_clock else "wall"
    print(f"{cpu_model()}, {args.threads} thread(s), {clock}; load average {load_before} -> {load_after}")
    print(f"{'elements':>10} {'contender':<34} {'GB/s in':>8} {'% copy':>7} {'ns/coord':>9}  note")
    for r in rows:
        label = " ".join([r["op"]] + ([f"{r['bits']}b"] if r["bits"] else []) + ([r["path"]] if r["path"] else []))
        print(f"{r['numel']:>10} {label:<34} {r['input_gbps']:>8.2f} {r['pct_of_copy']:>6.1f}% "
              f"{r['ns_per_coord']:>9.3f}  {r['note']}")
    if device.type == "cpu":
        print_targets(rows)
    meta = dict(machine=machine(device), cpu_model=cpu_model(), bucket_size=args.bucket_size, clock=clock,
                repeats=args.repeats, load_average_before=load_before, load_average_after=load_after,
                paths=paths, baseline="y.copy_(x), fp32, preallocated and touched output (reads 4 + writes 4 bytes/element)")
    name = f"bench_kernels_{device.type}.json"
    path = write_json(name, {**meta, "rows": rows}) if args.out is None else _write(args.out, {**meta, "rows": rows})
    plot(rows, device, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png').name}")


def _write(out: str, payload: dict):
    import json
    from pathlib import Path

    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2))
    return p


def print_targets(rows: list[dict]) -> None:
    """The issue's targets against the best path, at the largest size."""
    numel = max(r["numel"] for r in rows)
    print(f"targets at {numel} elements (best path):")
    for (op, bits), target in TARGETS.items():
        sel = [r for r in rows if r["numel"] == numel and r["op"] == op and (bits is None or r["bits"] == bits)]
        if not sel:
            continue
        if bits is None and op != "bucket_norms":  # dequantize: its worst width must meet it
            per_bits = {}
            for r in sel:
                per_bits[r["bits"]] = max(per_bits.get(r["bits"], 0), r["pct_of_copy"])
            got, where = min(per_bits.values()), f"worst width {min(per_bits, key=per_bits.get)}b"
        else:
            best = max(sel, key=lambda r: r["pct_of_copy"])
            got, where = best["pct_of_copy"], best["path"]
        status = "met" if got >= target else "MISSED"
        print(f"  {op}{f' {bits}b' if bits else ''}: {got:.1f}% of copy ({where}), target >= {target}%: {status}")


def plot(rows: list[dict], device: torch.device, png) -> None:
    plt = pyplot()
    numel = max(r["numel"] for r in rows)
    sel = [r for r in rows if r["numel"] == numel]
    paths = [p for p in CPU_PATHS if any(r["path"] == p for r in sel)] or [None]
    groups = []
    for r in sel:
        key = (r["op"], r["bits"])
        if r["op"] in KERNEL_OPS and key not in groups:
            groups.append(key)
    fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(groups) * len(paths)), 4.5))
    width = 0.8 / len(paths)
    for k, p in enumerate(paths):
        values = []
        for op, bits in groups:
            match = [r["pct_of_copy"] for r in sel if r["op"] == op and r["bits"] == bits and r["path"] == p]
            values.append(match[0] if match else 0.0)
        ax.bar([g + k * width for g in range(len(groups))], values, width, label=p or device.type)
    for r in sel:
        if r["op"] not in KERNEL_OPS and r["op"] != "copy_":
            ax.axhline(r["pct_of_copy"], ls=":", lw=1, color="gray")
            ax.text(-0.4, r["pct_of_copy"], f"{r['op']} ({r['pct_of_copy']:.0f}%)", va="bottom", ha="left",
                    fontsize=7, color="gray")
    ax.axhline(100, color="k", lw=1)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
    ax.set_xticklabels([f"{op}\n{bits}b" if bits else op for op, bits in groups], fontsize=7)
    ax.set_ylabel("% of warm copy_ input bandwidth")
    ax.set_title(f"commcomp kernels, {numel / 1e6:.0f}M fp32 elements, {device.type}")
    ax.legend(fontsize=8)
    fig.savefig(png, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
