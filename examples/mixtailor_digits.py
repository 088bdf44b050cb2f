"""MixTailor vs deterministic robust rules under tailored Byzantine attacks.

n = 12 simulated workers, f = 2 Byzantine, an MLP on scikit-learn's handwritten digits
(``--datasets digits mnist1d`` adds the harder mnist1d). For every attack in {none, IPM eps 0.1,
IPM eps 10, ALIE z 1.5, adaptive IPM} and every rule in {mean, median, Krum, geometric median,
Bulyan, MixTailor} it trains from the same initialization and reports the final test accuracy,
next to the honest-only baseline (plain mean over the n - f honest workers, no attacker).

The 12 workers are simulated in one process (the papers' setting). Under torchrun each rank
runs a round-robin share of the table's cells and rank 0 gathers them, so
``torchrun --nproc_per_node=2 examples/mixtailor_digits.py`` halves the wall time; the numbers
are identical to a single-process run because each cell is seeded by its own configuration.

    python examples/mixtailor_digits.py                    # digits, 300 steps, 1 seed (~2 min)
    python examples/mixtailor_digits.py --full             # digits + mnist1d, 1000 steps, 3 seeds
    torchrun --nproc_per_node=2 examples/mixtailor_digits.py

Writes ``results.json`` and ``accuracy.png`` under ``--out-dir``. The worst-case table over
every attack at n = 10, f = 1, 2, 3 (fp32 and 4-bit payloads, 3 seeds) is
``benchmarks/bench_robust.py``.

Attackers receive ``aggregator.attacker_view()`` (MixTailor: the pool, never its seed); the seed
given to MixTailor here is the cell's, so runs are reproducible. In a DDP job the hook draws
MixTailor's rules by commit-reveal instead (docs/robust.md).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from commcomp.robust import (  # noqa: E402
    ALIE,
    CAF,
    IPM,
    MDA,
    AdaptiveIPM,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MixTailor,
    OptimalALIE,
    OptimalIPM,
    build_pool,
)
from commcomp.robust.simulation import SimulationConfig, simulate  # noqa: E402

from common import runtime  # noqa: E402
from common.data import load_dataset  # noqa: E402

ATTACKS = {
    "none": lambda: None,
    "ipm_0.1": lambda: IPM(0.1),
    "ipm_10": lambda: IPM(10.0),
    "alie_1.5": lambda: ALIE(1.5),
    "adaptive": AdaptiveIPM,
    "opt_ipm": OptimalIPM,
    "opt_alie": OptimalALIE,
}
DEFAULT_ATTACKS = ["none", "ipm_0.1", "ipm_10", "alie_1.5", "adaptive"]


def make_aggregator(name: str, norms: list[float], seed: int):
    if name == "mixtailor":
        return MixTailor(build_pool(norms=norms), seed=seed)
    return {
        "mean": Mean,
        "median": CoordinateMedian,
        "krum": Krum,
        "geomed": GeometricMedian,
        "bulyan": Bulyan,
        "cclip": CenteredClipping,
        "mda": MDA,
        "caf": CAF,
    }[name]()


AGGREGATORS = ["mean", "median", "krum", "geomed", "bulyan", "cclip", "mda", "caf", "mixtailor"]
DEFAULT_AGGREGATORS = ["mean", "median", "krum", "geomed", "bulyan", "mixtailor"]


def make_model(in_features: int, num_classes: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(in_features, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, num_classes),
    )


def run_cell(cell: tuple[str, str, str, int], args: argparse.Namespace, device: torch.device) -> dict:
    dataset, attack_name, agg_name, seed = cell
    train, test = load_dataset(dataset, seed=seed, flat=True)
    honest_only = agg_name == "honest_only"
    n, f = args.workers, args.byzantine
    config = SimulationConfig(
        num_workers=n - f if honest_only else n,
        num_byzantine=0 if honest_only or attack_name == "none" else f,
        tolerance=0 if honest_only else f,
        batch_size=args.batch_size,
        steps=args.steps,
        lr=args.lr,
        momentum=args.momentum,
        eval_every=max(1, args.steps // 10),
        seed=seed,
    )
    aggregator = Mean() if honest_only else make_aggregator(agg_name, args.norms, seed)
    if honest_only:
        attack = None
    elif attack_name == "adaptive":
        attack = AdaptiveIPM(probes=args.adaptive_probes or None)
    elif attack_name in ("opt_ipm", "opt_alie"):
        attack = ATTACKS[attack_name](probes=args.adaptive_probes or None)
    else:
        attack = ATTACKS[attack_name]()
    model = make_model(train.x.shape[1], train.num_classes, args.hidden, seed)
    start = time.perf_counter()
    result = simulate(model, (train.x, train.y), (test.x, test.y), aggregator, attack, config, device=device)
    return {
        "dataset": dataset,
        "attack": attack_name,
        "aggregator": agg_name,
        "seed": seed,
        "final_accuracy": result.final_accuracy,
        "steps": result.steps,
        "test_accuracy": result.test_accuracy,
        "train_loss": result.train_loss,
        "diverged_at": result.diverged_at,
        "seconds": time.perf_counter() - start,
        "config": asdict(config),
    }


def parse_norms(text: str) -> list[float]:
    if "-" in text:
        lo, hi = text.split("-")
        return [float(p) for p in range(int(lo), int(hi) + 1)]
    return [float(p) for p in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_arguments(parser, default_out_dir="results/mixtailor_digits")
    parser.add_argument("--datasets", nargs="+", default=["digits"], choices=["digits", "mnist1d"])
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--byzantine", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16, help="per worker")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--adaptive-probes", type=int, default=6,
                        help="pool members the adaptive and optimal attackers evaluate per step against MixTailor "
                        "(a fresh random subset each step; 0 = the whole pool)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per cell (mean is reported)")
    parser.add_argument("--norms", type=parse_norms, default=parse_norms("1-16"),
                        help="p-norms of the Krum/Bulyan members of the MixTailor pool, '1-16' or '1,2,8'")
    parser.add_argument("--attacks", nargs="+", default=DEFAULT_ATTACKS, choices=list(ATTACKS),
                        help="a subset of the table's columns")
    parser.add_argument("--aggregators", nargs="+", default=DEFAULT_AGGREGATORS, choices=AGGREGATORS,
                        help="a subset of the table's rows")
    parser.add_argument("--full", action="store_true", help="digits + mnist1d, 1000 steps, 3 seeds")
    args = parser.parse_args()
    if args.full:
        args.datasets, args.steps, args.seeds = ["digits", "mnist1d"], 1000, 3

    ctx = runtime.init_distributed(args.device)
    cells = [
        (ds, atk, agg, args.seed + s)
        for ds in args.datasets
        for s in range(args.seeds)
        for atk, agg in [("none", "honest_only")] + [(a, g) for a in args.attacks for g in args.aggregators]
    ]
    mine = cells[ctx.rank :: ctx.world_size]
    records = [run_cell(c, args, ctx.device) for c in runtime.progress(mine, ctx, desc="cells")]
    if ctx.distributed:
        gathered: list[list[dict]] = [[] for _ in range(ctx.world_size)]
        dist.all_gather_object(gathered, records)
        records = [r for part in gathered for r in part]

    if ctx.is_main:
        summary = report(records, args)
        runtime.write_json(args.out_dir, "results.json", {"args": vars(args), "summary": summary, "runs": records}, ctx)
        plot(summary, args, ctx)
        print(f"wrote {args.out_dir}/results.json and accuracy.png")
    runtime.shutdown()


def report(records: list[dict], args: argparse.Namespace) -> dict:
    """Print the accuracy table per dataset and the paper's two checks; return the means."""
    summary: dict = {}
    for ds in args.datasets:
        acc = lambda atk, agg: statistics.mean(  # noqa: E731
            r["final_accuracy"] for r in records if (r["dataset"], r["attack"], r["aggregator"]) == (ds, atk, agg)
        )
        honest = acc("none", "honest_only")
        table = {agg: {atk: acc(atk, agg) for atk in args.attacks} for agg in args.aggregators}
        summary[ds] = {"honest_only": honest, "table": table}
        print(f"\n{ds}: final test accuracy (%), n={args.workers}, f={args.byzantine}, "
              f"{args.steps} steps, mean of {args.seeds} seed(s); honest-only mean of "
              f"{args.workers - args.byzantine} workers: {100 * honest:.1f}")
        print(f"{'aggregator':<11}" + "".join(f"{atk:>10}" for atk in args.attacks))
        for agg in args.aggregators:
            print(f"{agg:<11}" + "".join(f"{100 * table[agg][atk]:>10.1f}" for atk in args.attacks))
        deterministic = [a for a in args.aggregators if a not in ("mixtailor", "mean")]
        if "mixtailor" not in table or not deterministic:
            continue
        print("MixTailor gap to honest-only (points) / worst robust deterministic rule per attack:")
        for atk in args.attacks:
            worst = min(deterministic, key=lambda a: table[a][atk])
            gap = 100 * (honest - table["mixtailor"][atk])
            print(f"  {atk:<9} gap {gap:+5.1f}   worst {worst} {100 * table[worst][atk]:.1f}"
                  f"   mixtailor >= worst: {table['mixtailor'][atk] >= table[worst][atk]}")
    return summary


def plot(summary: dict, args: argparse.Namespace, ctx: runtime.DistContext) -> None:
    plt = runtime.pyplot()

    fig, axes = plt.subplots(1, len(summary), figsize=(7 * len(summary), 4), squeeze=False)
    rows = list(args.aggregators)
    width = 0.8 / len(rows)
    for ax, (ds, s) in zip(axes[0], summary.items()):
        for i, agg in enumerate(rows):
            xs = [j + (i - len(rows) / 2 + 0.5) * width for j in range(len(args.attacks))]
            ax.bar(xs, [100 * s["table"][agg][a] for a in args.attacks], width, label=agg)
        ax.axhline(100 * s["honest_only"], color="k", ls="--", lw=1, label="honest only")
        ax.set_xticks(range(len(args.attacks)), list(args.attacks))
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{ds}: n={args.workers}, f={args.byzantine}, {args.steps} steps")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    runtime.save_figure(fig, args.out_dir, "accuracy.png", ctx)


if __name__ == "__main__":
    main()
