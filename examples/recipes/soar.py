"""SOAR: the second-order adversarial regularizer (Ma, Faghri, Papernot, Farahmand, arXiv 2004.01832).

The robust loss ``max_{||d|| <= eps} l(x + d)`` is bounded through the second-order Taylor
expansion written with the *augmented* Hessian::

    l(x + d) ~= l(x) + g^T d + 1/2 d^T H d = l(x) + 1/2 [d; 1]^T H~ [d; 1] - 1/2,
    H~ = [[H, g], [g^T, 1]]        (g, H: input gradient and Hessian of the loss at x)

and ``||[d; 1]||^2 <= eps^2 + 1`` in L2, ``<= eps^2 d + 1`` in L-inf (``||d||_2 <= sqrt(d) eps``),
so ``max l(x + d) <~ l(x) + (eps^2 d + 1)/2 * lambda_max(H~) - 1/2``. SOAR penalises that term:

* ``lambda_max(H~)`` is estimated by **one power-iteration step**: draw ``z ~ N(0, I_{d+1})``,
  normalise it, and use ``||H~ z||_2`` (exact when ``z`` is the top eigenvector; never above the
  spectral norm).
* ``H~ z = [H z_x + z_y g ; g^T z_x + z_y]`` needs only ``H z_x``, taken by a **finite difference
  of input gradients**, ``H z_x ~= (g(x + h z_x) - g(x)) / h``, so no third derivative appears when
  the regularizer is differentiated with respect to the weights (only the double backward through
  ``g``).
* It is evaluated at a point moved by **one PGD step from a uniform random start** in the eps-ball,
  not at the clean input: at clean points the regularizer alone lets the network mask gradients.
  The cross-entropy is also taken at that point (the expansion point of the bound).
* The **regularizer's weight-gradient is clipped separately** (global L2 norm ``grad_clip``) before
  the cross-entropy's gradient is added, because its magnitude spikes early in training.

Each sample has its own ``H~`` (the loss is summed over the batch so input gradients are
per-sample); the regularizer is the batch mean of ``||H~_i z_i||``.

Example::

    >>> import torch
    >>> from common.models import DigitsCNN
    >>> from recipes.soar import SOARLoss
    >>> model = DigitsCNN()
    >>> loss_fn = SOARLoss(eps=0.1, norm="linf", lam=1.0)
    >>> x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    >>> loss = loss_fn(model, x, y)        # scalar; its .backward() gives CE + clipped SOAR grads
    >>> loss.backward()
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.training import unwrap
from recipes.attacks import get_ball, pgd_attack

__all__ = [
    "random_unit_augmented",
    "augmented_hvp_from_gradients",
    "finite_difference_augmented_hvp",
    "soar_scale",
    "soar_regularizer",
    "SOARLoss",
]


def _per_sample_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def random_unit_augmented(like: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A Gaussian vector in R^{d+1} per sample, normalised to unit L2 norm: ``(z_x like x, z_y (N,))``."""
    n = like.shape[0]
    z = torch.randn((n, like[0].numel() + 1), generator=generator, dtype=like.dtype, device=like.device)
    z = z / z.norm(dim=1, keepdim=True)
    return z[:, :-1].reshape(like.shape), z[:, -1]


def augmented_hvp_from_gradients(
    grad: Tensor, grad_shifted: Tensor, z_x: Tensor, z_y: Tensor, h: float
) -> tuple[Tensor, Tensor]:
    """``H~ z`` per sample from ``grad = g(x)`` and ``grad_shifted = g(x + h z_x)``.

    Returns ``(H z_x + z_y g, g^T z_x + z_y)`` with ``H z_x`` replaced by its forward difference.
    """
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h}")
    zy = z_y.reshape((-1,) + (1,) * (grad.dim() - 1))
    top = (grad_shifted - grad) / h + zy * grad
    bottom = (grad * z_x).flatten(1).sum(dim=1) + z_y
    return top, bottom


def _input_gradients(model: nn.Module, x: Tensor, x_shifted: Tensor, y: Tensor, create_graph: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample input gradients at ``x`` and ``x_shifted`` from ONE forward of both batches.

    One forward matters under DDP: every forward through the wrapper prepares a gradient
    reduction, and a second forward before the backward would be rejected. Also returns the
    per-sample losses at ``x``.
    """
    n = x.shape[0]
    both = torch.cat([x, x_shifted]).detach().requires_grad_(True)
    losses = _per_sample_loss(model(both), torch.cat([y, y]))
    (grads,) = torch.autograd.grad(losses.sum(), both, create_graph=create_graph)
    return grads[:n], grads[n:], losses[:n]


def finite_difference_augmented_hvp(
    model: nn.Module, x: Tensor, y: Tensor, z_x: Tensor, z_y: Tensor, h: float = 1e-2, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """``H~ z`` of the per-sample cross-entropy of ``model`` at ``x``, by a forward difference.

    Args:
        z_x: (like ``x``) and ``z_y`` (N,): the direction, one per sample.
        h: finite-difference step (in input units).
        create_graph: keep the graph so the result can be differentiated w.r.t. the weights.
    """
    g, g_shift, _ = _input_gradients(model, x, x + h * z_x, y, create_graph)
    return augmented_hvp_from_gradients(g, g_shift, z_x, z_y, h)


def soar_scale(norm: str, eps: float, dim: int) -> float:
    """``(eps^2 + 1)/2`` for L2, ``(eps^2 dim + 1)/2`` for L-inf: the bound on ``||[d;1]||^2 / 2``."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if norm == "linf":
        return 0.5 * (eps * eps * dim + 1.0)
    if norm == "l2":
        return 0.5 * (eps * eps + 1.0)
    raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")


def _regularizer_and_loss(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str, h: float, generator: torch.Generator | None, create_graph: bool
) -> tuple[Tensor, Tensor]:
    z_x, z_y = random_unit_augmented(x, generator)
    g, g_shift, losses = _input_gradients(model, x, x + h * z_x, y, create_graph)
    top, bottom = augmented_hvp_from_gradients(g, g_shift, z_x, z_y, h)
    lam_max = torch.sqrt(top.flatten(1).pow(2).sum(dim=1) + bottom.pow(2))
    return soar_scale(norm, eps, x[0].numel()) * lam_max.mean(), losses.mean()


def soar_regularizer(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    h: float = 1e-2,
    generator: torch.Generator | None = None,
    create_graph: bool = True,
) -> Tensor:
    """``soar_scale(norm, eps, d) * mean_i ||H~_i z_i||`` at the given points ``x`` (no perturbation
    is applied here; :class:`SOARLoss` moves ``x`` first)."""
    return _regularizer_and_loss(model, x, y, eps, norm, h, generator, create_graph)[0]


class SOARLoss:
    """Training loss ``CE(x') + lam * R(x')`` with ``R``'s weight-gradient clipped separately.

    ``x'`` is ``x`` moved by one PGD step of size ``init_step_size`` (default ``eps / 4``) from a
    uniform random start in the ``norm``-ball of radius ``eps``, clamped to ``bounds``.

    Called as ``loss_fn(model, x, y)`` (the :data:`common.training.LossFn` protocol).
    It returns a scalar whose *value* is ``CE(x')`` and whose *gradient* is
    ``grad CE(x') + clip(grad lam R(x'), grad_clip)``: the clipped regularizer gradient enters
    through a linear surrogate ``<theta, c> - <theta, c>.detach()``, so one ``backward()`` -- and so
    one DDP reduction, through whatever compression hook is registered -- carries both terms.
    Each rank clips its own regularizer gradient before the average.

    Args:
        eps: radius of the threat model the bound is for (also the start point's radius).
        norm: ``"linf"`` or ``"l2"``.
        lam: weight of the regularizer.
        h: finite-difference step for the Hessian-vector product.
        grad_clip: max global L2 norm of the regularizer's weight-gradient (``None``: no clip).
        init_step_size: size of the one PGD step to the expansion point (0: uniform noise only).
        bounds: valid input range for the start point, or ``None``.
        generator: RNG for the start point and the power-iteration vector.
    """

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        lam: float = 1.0,
        h: float = 1e-2,
        grad_clip: float | None = 10.0,
        init_step_size: float | None = None,
        bounds: tuple[float, float] | None = (0.0, 1.0),
        generator: torch.Generator | None = None,
    ) -> None:
        if not eps > 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be finite and > 0, got {eps}")
        soar_scale(norm, eps, 1)  # validates norm
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if h <= 0:
            raise ValueError(f"h must be > 0, got {h}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        self.eps, self.norm, self.lam, self.h = eps, norm, lam, h
        self.grad_clip = grad_clip
        self.init_step_size = eps / 4 if init_step_size is None else init_step_size
        if self.init_step_size < 0:
            raise ValueError(f"init_step_size must be >= 0, got {init_step_size}")
        self.bounds = bounds
        self.generator = generator
        self.last_regularizer = float("nan")  # for logging

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        # The start point comes from the bare module: a forward through DDP would open a reduction.
        x_start = pgd_attack(
            unwrap(model), x, y, get_ball(self.norm), self.eps, steps=1, step_size=self.init_step_size,
            random_start=True, bounds=self.bounds, generator=self.generator,
        )
        reg, ce = _regularizer_and_loss(model, x_start, y, self.eps, self.norm, self.h, self.generator, True)
        self.last_regularizer = float(reg.detach())
        params = [p for p in model.parameters() if p.requires_grad]
        if self.lam == 0:
            return ce
        grads = torch.autograd.grad(self.lam * reg, params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        if self.grad_clip is not None:
            total = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            factor = torch.clamp(self.grad_clip / (total + 1e-12), max=1.0)
            grads = [g * factor for g in grads]
        surrogate = sum((p * g.detach()).sum() for p, g in zip(params, grads))
        return ce + surrogate - surrogate.detach()
