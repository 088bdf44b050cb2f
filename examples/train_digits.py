"""Train a small CNN on real handwritten digits with compressed gradients (the README's demo).

    torchrun --nproc_per_node=2 examples/train_digits.py --scheme nuqsgd --bits 4
    torchrun --nproc_per_node=2 examples/train_digits.py --scheme qsgd --bits 3 --coding elias
    torchrun --nproc_per_node=2 examples/train_digits.py --scheme qsgd --bits 4 --hook allreduce
    torchrun --nproc_per_node=2 examples/train_digits.py --scheme alq --bits 3

Data: scikit-learn's bundled 8x8 digits (no download). Each rank trains on its shard through DDP
with a commcomp hook; afterwards the same model is trained again from the same initialization
with PyTorch's fp32 allreduce (``--no-baseline`` skips it), and the script prints test accuracy and
bytes on the wire for both. Results go to ``results/train_digits/<scheme><bits>.json``.
"""
from __future__ import annotations

import argparse
import logging

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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="results/train_digits")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def hook_spec(args: argparse.Namespace) -> str:
    if args.scheme == "none":
        return "none"
    prefix = "allreduce-" if args.hook == "allreduce" else ""
    coding = f":{args.coding}" if args.hook == "allgather" and args.coding != "fixed" else ""
    return f"{prefix}{args.scheme}:{args.bits}{coding}"


def train_once(args: argparse.Namespace, ctx: runtime.DistContext, spec: str) -> dict:
    train, test = load_digits_tensors(seed=args.seed)
    torch.manual_seed(args.seed)  # same initialization for every run and rank
    hook_kwargs = dict(bucket_size=args.bucket_size, seed=args.seed, error_feedback=args.error_feedback) if spec != "none" else {}
    model = runtime.wrap_ddp(DigitsCNN(), ctx, spec, **hook_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    history = fit(model, train, ctx, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                  scheduler=scheduler, seed=args.seed, desc=spec)
    state = getattr(model, "commcomp_state", None)
    params = sum(p.numel() for p in model.parameters())
    steps = args.epochs * len(make_loader(train, ctx, args.batch_size))
    fp32 = 4 * params * steps
    sent = state.total_bytes_sent if state is not None else fp32
    return {
        "hook": spec,
        "test_accuracy": evaluate(model, test, ctx),
        "final_loss": history[-1]["loss"] if history else float("nan"),
        "bytes_sent_per_rank": sent,
        "bytes_fp32_per_rank": fp32,
        "compression_ratio": fp32 / sent if sent else 1.0,
        "steps": steps,
        "parameters": params,
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    ctx = runtime.init_distributed(args.device)
    spec = hook_spec(args)
    runs = [train_once(args, ctx, spec)]
    if args.baseline and spec != "none":
        runs.append(train_once(args, ctx, "none"))
    if ctx.is_main:
        print(f"\n{ctx.world_size} rank(s), {runs[0]['parameters']} parameters, {runs[0]['steps']} steps")
        print(f"{'hook':<24} {'test acc':>9} {'loss':>8} {'MB sent/rank':>13} {'vs fp32':>8}")
        for r in runs:
            print(f"{r['hook']:<24} {100 * r['test_accuracy']:>8.2f}% {r['final_loss']:>8.4f} "
                  f"{r['bytes_sent_per_rank'] / 1e6:>13.3f} {r['compression_ratio']:>7.1f}x")
        if len(runs) == 2:
            gap = 100 * (runs[0]["test_accuracy"] - runs[1]["test_accuracy"])
            print(f"accuracy difference against fp32 allreduce: {gap:+.2f} points")
        name = f"{args.scheme}{args.bits}{'-' + args.hook if args.hook != 'allgather' else ''}.json"
        path = runtime.write_json(args.out_dir, name, {"args": vars(args), "world_size": ctx.world_size, "runs": runs}, ctx)
        print(f"wrote {path}")
    runtime.shutdown()


if __name__ == "__main__":
    main()
