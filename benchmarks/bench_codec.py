"""How many bits per coordinate do the wire codings spend on real gradients, against the zero-order
entropy of the symbols, and how fast do they encode and decode on one CPU thread?

Gradients come from a small MLP trained on sklearn's digits (the backward pass of several
mini-batches, concatenated). For QSGD and NUQSGD at 2/3/4 bits (bucket 512) it reports, per coding:

* symbol bits per coordinate (the symbol stream only) and its ratio to the empirical entropy
  H0 = -sum p(s) log2 p(s) of the symbols — the bound any memoryless symbol code must respect;
* total bits per coordinate of the whole payload (header, norms, bucket lengths included);
* encode and decode throughput in coordinates per second on one thread, from thread CPU time
  (robust on a shared machine) and wall time.

Usage: ``python benchmarks/bench_codec.py [--steps 40] [--repeats 5] [--out-dir benchmarks/results]``
Writes ``bench_codec.json`` and ``bench_codec.png``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from commcomp import NUQSGD, QSGD, codecs, ops  # noqa: E402

import _common  # noqa: E402, F401  (puts examples/ on sys.path)
from common.data import load_digits_tensors  # noqa: E402

CODINGS = ["fixed", "elias-gamma", "elias-delta", "elias-omega"]


def digits_gradients(steps: int, seed: int) -> torch.Tensor:
    """Flattened gradients of `steps` SGD steps of a 64-256-128-10 MLP on digits, concatenated."""
    torch.manual_seed(seed)
    train, _ = load_digits_tensors(test_fraction=0.2, seed=seed, flat=True)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    grads = []
    for _ in range(steps):
        idx = torch.randint(0, train.x.shape[0], (64,))
        loss = torch.nn.functional.cross_entropy(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        opt.step()
    return torch.cat(grads)


def entropy_bits(symbols: torch.Tensor) -> float:
    counts = torch.bincount(symbols.to(torch.int64)).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log2()).sum())


def best_time(fn, repeats: int) -> tuple[float, float]:
    """Minimum (thread CPU seconds, wall seconds) over `repeats` calls."""
    cpu, wall = math.inf, math.inf
    for _ in range(repeats):
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        cpu, wall = min(cpu, time.thread_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="backward passes whose gradients are concatenated")
    parser.add_argument("--bucket-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    g = digits_gradients(args.steps, args.seed)
    n = g.numel()
    print(f"{n:,} gradient coordinates from {args.steps} backward passes ({float((g == 0).float().mean()):.1%} exact zeros); "
          f"one thread; bucket {args.bucket_size}")
    rows = []
    header = (f"{'scheme':8} {'bits':>4} {'coding':12} {'H0':>6} {'sym b/c':>8} {'/H0':>6} {'total b/c':>9} "
              f"{'enc Mc/s':>9} {'dec Mc/s':>9} {'(wall enc/dec)':>15}")
    print(header)
    print("-" * len(header))
    for scheme in (QSGD, NUQSGD):
        for bits in (2, 3, 4):
            quantizer = scheme(bits=bits, bucket_size=args.bucket_size)
            q = quantizer.quantize(g, seed=args.seed)
            h0 = entropy_bits(ops.unpack_symbols(q.symbols, quantizer.bits, n))
            num_levels = len(quantizer.levels)
            for coding in CODINGS:
                payload = codecs.encode(q, coding)
                assert torch.equal(codecs.decode(payload, quantizer).symbols, q.symbols)
                if coding == "fixed":
                    symbol_bits = q.symbols.numel() * 8
                    enc = dec = (math.nan, math.nan)
                else:
                    code = coding.removeprefix("elias-")
                    lengths, stream = ops.elias_encode(q.symbols, num_levels, args.bucket_size, n, code)
                    symbol_bits = stream.numel() * 8
                    enc = best_time(lambda: ops.elias_encode(q.symbols, num_levels, args.bucket_size, n, code),
                                    args.repeats)
                    dec = best_time(lambda: ops.elias_decode(lengths, stream, num_levels, args.bucket_size, n, code),
                                    args.repeats)
                row = {
                    "scheme": quantizer.name, "bits": bits, "coding": coding, "entropy_bits": h0,
                    "symbol_bits_per_coord": symbol_bits / n, "ratio_to_entropy": symbol_bits / n / h0,
                    "total_bits_per_coord": payload.numel() * 8 / n,
                    "encode_coords_per_s_cpu": n / enc[0], "decode_coords_per_s_cpu": n / dec[0],
                    "encode_coords_per_s_wall": n / enc[1], "decode_coords_per_s_wall": n / dec[1],
                }
                rows.append(row)
                speed = "" if coding == "fixed" else (
                    f"{row['encode_coords_per_s_cpu'] / 1e6:9.0f} {row['decode_coords_per_s_cpu'] / 1e6:9.0f} "
                    f"{row['encode_coords_per_s_wall'] / 1e6:7.0f}/{row['decode_coords_per_s_wall'] / 1e6:<7.0f}")
                print(f"{quantizer.name:8} {bits:4d} {coding:12} {h0:6.3f} {row['symbol_bits_per_coord']:8.3f} "
                      f"{row['ratio_to_entropy']:6.2f} {row['total_bits_per_coord']:9.3f} {speed}")

    target = [r for r in rows if r["scheme"] == "nuqsgd" and r["bits"] == 4 and r["coding"].startswith("elias")]
    best = min(target, key=lambda r: r["ratio_to_entropy"])
    elias = [r for r in rows if r["coding"].startswith("elias")]
    slowest_enc = min(r["encode_coords_per_s_cpu"] for r in elias)
    slowest_dec = min(r["decode_coords_per_s_cpu"] for r in elias)
    summary = {
        "nuqsgd4_best_elias": best["coding"], "nuqsgd4_best_ratio": best["ratio_to_entropy"],
        "ratio_target": 1.15, "slowest_encode_coords_per_s": slowest_enc, "slowest_decode_coords_per_s": slowest_dec,
        "throughput_target": 1e8,
    }
    print(f"\nNUQSGD 4-bit: best Elias ({best['coding']}) = {best['ratio_to_entropy']:.3f} x H0 (target <= 1.15); "
          f"slowest Elias encode {slowest_enc / 1e6:.0f} M, decode {slowest_dec / 1e6:.0f} M coords/s/thread "
          f"(CPU time; target >= 100 M)")

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "bench_codec.json"), "w") as f:
        json.dump({"numel": n, "steps": args.steps, "bucket_size": args.bucket_size, "rows": rows, "summary": summary},
                  f, indent=2)
    plot(rows, os.path.join(args.out_dir, "bench_codec.png"))
    print(f"wrote {args.out_dir}/bench_codec.json and bench_codec.png")


def plot(rows: list[dict], path: str) -> None:
    fig, (ax_bits, ax_speed) = plt.subplots(1, 2, figsize=(14, 4.5))
    configs = sorted({(r["scheme"], r["bits"]) for r in rows})
    labels = [f"{s}\n{b}-bit" for s, b in configs]
    width = 0.18
    for k, coding in enumerate(CODINGS):
        vals = [next(r["symbol_bits_per_coord"] for r in rows if (r["scheme"], r["bits"], r["coding"]) == (s, b, coding))
                for s, b in configs]
        ax_bits.bar([i + (k - 1.5) * width for i in range(len(configs))], vals, width, label=coding)
    h0 = [next(r["entropy_bits"] for r in rows if (r["scheme"], r["bits"]) == c) for c in configs]
    ax_bits.scatter(range(len(configs)), h0, color="black", marker="_", s=600, zorder=3, label="entropy H0")
    ax_bits.set_xticks(range(len(configs)), labels)
    ax_bits.set_ylabel("symbol bits per coordinate")
    ax_bits.set_title("Coding cost vs zero-order entropy (digits MLP gradients)")
    ax_bits.legend(fontsize=8)
    for k, coding in enumerate(CODINGS[1:]):
        enc = [next(r["encode_coords_per_s_cpu"] for r in rows if (r["scheme"], r["bits"], r["coding"]) == (s, b, coding)) / 1e6
               for s, b in configs]
        dec = [next(r["decode_coords_per_s_cpu"] for r in rows if (r["scheme"], r["bits"], r["coding"]) == (s, b, coding)) / 1e6
               for s, b in configs]
        xs = [i + (k - 1) * 0.27 for i in range(len(configs))]
        ax_speed.bar(xs, enc, 0.13, label=f"{coding} encode")
        ax_speed.bar([x + 0.13 for x in xs], dec, 0.13, label=f"{coding} decode", alpha=0.6)
    ax_speed.axhline(100, color="red", linestyle="--", label="target 100 M/s")
    ax_speed.set_yscale("log")
    ax_speed.set_xticks(range(len(configs)), labels)
    ax_speed.set_ylabel("M coordinates / s / thread (CPU time)")
    ax_speed.set_title("Elias throughput, one CPU thread")
    ax_speed.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
