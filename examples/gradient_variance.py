"""Gradient variance of SGD vs Gradient Clustering (Faghri et al., arXiv 2007.04532).

For each dataset (scikit-learn's handwritten digits with a small CNN, mnist1d with an MLP) the
script trains twice, once drawing mini-batches uniformly (SGD) and once with the stratified
Gradient Clustering sampler (GC, one example per cluster, unbiasing loss weights). Along each
run it re-clusters the training set every ``--recluster-every`` iterations and, every
``--log-every`` iterations, estimates from ``--var-samples`` mini-batch gradients at the current
parameters the variance and normalized variance of three estimators: SGD at batch ``B``, GC at
batch ``B`` (``B = --clusters``) and SGD at ``2B``. It prints a table, writes
``results/gradient_variance/gradient_variance.json`` and ``gradient_variance.png``.

Run::

    python examples/gradient_variance.py
    torchrun --nproc_per_node=2 examples/gradient_variance.py   # clusters dealt to 2 ranks

Under torchrun every rank clusters its part of the data (sums all-reduced), draws from its
disjoint stratified share, and DDP averages the gradients; batch sizes below are global.
"""
from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from commcomp.sampling import (  # noqa: E402
    DistributedGradientClusterSampler,
    GradientClustering,
    GradientClusterSampler,
    estimate_gradient_variance,
)

from common import runtime  # noqa: E402
from common.data import load_dataset  # noqa: E402

ESTIMATORS = ("sgd_B", "gc_B", "sgd_2B")
LOSS = nn.CrossEntropyLoss(reduction="none")


def make_model(dataset: str, num_classes: int) -> nn.Module:
    if dataset == "digits":  # (1, 8, 8) images: Conv2d layers exercise the per-position factors
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(16 * 4 * 4, num_classes),
        )
    return nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="digits,mnist1d", help="comma-separated: digits, mnist1d")
    p.add_argument("--clusters", type=int, default=32, help="K clusters = GC mini-batch size B")
    p.add_argument("--iters", type=int, default=400, help="training iterations per run")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--recluster-every", type=int, default=50, help="R: iterations between clustering passes")
    p.add_argument("--log-every", type=int, default=40, help="iterations between variance estimates")
    p.add_argument("--var-samples", type=int, default=24, help="S: mini-batch gradients per estimate")
    p.add_argument("--rank", type=int, default=1, help="rank of each Linear/Conv2d centre block")
    runtime.add_common_arguments(p, default_out_dir="results/gradient_variance")
    args = p.parse_args()
    for name in ("clusters", "iters", "recluster_every", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.var_samples < 2:
        raise ValueError("--var-samples must be >= 2")
    return args


def run(dataset: str, train_with: str, args: argparse.Namespace, ctx: runtime.DistContext) -> dict:
    W, rank = ctx.world_size, ctx.rank
    B = args.clusters
    if B % W:
        raise ValueError(f"--clusters ({B}) must be divisible by the number of ranks ({W})")
    train, test = load_dataset(dataset, seed=args.seed)
    x, y = train.x.to(ctx.device), train.y.to(ctx.device)
    N = len(train)
    torch.manual_seed(args.seed)  # same initial model for both runs and on every rank
    module = make_model(dataset, train.num_classes).to(ctx.device)
    model = runtime.wrap_ddp(module, ctx, args.comm_hook)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    gc = GradientClustering(args.clusters, rank=args.rank, seed=args.seed)
    sampler: GradientClusterSampler | None = None
    gen = torch.Generator().manual_seed(args.seed * 7919 + rank + (0 if train_with == "sgd" else 1000))
    own_rows = torch.arange(rank, N, W)  # this rank's part of every clustering pass

    def sgd_draw(batch: int):
        def draw():
            idx = torch.randperm(N, generator=gen)[: batch // W]
            return x[idx], y[idx], None
        return draw

    def gc_draw():
        idx = sampler.sample_rounds(1, gen)
        return x[idx], y[idx], sampler.weights(idx).to(ctx.device)

    log: dict[str, list] = {"iter": [], "loss": [], **{f"var_{e}": [] for e in ESTIMATORS}, **{f"nvar_{e}": [] for e in ESTIMATORS}}
    stream = None
    epoch = 0
    cluster_time = 0.0
    for it in runtime.progress(range(args.iters + 1), ctx, desc=f"{dataset}/{train_with}", leave=False):
        if it % args.recluster_every == 0:
            t0 = time.time()
            gc.fit_pass(module, LOSS, x, y, batch_size=256, indices=own_rows)
            cluster_time += time.time() - t0
            if sampler is None:
                cls = DistributedGradientClusterSampler if ctx.distributed else GradientClusterSampler
                sampler = cls(gc.assignments, seed=args.seed)
            else:
                sampler.update(gc.assignments)
            stream = iter(sampler)
        if it % args.log_every == 0 or it == args.iters:
            log["iter"].append(it)
            with torch.no_grad():
                log["loss"].append(float(LOSS(module(x), y).mean()))
            for name, draw in (("sgd_B", sgd_draw(B)), ("gc_B", gc_draw), ("sgd_2B", sgd_draw(2 * B))):
                v = estimate_gradient_variance(module, LOSS, draw, args.var_samples)
                log[f"var_{name}"].append(v.variance)
                log[f"nvar_{name}"].append(v.normalized_variance)
        if it == args.iters:
            break
        if train_with == "sgd":
            bx, by, w = sgd_draw(B)()
        else:
            idx = torch.tensor([next(stream, -1) for _ in range(sampler.round_size)])
            if bool((idx < 0).any()):  # epoch over: reshuffle and draw a whole fresh round
                epoch += 1
                sampler.set_epoch(epoch)
                stream = iter(sampler)
                idx = torch.tensor([next(stream) for _ in range(sampler.round_size)])
            bx, by, w = x[idx], y[idx], sampler.weights(idx).to(ctx.device)
        losses = LOSS(model(bx), by)
        loss = (losses * w).mean() if w is not None else losses.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((module(test.x.to(ctx.device)).argmax(1) == test.y.to(ctx.device)).float().mean())
    log["test_accuracy"] = acc
    log["cluster_seconds"] = cluster_time
    log["cluster_sizes"] = [int(s) for s in gc.sizes.tolist()]
    return log


def mean_ratio(a: list[float], b: list[float]) -> float:
    """Mean over logged points (after the start) of a / b."""
    pairs = [(u, v) for u, v in zip(a[1:], b[1:]) if v > 0] or list(zip(a, b))
    return sum(u / v for u, v in pairs) / len(pairs)


def main() -> None:
    args = parse_args()
    ctx = runtime.init_distributed(args.device)
    if ctx.device.type == "cpu":
        # These models are tiny: intra-op threads only add spin-wait overhead on shared cores.
        torch.set_num_threads(1)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    results: dict[str, dict] = {}
    for ds in datasets:
        for train_with in ("sgd", "gc"):
            results[f"{ds}/{train_with}"] = run(ds, train_with, args, ctx)

    if ctx.is_main:
        header = f"{'run (trained with)':<18}{'Var SGD B':>11}{'Var GC B':>11}{'Var SGD 2B':>11}{'GC/SGD':>8}{'2B/SGD':>8}" \
                 f"{'NV SGD B':>10}{'NV GC B':>9}{'NV SGD 2B':>10}{'test acc':>9}"
        print(f"\nGradient variance, mean over {len(next(iter(results.values()))['iter'])} checkpoints "
              f"(B={args.clusters}, S={args.var_samples}, world={ctx.world_size}); ratios = mean of per-checkpoint ratios after iteration 0")
        print(header)
        print("-" * len(header))
        for key, r in results.items():
            mean = lambda k: sum(r[k]) / len(r[k])  # noqa: E731
            print(f"{key:<18}{mean('var_sgd_B'):>11.3e}{mean('var_gc_B'):>11.3e}{mean('var_sgd_2B'):>11.3e}"
                  f"{mean_ratio(r['var_gc_B'], r['var_sgd_B']):>8.2f}{mean_ratio(r['var_sgd_2B'], r['var_sgd_B']):>8.2f}"
                  f"{mean('nvar_sgd_B'):>10.3f}{mean('nvar_gc_B'):>9.3f}{mean('nvar_sgd_2B'):>10.3f}{r['test_accuracy']:>9.3f}")
        for key, r in results.items():
            r["ratio_var_gc_over_sgd"] = mean_ratio(r["var_gc_B"], r["var_sgd_B"])
            r["ratio_var_sgd2B_over_sgd"] = mean_ratio(r["var_sgd_2B"], r["var_sgd_B"])
            r["ratio_nvar_gc_over_sgd"] = mean_ratio(r["nvar_gc_B"], r["nvar_sgd_B"])

    payload = {"args": {k: v for k, v in vars(args).items()}, "world_size": ctx.world_size, "runs": results}
    path = runtime.write_json(args.out_dir, "gradient_variance.json", payload, ctx)

    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    colors = {"sgd_B": "tab:blue", "gc_B": "tab:red", "sgd_2B": "tab:green"}
    labels = {"sgd_B": f"SGD B={args.clusters}", "gc_B": f"GC B={args.clusters}", "sgd_2B": f"SGD B={2 * args.clusters}"}
    for row, ds in enumerate(datasets):
        for col, stat in enumerate(("var", "nvar")):
            ax = axes[row][col]
            for train_with, style in (("sgd", "-"), ("gc", "--")):
                r = results[f"{ds}/{train_with}"]
                for e in ESTIMATORS:
                    ax.plot(r["iter"], r[f"{stat}_{e}"], style, color=colors[e],
                            label=f"{labels[e]} (trained with {train_with.upper()})")
            ax.set_title(f"{ds}: {'gradient variance' if stat == 'var' else 'normalized gradient variance'}")
            ax.set_xlabel("iteration")
            if stat == "var":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    png = runtime.save_figure(fig, args.out_dir, "gradient_variance.png", ctx)
    if ctx.is_main:
        print(f"\nwrote {path} and {png}")
    runtime.shutdown()


if __name__ == "__main__":
    main()
