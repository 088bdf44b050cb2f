"""Worst case over attacks, per robust rule and for MixTailor (ByzFL-style table).

Question: at n = 10 workers and f = 1, 2, 3 Byzantine ones, what test accuracy does each fixed
rule keep under its *worst* attack, and is MixTailor's worst case better than every fixed rule's
(the paper's claim)? Every rule meets every attack, the pool-aware adaptive attacker and the
line-search "optimal" IPM / ALIE included, over several seeds, with fp32 rows and with 4-bit
payloads (NUQSGD, every row quantized after the attack, as the DDP hook's codec would).

The n workers are simulated in one process (``commcomp.robust.simulation.simulate``): digits,
MLP 64-32-10, per-worker batch 16, server SGD with momentum. Attackers only see
``aggregator.attacker_view()`` (MixTailor: the pool, never its seed or a draw); each MixTailor
gets an explicit seed derived from the cell, so the table is reproducible.

    python benchmarks/bench_robust.py                      # the full table (~35 min CPU)
    python benchmarks/bench_robust.py --quick              # a smoke run (f = 1, 1 seed, 20 steps)

Writes ``benchmarks/results/bench_robust.json`` (every run) and ``bench_robust.md`` (the tables).
Finished runs are appended to ``bench_robust.runs.jsonl`` as they complete; a rerun with the
same arguments resumes from it (``--fresh`` starts over).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_json  # noqa: E402

from commcomp import NUQSGD  # noqa: E402
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
    LabelFlip,
    Mean,
    Mimic,
    MixTailor,
    OptimalALIE,
    OptimalIPM,
    SignFlip,
    TrimmedMean,
    build_pool,
)
from commcomp.robust.simulation import SimulationConfig, quantized_transport, simulate  # noqa: E402

N = 10
#: the fixed rules of the table (mean: the non-robust reference, left out of the claim)
FIXED = {
    "mean": lambda n, f: Mean(),
    "median": lambda n, f: CoordinateMedian(),
    "trimmed_mean": lambda n, f: TrimmedMean(),
    "krum": lambda n, f: Krum(),
    "multi_krum": lambda n, f: Krum(m=n - f),
    "geomed": lambda n, f: GeometricMedian(),
    "cclip": lambda n, f: CenteredClipping(tau=1.0, iters=3),
    "mda": lambda n, f: MDA(),
    "caf": lambda n, f: CAF(),
}
ROBUST = [name for name in FIXED if name != "mean"]


def make_rule(name: str, n: int, f: int, seed: int):
    if name == "mixtailor":  # over the table's robust rules
        return MixTailor([FIXED[r](n, f) for r in ROBUST], seed=seed)
    if name == "mixtailor_paper":  # the paper's pool: Krum (and Bulyan where n >= 4f + 3) x 16 norms
        families = ["krum", "median", "trimmed_mean", "geomed"] + (["bulyan"] if n >= 4 * f + 3 else [])
        return MixTailor(build_pool(families, norms=range(1, 17)), seed=seed)
    return FIXED[name](n, f)


ATTACKS = {
    "none": lambda: None,
    "sign_flip": SignFlip,
    "label_flip": LabelFlip,
    "ipm_0.1": lambda: IPM(0.1),
    "ipm_10": lambda: IPM(10.0),
    "alie": ALIE,  # Baruch et al.'s z for (n, f)
    "mimic": Mimic,
    "opt_ipm": lambda: OptimalIPM(evals=12, probes=3),
    "opt_alie": lambda: OptimalALIE(evals=12, probes=3),
    "adaptive": lambda: AdaptiveIPM(probes=3),
}
RULES = list(FIXED) + ["mixtailor", "mixtailor_paper"]


def cell_seed(*key) -> int:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:4], "little")


def run_cell(cell: tuple) -> dict:
    payload, f, rule_name, attack_name, seed, steps = cell
    torch.set_num_threads(1)
    from common.data import load_digits_tensors

    train, test = load_digits_tensors(seed=seed, flat=True)
    attack = ATTACKS[attack_name]()
    config = SimulationConfig(num_workers=N, num_byzantine=0 if attack is None else f, tolerance=f,
                              batch_size=16, steps=steps, lr=0.1, momentum=0.9, eval_every=steps, seed=seed)
    rule = make_rule(rule_name, N, f, cell_seed("mixtailor", payload, f, attack_name, seed))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    transport = quantized_transport(NUQSGD(4, 512), seed=seed) if payload == "4bit" else None
    start = time.process_time()
    result = simulate(model, (train.x, train.y), (test.x, test.y), rule, attack, config, transport=transport)
    return {
        "payload": payload, "f": f, "rule": rule_name, "attack": attack_name, "seed": seed, "steps": steps,
        "accuracy": result.final_accuracy, "diverged_at": result.diverged_at,
        "skipped_steps": result.skipped_steps, "cpu_seconds": time.process_time() - start,
    }


def summarize(runs: list[dict], payloads: list[str], fs: list[int]) -> tuple[dict, str]:
    attacks = [a for a in ATTACKS if a != "none"]
    summary: dict = {}
    lines: list[str] = []
    for payload in payloads:
        for f in fs:
            table = {}
            for rule in RULES:
                accs = {a: [r["accuracy"] for r in runs if (r["payload"], r["f"], r["rule"], r["attack"]) == (payload, f, rule, a)]
                        for a in ATTACKS}
                if not accs["none"]:
                    continue
                stats = {a: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for a, v in accs.items() if v}
                worst = min(attacks, key=lambda a: stats[a][0])
                table[rule] = {"cells": stats, "worst_attack": worst, "worst": stats[worst]}
            robust_fixed = [r for r in ROBUST if r in table]
            best_fixed = max(robust_fixed, key=lambda r: table[r]["worst"][0])
            claims = {mt: {"worst": table[mt]["worst"][0], "best_fixed": best_fixed,
                           "best_fixed_worst": table[best_fixed]["worst"][0],
                           "beats_every_fixed": all(table[mt]["worst"][0] > table[r]["worst"][0] for r in robust_fixed),
                           "fixed_beaten": [r for r in robust_fixed if table[mt]["worst"][0] > table[r]["worst"][0]]}
                      for mt in ("mixtailor", "mixtailor_paper") if mt in table}
            summary[f"{payload}/f={f}"] = {"table": table, "claim": claims}
            lines += _markdown(payload, f, table, claims)
    return summary, "\n".join(lines)


def _markdown(payload: str, f: int, table: dict, claims: dict) -> list[str]:
    cols = list(ATTACKS)
    out = [f"### {payload} rows, n={N}, f={f}: test accuracy (%), mean over seeds", "",
           "| rule | " + " | ".join(cols) + " | worst (mean ± sd) | worst attack |",
           "|---|" + "---:|" * len(cols) + "---:|---|"]
    for rule, row in table.items():
        cells = " | ".join(f"{100 * row['cells'][a][0]:.1f}" for a in cols)
        m, s = row["worst"]
        out.append(f"| {rule} | {cells} | **{100 * m:.1f} ± {100 * s:.1f}** | {row['worst_attack']} |")
    out.append("")
    for mt, c in claims.items():
        out.append(f"* {mt}: worst case {100 * c['worst']:.1f}; best fixed rule's worst case "
                   f"{100 * c['best_fixed_worst']:.1f} ({c['best_fixed']}); better than every fixed rule's worst case: "
                   f"**{'yes' if c['beats_every_fixed'] else 'no'}** (better than {len(c['fixed_beaten'])} of {len(ROBUST)})")
    out.append("")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fs", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--payloads", nargs="+", default=["fp32", "4bit"], choices=["fp32", "4bit"])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--quick", action="store_true", help="f = 1, 1 seed, 20 steps, fp32")
    parser.add_argument("--out", default="bench_robust")
    parser.add_argument("--fresh", action="store_true", help="ignore runs finished earlier")
    args = parser.parse_args()
    if args.quick:
        args.fs, args.seeds, args.steps, args.payloads = [1], 1, 20, ["fp32"]
    cells = [(p, f, rule, atk, seed, args.steps) for p in args.payloads for f in args.fs for seed in range(args.seeds)
             for rule in RULES for atk in ATTACKS]
    # the expensive cells first, so the pool's last tasks are short
    cells.sort(key=lambda c: (c[3] not in ("opt_ipm", "opt_alie", "adaptive"), not c[2].startswith("mixtailor")))
    journal = RESULTS / f"{args.out}.runs.jsonl"
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.fresh and journal.exists():
        journal.unlink()
    key = lambda r: (r["payload"], r["f"], r["rule"], r["attack"], r["seed"], r["steps"])  # noqa: E731
    done = {key(r): r for r in map(json.loads, journal.read_text().splitlines())} if journal.exists() else {}
    todo = [c for c in cells if c not in done]
    start = time.time()
    load_before = os.getloadavg()
    runs = [done[c] for c in cells if c in done]
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool, journal.open("a") as log:
        for i, run in enumerate(pool.imap_unordered(run_cell, todo), 1):
            runs.append(run)
            log.write(json.dumps(run) + "\n")
            log.flush()
            if i % 50 == 0 or i == len(todo):
                print(f"{i}/{len(todo)} cells, {time.time() - start:.0f} s", flush=True)
    summary, markdown = summarize(runs, args.payloads, args.fs)
    info = {
        "command": "python benchmarks/bench_robust.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds_this_session": time.time() - start,
        "cpu_seconds_cells": sum(r["cpu_seconds"] for r in runs),
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "machine": machine(torch.device("cpu")),
        "setup": {"n": N, "steps": args.steps, "seeds": args.seeds, "batch_size": 16, "lr": 0.1, "momentum": 0.9,
                  "model": "MLP 64-32-10", "dataset": "digits", "4bit": "NUQSGD(4, bucket 512) on every row"},
    }
    write_json(f"{args.out}.json", {"info": info, "summary": summary, "runs": runs})
    header = (f"`{info['command']}`, {info['date']}: {len(cells)} runs, {info['cpu_seconds_cells'] / 60:.1f} CPU-minutes "
              f"(load average {load_before[0]:.1f} at the start).\n\n")
    (RESULTS / f"{args.out}.md").write_text(header + markdown)
    print(header + markdown)


if __name__ == "__main__":
    main()
