"""Byzantine-robust aggregation rules over stacked gradients.

Every rule maps an ``(n, d)`` tensor of worker gradients and the number ``f`` of Byzantine
workers it must tolerate to one ``(d,)`` gradient. All math is pure torch on whatever device
the input lives on, so the same rule runs in the one-process simulation and inside a DDP hook.

Rules: :class:`Mean`, :class:`CoordinateMedian`, :class:`TrimmedMean`,
:class:`MeanAroundMedian`, :class:`Krum` (Multi-Krum with ``m > 1``, any p-norm),
:class:`GeometricMedian` (Weiszfeld), :class:`Bulyan` (selection rule + final rule) and
:class:`CenteredClipping`.

Example::

    >>> import torch
    >>> from commcomp.robust.aggregators import CoordinateMedian, Krum
    >>> g = torch.tensor([[1.0, 0.0], [1.1, 0.1], [0.9, -0.1], [1.0, 0.05], [1e6, -1e6]])
    >>> CoordinateMedian()(g, f=1).tolist()
    [1.0, 0.0]
    >>> Krum(p=2)(g, f=1).tolist()
    [1.0, 0.05000000074505806]
"""
from __future__ import annotations

import abc
import math
from typing import Any, Literal

import torch

from .validation import check_f, check_grads, require_workers

__all__ = [
    "Aggregator",
    "Mean",
    "CoordinateMedian",
    "TrimmedMean",
    "MeanAroundMedian",
    "Krum",
    "GeometricMedian",
    "Bulyan",
    "CenteredClipping",
    "coordinate_median",
    "pairwise_distances",
]


def coordinate_median(grads: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median; for even n the mean of the two middle values (torch.median
    returns the lower one, which is biased and not permutation-symmetric in value)."""
    n = grads.shape[0]
    ordered = grads.sort(dim=0).values
    if n % 2:
        return ordered[n // 2]
    return 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def pairwise_distances(grads: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``(n, n)`` matrix of ``||g_i - g_j||_p`` (exact, not the matmul shortcut for p = 2)."""
    return torch.cdist(grads[None], grads[None], p=p, compute_mode="donot_use_mm_for_euclid_dist")[0]


class Aggregator(abc.ABC):
    """Base class: ``rule(grads, f) -> (d,)``.

    ``__call__`` validates ``grads`` (finite ``(n, d)`` floating tensor) and ``f`` and checks
    the rule's worker requirement :meth:`min_workers` before calling :meth:`_aggregate`.
    """

    #: short name used in tables and reprs
    name: str = "aggregator"

    def __call__(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        check_grads(grads)
        check_f(f, grads.shape[0])
        self.check_workers(grads.shape[0], f)
        return self._aggregate(grads, f)

    def min_workers(self, f: int) -> int:
        """Smallest n for which the rule tolerates ``f`` Byzantine workers."""
        return f + 1

    def _requirement(self, f: int) -> str:
        return "f + 1"

    def check_workers(self, n: int, f: int) -> None:
        """Raise ``ValueError`` naming the rule and its requirement if ``n`` is too small."""
        check_f(f)
        require_workers(self.name, n, f, self.min_workers(f), self._requirement(f))

    def for_step(self, step: int) -> "Aggregator":
        """The deterministic rule applied at ``step`` (a randomized rule overrides this)."""
        return self

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")

    @abc.abstractmethod
    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor: ...

    def __repr__(self) -> str:
        return self.name


class Mean(Aggregator):
    """Arithmetic mean: the non-robust baseline (one outlier moves it arbitrarily far)."""

    name = "mean"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        return grads.mean(dim=0)


class CoordinateMedian(Aggregator):
    """Coordinate-wise median (CoMed, Yin et al. 2018); needs n >= 2f + 1."""

    name = "median"

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _requirement(self, f: int) -> str:
        return "2f + 1"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        return coordinate_median(grads)


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean: drop the ``b`` largest and ``b`` smallest values of each
    coordinate and average the rest (Yin et al. 2018). ``b`` defaults to ``f``; needs
    n >= 2b + 1."""

    def __init__(self, b: int | None = None) -> None:
        if b is not None:
            check_f(b)
        self.b = b
        self.name = "trimmed_mean" if b is None else f"trimmed_mean(b={b})"

    def _trim(self, f: int) -> int:
        return f if self.b is None else self.b

    def min_workers(self, f: int) -> int:
        return max(2 * self._trim(f) + 1, f + 1)

    def _requirement(self, f: int) -> str:
        return "2b + 1"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        b = self._trim(f)
        n = grads.shape[0]
        return grads.sort(dim=0).values[b : n - b].mean(dim=0)


class MeanAroundMedian(Aggregator):
    """Per coordinate, average the ``keep`` values closest to the coordinate median
    (Bulyan's final step). ``keep`` defaults to ``n - 2f``."""

    def __init__(self, keep: int | None = None) -> None:
        if keep is not None and (not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
        self.keep = keep
        self.name = "mean_around_median" if keep is None else f"mean_around_median(keep={keep})"

    def min_workers(self, f: int) -> int:
        return max(2 * f + 1, self.keep or 1)

    def _requirement(self, f: int) -> str:
        return "max(2f + 1, keep)"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        keep = self.keep or n - 2 * f
        med = coordinate_median(grads)
        closest = (grads - med).abs().topk(keep, dim=0, largest=False).indices
        return grads.gather(0, closest).mean(dim=0)


class Krum(Aggregator):
    """Krum / Multi-Krum (Blanchard et al. 2017) under the ``p``-norm.

    Score of worker i: the sum of ``||g_i - g_j||_p ** 2`` over its ``n - f - 2`` nearest
    neighbours (p = 2 is the original rule). Returns the mean of the ``m`` lowest-scoring
    gradients (``m = 1``: Krum). Needs n >= 2f + 3. Ties go to the lower index.

    Args:
        p: norm order in ``[1, inf]`` (``float("inf")`` allowed).
        m: how many gradients Multi-Krum averages (``1 <= m <= n``).
    """

    def __init__(self, p: float = 2.0, m: int = 1) -> None:
        if not (isinstance(p, (int, float)) and (p >= 1 or math.isinf(p))):
            raise ValueError(f"p must be a norm order >= 1 (or inf), got {p!r}")
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be an int >= 1, got {m!r}")
        self.p = float(p)
        self.m = m
        p_text = "inf" if math.isinf(self.p) else f"{self.p:g}"
        self.name = f"krum(p={p_text})" if m == 1 else f"multi_krum(p={p_text},m={m})"

    def min_workers(self, f: int) -> int:
        return max(2 * f + 3, self.m)

    def _requirement(self, f: int) -> str:
        return "2f + 3" if self.m <= 2 * f + 3 else "m"

    def scores(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        """Krum score of every row (lower is more central)."""
        return self._scores(pairwise_distances(grads, self.p).square(), f)

    @staticmethod
    def _scores(sq_dist: torch.Tensor, f: int, alive: torch.Tensor | None = None) -> torch.Tensor:
        n = sq_dist.shape[0]
        alive = torch.ones(n, dtype=torch.bool, device=sq_dist.device) if alive is None else alive
        n_alive = int(alive.sum())
        # Bulyan's last rounds run Krum on fewer than 2f + 3 rows; keep at least one neighbour.
        k = max(1, n_alive - f - 2)
        d = sq_dist.masked_fill(~alive[None, :], math.inf)
        d = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), math.inf)
        s = d.topk(k, dim=1, largest=False).values.sum(dim=1)
        return s.masked_fill(~alive, math.inf)

    def select(self, grads: torch.Tensor, f: int, count: int) -> torch.Tensor:
        """Indices of ``count`` rows chosen by repeated Krum: pick the best, remove it,
        rescore the rest (Bulyan's selection phase)."""
        n = grads.shape[0]
        sq = pairwise_distances(grads, self.p).square()
        alive = torch.ones(n, dtype=torch.bool, device=grads.device)
        chosen = []
        for _ in range(count):
            i = int(torch.argmin(self._scores(sq, f, alive)))  # argmin returns the first minimum
            chosen.append(i)
            alive[i] = False
        return torch.tensor(chosen, dtype=torch.long, device=grads.device)

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        s = self.scores(grads, f)
        # stable sort so that ties resolve to the lower index deterministically on every rank
        best = torch.sort(s, stable=True).indices[: self.m]
        return grads[best].mean(dim=0)


class GeometricMedian(Aggregator):
    """Geometric median ``argmin_z sum_i ||g_i - z||_2`` by smoothed Weiszfeld iterations
    (Pillutla et al. 2019, RFA). Needs n >= 2f + 1 (breakdown point 1/2).

    Args:
        eps: smoothing; distances are floored at ``eps`` so an iterate on a data point is fine.
        max_iter: iteration cap.
        tol: stop when the iterate moves less than ``tol * (1 + ||z||)``.
    """

    name = "geomed"

    def __init__(self, eps: float = 1e-8, max_iter: int = 200, tol: float = 1e-7) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.eps, self.max_iter, self.tol = eps, max_iter, tol

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _requirement(self, f: int) -> str:
        return "2f + 1"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        x = grads.double()  # Weiszfeld weights 1/dist lose precision in fp32 near convergence
        z = coordinate_median(x)  # a robust start: the mean could begin far away
        for _ in range(self.max_iter):
            w = 1.0 / torch.linalg.vector_norm(x - z, dim=1).clamp_min(self.eps)
            z_new = (w[:, None] * x).sum(dim=0) / w.sum()
            moved = torch.linalg.vector_norm(z_new - z)
            z = z_new
            if moved <= self.tol * (1.0 + torch.linalg.vector_norm(z)):
                break
        return z.to(grads.dtype)


class Bulyan(Aggregator):
    """Bulyan (El Mhamdi et al. 2018): select ``theta = n - 2f`` gradients with repeated
    ``selection`` (Krum under any p-norm), then apply ``final`` to the selected rows with the
    same ``f`` (default: per coordinate, the mean of the ``theta - 2f`` values closest to the
    median). Needs n >= 4f + 3.
    """

    def __init__(self, selection: Krum | None = None, final: Aggregator | None = None) -> None:
        self.selection = selection if selection is not None else Krum(p=2)
        if not hasattr(self.selection, "select"):
            raise ValueError("selection must provide select(grads, f, count) (e.g. Krum)")
        self.final = final if final is not None else MeanAroundMedian()
        self.name = f"bulyan({self.selection.name},{self.final.name})"

    def min_workers(self, f: int) -> int:
        return 4 * f + 3

    def _requirement(self, f: int) -> str:
        return "4f + 3"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        theta = grads.shape[0] - 2 * f
        chosen = self.selection.select(grads, f, theta)
        return self.final(grads[chosen], f)


class CenteredClipping(Aggregator):
    """Centered clipping (Karimireddy et al. 2021):
    ``v <- v + mean_i clip_tau(g_i - v)`` repeated ``iters`` times, with
    ``clip_tau(z) = z * min(1, tau / ||z||)``. Needs n >= 2f + 1.

    Args:
        tau: clipping radius (> 0).
        iters: clipping iterations.
        center: start point ``"median"`` (coordinate median of the input, stateless),
            ``"zero"``, or ``"previous"`` (the last output, as in the paper's momentum
            setting; falls back to the median when the shape changes, so do not use
            ``"previous"`` with several DDP buckets of equal size).
    """

    def __init__(self, tau: float = 1.0, iters: int = 3, center: Literal["median", "zero", "previous"] = "median") -> None:
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be an int >= 1, got {iters!r}")
        if center not in ("median", "zero", "previous"):
            raise ValueError(f"center must be 'median', 'zero' or 'previous', got {center!r}")
        self.tau, self.iters, self.center = float(tau), iters, center
        self._previous: torch.Tensor | None = None
        self.name = f"centered_clipping(tau={self.tau:g})"

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _requirement(self, f: int) -> str:
        return "2f + 1"

    def _start(self, grads: torch.Tensor) -> torch.Tensor:
        if self.center == "zero":
            return torch.zeros_like(grads[0])
        prev = self._previous
        if self.center == "previous" and prev is not None and prev.shape == grads[0].shape:
            return prev.to(grads.device, grads.dtype)
        return coordinate_median(grads)

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        v = self._start(grads)
        for _ in range(self.iters):
            diff = grads - v
            norm = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
            scale = (self.tau / norm.clamp_min(1e-12)).clamp(max=1.0)
            v = v + (diff * scale).mean(dim=0)
        if self.center == "previous":
            self._previous = v.detach().clone()
        return v

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self._previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"previous"}:
            raise ValueError(f"state must have exactly the key 'previous', got {sorted(state)}")
        self._previous = state["previous"]
