"""Norm balls and projected-gradient (PGD) attacks in L-inf, L2 and Fourier-L-inf.

A :class:`NormBall` bundles what PGD needs from a threat model: the per-sample norm, the
Euclidean projection onto the ball, the steepest-ascent direction (the unit-norm vector that
maximises ``<g, u>``) and a random start. :func:`pgd_attack` is written once against that
interface, so the three attacks differ only in their ball.

The Fourier-L-inf norm (Faghri et al., arXiv 2102.08868) is the largest modulus of the
orthonormal 2-D DFT of each channel, ``||x||_F = max_k |(F x)_k|``. Because the orthonormal
DFT is unitary, projecting onto ``{||F d||_inf <= eps}`` is done coefficient by coefficient in
the frequency domain (clip each complex modulus to ``eps``), and the steepest-ascent direction
is the inverse DFT of the gradient's phase, ``F^-1(g_hat / |g_hat|)`` -- the Fourier analogue of
``sign(g)``.

Example::

    >>> import torch
    >>> from recipes.attacks import get_ball, pgd_attack
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    >>> x_adv = pgd_attack(model, x, y, "fourier-linf", eps=0.1, steps=10)
    >>> bool((get_ball("fourier-linf").norm(x_adv - x) <= 0.1 + 1e-6).all())
    True
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NormBall",
    "LinfBall",
    "L2Ball",
    "FourierLinfBall",
    "BALL_NAMES",
    "get_ball",
    "linf_norm",
    "l2_norm",
    "fourier_coefficients",
    "fourier_linf_norm",
    "project_fourier_linf",
    "fourier_linf_ascent_direction",
    "pgd_attack",
    "make_pgd",
]

_TINY = 1e-12


# ----------------------------------------------------------------------------- norms
def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``(N,)`` vector so it broadcasts against ``like`` (N, ...)."""
    return values.reshape((-1,) + (1,) * (like.dim() - 1))


def linf_norm(x: Tensor) -> Tensor:
    """Per-sample L-inf norm of ``x`` (N, ...) -> (N,)."""
    return _flat(x).abs().amax(dim=1)


def l2_norm(x: Tensor) -> Tensor:
    """Per-sample L2 norm of ``x`` (N, ...) -> (N,)."""
    return _flat(x).norm(dim=1)


def _check_spatial(x: Tensor, spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in (1, 2):
        raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
    if x.dim() < spatial_dims + 1:
        raise ValueError(
            f"x must have a batch dimension plus {spatial_dims} spatial dimension(s), got shape {tuple(x.shape)}"
        )
    return tuple(range(-spatial_dims, 0))


def fourier_coefficients(x: Tensor, spatial_dims: int = 2) -> Tensor:
    """Orthonormal DFT over the last ``spatial_dims`` dimensions (per sample and channel).

    ``norm="ortho"`` makes the transform unitary, so L2 norms (and Euclidean projections) are the
    same in both domains; this is the convention every Fourier helper here uses.
    """
    dims = _check_spatial(x, spatial_dims)
    return torch.fft.fftn(x, dim=dims, norm="ortho")


def _inverse_real(coeffs: Tensor, spatial_dims: int) -> Tensor:
    # Spectra built here are conjugate-symmetric, so the inverse is real up to rounding; the
    # real part drops that rounding noise.
    return torch.fft.ifftn(coeffs, dim=tuple(range(-spatial_dims, 0)), norm="ortho").real


def fourier_linf_norm(x: Tensor, spatial_dims: int = 2) -> Tensor:
    """Per-sample Fourier-L-inf norm: max modulus of the orthonormal DFT, over channels too."""
    return _flat(fourier_coefficients(x, spatial_dims).abs()).amax(dim=1)


def project_fourier_linf(delta: Tensor, eps: float, spatial_dims: int = 2) -> Tensor:
    """Euclidean projection of real ``delta`` onto ``{||F delta||_inf <= eps}``.

    Clips every complex coefficient to modulus ``eps`` (keeping its phase) and inverts. Clipping
    moduli keeps a real signal's conjugate symmetry, so the result is real and the projection is
    idempotent.
    """
    coeffs = fourier_coefficients(delta, spatial_dims)
    modulus = coeffs.abs()
    scale = torch.clamp(eps / modulus.clamp_min(_TINY), max=1.0)
    return _inverse_real(coeffs * scale, spatial_dims).to(delta.dtype)


def fourier_linf_ascent_direction(grad: Tensor, spatial_dims: int = 2) -> Tensor:
    """``argmax_{||F u||_inf <= 1} <grad, u>`` = ``F^-1(phase(F grad))`` (zero where F grad is 0)."""
    coeffs = fourier_coefficients(grad, spatial_dims)
    modulus = coeffs.abs()
    phase = torch.where(modulus > _TINY, coeffs / modulus.clamp_min(_TINY), torch.zeros_like(coeffs))
    return _inverse_real(phase, spatial_dims).to(grad.dtype)


# ----------------------------------------------------------------------------- balls
class NormBall:
    """A threat model ``{delta : norm(delta) <= eps}`` as PGD sees it (per sample)."""

    name: str = "abstract"

    def norm(self, delta: Tensor) -> Tensor:
        """Per-sample norm, shape (N,)."""
        raise NotImplementedError

    def project(self, delta: Tensor, eps: float) -> Tensor:
        """Euclidean projection of each sample of ``delta`` onto the radius-``eps`` ball."""
        raise NotImplementedError

    def ascent_direction(self, grad: Tensor) -> Tensor:
        """Unit-norm (in this norm) direction maximising the first-order increase ``<grad, u>``."""
        raise NotImplementedError

    def random_init(self, like: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
        """A random point inside the ball, used as PGD's random start."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinfBall(NormBall):
    """``||delta||_inf <= eps``: sign steps and elementwise clipping (Madry et al. PGD)."""

    name = "linf"

    def norm(self, delta: Tensor) -> Tensor:
        return linf_norm(delta)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        return delta.clamp(-eps, eps)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        return grad.sign()

    def random_init(self, like: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
        u = torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        return (2.0 * u - 1.0) * eps


class L2Ball(NormBall):
    """``||delta||_2 <= eps``: normalised-gradient steps and radial projection."""

    name = "l2"

    def norm(self, delta: Tensor) -> Tensor:
        return l2_norm(delta)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        factor = torch.clamp(eps / l2_norm(delta).clamp_min(_TINY), max=1.0)
        return delta * _per_sample(factor, delta)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        return grad / _per_sample(l2_norm(grad).clamp_min(_TINY), grad)

    def random_init(self, like: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
        # Uniform in the ball: Gaussian direction, radius eps * U^(1/d).
        g = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        d = g[0].numel()
        r = torch.rand(like.shape[0], generator=generator, dtype=like.dtype, device=like.device) ** (1.0 / d)
        return self.ascent_direction(g) * _per_sample(eps * r, like)


class FourierLinfBall(NormBall):
    """``max_k |(F delta)_k| <= eps`` with ``F`` the orthonormal DFT over the last ``spatial_dims``
    dimensions (2 for ``(N, C, H, W)`` images, 1 for ``(N, C, L)`` or ``(N, L)`` signals)."""

    name = "fourier-linf"

    def __init__(self, spatial_dims: int = 2) -> None:
        if spatial_dims not in (1, 2):
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims}")
        self.spatial_dims = spatial_dims

    def norm(self, delta: Tensor) -> Tensor:
        return fourier_linf_norm(delta, self.spatial_dims)

    def project(self, delta: Tensor, eps: float) -> Tensor:
        return project_fourier_linf(delta, eps, self.spatial_dims)

    def ascent_direction(self, grad: Tensor) -> Tensor:
        return fourier_linf_ascent_direction(grad, self.spatial_dims)

    def random_init(self, like: Tensor, eps: float, generator: torch.Generator | None = None) -> Tensor:
        # Random phases (those of a white-noise signal, hence conjugate-symmetric) with every
        # modulus equal to eps * U, U ~ Uniform(0, 1) per sample.
        g = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
        r = torch.rand(like.shape[0], generator=generator, dtype=like.dtype, device=like.device)
        return self.ascent_direction(g) * _per_sample(eps * r, like)

    def __repr__(self) -> str:
        return f"FourierLinfBall(spatial_dims={self.spatial_dims})"


BALL_NAMES = ("linf", "l2", "fourier-linf")


def get_ball(name: str | NormBall, spatial_dims: int = 2) -> NormBall:
    """The ball named ``"linf"``, ``"l2"`` or ``"fourier-linf"`` (a :class:`NormBall` passes through)."""
    if isinstance(name, NormBall):
        return name
    if name == "linf":
        return LinfBall()
    if name == "l2":
        return L2Ball()
    if name == "fourier-linf":
        return FourierLinfBall(spatial_dims)
    raise ValueError(f"ball must be one of {BALL_NAMES} or a NormBall, got {name!r}")


# ----------------------------------------------------------------------------- PGD
LossOnLogits = Callable[[Tensor, Tensor], Tensor]


def _sum_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    # Summed (not averaged) so each sample's input gradient does not shrink with batch size.
    if logits.dim() == 1 or logits.shape[-1] == 1:
        # A single logit is a binary classifier with labels in {0, 1} or {-1, +1}.
        target = (y > 0).to(logits.dtype).reshape(logits.shape)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    return F.cross_entropy(logits, y, reduction="sum")


def pgd_attack(
    model: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    ball: str | NormBall,
    eps: float,
    steps: int,
    step_size: float | None = None,
    random_start: bool = True,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    loss_fn: LossOnLogits = _sum_cross_entropy,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent on ``loss_fn(model(x + delta), y)`` over ``ball(eps)``.

    Each step moves ``step_size`` along the ball's steepest-ascent direction, clamps ``x + delta``
    into ``bounds`` and projects ``delta`` back onto the ball. Clamping first keeps the norm bound
    exact for every ball; for L-inf and L2 the projection also keeps the point inside the box
    (it moves ``x + delta`` towards ``x``), while the Fourier ball is not aligned with the pixel box,
    so pass ``bounds=None`` to keep Fourier perturbations exactly in their ball.

    Args:
        model: maps ``x`` to logits (N, classes) or one logit (N,)/(N, 1) for binary labels.
        ball: ``"linf"``, ``"l2"``, ``"fourier-linf"`` or a :class:`NormBall`.
        eps: radius (> 0; 0 returns ``x`` unchanged).
        steps: number of gradient steps (>= 1).
        step_size: defaults to ``2.5 * eps / steps`` (Madry et al.), so PGD can cross the ball.
        random_start: start from ``ball.random_init`` instead of ``x``.
        bounds: valid input range, or ``None``.
        loss_fn: loss on ``(logits, y)``; default summed cross-entropy.

    Returns the adversarial inputs, detached. The model's train/eval mode is left as it is and no
    parameter gradient is accumulated.
    """
    ball = get_ball(ball)
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if step_size is None:
        step_size = 2.5 * eps / steps
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    if bounds is not None and bounds[0] >= bounds[1]:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    x = x.detach()
    if eps == 0:
        return x.clone()

    def feasible(delta: Tensor) -> Tensor:
        if bounds is not None:
            delta = (x + delta).clamp(*bounds) - x
        return ball.project(delta, eps)

    delta = ball.random_init(x, eps, generator) if random_start else torch.zeros_like(x)
    delta = feasible(delta)
    with torch.enable_grad():
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = loss_fn(model(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = feasible(delta.detach() + step_size * ball.ascent_direction(grad))
    return (x + delta).detach()


def make_pgd(
    ball: str | NormBall, eps: float, steps: int, **kwargs: object
) -> Callable[[torch.nn.Module, Tensor, Tensor], Tensor]:
    """``pgd_attack`` with its threat model fixed: ``perturb(model, x, y) -> x_adv``.

    This is the ``perturb`` argument :func:`common.training.evaluate` takes for robust
    accuracy, e.g. ``evaluate(model, test, ctx, perturb=make_pgd("linf", 0.1, 20))``.
    """
    ball = get_ball(ball)

    def perturb(model: torch.nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return pgd_attack(model, x, y, ball, eps, steps, **kwargs)  # type: ignore[arg-type]

    return perturb
