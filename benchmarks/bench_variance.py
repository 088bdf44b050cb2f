"""Normalized quantization variance of QSGD, QSGDInf, NUQSGD, AMQ and ALQ on real gradients.

Question (Faghri et al., NeurIPS 2020): at equal bits, is ALQ <= AMQ <= NUQSGD < QSGD in
E||Q(g) - g||^2 / ||g||^2?

Method: train a small CNN on scikit-learn's digits with SGD and, at several iterations, take the
gradients of two different minibatches at the same weights. ALQ and AMQ fit their levels on the
first (``observe`` + ``update``, what a training run does at a scheduled update) and every scheme
is scored on the second, so adaptive levels are judged on data they were not fitted to. The
variance is computed exactly (``commcomp._reference.expected_variance``: sum over coordinates of
n^2 (r - L_j)(L_{j+1} - r)), not sampled. ``bits`` counts index + sign bits: 2**(bits-1) levels,
so at 2 bits every L2 scheme has the table {0, 1} and they coincide.

    python benchmarks/bench_variance.py                      # ~1 min on 2 CPU cores
    python benchmarks/bench_variance.py --bits 2 3 4 5 --bucket-size 8192 --capture 0 100 1000 3000

Writes benchmarks/results/bench_variance.json and .png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import RESULTS, machine, write_json  # noqa: E402  (also puts examples/ on sys.path)

from commcomp import _reference  # noqa: E402
from commcomp.adaptive import ALQ, AMQ, UpdateSchedule  # noqa: E402
from commcomp.quantizers import NUQSGD, QSGD, QSGDInf, Quantizer  # noqa: E402

from common.data import load_digits_tensors  # noqa: E402
from common.runtime import pyplot  # noqa: E402

SCHEMES = ("QSGD", "QSGDInf", "NUQSGD", "AMQ", "ALQ")


class SmallCNN(torch.nn.Module):
    """Two conv layers and a linear head: ~9K parameters of different scales across layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def flat_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()


def capture_gradients(captures: list[int], batch_size: int, lr: float, seed: int) -> dict[int, tuple[torch.Tensor, torch.Tensor, float]]:
    """Train with SGD; at each iteration in ``captures`` return (fit grad, eval grad, test accuracy)."""
    torch.manual_seed(seed)
    train, test = load_digits_tensors(seed=seed)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for it in range(max(captures) + 1):
        if it in captures:
            a, b = torch.randperm(len(train), generator=gen)[: 2 * batch_size].view(2, batch_size)
            with torch.no_grad():
                acc = float((model(test.x).argmax(1) == test.y).float().mean())
            out[it] = (flat_gradient(model, train.x[a], train.y[a]), flat_gradient(model, train.x[b], train.y[b]), acc)
        idx = torch.randperm(len(train), generator=gen)[:batch_size]
        flat_gradient(model, train.x[idx], train.y[idx])
        opt.step()
    return out


def normalized_variance(q: Quantizer, g: torch.Tensor) -> float:
    return _reference.expected_variance(g, q.levels.tensor(), q.bucket_size, q.norm) / float(g.double().pow(2).sum())


def measure(g_fit: torch.Tensor, g_eval: torch.Tensor, bits: int, bucket_size: int) -> dict[str, dict]:
    once = UpdateSchedule(at=(0,), every=None)
    quantizers: dict[str, Quantizer] = {
        "QSGD": QSGD(bits, bucket_size),
        "QSGDInf": QSGDInf(bits, bucket_size),
        "NUQSGD": NUQSGD(bits, bucket_size),
        "AMQ": AMQ(bits, bucket_size, once),
        "ALQ": ALQ(bits, bucket_size, once),
    }
    row = {}
    for name, q in quantizers.items():
        if isinstance(q, (ALQ, AMQ)):
            q.observe(g_fit)
            q.maybe_update(0)
        row[name] = {
            "variance": normalized_variance(q, g_eval),
            "in_sample": normalized_variance(q, g_fit),
            "levels": list(q.levels.values),
        }
    return row


def claim_verdict(row: dict[str, dict], slack: float = 1e-9) -> str:
    """'yes' / 'NO' for ALQ <= AMQ <= NUQSGD < QSGD; 'tie' when all L2 tables are {0, 1} (2 bits)."""
    if len(row["QSGD"]["levels"]) == 2:
        return "tie"
    v = {k: row[k]["variance"] for k in SCHEMES}
    holds = v["ALQ"] <= v["AMQ"] * (1 + slack) and v["AMQ"] <= v["NUQSGD"] * (1 + slack) and v["NUQSGD"] < v["QSGD"]
    return "yes" if holds else "NO"


def plot(results: list[dict], bits_list: list[int], path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, len(bits_list), figsize=(4.2 * len(bits_list), 3.6), squeeze=False)
    for ax, bits in zip(axes[0], bits_list):
        rows = [r for r in results if r["bits"] == bits]
        its = [max(r["iteration"], 1) for r in rows]
        for name in SCHEMES:
            ax.plot(its, [r["schemes"][name]["variance"] for r in rows], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{bits} bits ({2 ** (bits - 1)} levels)")
        ax.set_xlabel("training iteration (0 plotted at 1)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("E||Q(g) - g||² / ||g||²")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Normalized quantization variance on digits-CNN gradients (held-out minibatch)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--bucket-size", type=int, default=512)
    parser.add_argument("--capture", type=int, nargs="+", default=[0, 30, 300, 1500], help="iterations to measure at")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_variance.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    grads = capture_gradients(sorted(set(args.capture)), args.batch_size, args.lr, args.seed)
    results = []
    for it, (g_fit, g_eval, acc) in grads.items():
        for bits in args.bits:
            row = measure(g_fit, g_eval, bits, args.bucket_size)
            results.append({"iteration": it, "test_accuracy": acc, "bits": bits, "schemes": row, "claim": claim_verdict(row)})

    header = f"{'iter':>5} {'acc':>5} {'bits':>4} " + " ".join(f"{s:>9}" for s in SCHEMES) + "  ALQ<=AMQ<=NUQSGD<QSGD"
    print(f"normalized variance E||Q(g)-g||^2/||g||^2, {grads[next(iter(grads))][0].numel()} params, "
          f"bucket {args.bucket_size}, levels fitted on another minibatch")
    print(header)
    for r in results:
        vals = " ".join(f"{r['schemes'][s]['variance']:9.3e}" for s in SCHEMES)
        print(f"{r['iteration']:>5} {r['test_accuracy']:5.2f} {r['bits']:>4} {vals}  {r['claim']}")
    held = sum(r["claim"] == "yes" for r in results)
    decided = sum(r["claim"] != "tie" for r in results)
    print(f"claim ALQ <= AMQ <= NUQSGD < QSGD holds in {held}/{decided} (iteration, bits) cells "
          f"({len(results) - decided} ties at 2 bits, where every L2 table is {{0, 1}})")

    payload = {"config": vars(args) | {"out": str(args.out)}, "machine": machine(torch.device("cpu")),
               "params": int(grads[next(iter(grads))][0].numel()), "results": results, "claim_holds_cells": [held, decided]}
    path = write_json(args.out.name, payload) if args.out.parent == RESULTS else _write(args.out, payload)
    png = args.out.with_suffix(".png")
    plot(results, args.bits, png)
    print(f"wrote {path} and {png}")


def _write(path: Path, payload: dict) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path


if __name__ == "__main__":
    main()
