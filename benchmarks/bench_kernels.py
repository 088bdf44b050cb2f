"""Quantize / dequantize throughput against the memory roofline (``torch.clone`` in the same run).

    python benchmarks/bench_kernels.py                  # CPU, 1 thread, 1M..16M elements
    python benchmarks/bench_kernels.py --device cuda --sizes 1e6 4e6 16e6 64e6

On the CPU with one thread, times are this thread's CPU time (``time.thread_time``), so a busy
shared machine does not distort the per-thread figures; ``--wall`` uses wall time instead.
GB/s counts fp32 input bytes per second (the question is "how fast is a gradient consumed").
``clone`` moves 2x those bytes (read + write); quantize reads the input twice (norm pass and
rounding pass) and writes bits/32 of it, so the memory-bound ideal for quantize is about
clone_GB/s (per input byte) when the norm pass hits cache, and half that when it does not.
Targets: CPU quantize >= 25% of clone's input-GB/s per thread; GPU quantize+pack >= 70% of the
device copy bandwidth counted as bytes read + written.
Writes benchmarks/results/bench_kernels_<device>.json and a PNG.
"""
from __future__ import annotations

import argparse
import time

import torch
from tqdm import tqdm

from commcomp import NUQSGD, QSGD, ops

from _common import RESULTS, machine, median_seconds, write_json  # also puts examples/ on sys.path
from common.runtime import pyplot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e6, 4e6, 16e6])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    parser.add_argument("--bucket-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (per-thread figures use 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wall", action="store_true", help="wall-clock timing on the CPU too")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    cpu_time = device.type == "cpu" and args.threads == 1 and not args.wall
    clock = time.thread_time if cpu_time else time.perf_counter
    rows = []
    jobs = [(int(n), b) for n in args.sizes for b in args.bits]
    for numel, bits in tqdm(jobs, desc="bench_kernels"):
        x = torch.randn(numel, device=device)
        gb = numel * 4 / 1e9
        clone_s = median_seconds(lambda: x.clone(), args.repeats, device=device, clock=clock)
        q = NUQSGD(bits, args.bucket_size) if bits < 8 else QSGD(bits, args.bucket_size)
        lv = q.levels.tensor(device)
        quant_s = median_seconds(lambda: ops.quantize(x, lv, q.bucket_size, q.norm, 1, 0), args.repeats, device=device, clock=clock)
        norms, symbols = ops.quantize(x, lv, q.bucket_size, q.norm, 1, 0)
        dequant_s = median_seconds(
            lambda: ops.dequantize(norms, symbols, lv, q.bucket_size, numel), args.repeats, device=device, clock=clock
        )
        rows.append(
            dict(
                numel=numel,
                bits=bits,
                clone_gbps=gb / clone_s,
                clone_rw_gbps=2 * gb / clone_s,
                quantize_gbps=gb / quant_s,
                dequantize_gbps=gb / dequant_s,
                quantize_vs_clone=(gb / quant_s) / (gb / clone_s),
                quantize_rw_vs_copy_rw=((gb + symbols.numel() / 1e9 + norms.numel() * 4e-9) / quant_s) / (2 * gb / clone_s),
            )
        )
    print(f"{'numel':>10} {'bits':>4} {'clone GB/s':>10} {'quant GB/s':>10} {'dequant GB/s':>12} {'quant/clone':>11}")
    for r in rows:
        print(
            f"{r['numel']:>10} {r['bits']:>4} {r['clone_gbps']:>10.2f} {r['quantize_gbps']:>10.2f} "
            f"{r['dequantize_gbps']:>12.2f} {r['quantize_vs_clone']:>11.2%}"
        )
    meta = {"machine": machine(device), "bucket_size": args.bucket_size, "clock": "thread CPU time" if cpu_time else "wall"}
    path = write_json(f"bench_kernels_{device.type}.json", {**meta, "rows": rows})
    _plot(rows, device)
    print(f"wrote {path}")


def _plot(rows, device) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for bits in sorted({r["bits"] for r in rows}):
        sel = [r for r in rows if r["bits"] == bits]
        ax.plot([r["numel"] for r in sel], [r["quantize_gbps"] for r in sel], "o-", label=f"quantize {bits}b")
    sel = [r for r in rows if r["bits"] == rows[0]["bits"]]
    ax.plot([r["numel"] for r in sel], [r["clone_gbps"] for r in sel], "k--", label="clone")
    ax.set_xscale("log")
    ax.set_xlabel("elements")
    ax.set_ylabel("GB/s of fp32 input")
    ax.set_title(f"commcomp kernels on {device.type}")
    ax.legend()
    fig.savefig(RESULTS / f"bench_kernels_{device.type}.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
