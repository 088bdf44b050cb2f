"""Level fitting for ALQ and AMQ (Faghri et al., "Adaptive Gradient Quantization for Data-Parallel
SGD", NeurIPS 2020): choose a level table minimizing the expected variance of stochastic rounding.

Model. Rounding a normalized magnitude ``r`` in ``[l_j, l_{j+1}]`` stochastically onto its two
neighbours is unbiased with variance ``(l_{j+1} - r)(r - l_j)``. With ``H`` the distribution of
``r`` over a gradient, each coordinate weighted by its bucket's squared norm (exactly what
``commcomp::level_stats`` histograms), the expected squared error is

    V(L) = sum_j  integral_{l_j}^{l_{j+1}} (l_{j+1} - r)(r - l_j) dH(r),

and ``V(L) / integral r^2 dH`` is the normalized variance ``E||Q(x) - x||^2 / ||x||^2``.
:class:`Histogram` is ``H`` with a piecewise-uniform density on its bins (sqrt-spaced, see
csrc/core/stats.h); every integral below is exact for that density.

ALQ (:func:`fit_alq`) — coordinate descent. ``V`` depends on ``l_j`` only through its two
intervals, and with ``a = l_{j-1}``, ``b = l_{j+1}``

    dV/dl_j   = integral_a^{l_j} (r - a) dH - integral_{l_j}^b (b - r) dH,
    d2V/dl_j2 = (b - a) h(l_j) >= 0,

so ``V`` is convex in ``l_j`` and its minimizer solves ``dV/dl_j = 0``, which rearranges to

    H(l_j) - H(a) = integral_a^b (b - r) / (b - a) dH(r)

(the mass below ``l_j`` equals the mass expected to round *down*): one inverse-CDF evaluation per
level, exact, so a sweep never increases ``V``. Levels with even and odd indices do not share an
interval, so each half is updated at once (block coordinate descent, same guarantee).

AMQ (:func:`fit_amq`) — levels ``{0, p^(s-1), ..., p, 1}`` and gradient descent on the multiplier
``p`` using ``dV/dp = sum_j dV/dl_j * d l_j / dp``, with a backtracking (Armijo) step so that ``V``
decreases at every accepted step; trial steps follow the secant of ``dV/dp`` (1-D Barzilai-Borwein).
``p = 1/2`` is NUQSGD.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Histogram", "FitResult", "fit_alq", "fit_amq", "exponential_levels", "to_float32_levels"]


class Histogram:
    """A weighted distribution on [0, 1] with a piecewise-uniform density on ``edges``.

    ``masses[k]`` is the weight in ``[edges[k], edges[k+1])``. Build one from the op's output
    with :meth:`from_stats`, or from samples with :meth:`from_samples`.
    """

    def __init__(self, edges: np.ndarray, masses: np.ndarray) -> None:
        edges = np.asarray(edges, dtype=np.float64)
        masses = np.asarray(masses, dtype=np.float64)
        if edges.ndim != 1 or masses.ndim != 1 or edges.size != masses.size + 1:
            raise ValueError(f"edges must have one more entry than masses, got {edges.shape} and {masses.shape}")
        if edges[0] != 0.0 or edges[-1] != 1.0 or np.any(np.diff(edges) <= 0):
            raise ValueError("edges must increase strictly from 0 to 1")
        if not np.all(np.isfinite(masses)) or np.any(masses < 0):
            raise ValueError("masses must be finite and non-negative")
        self.edges = edges
        self.masses = masses
        self._width = np.diff(edges)
        self._density = masses / self._width
        # Cumulative mass and first moment at each edge (bin means are midpoints: uniform density).
        self._c0 = np.concatenate([[0.0], np.cumsum(masses)])
        self._c1 = np.concatenate([[0.0], np.cumsum(masses * 0.5 * (edges[:-1] + edges[1:]))])

    @staticmethod
    def sqrt_edges(bins: int) -> np.ndarray:
        """Edges ``(k / bins)^2`` of the op's sqrt-spaced bins."""
        return (np.arange(bins + 1, dtype=np.float64) / bins) ** 2

    @classmethod
    def from_stats(cls, stats: torch.Tensor | np.ndarray) -> "Histogram":
        """From the bin masses returned by :func:`commcomp.ops.level_stats` (any device)."""
        masses = stats.detach().to("cpu", torch.float64).numpy() if isinstance(stats, torch.Tensor) else stats
        masses = np.asarray(masses, dtype=np.float64)
        return cls(cls.sqrt_edges(masses.size), masses)

    @classmethod
    def from_samples(cls, r: np.ndarray, weights: np.ndarray | None = None, bins: int = 1024) -> "Histogram":
        """Sqrt-spaced histogram of samples ``r`` in [0, 1] (zeros dropped, as the op does)."""
        r = np.asarray(r, dtype=np.float64)
        w = np.ones_like(r) if weights is None else np.asarray(weights, dtype=np.float64)
        keep = r > 0
        masses, _ = np.histogram(np.minimum(r[keep], 1.0), bins=cls.sqrt_edges(bins), weights=w[keep])
        return cls(cls.sqrt_edges(bins), masses)

    @property
    def total(self) -> float:
        return float(self._c0[-1])

    def _bin(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, self.masses.size - 1)

    def cdf(self, x: np.ndarray | float) -> np.ndarray:
        """Mass in ``[0, x]`` (unnormalized)."""
        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
        k = self._bin(x)
        return self._c0[k] + self._density[k] * (x - self.edges[k])

    def first_moment(self, x: np.ndarray | float) -> np.ndarray:
        """``integral_0^x r dH(r)``."""
        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
        k = self._bin(x)
        return self._c1[k] + self._density[k] * 0.5 * (x - self.edges[k]) * (x + self.edges[k])

    def second_moment(self) -> float:
        """``integral r^2 dH`` — the squared gradient norm when ``H`` came from level_stats."""
        e0, e1 = self.edges[:-1], self.edges[1:]
        return float(np.sum(self._density * (e1**3 - e0**3) / 3.0))

    def inverse_cdf(self, t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """A point ``x`` in ``[lo, hi]`` with ``cdf(x) = t``: the middle of the preimage when ``H``
        is flat there (every such point is equally optimal; the middle keeps levels apart)."""
        t = np.asarray(t, dtype=np.float64)
        n = self.masses.size
        # Leftmost x with cdf(x) >= t: inside the bin whose cumulative range holds t.
        k = np.clip(np.searchsorted(self._c0, t, side="left") - 1, 0, n - 1)
        dens = np.where(self.masses[k] > 0, self._density[k], np.inf)  # empty bin: stay at its edge
        left = self.edges[k] + np.maximum(t - self._c0[k], 0.0) / dens
        # Rightmost x with cdf(x) <= t: the end of a flat stretch, if t sits on one.
        k2 = np.searchsorted(self._c0, t, side="right") - 1
        over = k2 >= n  # t >= total mass: everything up to 1
        k2 = np.clip(k2, 0, n - 1)
        safe = np.where(self.masses[k2] > 0, self._density[k2], 1.0)
        right = np.where(over, 1.0, self.edges[k2] + (t - self._c0[k2]) / safe)
        left, right = np.clip(left, lo, hi), np.clip(right, lo, hi)
        return 0.5 * (left + np.maximum(left, right))

    def _pieces(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Split [0, 1] at every edge and level: per piece its mass, midpoint, width, and the level
        interval ``[a, b]`` holding it. The density is constant on each piece."""
        cuts = np.union1d(self.edges, levels)
        u, v = cuts[:-1], cuts[1:]
        mid, width = 0.5 * (u + v), v - u
        mass = self._density[self._bin(mid)] * width
        j = np.clip(np.searchsorted(levels, mid, side="right") - 1, 0, levels.size - 2)
        return mass, mid, width, levels[j], levels[j + 1]

    def objective(self, levels: np.ndarray) -> float:
        """``V(levels)`` exactly; per piece ``integral (b - r)(r - a) dr = w [(b - m)(m - a) - w^2 / 12]``."""
        levels = _check_levels(levels)
        mass, mid, width, a, b = self._pieces(levels)
        return float(np.sum(mass * ((b - mid) * (mid - a) - width * width / 12.0)))

    def normalized_variance(self, levels: np.ndarray) -> float:
        """``V(levels) / integral r^2 dH``: the model's ``E||Q(x) - x||^2 / ||x||^2``."""
        m2 = self.second_moment()
        return self.objective(levels) / m2 if m2 > 0 else 0.0

    def level_gradient(self, levels: np.ndarray) -> np.ndarray:
        """``dV/dl_j`` for every level (entries 0 and -1 are for the fixed ends)."""
        levels = _check_levels(levels)
        mass, mid, _, a, b = self._pieces(levels)
        j = np.clip(np.searchsorted(levels, mid, side="right") - 1, 0, levels.size - 2)
        grad = np.zeros_like(levels)
        # A piece in [l_j, l_{j+1}] pushes l_{j+1} by integral (r - l_j) and l_j by -integral (l_{j+1} - r):
        # the integrands are linear, so the midpoint rule is exact.
        np.add.at(grad, j + 1, mass * (mid - a))
        np.add.at(grad, j, -mass * (b - mid))
        return grad

    def best_level(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The minimizer of ``V`` in a level between neighbours ``a < b`` (closed form above)."""
        fa, fb = self.cdf(a), self.cdf(b)
        round_down = b * (fb - fa) - (self.first_moment(b) - self.first_moment(a))  # integral (b - r) dH
        target = fa + np.clip(round_down / (b - a), 0.0, np.maximum(fb - fa, 0.0))
        flat = fb - fa <= 0  # no mass between the neighbours: any point is optimal, keep them apart
        return np.where(flat, 0.5 * (a + b), self.inverse_cdf(target, a, b))


def _check_levels(levels: np.ndarray) -> np.ndarray:
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or levels.size < 2 or levels[0] != 0.0 or levels[-1] != 1.0 or np.any(np.diff(levels) <= 0):
        raise ValueError(f"levels must increase strictly from 0 to 1, got {levels}")
    return levels


@dataclass(frozen=True)
class FitResult:
    """Fitted levels (float64, in [0, 1], strictly increasing), the objective ``V`` after each
    sweep/step (``history[0]`` is the start), and AMQ's multiplier (``None`` for ALQ)."""

    levels: np.ndarray
    history: tuple[float, ...]
    multiplier: float | None = None

    @property
    def objective(self) -> float:
        return self.history[-1]


def fit_alq(hist: Histogram, init: np.ndarray, max_sweeps: int = 500, tol: float = 1e-10) -> FitResult:
    """ALQ: block coordinate descent from ``init``; stops when no level moves more than ``tol``."""
    levels = _check_levels(init).copy()
    if max_sweeps < 0:
        raise ValueError(f"max_sweeps must be >= 0, got {max_sweeps}")
    history = [hist.objective(levels)]
    interior = np.arange(1, levels.size - 1)
    for _ in range(max_sweeps):
        if interior.size == 0:
            break
        before = levels.copy()
        for parity in (1, 0):
            j = interior[interior % 2 == parity]
            if j.size:
                levels[j] = hist.best_level(levels[j - 1], levels[j + 1])
        if np.any(np.diff(levels) <= 0):  # coinciding levels (only on degenerate H): undo, stop
            levels = before
            break
        history.append(hist.objective(levels))
        if np.max(np.abs(levels - before)) <= tol:
            break
    return FitResult(levels, tuple(history))


def exponential_levels(count: int, p: float) -> np.ndarray:
    """``{0, p^(count-2), ..., p, 1}`` in float64."""
    if count < 2:
        raise ValueError(f"count must be >= 2, got {count}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return np.concatenate([[0.0], p ** np.arange(count - 2, 0, -1, dtype=np.float64), [1.0]])


P_MIN, P_MAX = 1e-3, 0.999  # AMQ keeps p here: below, float32 levels underflow; above, they merge


def fit_amq(hist: Histogram, count: int, p0: float = 0.5, max_steps: int = 200, tol: float = 1e-9) -> FitResult:
    """AMQ: gradient descent on ``p`` with backtracking, from the best of ``p0`` and a coarse grid of
    multipliers; stops when a step is below ``tol``. ``history`` never increases."""
    if not P_MIN <= p0 <= P_MAX:
        raise ValueError(f"p0 must be in [{P_MIN}, {P_MAX}], got {p0}")
    powers = np.arange(count - 2, 0, -1, dtype=np.float64)  # l_j = p^powers[j-1]

    def value(p: float) -> float:
        return hist.objective(exponential_levels(count, p))

    def slope(p: float) -> float:
        g = hist.level_gradient(exponential_levels(count, p))[1:-1]
        return float(np.sum(g * powers * p ** (powers - 1)))

    p, v = float(p0), value(p0)
    history = [v]
    if count > 2:
        # V(p) can have several local minima (e.g. 4 levels: p^2 and p compete for the bulk of the
        # mass), and descent only finds the one it starts in: start from the best of p0 and a
        # coarse grid, then refine.
        grid = np.linspace(0.02, 0.98, 49)
        values = [value(float(g)) for g in grid]
        if min(values) < v:
            p, v = float(grid[int(np.argmin(values))]), float(min(values))
            history.append(v)
    step = 0.05  # first trial move of p
    prev: tuple[float, float] | None = None  # (p, slope) of the previous iterate
    for _ in range(max_steps if count > 2 else 0):
        d = slope(p)
        if d == 0.0:
            break
        if prev is not None and (d - prev[1]) * (p - prev[0]) > 0:
            # Secant (1-D Barzilai-Borwein) step: gradient descent with the step size matched to
            # the local curvature, so convergence is fast near the optimum.
            step = min(abs(d * (p - prev[0]) / (d - prev[1])), 0.25)
        while True:  # Armijo backtracking on the move size |dp| = step
            q = float(np.clip(p - np.sign(d) * step, P_MIN, P_MAX))
            vq = value(q)
            if vq <= v - 1e-4 * abs(d) * abs(q - p) or step < tol:
                break
            step *= 0.5
        if vq > v or q == p:  # no decrease possible at this resolution: converged
            break
        moved = abs(q - p)
        prev = (p, d)
        p, v = q, vq
        history.append(v)
        step = min(2.0 * step, 0.25)
        if moved <= tol:
            break
    return FitResult(exponential_levels(count, p), tuple(history), multiplier=p)


def to_float32_levels(levels: np.ndarray) -> tuple[float, ...]:
    """Round a fitted table to float32 keeping it strictly increasing from 0 to 1 (the kernels
    need a strict table; levels closer than float32 resolution are pushed apart by one ulp)."""
    v = np.asarray(levels, dtype=np.float64).astype(np.float32)
    v[0], v[-1] = 0.0, 1.0
    for j in range(v.size - 2, 0, -1):  # from the top: keep below the next level
        v[j] = min(v[j], np.nextafter(v[j + 1], np.float32(0)))
    for j in range(1, v.size - 1):  # from the bottom: keep above the previous level
        v[j] = max(v[j], np.nextafter(v[j - 1], np.float32(1)))
    if np.any(np.diff(v) <= 0):
        raise ValueError(f"cannot represent {levels} as strictly increasing float32 levels")
    return tuple(float(x) for x in v)
