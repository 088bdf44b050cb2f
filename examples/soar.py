"""SOAR vs PGD adversarial training vs standard training on 8x8 digits, with PGD-20/PGD-100.

Paper: Ma, Faghri, Papernot, Farahmand, "SOAR: Second-Order Adversarial Regularization"
(arXiv 2004.01832). Implementation: :mod:`recipes.soar`.

Digits are 1x8x8 images in [0, 1] (pixel values are multiples of 1/16), so the default
L-inf radius is eps = 0.1 (1.6 grey levels); ``--norm l2`` defaults to eps = 0.5.

    torchrun --nproc_per_node=2 examples/soar.py                 # a few minutes on 2 CPU cores
    torchrun --nproc_per_node=2 examples/soar.py --comm-hook qsgd:4 --epochs 40
    python examples/soar.py --methods soar --lam 0.5             # single process

Writes ``results.json`` and ``soar.png`` under ``--out-dir`` (default results/soar/).
"""
from __future__ import annotations

import argparse
import time

import torch

from common import runtime
from common.data import load_digits_tensors
from common.models import DigitsCNN
from common.training import LossFn, cross_entropy_loss, evaluate, fit, unwrap
from recipes.attacks import make_pgd, pgd_attack
from recipes.soar import SOARLoss

METHODS = ("standard", "pgd-at", "soar")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_arguments(p, default_out_dir="results/soar")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf", help="threat model")
    p.add_argument("--eps", type=float, default=None, help="radius (default 0.1 for linf, 0.5 for l2)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--pgd-train-steps", type=int, default=7, help="PGD steps for PGD-AT")
    p.add_argument("--lam", type=float, default=1.0, help="SOAR regularizer weight")
    p.add_argument("--grad-clip", type=float, default=10.0, help="clip norm of SOAR's own gradient")
    p.add_argument("--fd-step", type=float, default=0.01, help="finite-difference step h of the HVP")
    p.add_argument("--eval-steps", default="20,100", help="PGD steps to evaluate with")
    return p.parse_args()


def pgd_training_loss(norm: str, eps: float, steps: int) -> LossFn:
    """Madry et al.: cross-entropy at a PGD-``steps`` point (step 2.5 eps / steps, random start)."""

    def loss_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = pgd_attack(unwrap(model), x, y, norm, eps, steps)
        return cross_entropy_loss(model, x_adv, y)

    return loss_fn


def main() -> None:
    args = parse_args()
    eps = args.eps if args.eps is not None else (0.1 if args.norm == "linf" else 0.5)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"--methods entries must be in {METHODS}, got {m!r}")
    eval_steps = [int(s) for s in args.eval_steps.split(",") if s]
    ctx = runtime.init_distributed(args.device)
    # These models are tiny: one thread per rank beats several on shared cores (thread hand-offs
    # cost more than the math, badly so when the machine is oversubscribed).
    torch.set_num_threads(1)
    train, test = load_digits_tensors(seed=args.seed)
    rows, histories = [], {}
    for method in methods:
        torch.manual_seed(args.seed)  # same initial weights on every rank and for every method
        model = runtime.wrap_ddp(DigitsCNN(), ctx, args.comm_hook)
        if method == "standard":
            loss_fn: LossFn = cross_entropy_loss
        elif method == "pgd-at":
            loss_fn = pgd_training_loss(args.norm, eps, args.pgd_train_steps)
        else:
            gen = torch.Generator().manual_seed(args.seed * 1000 + ctx.rank)  # independent noise per rank
            loss_fn = SOARLoss(eps, args.norm, lam=args.lam, h=args.fd_step, grad_clip=args.grad_clip, generator=gen)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))
        start = time.time()
        hist = fit(model, train, ctx, optimizer=opt, epochs=args.epochs, batch_size=args.batch_size,
                   loss_fn=loss_fn, scheduler=sched, seed=args.seed, desc=method)
        row = {"method": method, "train_s": time.time() - start, "clean": evaluate(model, test, ctx)}
        for k in eval_steps:
            torch.manual_seed(args.seed + 1)
            row[f"pgd{k}"] = evaluate(model, test, ctx, perturb=make_pgd(args.norm, eps, k))
        rows.append(row)
        histories[method] = [h["loss"] for h in hist]

    if ctx.is_main:
        cols = ["clean"] + [f"pgd{k}" for k in eval_steps]
        print(f"\nSOAR on digits ({args.norm}, eps={eps}, {args.epochs} epochs, world={ctx.world_size}, "
              f"comm-hook={args.comm_hook})")
        print(f"{'method':<10}" + "".join(f"{c:>9}" for c in cols) + f"{'train s':>9}")
        for r in rows:
            print(f"{r['method']:<10}" + "".join(f"{100 * r[c]:>8.1f}%" for c in cols) + f"{r['train_s']:>9.1f}")
    runtime.write_json(args.out_dir, "results.json", {"args": vars(args), "eps": eps, "rows": rows,
                                                      "train_loss": histories}, ctx)
    if ctx.is_main:
        plt = runtime.pyplot()

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        cols = ["clean"] + [f"pgd{k}" for k in eval_steps]
        width = 0.8 / max(len(rows), 1)
        for i, r in enumerate(rows):
            ax1.bar([j + i * width for j in range(len(cols))], [100 * r[c] for c in cols], width, label=r["method"])
        ax1.set_xticks([j + width * (len(rows) - 1) / 2 for j in range(len(cols))], cols)
        ax1.set_ylabel("test accuracy (%)")
        ax1.set_title(f"digits, {args.norm} eps={eps}")
        ax1.legend()
        for m, h in histories.items():
            ax2.plot(h, label=m)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("training loss")
        ax2.legend()
        runtime.save_figure(fig, args.out_dir, "soar.png", ctx)
    runtime.shutdown()


if __name__ == "__main__":
    main()
