"""Gradient variance and normalized gradient variance of a mini-batch sampler.

Following Faghri et al. (2020), with ``S`` mini-batch gradients ``g_1..g_S`` of ``D`` coordinates
drawn by the sampler at fixed parameters:

* variance: ``V = (1/D) sum_j Var[g_j]`` (the per-coordinate variance averaged over coordinates);
* normalized variance: ``NV = (1/D) sum_j Var[g_j] / E[g_j^2]``, a scale-free ratio in ``[0, 1]``
  (``1 / (1 + SNR_j^2)`` per coordinate) that the paper found to track convergence speed better.

``Var`` uses Bessel's correction (``1/(S-1)``) around the sample mean, ``E[g^2]`` the plain mean of
squares; coordinates whose gradient is exactly zero in every draw contribute 0 to ``NV`` (the
paper's ``+1e-7`` in the denominator, in the limit).

Example::

    >>> import torch
    >>> from commcomp.sampling import variance_statistics
    >>> g = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # S=2 draws, D=2 coordinates
    >>> v = variance_statistics(g)
    >>> v.variance, v.normalized_variance   # coordinate 0: var 2, E[g^2] 5
    (1.0, 0.2)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from .capture import LossFn, unwrap_model

__all__ = ["GradientVariance", "MomentAccumulator", "variance_statistics", "estimate_gradient_variance"]

Batch = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


@dataclass(frozen=True)
class GradientVariance:
    """``variance`` and ``normalized_variance`` of a sampler, from ``num_samples`` draws of
    ``num_params`` coordinates; ``mean_sq_norm`` is ``||E g||^2`` of the sample mean."""

    variance: float
    normalized_variance: float
    mean_sq_norm: float
    num_samples: int
    num_params: int


class MomentAccumulator:
    """Running first and second moments of flattened gradient draws, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.total_sq: torch.Tensor | None = None

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().reshape(-1).double()
        if self.total is None:
            self.total, self.total_sq = torch.zeros_like(g), torch.zeros_like(g)
        elif g.numel() != self.total.numel():
            raise ValueError(f"gradient draws must all have {self.total.numel()} coordinates, got {g.numel()}")
        self.total += g
        self.total_sq += g * g
        self.count += 1

    def result(self) -> GradientVariance:
        if self.count < 2 or self.total is None or self.total_sq is None:
            raise ValueError(f"need at least 2 gradient draws, got {self.count}")
        S = self.count
        mean = self.total / S
        second = self.total_sq / S
        var = ((self.total_sq - S * mean * mean) / (S - 1)).clamp_min(0)
        ratio = torch.where(second > 0, var / second.clamp_min(torch.finfo(second.dtype).tiny), torch.zeros_like(var))
        return GradientVariance(
            variance=float(var.mean()),
            normalized_variance=float(ratio.mean()),
            mean_sq_norm=float(mean.square().sum()),
            num_samples=S,
            num_params=int(var.numel()),
        )


def variance_statistics(draws: torch.Tensor | Iterable[torch.Tensor]) -> GradientVariance:
    """Statistics of given gradient draws: an ``(S, D)`` tensor or an iterable of ``S`` tensors."""
    acc = MomentAccumulator()
    for g in draws:
        acc.add(g)
    return acc.result()


def estimate_gradient_variance(
    model: nn.Module,
    loss_fn: LossFn,
    draw_batch: Callable[[], Batch],
    num_samples: int,
    *,
    process_group: dist.ProcessGroup | None = None,
) -> GradientVariance:
    """Estimate a sampler's gradient statistics from ``num_samples`` mini-batch gradients.

    ``draw_batch()`` returns ``(inputs, targets, weights)`` of one mini-batch (``weights`` may be
    ``None`` for plain averaging); the mini-batch gradient is that of
    ``(weights * loss_fn(model(inputs), targets)).mean()`` with respect to every trainable
    parameter. Under a process group each rank draws its local batch and the gradients are
    averaged across ranks (as DDP would), so the statistics describe the global batch; every
    rank returns the same result. Parameters' ``.grad`` are left untouched.
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    module = unwrap_model(model)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1
    acc = MomentAccumulator()
    for _ in range(num_samples):
        inputs, targets, weights = draw_batch()
        losses = loss_fn(module(inputs), targets)
        if losses.dim() != 1:
            raise ValueError(f"loss_fn must return per-example losses (B,), got shape {tuple(losses.shape)}")
        loss = (losses * weights.to(losses)).mean() if weights is not None else losses.mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])
        if distributed:
            dist.all_reduce(flat, group=process_group)
            flat /= dist.get_world_size(process_group)
        acc.add(flat)
    return acc.result()
