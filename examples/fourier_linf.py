"""Optimization bias and Fourier-L-inf robustness (Faghri et al., arXiv 2102.08868), three parts:

(a) Linear models on separable Gaussian data, d/n from 1 to 32: the normalised margins reached by
    gradient descent (GD), coordinate descent (CD) and sign gradient descent (signGD), as a
    fraction of the exact optimum for L2, L-inf and L1 perturbations (SVM / linear programs).
(b) Two-layer *linear* networks trained with full-batch GD on Gaussian 8x8 images: a circular-
    convolution network vs a fully connected one, compared by Fourier-L-inf margin and by exact and
    PGD Fourier-L-inf robust accuracy.
(c) A standard CNN trained on digits (DDP, ``--comm-hook``) attacked by PGD-20 in L-inf, L2 and
    Fourier-L-inf at several radii. Digits are 1x8x8 in [0, 1]; under the orthonormal DFT a
    Fourier-L-inf radius eps allows an L2 norm up to 8 eps, so Fourier eps 0.05 is comparable in
    energy to L2 eps 0.4; the table's L2 column uses radius 8 eps.

Parts (a) and (b) are split across ranks (results gathered to rank 0); (c) trains with DDP.

    torchrun --nproc_per_node=2 examples/fourier_linf.py
    python examples/fourier_linf.py --parts c --epochs 30 --comm-hook none

Writes ``results.json`` and ``fourier_linf.png`` under ``--out-dir`` (default results/fourier_linf/).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
import torch.distributed as dist

from common import runtime
from common.data import load_digits_tensors
from common.models import MLP, DigitsCNN, LinearCircularConvNet
from common.training import evaluate, fit
from recipes.attacks import get_ball, make_pgd, pgd_attack
from recipes.fourier import (
    end_to_end_linear,
    linear_robust_accuracy,
    max_margin_linear,
    normalized_margin,
    separable_gaussian,
    steepest_descent_linear,
    train_binary_full_batch,
)

OPTIMIZERS = {"GD": ("l2", 0.1), "CD": ("l1", 0.1), "signGD": ("linf", 0.002)}  # geometry, lr
PERTS = ("l2", "linf", "l1")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_arguments(p, default_out_dir="results/fourier_linf")
    p.add_argument("--parts", default="abc", help="which experiments to run (subset of 'abc')")
    p.add_argument("--n", type=int, default=20, help="(a) training points")
    p.add_argument("--ratios", default="1,2,4,8,16,32", help="(a) values of d/n")
    p.add_argument("--linear-steps", type=int, default=20000, help="(a) steepest-descent steps")
    p.add_argument("--net-n", default="4,8,16", help="(b) training set sizes (d = 64)")
    p.add_argument("--net-seeds", type=int, default=3, help="(b) data seeds per size")
    p.add_argument("--net-steps", type=int, default=3000, help="(b) full-batch GD steps")
    p.add_argument("--net-eps", type=float, default=0.1, help="(b) Fourier-L-inf radius for robust accuracy")
    p.add_argument("--epochs", type=int, default=15, help="(c) CNN epochs")
    p.add_argument("--eps-grid", default="0.02,0.05,0.1,0.2", help="(c) radii for every norm")
    return p.parse_args()


def run_sharded(tasks: list[Any], fn: Callable[[Any], dict], ctx: runtime.DistContext, desc: str) -> list[dict]:
    """Run ``fn`` on tasks[rank::world] and gather every result (in task order) on all ranks."""
    mine = [(i, fn(t)) for i, t in enumerate(runtime.progress(tasks[ctx.rank :: ctx.world_size], ctx, desc=desc))]
    mine = [(ctx.rank + i * ctx.world_size, r) for i, r in mine]
    if ctx.distributed:
        gathered: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(gathered, mine)
        mine = [item for part in gathered for item in part]
    return [r for _, r in sorted(mine, key=lambda t: t[0])]


# ----------------------------------------------------------------------------- (a)
def linear_task(task: tuple[int, int, int]) -> dict:
    n, ratio, steps = task
    data = separable_gaussian(n, n * ratio, seed=ratio)
    best = {p: max_margin_linear(data.x, data.y, p)[1] for p in PERTS}
    row: dict[str, Any] = {"d/n": ratio, "optimal": best}
    for name, (geometry, lr) in OPTIMIZERS.items():
        w = steepest_descent_linear(data.x, data.y, geometry, steps=steps, lr=lr)
        row[name] = {p: float(normalized_margin(w, data.x, data.y, p)) for p in PERTS}
        row[name]["test_acc"] = linear_robust_accuracy(w, data.x_test, data.y_test, 0.0, "l2")
    return row


def print_linear(rows: list[dict]) -> None:
    print("\n(a) linear models, n=%d: margin reached / optimal margin, per perturbation norm" % rows[0]["n"])
    print(f"{'d/n':>4} {'method':<7}" + "".join(f"{'vs ' + p:>9}" for p in PERTS) + f"{'Linf margin':>13}{'test acc':>9}")
    for r in rows:
        for name in OPTIMIZERS:
            m = r[name]
            print(f"{r['d/n']:>4} {name:<7}" + "".join(f"{m[p] / r['optimal'][p]:>9.3f}" for p in PERTS)
                  + f"{m['linf']:>13.4f}{100 * m['test_acc']:>8.1f}%")
        print(f"{'':>4} {'optimum':<7}" + "".join(f"{'':>9}" for _ in PERTS) + f"{r['optimal']['linf']:>13.4f}")


# ----------------------------------------------------------------------------- (b)
def network_task(task: tuple[int, int, int, float]) -> dict:
    n, seed, steps, eps = task
    shape = (8, 8)
    data = separable_gaussian(n, shape, seed=seed)
    row: dict[str, Any] = {"n": n, "seed": seed}
    _, row["svm_l2"] = max_margin_linear(data.x.flatten(1), data.y, "l2")
    w_svm, _ = max_margin_linear(data.x.flatten(1), data.y, "l2")
    row["svm_fourier"] = float(normalized_margin(w_svm.reshape(shape), data.x, data.y, "fourier-linf"))
    for name in ("conv", "fc"):
        torch.manual_seed(seed)
        if name == "conv":
            model: torch.nn.Module = LinearCircularConvNet(shape, init_scale=0.01).double()
        else:
            model = MLP(64, (64,), 1, activation=None, bias=False).double()
            for p in model.parameters():
                torch.nn.init.normal_(p, std=0.01)
        losses = train_binary_full_batch(model, data.x, data.y, steps=steps, lr=0.5)
        beta, _ = end_to_end_linear(model, shape)
        x_adv = pgd_attack(model, data.x_test.unsqueeze(1), data.y_test, get_ball("fourier-linf"), eps, steps=10,
                           bounds=None)
        row[name] = {
            "train_loss": losses[-1],
            "fourier_margin": float(normalized_margin(beta, data.x, data.y, "fourier-linf")),
            "l2_margin": float(normalized_margin(beta, data.x, data.y, "l2")),
            "test_acc": linear_robust_accuracy(beta, data.x_test, data.y_test, 0.0, "fourier-linf"),
            "fourier_robust_exact": linear_robust_accuracy(beta, data.x_test, data.y_test, eps, "fourier-linf"),
            "fourier_robust_pgd": float(((model(x_adv.squeeze(1)) * data.y_test) > 0).double().mean()),
        }
    return row


def print_networks(rows: list[dict], eps: float) -> None:
    print(f"\n(b) 2-layer linear nets on Gaussian 8x8 images (d=64), full-batch GD; Fourier-Linf eps={eps}")
    print(f"{'n':>3} {'seed':>4} {'model':<6}{'F-margin':>10}{'L2 m/svm':>10}{'test acc':>9}{'rob exact':>10}{'rob PGD':>9}")
    for r in rows:
        for name in ("conv", "fc"):
            m = r[name]
            print(f"{r['n']:>3} {r['seed']:>4} {name:<6}{m['fourier_margin']:>10.4f}{m['l2_margin'] / r['svm_l2']:>10.3f}"
                  f"{100 * m['test_acc']:>8.1f}%{100 * m['fourier_robust_exact']:>9.1f}%{100 * m['fourier_robust_pgd']:>8.1f}%")
        print(f"{r['n']:>3} {r['seed']:>4} {'svm':<6}{r['svm_fourier']:>10.4f}{1.0:>10.3f}")


# ----------------------------------------------------------------------------- (c)
def cnn_attacks(args: argparse.Namespace, ctx: runtime.DistContext) -> dict:
    train, test = load_digits_tensors(seed=args.seed)
    torch.manual_seed(args.seed)
    model = runtime.wrap_ddp(DigitsCNN(), ctx, args.comm_hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    fit(model, train, ctx, optimizer=opt, epochs=args.epochs, batch_size=64, seed=args.seed, desc="cnn")
    eps_grid = [float(e) for e in args.eps_grid.split(",") if e]
    result: dict[str, Any] = {"clean": evaluate(model, test, ctx), "eps": eps_grid, "robust": {}, "size": {}}
    # L2 is run at 8 eps: the Fourier-L-inf ball of radius eps on 8x8 images lies inside the L2 ball
    # of radius 8 eps (Parseval over 64 coefficients), so that column compares equal energy budgets.
    for name, scale in (("linf", 1.0), ("l2", 8.0), ("fourier-linf", 1.0)):
        bounds = None if name == "fourier-linf" else (0.0, 1.0)  # Fourier ball is not box-aligned
        result["robust"][name] = []
        for eps in eps_grid:
            torch.manual_seed(args.seed + 1)
            result["robust"][name].append(evaluate(model, test, ctx, perturb=make_pgd(name, scale * eps, 20, bounds=bounds)))
    # How big is a Fourier perturbation in pixel norms? (rank 0's shard; a description, not a metric)
    module = model.module if hasattr(model, "module") else model
    x, y = test.x[:200], test.y[:200]
    for eps in eps_grid:
        d = pgd_attack(module, x, y, "fourier-linf", eps, 20, bounds=None) - x
        result["size"][str(eps)] = {"l2": float(d.flatten(1).norm(dim=1).mean()), "linf": float(d.abs().amax(dim=(1, 2, 3)).mean())}
    return result


def print_cnn(res: dict) -> None:
    print(f"\n(c) DigitsCNN, standard training: clean {100 * res['clean']:.1f}%; PGD-20 robust accuracy")
    print(f"{'eps':>6}" + "".join(f"{n:>14}" for n in ("linf", "l2 at 8 eps", "fourier-linf")) + f"{'F-pert L2':>11}{'F-pert Linf':>12}")
    for i, eps in enumerate(res["eps"]):
        size = res["size"][str(eps)]
        print(f"{eps:>6}" + "".join(f"{100 * res['robust'][n][i]:>13.1f}%" for n in ("linf", "l2", "fourier-linf"))
              + f"{size['l2']:>11.3f}{size['linf']:>12.3f}")


def plot(results: dict, args: argparse.Namespace, ctx: runtime.DistContext) -> None:
    plt = runtime.pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if "a" in results:
        ax = axes[0]
        ratios = [r["d/n"] for r in results["a"]]
        for name, style in zip(OPTIMIZERS, ("-o", "-s", "-^")):
            ax.plot(ratios, [r[name]["linf"] / r["optimal"]["linf"] for r in results["a"]], style, label=f"{name}: vs Linf")
            ax.plot(ratios, [r[name]["l2"] / r["optimal"]["l2"] for r in results["a"]], style, alpha=0.4, label=f"{name}: vs L2")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d / n")
        ax.set_ylabel("margin / optimal margin")
        ax.set_title("(a) linear models")
        ax.legend(fontsize=7)
    if "b" in results:
        ax = axes[1]
        for name, mark in (("conv", "o"), ("fc", "s")):
            ax.scatter([r["n"] for r in results["b"]], [r[name]["fourier_margin"] for r in results["b"]], marker=mark, label=name)
        ax.scatter([r["n"] for r in results["b"]], [r["svm_fourier"] for r in results["b"]], marker="x", label="L2 SVM")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("n (d = 64)")
        ax.set_ylabel("Fourier-Linf margin")
        ax.set_title("(b) linear conv vs fully connected")
        ax.legend()
    if "c" in results:
        ax = axes[2]
        for name in ("linf", "l2", "fourier-linf"):
            label = "l2 (radius 8 eps)" if name == "l2" else name
            ax.plot(results["c"]["eps"], [100 * a for a in results["c"]["robust"][name]], "-o", label=label)
        ax.set_xlabel("eps")
        ax.set_ylabel("PGD-20 accuracy (%)")
        ax.set_title("(c) DigitsCNN under attack")
        ax.legend()
    runtime.save_figure(fig, args.out_dir, "fourier_linf.png", ctx)


def main() -> None:
    args = parse_args()
    if not set(args.parts) <= set("abc") or not args.parts:
        raise ValueError(f"--parts must be a non-empty subset of 'abc', got {args.parts!r}")
    ctx = runtime.init_distributed(args.device)
    # These models are tiny: one thread per rank beats several on shared cores (thread hand-offs
    # cost more than the math, badly so when the machine is oversubscribed).
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    if "a" in args.parts:
        ratios = [int(r) for r in args.ratios.split(",") if r]
        rows = run_sharded([(args.n, r, args.linear_steps) for r in ratios], linear_task, ctx, "linear")
        for r in rows:
            r["n"] = args.n
        results["a"] = rows
    if "b" in args.parts:
        tasks = [(int(n), s, args.net_steps, args.net_eps) for n in args.net_n.split(",") if n for s in range(args.net_seeds)]
        results["b"] = run_sharded(tasks, network_task, ctx, "linear nets")
    if "c" in args.parts:
        results["c"] = cnn_attacks(args, ctx)
    if ctx.is_main:
        if "a" in results:
            print_linear(results["a"])
        if "b" in results:
            print_networks(results["b"], args.net_eps)
        if "c" in results:
            print_cnn(results["c"])
        plot(results, args, ctx)
    runtime.write_json(args.out_dir, "results.json", {"args": vars(args), **results}, ctx)
    runtime.shutdown()


if __name__ == "__main__":
    main()
