"""RangeAugment (Mehta et al., arXiv 2212.10553): learn the magnitude ranges of brightness, contrast
and noise jointly with a digits CNN, steering the augmented images' PSNR along a cosine
curriculum (40 -> 20 dB by default).

Three runs from the same initialization: no augmentation, fixed hand-set ranges, and learned
ranges. Each epoch of the learned run prints the measured PSNR(A(x), x) next to the target and the
current ranges. Test accuracy is reported on the clean test set and on a corrupted copy (random
brightness, contrast and noise, fixed seed), where augmentation should matter most.

    torchrun --nproc_per_node=2 examples/rangeaugment.py --comm-hook none
    python examples/rangeaugment.py --train-size 0 --epochs 60   # all training images, longer
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from common import runtime
from common.data import Split, load_digits_tensors
from common.models import DigitsCNN
from common.training import evaluate, fit, unwrap
from recipes.rangeaugment import FixedRangeAugment, RangeAugment, cosine_curriculum, psnr, psnr_target_loss

HAND_SET = {"brightness": (0.6, 1.4), "contrast": (0.6, 1.4), "noise": (0.0, 0.1)}
CORRUPTION = {"brightness": (0.3, 1.7), "contrast": (0.3, 1.7), "noise": (0.0, 0.25)}


class AugmentedClassifier(nn.Module):
    """``model`` behind an optional augmentation that acts only in training mode.

    Training forward returns ``(logits, augmented, applied)`` so the loss can score the
    augmentation; eval forward returns the logits of the untouched input.
    """

    def __init__(self, model: nn.Module, augment: RangeAugment | None) -> None:
        super().__init__()
        self.model = model
        self.augment = augment

    def forward(self, x: torch.Tensor):  # type: ignore[override]
        if not self.training:
            return self.model(x)
        if self.augment is None:
            return self.model(x), x, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        x_aug, applied = self.augment(x)
        return self.model(x_aug), x_aug, applied


def all_reduce_sum(values: list[float], ctx: runtime.DistContext) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(t)
    return t.tolist()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    runtime.add_common_arguments(p, default_out_dir="results/rangeaugment")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--train-size", type=int, default=400,
                   help="training images used (0 = all 1348); augmentation matters most with few")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--aug-lr", type=float, default=0.2, help="Adam learning rate of the range parameters")
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the PSNR-target loss")
    p.add_argument("--psnr-start", type=float, default=40.0)
    p.add_argument("--psnr-end", type=float, default=20.0)
    return p.parse_args()


def corrupted(split: Split, seed: int) -> Split:
    """Every test image with random brightness, contrast and noise (fixed seed: same on all ranks)."""
    g = torch.Generator().manual_seed(seed)
    x, _ = FixedRangeAugment(CORRUPTION, fraction=1.0)(split.x, generator=g)
    return Split(x, split.y)


def main() -> None:
    args = parse_args()
    ctx = runtime.init_distributed(args.device)
    train, test = load_digits_tensors(seed=args.seed)
    if args.train_size:
        train = Split(train.x[: args.train_size], train.y[: args.train_size])
    test_c = corrupted(test, args.seed + 1)
    if ctx.is_main:
        print(f"{len(train)} training images, {len(test)} test images; mean PSNR of the corrupted test set "
              f"{psnr(test_c.x, test.x).clamp(max=60).mean():.1f} dB")

    results: dict[str, dict] = {}
    for mode in ("none", "fixed", "rangeaugment"):
        torch.manual_seed(args.seed)  # same CNN initialization in every run
        augment = {"none": None, "fixed": FixedRangeAugment(HAND_SET), "rangeaugment": RangeAugment()}[mode]
        net = AugmentedClassifier(DigitsCNN(), augment)
        torch.manual_seed(args.seed + 1000 * ctx.rank)  # each rank draws its own augmentations
        model = runtime.wrap_ddp(net, ctx, args.comm_hook)
        range_params = list(augment.parameters()) if mode == "rangeaugment" else []
        ids = {id(p) for p in range_params}
        groups = [{"params": [p for p in model.parameters() if id(p) not in ids and p.requires_grad], "lr": args.lr}]
        if range_params:
            groups.append({"params": range_params, "lr": args.aug_lr})
        opt = torch.optim.Adam(groups)
        steps_per_epoch = -(-len(train) // (ctx.world_size * args.batch_size))
        total_steps = max(1, args.epochs * steps_per_epoch)
        state = {"step": 0, "psnr_sum": 0.0, "psnr_n": 0.0, "target_sum": 0.0, "batches": 0.0}
        log: list[dict] = []

        def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, x_aug, applied = m(x)
            loss = F.cross_entropy(logits, y)
            target = cosine_curriculum(state["step"], total_steps, args.psnr_start, args.psnr_end)
            state["step"] += 1
            if applied.any():
                p = psnr(x_aug.detach(), x)[applied]
                state["psnr_sum"] += float(p.sum())
                state["psnr_n"] += p.numel()
            state["target_sum"] += target
            state["batches"] += 1
            if mode == "rangeaugment":
                loss = loss + args.aux_weight * psnr_target_loss(x_aug, x, target, applied)
            return loss

        def on_epoch_end(epoch: int, stats: dict[str, float]) -> None:
            s, n, t, b = all_reduce_sum([state["psnr_sum"], state["psnr_n"], state["target_sum"], state["batches"]], ctx)
            entry = {"epoch": epoch + 1, "loss": stats["loss"], "psnr": s / max(n, 1.0), "target": t / max(b, 1.0)}
            if mode == "rangeaugment":
                entry["ranges"] = unwrap(model).augment.range_values()
            log.append(entry)
            state.update(psnr_sum=0.0, psnr_n=0.0, target_sum=0.0, batches=0.0)
            if ctx.is_main and mode != "none":
                from tqdm.auto import tqdm

                ranges = entry.get("ranges", HAND_SET)
                rtxt = "  ".join(f"{k} [{lo:.3f}, {hi:.3f}]" for k, (lo, hi) in ranges.items())
                tqdm.write(f"  {mode:>12} ep {epoch + 1:3d}  PSNR {entry['psnr']:5.1f} dB  target "
                           f"{entry['target'] if mode == 'rangeaugment' else float('nan'):5.1f}  {rtxt}")

        t0 = time.time()
        fit(model, train, ctx, optimizer=opt, epochs=args.epochs, batch_size=args.batch_size, loss_fn=loss_fn,
            seed=args.seed, desc=mode, on_epoch_end=on_epoch_end)
        results[mode] = {"clean_acc": evaluate(model, test, ctx), "corrupted_acc": evaluate(model, test_c, ctx),
                         "epochs": log, "train_seconds": time.time() - t0}

    if ctx.is_main:
        print(f"\nDigits CNN, {len(train)} training images, {args.epochs} epochs, world size {ctx.world_size}, "
              f"comm hook {args.comm_hook!r}")
        print(f"{'augmentation':<14}{'clean acc':>10}{'corrupted acc':>15}{'final PSNR':>12}  final ranges")
        for mode, r in results.items():
            last = r["epochs"][-1]
            ranges = last.get("ranges", HAND_SET if mode == "fixed" else {})
            rtxt = " ".join(f"{k}=[{lo:.2f},{hi:.2f}]" for k, (lo, hi) in ranges.items()) or "-"
            ps = f"{last['psnr']:.1f}" if mode != "none" else "-"
            print(f"{mode:<14}{100 * r['clean_acc']:9.1f}%{100 * r['corrupted_acc']:14.1f}%{ps:>12}  {rtxt}")
        runtime.write_json(args.out_dir, "rangeaugment.json", {"args": vars(args), "world_size": ctx.world_size,
                                                               "hand_set": HAND_SET, "corruption": CORRUPTION,
                                                               "results": results}, ctx)
        plot(results, args.out_dir, ctx)
    runtime.shutdown()


def plot(results: dict[str, dict], out_dir: str, ctx: runtime.DistContext) -> None:
    plt = runtime.pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ra = results["rangeaugment"]["epochs"]
    ep = [e["epoch"] for e in ra]
    axes[0].plot(ep, [e["psnr"] for e in ra], label="measured PSNR(A(x), x)")
    axes[0].plot(ep, [e["target"] for e in ra], "--", label="target (cosine curriculum)")
    axes[0].plot(ep, [e["psnr"] for e in results["fixed"]["epochs"]], ":", label="hand-set ranges")
    axes[0].set(xlabel="epoch", ylabel="dB", title="PSNR of augmented images")
    for name in ra[0]["ranges"]:
        lo = [e["ranges"][name][0] for e in ra]
        hi = [e["ranges"][name][1] for e in ra]
        line = axes[1].plot(ep, hi, label=f"{name} high")[0]
        axes[1].plot(ep, lo, "--", color=line.get_color(), label=f"{name} low")
    axes[1].set(xlabel="epoch", title="learned ranges", yscale="log")
    modes = list(results)
    xs = range(len(modes))
    axes[2].bar([x - 0.2 for x in xs], [100 * results[m]["clean_acc"] for m in modes], 0.4, label="clean")
    axes[2].bar([x + 0.2 for x in xs], [100 * results[m]["corrupted_acc"] for m in modes], 0.4, label="corrupted")
    axes[2].set_xticks(list(xs), modes)
    axes[2].set(ylabel="test accuracy (%)", title="test accuracy")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    runtime.save_figure(fig, out_dir, "rangeaugment.png", ctx)


if __name__ == "__main__":
    main()
