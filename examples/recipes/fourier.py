"""Optimization bias and robustness of linear models (Faghri et al., arXiv 2102.08868).

For a linear classifier ``sign(<w, x>)`` the worst perturbation of norm ``eps`` lowers the signed
score ``y <w, x>`` by exactly ``eps * ||w||_*`` (the dual norm), so its robustness is its
*normalised margin* ``min_i y_i <w, x_i> / ||w||_*`` and its robust accuracy is known in closed form.

===================  ==================  =================================================
perturbation ball    dual norm of ``w``   which training converges to the max margin
===================  ==================  =================================================
``"l2"``             ``||w||_2``          gradient descent (steepest descent in L2)
``"linf"``           ``||w||_1``          coordinate descent (steepest descent in L1)
``"l1"``             ``||w||_inf``        sign gradient descent (steepest descent in L-inf)
``"fourier-linf"``   ``||F w||_1``        GD on a 2-layer linear circular-convolution network
===================  ==================  =================================================

(Steepest descent in a norm converges in direction to the max-margin solution in that norm,
Gunasekar et al. 2018; ``F`` is the orthonormal DFT of :mod:`recipes.attacks`.)

This module has the pieces the ``examples/fourier_linf.py`` recipe runs: separable Gaussian data,
normalised steepest descent for linear models, exact max-margin solutions (QP/LP with SciPy),
margins/closed-form robust accuracy, and full-batch training of small linear networks.

Example::

    >>> from recipes.fourier import (separable_gaussian, steepest_descent_linear,
    ...     max_margin_linear, normalized_margin)
    >>> data = separable_gaussian(n=20, d=80, seed=0)
    >>> w_gd = steepest_descent_linear(data.x, data.y, "l2", steps=2000)
    >>> _, best = max_margin_linear(data.x, data.y, "l2")
    >>> round(float(normalized_margin(w_gd, data.x, data.y, "l2") / best), 2) >= 0.95
    True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from recipes.attacks import fourier_coefficients

__all__ = [
    "PERTURBATIONS",
    "LinearData",
    "separable_gaussian",
    "dual_norm",
    "normalized_margin",
    "linear_robust_accuracy",
    "steepest_descent_linear",
    "max_margin_linear",
    "end_to_end_linear",
    "train_binary_full_batch",
]

PERTURBATIONS = ("l2", "linf", "l1", "fourier-linf")
GEOMETRIES = ("l2", "linf", "l1")


def _check_perturbation(perturbation: str) -> None:
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}")


@dataclass(frozen=True)
class LinearData:
    """Training points ``x`` (n, ...) with labels ``y`` in {-1, +1}, plus a test set."""

    x: Tensor
    y: Tensor
    x_test: Tensor
    y_test: Tensor


def separable_gaussian(
    n: int, d: int | Sequence[int], seed: int = 0, n_test: int = 1000, dtype: torch.dtype = torch.float64
) -> LinearData:
    """``x ~ N(0, I)`` labelled by a random linear teacher: ``y = sign(<w*, x>)``.

    Linearly separable through the origin by construction, for any ``d`` (an int, or a shape
    such as ``(8, 8)`` for images).
    """
    shape = (d,) if isinstance(d, int) else tuple(d)
    if n < 1 or n_test < 0 or any(s < 1 for s in shape):
        raise ValueError(f"n must be >= 1, n_test >= 0 and every dimension >= 1, got n={n}, n_test={n_test}, d={d}")
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(shape, generator=g, dtype=dtype)
    x = torch.randn((n + n_test,) + shape, generator=g, dtype=dtype)
    y = torch.sign((x * teacher).flatten(1).sum(dim=1))
    y[y == 0] = 1.0
    return LinearData(x[:n], y[:n], x[n:], y[n:])


def dual_norm(w: Tensor, perturbation: str) -> Tensor:
    """``max_{||d|| <= 1} <w, d>`` for the named perturbation norm (``w`` keeps its shape; for
    ``"fourier-linf"`` the DFT runs over its last two dims, or its only dim if 1-D)."""
    _check_perturbation(perturbation)
    if perturbation == "l2":
        return w.norm()
    if perturbation == "linf":
        return w.abs().sum()
    if perturbation == "l1":
        return w.abs().max()
    spatial = min(2, w.dim())
    # Parseval: <w, d> = Re<F w, F d>, maximised by F d = eps * phase(F w), giving ||F w||_1.
    return fourier_coefficients(w.unsqueeze(0), spatial).abs().sum()


def _scores(w: Tensor, x: Tensor, bias: float = 0.0) -> Tensor:
    return (x * w).flatten(1).sum(dim=1) + bias


def normalized_margin(w: Tensor, x: Tensor, y: Tensor, perturbation: str, bias: float = 0.0) -> Tensor:
    """``min_i y_i (<w, x_i> + bias) / ||w||_*``: the largest ``eps`` no point can be flipped by."""
    return (y * _scores(w, x, bias)).min() / dual_norm(w, perturbation)


def linear_robust_accuracy(w: Tensor, x: Tensor, y: Tensor, eps: float, perturbation: str, bias: float = 0.0) -> float:
    """Exact robust accuracy of ``sign(<w, x> + bias)``: a point survives iff ``y s > eps ||w||_*``."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return float(((y * _scores(w, x, bias)) > eps * dual_norm(w, perturbation)).double().mean())


def _steepest_direction(grad: Tensor, geometry: str) -> Tensor:
    """``argmin_{||u|| <= 1} <grad, u>`` scaled by the dual norm (Gunasekar et al.'s steepest step)."""
    if geometry == "l2":
        return -grad
    if geometry == "linf":  # sign gradient descent
        return -grad.abs().sum() * grad.sign()
    # L1 steepest descent = greedy coordinate descent: move only the largest coordinate.
    flat = grad.flatten()
    i = int(flat.abs().argmax())
    step = torch.zeros_like(flat)
    step[i] = -flat[i]
    return step.reshape(grad.shape)


def steepest_descent_linear(x: Tensor, y: Tensor, geometry: str, steps: int = 2000, lr: float = 0.1) -> Tensor:
    """Steepest descent in ``geometry`` ("l2": GD, "linf": sign GD, "l1": coordinate descent) on
    ``log sum_i exp(-y_i <w, x_i>)``, from ``w = 0``.

    The log of the exponential loss is used so steps do not shrink as the loss vanishes on
    separable data (normalised GD); the iterates then approach the max-margin direction of the
    geometry's norm far faster than with the plain loss.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    if steps < 1 or lr <= 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    yx = (y.reshape((-1,) + (1,) * (x.dim() - 1)) * x).flatten(1)
    scale = yx.norm(dim=1).max()  # makes lr unit-free
    w = torch.zeros(yx.shape[1], dtype=x.dtype)
    for _ in range(steps):
        weights = torch.softmax(-(yx @ w), dim=0)  # gradient of log-sum-exp of -margins
        grad = -(weights @ yx) / scale
        w = w + lr * _steepest_direction(grad, geometry)
    return w.reshape(x.shape[1:])


def max_margin_linear(x: Tensor, y: Tensor, perturbation: str) -> tuple[Tensor, float]:
    """The exact most robust separator through the origin: ``min ||w||_* s.t. y_i <w, x_i> >= 1``.

    ``"l2"``: the hard-margin SVM, solved in its dual (a bound-constrained QP, L-BFGS-B);
    ``"linf"``/``"l1"``: linear programs (HiGHS). Returns ``(w, margin)`` with
    ``margin = 1 / ||w||_*``, the optimal normalised margin. ``"fourier-linf"`` is not supported.
    """
    from scipy.optimize import linprog, minimize

    _check_perturbation(perturbation)
    shape = x.shape[1:]
    yx = (y.reshape((-1,) + (1,) * (x.dim() - 1)) * x).flatten(1).double().numpy()
    n, d = yx.shape
    if perturbation == "l2":
        gram = yx @ yx.T
        objective = lambda a: (0.5 * a @ gram @ a - a.sum(), gram @ a - 1.0)  # noqa: E731
        res = minimize(objective, np.full(n, 1e-3), jac=True, method="L-BFGS-B", bounds=[(0, None)] * n,
                       options={"maxiter": 10000, "ftol": 1e-15, "gtol": 1e-12})
        w = res.x @ yx
    elif perturbation == "linf":
        # min 1^T (u + v) s.t. yx (u - v) >= 1, u, v >= 0.
        res = linprog(np.ones(2 * d), A_ub=-np.hstack([yx, -yx]), b_ub=-np.ones(n), bounds=(0, None), method="highs")
        if res.status != 0:
            raise ValueError(f"data not linearly separable through the origin ({res.message})")
        w = res.x[:d] - res.x[d:]
    elif perturbation == "l1":
        # min t s.t. yx w >= 1, -t <= w_j <= t.
        c = np.zeros(d + 1)
        c[-1] = 1.0
        eye = np.eye(d)
        a_ub = np.vstack([np.hstack([-yx, np.zeros((n, 1))]), np.hstack([eye, -np.ones((d, 1))]), np.hstack([-eye, -np.ones((d, 1))])])
        b_ub = np.concatenate([-np.ones(n), np.zeros(2 * d)])
        res = linprog(c, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * d + [(0, None)], method="highs")
        if res.status != 0:
            raise ValueError(f"data not linearly separable through the origin ({res.message})")
        w = res.x[:d]
    else:
        raise ValueError("max_margin_linear does not support 'fourier-linf'")
    w_t = torch.as_tensor(w, dtype=x.dtype).reshape(shape)
    return w_t, float(normalized_margin(w_t, x, y, perturbation))


def end_to_end_linear(model: nn.Module, shape: Sequence[int], dtype: torch.dtype = torch.float64) -> tuple[Tensor, float]:
    """``(beta, b)`` with ``model(x) = <beta, x> + b`` for a model linear in its input (one logit)."""
    x0 = torch.zeros((1,) + tuple(shape), dtype=dtype, requires_grad=True)
    out = model(x0).reshape(())
    (beta,) = torch.autograd.grad(out, x0)
    return beta[0].detach(), float(out.detach())


def train_binary_full_batch(model: nn.Module, x: Tensor, y: Tensor, steps: int = 2000, lr: float = 0.05) -> list[float]:
    """Full-batch gradient descent on the logistic loss of a one-logit ``model``, labels in {-1, +1}.

    Plain GD (no momentum, no weight decay), the setting the implicit-bias results describe.
    Returns the loss every step.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got steps={steps}, lr={lr}")
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.softplus(-y * model(x)).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
