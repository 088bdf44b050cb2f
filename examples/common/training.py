"""A small distributed train/eval loop shared by the recipes in ``examples/``.

* :func:`fit` runs epochs over this rank's shard of an in-memory :class:`~common.data.Split`
  (a :class:`~torch.utils.data.DistributedSampler`, reshuffled every epoch, so all ranks take the
  same number of steps), calls ``loss_fn(model, x, y)`` on each batch, back-propagates the scalar
  it returns and steps the optimizer. Wrap the model with :func:`common.runtime.wrap_ddp` first:
  DDP then averages gradients across ranks (through the ``--comm-hook`` compression hook).
* :func:`evaluate` computes accuracy over a split sharded across ranks (counts are summed with
  ``all_reduce``), optionally on inputs replaced by ``perturb(model, x, y)`` -- an attack such as
  :func:`recipes.attacks.make_pgd` -- for robust accuracy.

A loss function sees the model as passed to :func:`fit` (possibly DDP-wrapped). Its extra forward
passes that must not start a DDP reduction -- e.g. an attack crafting training inputs -- should
go through :func:`unwrap`\\ ``(model)``; the forward whose loss is returned goes through ``model``.

Example (works as plain ``python`` and under ``torchrun``)::

    import torch
    from common import runtime
    from common.data import load_digits_tensors
    from common.models import DigitsCNN
    from common.training import evaluate, fit

    ctx = runtime.init_distributed("cpu")
    train, test = load_digits_tensors(seed=0)
    model = runtime.wrap_ddp(DigitsCNN(), ctx, "none")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = fit(model, train, ctx, optimizer=opt, epochs=5, batch_size=64)
    print(history[-1]["loss"], evaluate(model, test, ctx))
    runtime.shutdown()
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from common import runtime
from common.data import Split

__all__ = ["LossFn", "Perturb", "cross_entropy_loss", "unwrap", "make_loader", "fit", "evaluate"]

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``loss_fn(model, x, y) -> scalar`` to back-propagate for one batch."""

Perturb = Callable[[nn.Module, Tensor, Tensor], Tensor]
"""``perturb(model, x, y) -> x'`` replacing a batch's inputs before evaluation."""


def cross_entropy_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of ``model(x)`` (binary cross-entropy for one-logit models)."""
    logits = model(x)
    if logits.dim() == 1:
        return F.binary_cross_entropy_with_logits(logits, (y > 0).to(logits.dtype))
    return F.cross_entropy(logits, y)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def make_loader(
    split: Split, ctx: runtime.DistContext, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """This rank's loader over ``split``; call ``loader.sampler.set_epoch(e)`` to reshuffle.

    ``DistributedSampler`` pads the shards to equal length, so every rank takes the same number
    of steps -- DDP needs that, or a rank would wait for a reduction that never comes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = DistributedSampler(
        TensorDataset(split.x, split.y), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed
    )
    return DataLoader(TensorDataset(split.x, split.y), batch_size=batch_size, sampler=sampler, drop_last=drop_last)


def _all_reduce_sum(values: list[float], ctx: runtime.DistContext) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(t)
    return t.tolist()


def fit(
    model: nn.Module,
    train: Split,
    ctx: runtime.DistContext,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    loss_fn: LossFn = cross_entropy_loss,
    scheduler: Any | None = None,
    seed: int = 0,
    desc: str = "train",
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``epochs`` epochs on this rank's shard of ``train``.

    Args:
        model: usually the output of :func:`common.runtime.wrap_ddp`.
        optimizer: steps after each batch's backward.
        loss_fn: ``loss_fn(model, x, y) -> scalar``; default :func:`cross_entropy_loss`.
        scheduler: stepped once per epoch when given.
        seed: shuffling seed, identical on every rank.
        desc: label of the rank-0 progress bar.
        on_epoch_end: called with ``(epoch, stats)`` on every rank.

    Returns one ``{"epoch", "loss"}`` dict per epoch; ``loss`` is the mean over all ranks' batches.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    loader = make_loader(train, ctx, batch_size, shuffle=True, seed=seed)
    history: list[dict[str, float]] = []
    model.train()
    for epoch in runtime.progress(range(epochs), ctx, desc=desc):
        loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        total, count = 0.0, 0
        for x, y in loader:
            x, y = x.to(ctx.device), y.to(ctx.device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model, x, y)
            if loss.dim() != 0:
                raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            count += 1
        if scheduler is not None:
            scheduler.step()
        total, count = _all_reduce_sum([total, float(count)], ctx)
        stats = {"epoch": float(epoch), "loss": total / max(count, 1.0)}
        history.append(stats)
        if on_epoch_end is not None:
            on_epoch_end(epoch, stats)
    return history


def evaluate(
    model: nn.Module,
    split: Split,
    ctx: runtime.DistContext,
    *,
    batch_size: int = 256,
    perturb: Perturb | None = None,
) -> float:
    """Accuracy of ``model`` on ``split`` (each rank scores ``split[rank::world_size]``).

    With ``perturb``, each batch's inputs are first replaced by ``perturb(module, x, y)`` (run with
    gradients enabled, on the unwrapped module in eval mode), giving robust accuracy. One-logit
    models are scored as binary classifiers (positive logit = label ``> 0``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    module = unwrap(model)
    was_training = module.training
    module.eval()
    xs, ys = split.x[ctx.rank :: ctx.world_size], split.y[ctx.rank :: ctx.world_size]
    correct = 0
    try:
        for start in range(0, len(ys), batch_size):
            x = xs[start : start + batch_size].to(ctx.device)
            y = ys[start : start + batch_size].to(ctx.device)
            if perturb is not None:
                x = perturb(module, x, y)
            with torch.no_grad():
                logits = module(x)
            pred = (logits > 0).long() if logits.dim() == 1 else logits.argmax(dim=1)
            truth = (y > 0).long() if logits.dim() == 1 else y
            correct += int((pred == truth).sum())
    finally:
        module.train(was_training)
    correct_all, total_all = _all_reduce_sum([float(correct), float(len(ys))], ctx)
    return correct_all / max(total_all, 1.0)
