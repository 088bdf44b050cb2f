"""Train a small CNN on real handwritten digits with compressed gradients (the README's demo).

    torchrun --nproc_per_node=2 examples/train_digits.py --scheme nuqsgd --bits 4
    torchrun --nproc_per_node=2 examples/train_digits.py --scheme qsgd --bits 3 --coding elias
    torchrun --nproc_per_node=2 examples/train_digits.py --scheme qsgd --bits 4 --hook allreduce
    torchrun --nproc_per_node=2 examples/train_digits.py --scheme alq --bits 3

Data: scikit-learn's bundled 8x8 digits (no download; 449 test images, so one image is 0.22
points of accuracy). Each rank trains on its shard through DDP with a commcomp hook; then the same
model is trained again from the same initialization with PyTorch's fp32 allreduce
(``--no-baseline`` skips it). This is repeated for ``--seeds`` seeds (initialization, data order
and quantization noise; default 3), and the script prints, per hook, the test accuracy's mean and
standard deviation over the seeds, the last epoch's training loss, and bytes on the wire; then the
accuracy difference against fp32 with its seed-to-seed spread, and whether it is within that
noise. Results go to ``results/train_digits/<scheme><bits>.json``.
"""
from __future__ import annotations

import argparse
import logging
import statistics

import torch

from commcomp.codecs import CODING_ALIASES, CODINGS
from commcomp.hooks import SCHEMES

from common import runtime
from common.data import load_digits_tensors
from common.models import DigitsCNN
from common.training import evaluate, fit, make_loader


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", default="nuqsgd", choices=("none",) + SCHEMES)
    parser.add_argument("--bits", type=int, default=4, help="bits per coordinate on the wire (2..8)")
    parser.add_argument("--coding", default="fixed", choices=tuple(CODINGS) + tuple(CODING_ALIASES), help="symbol coding (allgather hook)")
    parser.add_argument("--hook", default="allgather", choices=("allgather", "allreduce"))
    parser.add_argument("--bucket-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--error-feedback", action="store_true")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the fp32 comparison run")
    parser.add_argument("--seed", type=int, default=0, help="first seed; the test split is drawn with it")
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds (seed, seed + 1, ...) to average over")
    parser.add_argument("--out-dir", default="results/train_digits")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def hook_spec(args: argparse.Namespace) -> str:
    if args.scheme == "none":
        return "none"
    prefix = "allreduce-" if args.hook == "allreduce" else ""
    coding = f":{args.coding}" if args.hook == "allgather" and args.coding != "fixed" else ""
    return f"{prefix}{args.scheme}:{args.bits}{coding}"


def train_once(args: argparse.Namespace, ctx: runtime.DistContext, spec: str, seed: int) -> dict:
    train, test = load_digits_tensors(seed=args.seed)  # one test split for every seed
    torch.manual_seed(seed)  # same initialization for both hooks and every rank
    hook_kwargs = dict(bucket_size=args.bucket_size, seed=seed, error_feedback=args.error_feedback) if spec != "none" else {}
    model = runtime.wrap_ddp(DigitsCNN(), ctx, spec, **hook_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    history = fit(model, train, ctx, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                  scheduler=scheduler, seed=seed, desc=f"{spec} seed {seed}")
    state = getattr(model, "commcomp_state", None)
    params = sum(p.numel() for p in model.parameters())
    steps = args.epochs * len(make_loader(train, ctx, args.batch_size))
    fp32 = 4 * params * steps
    sent = state.total_bytes_sent if state is not None else fp32
    return {
        "hook": spec,
        "seed": seed,
        "test_accuracy": evaluate(model, test, ctx),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "bytes_sent_per_rank": sent,
        "bytes_fp32_per_rank": fp32,
        "compression_ratio": fp32 / sent if sent else 1.0,
        "steps": steps,
        "parameters": params,
    }


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report(runs: list[dict], specs: list[str], seeds: list[int], world_size: int) -> list[str]:
    """The demo's table and verdict, as lines."""
    first = runs[0]
    lines = [
        f"{world_size} rank(s), {first['parameters']} parameters, {first['steps']} steps per run, "
        f"{len(seeds)} seed(s): {', '.join(map(str, seeds))}",
        f"{'hook':<22} {'test accuracy % (mean ± sd)':>28} {'train loss, last epoch':>23} "
        f"{'MB sent per rank':>17} {'fp32 bytes / sent':>18}",
    ]
    for spec in specs:
        mine = [r for r in runs if r["hook"] == spec]
        acc, acc_sd = mean_and_spread([100 * r["test_accuracy"] for r in mine])
        loss = statistics.fmean(r["final_loss"] for r in mine)
        label = "none (fp32 allreduce)" if spec == "none" else spec
        lines.append(f"{label:<22} {acc:>19.2f} ± {acc_sd:<6.2f} {loss:>23.4f} "
                     f"{mine[0]['bytes_sent_per_rank'] / 1e6:>17.3f} {mine[0]['compression_ratio']:>17.1f}x")
    if len(specs) == 2:
        by_seed = {(r["hook"], r["seed"]): 100 * r["test_accuracy"] for r in runs}
        gaps = [by_seed[(specs[0], s)] - by_seed[(specs[1], s)] for s in seeds]
        gap, gap_sd = mean_and_spread(gaps)
        lines.append(f"test accuracy, {specs[0]} minus fp32, per seed: {', '.join(f'{g:+.2f}' for g in gaps)} points; "
                     f"mean {gap:+.2f} ± {gap_sd:.2f} (sd)")
        if len(gaps) > 1:
            noise = 2 * gap_sd / len(gaps) ** 0.5  # two standard errors of the mean difference
            verdict = "within" if abs(gap) <= noise else "outside"
            lines.append(f"the mean difference is {verdict} the seed-to-seed noise (2 standard errors = {noise:.2f} points)")
        else:
            lines.append("one seed: a difference of a point or less is noise (one test image = 0.22 points); use --seeds 3")
    return lines


def main() -> None:
    args = parse_args()
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    logging.basicConfig(level=logging.WARNING)
    ctx = runtime.init_distributed(args.device)
    spec = hook_spec(args)
    specs = [spec] + (["none"] if args.baseline and spec != "none" else [])
    seeds = [args.seed + k for k in range(args.seeds)]
    runs = [train_once(args, ctx, s, seed) for seed in seeds for s in specs]
    if ctx.is_main:
        print()
        print("\n".join(report(runs, specs, seeds, ctx.world_size)))
        name = f"{args.scheme}{args.bits}{'-' + args.hook if args.hook != 'allgather' else ''}.json"
        path = runtime.write_json(args.out_dir, name, {"args": vars(args), "world_size": ctx.world_size, "runs": runs}, ctx)
        print(f"wrote {path}")
    runtime.shutdown()


if __name__ == "__main__":
    main()
