"""Byzantine-robust aggregation rules over stacked gradients.

Every rule maps an ``(n, d)`` tensor of worker gradients and the number ``f`` of Byzantine
workers it must tolerate to one ``(d,)`` gradient. All math is pure torch on whatever device
the input lives on, so the same rule runs in the one-process simulation and inside a DDP hook.
Half-precision input (fp16, bf16) is aggregated in fp32 and returned in its own dtype.

Rules: :class:`Mean`, :class:`CoordinateMedian`, :class:`TrimmedMean`,
:class:`MeanAroundMedian`, :class:`Krum` (Multi-Krum with ``m > 1``, any p-norm),
:class:`GeometricMedian` (Weiszfeld, Vardi-Zhang variant), :class:`Bulyan` (selection rule +
final rule), :class:`CenteredClipping`, :class:`MDA` (minimum diameter averaging),
:class:`SMEA` (smallest maximum eigenvalue averaging), :class:`MoNNA` (nearest neighbours of a
trusted row) and :class:`CAF` (covariance-bound agnostic filter).

Untrusted rows go through :func:`aggregate_untrusted`: one finite check, invalid rows dropped
(counted against ``f``) or zeroed, and a fallback (``value=None``) when more rows are invalid
than ``f`` allows, instead of an exception.

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
import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .validation import InvalidPolicy, check_f, check_grads, check_shape, finite_rows, require_workers

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
    "MDA",
    "SMEA",
    "MoNNA",
    "CAF",
    "Aggregation",
    "aggregate_untrusted",
    "coordinate_median",
    "pairwise_distances",
    "clip_rows",
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


def clip_rows(grads: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Scale every row with L2 norm above ``threshold`` down to norm ``threshold``."""
    norms = torch.linalg.vector_norm(grads, dim=1, keepdim=True)
    scale = (threshold / norms.clamp_min(torch.finfo(grads.dtype).tiny)).clamp(max=1.0)
    return grads * scale


def _compute_dtype(grads: torch.Tensor) -> torch.Tensor:
    # cdist, sort-based medians and eigen-solvers are not implemented (or not accurate) in half
    # precision: compute in fp32, hand back the caller's dtype
    return grads if grads.dtype in (torch.float32, torch.float64) else grads.float()


class Aggregator(abc.ABC):
    """Base class: ``rule(grads, f) -> (d,)``.

    ``__call__`` validates ``grads`` (finite ``(n, d)`` floating tensor) and ``f`` once, checks
    the rule's worker requirement :meth:`min_workers` and calls :meth:`_aggregate` on an fp32
    (or fp64) copy. Composite rules call their members' ``_aggregate`` directly, so nothing is
    checked twice.

    ``dropped``: rows the caller removed before the call because they were invalid, already
    subtracted from ``f`` (see :func:`aggregate_untrusted`). The requirement is then checked for
    the configuration the caller promised (``n + dropped`` rows, ``f + dropped``), and rules with
    a fixed size (trimmed mean's ``b``, mean-around-median's ``keep``, Multi-Krum's ``m``)
    shrink it to the rows that are left instead of failing.
    """

    #: short name used in tables and reprs
    name: str = "aggregator"
    #: draws a different rule at every step (MixTailor); the DDP hook then derives every step's
    #: draw by commit-reveal (see :mod:`commcomp.robust.draws`)
    randomized: bool = False

    def __call__(self, grads: torch.Tensor, f: int, *, dropped: int = 0) -> torch.Tensor:
        check_grads(grads)
        return self._apply(grads, f, dropped)

    def _apply(self, grads: torch.Tensor, f: int, dropped: int = 0) -> torch.Tensor:
        """``__call__`` without the finite check, for callers that made it (one pass per step)."""
        check_f(f, grads.shape[0])
        if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
            raise ValueError(f"dropped must be an int >= 0, got {dropped!r}")
        self.check_workers(grads.shape[0] + dropped, f + dropped)
        return self._aggregate(_compute_dtype(grads), f).to(grads.dtype)

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

    def attacker_view(self) -> Any:
        """What a (simulated) attacker may know about this defence: a deterministic rule is
        public, so the rule itself; :class:`~commcomp.robust.mixtailor.MixTailor` overrides
        this with its pool, without the seed or any draw."""
        return self

    def config(self) -> dict[str, Any]:
        """The rule's hyperparameters (plain values and nested rules): what ranks must agree
        on. Used for MixTailor's pool fingerprint."""
        out: dict[str, Any] = {"rule": type(self).__qualname__, "name": self.name}
        for key, value in sorted(vars(self).items()):
            if key.startswith("_"):
                continue
            if isinstance(value, Aggregator):
                out[key] = value.config()
            elif value is None or isinstance(value, (bool, int, str)):
                out[key] = value
            elif isinstance(value, float):
                out[key] = value.hex()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{self.name} has no state, got keys {sorted(state)}")

    @abc.abstractmethod
    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        """The rule on validated, finite, fp32/fp64 rows that meet :meth:`min_workers`."""

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Aggregation:
    """Result of :func:`aggregate_untrusted`.

    Attributes:
        value: the aggregate, or ``None`` when more rows were invalid than ``f`` tolerates.
        bad: ``(n,)`` bool mask of the invalid (non-finite) rows.
        f_effective: the ``f`` the rule was applied with.
    """

    value: torch.Tensor | None
    bad: torch.Tensor
    f_effective: int

    @property
    def over_budget(self) -> bool:
        return self.value is None


def aggregate_untrusted(rule: Aggregator, grads: torch.Tensor, f: int, policy: InvalidPolicy = "drop") -> Aggregation:
    """Aggregate rows that may hold inf/NaN: the entry point of the simulation and the DDP hook.

    One finite check over ``grads``; with ``b`` invalid rows:

    * ``b <= f``: ``"drop"`` removes them and applies ``rule`` with ``f - b`` (each invalid row
      is one of the ``f`` Byzantine workers), ``"zero"`` replaces them by zeros and keeps ``f``.
      Whenever ``rule`` accepts ``(n, f)``, this never raises (see ``dropped`` in
      :class:`Aggregator`).
    * ``b > f``: more rows failed than the tolerance allows, so honest workers produced inf/NaN
      too (an fp16 overflow under AMP) or the Byzantine bound is broken. Nothing is aggregated:
      ``value`` is ``None`` and the caller falls back (the hook returns NaN so AMP's GradScaler
      skips the step; the simulation skips it) and counts it.

    >>> import torch
    >>> from commcomp.robust import TrimmedMean, aggregate_untrusted
    >>> g = torch.tensor([[0.0], [1.0], [2.0], [float("nan")], [9.0]])
    >>> aggregate_untrusted(TrimmedMean(b=2), g, f=1).value.tolist()   # b shrinks with n
    [1.5]
    >>> aggregate_untrusted(TrimmedMean(b=2), g.fill_(float("nan")), f=1).value is None
    True
    """
    if not isinstance(rule, Aggregator):
        raise ValueError(f"rule must be an Aggregator, got {type(rule).__name__}")
    check_shape(grads)
    check_f(f)
    if policy not in ("drop", "zero"):
        raise ValueError(f"policy must be 'drop' or 'zero', got {policy!r}")
    bad = ~finite_rows(grads)
    num_bad = int(bad.sum())
    if num_bad > f:
        return Aggregation(None, bad, 0)
    if num_bad == 0:
        return Aggregation(rule._apply(grads, f), bad, f)
    if policy == "drop":
        return Aggregation(rule._apply(grads[~bad], f - num_bad, num_bad), bad, f - num_bad)
    zeroed = torch.where(bad[:, None], torch.zeros_like(grads), grads)
    return Aggregation(rule._apply(zeroed, f), bad, f)


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
    n >= 2b + 1 (when invalid rows were dropped, ``b`` shrinks to ``(n - 1) // 2``)."""

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
        n = grads.shape[0]
        b = min(self._trim(f), (n - 1) // 2)
        return grads.sort(dim=0).values[b : n - b].mean(dim=0)


class MeanAroundMedian(Aggregator):
    """Per coordinate, average the ``keep`` values closest to the coordinate median
    (MeaMed; Bulyan's final step). ``keep`` defaults to ``n - 2f`` (at most n)."""

    def __init__(self, keep: int | None = None) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
        self.keep = keep
        self.name = "mean_around_median" if keep is None else f"mean_around_median(keep={keep})"

    def min_workers(self, f: int) -> int:
        return max(2 * f + 1, self.keep or 1)

    def _requirement(self, f: int) -> str:
        return "max(2f + 1, keep)"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        keep = min(self.keep or n - 2 * f, n)
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
        m: how many gradients Multi-Krum averages (``1 <= m <= n``; at most the rows left
            when invalid rows were dropped).
    """

    def __init__(self, p: float = 2.0, m: int = 1) -> None:
        if isinstance(p, bool) or not (isinstance(p, (int, float)) and (p >= 1 or math.isinf(p))):
            raise ValueError(f"p must be a norm order >= 1 (or inf), got {p!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
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
        return self._scores(pairwise_distances(_compute_dtype(grads), self.p).square(), f)

    @staticmethod
    def _scores(sq_dist: torch.Tensor, f: int, alive: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the ``alive`` rows (``inf`` for the others) from squared distances."""
        n = sq_dist.shape[0]
        alive = torch.ones(n, dtype=torch.bool, device=sq_dist.device) if alive is None else alive
        n_alive = int(alive.sum())
        # Bulyan's last rounds run Krum on fewer than 2f + 3 rows: keep at least one neighbour,
        # and never more than there are
        k = min(max(1, n_alive - f - 2), n_alive - 1)
        if k == 0:
            return torch.zeros(n, dtype=sq_dist.dtype, device=sq_dist.device).masked_fill(~alive, math.inf)
        d = sq_dist.masked_fill(~alive[None, :], math.inf)
        d = d.masked_fill(torch.eye(n, dtype=torch.bool, device=d.device), math.inf)
        s = d.topk(k, dim=1, largest=False).values.sum(dim=1)
        return s.masked_fill(~alive, math.inf)

    def select(self, grads: torch.Tensor, f: int, count: int) -> torch.Tensor:
        """Indices of ``count`` distinct rows chosen by repeated Krum: pick the best, remove it,
        rescore the rest (Bulyan's selection phase)."""
        n = grads.shape[0]
        if not 0 <= count <= n:
            raise ValueError(f"count must be in [0, n={n}], got {count}")
        sq = pairwise_distances(_compute_dtype(grads), self.p).square()
        alive = torch.ones(n, dtype=torch.bool, device=grads.device)
        chosen = []
        for _ in range(count):
            candidates = alive.nonzero().flatten()
            # among the rows still alive only: squared distances can overflow to inf, and an
            # argmin over all rows would then return a row already taken
            best = int(torch.argmin(self._scores(sq, f, alive)[candidates]))  # first minimum
            i = int(candidates[best])
            chosen.append(i)
            alive[i] = False
        return torch.tensor(chosen, dtype=torch.long, device=grads.device)

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        s = self._scores(pairwise_distances(grads, self.p).square(), f)
        m = min(self.m, grads.shape[0])
        # stable sort so that ties resolve to the lower index deterministically on every rank
        best = torch.sort(s, stable=True).indices[:m]
        return grads[best].mean(dim=0)


class GeometricMedian(Aggregator):
    """Geometric median ``argmin_z sum_i ||g_i - z||_2`` (RFA, Pillutla et al. 2022) by
    Weiszfeld iterations in the Vardi-Zhang form (Vardi & Zhang 2000), which stays correct when
    an iterate lands on an input row: the row is left out of the Weiszfeld average and the step
    is shortened by ``min(1, eta / ||R||)`` (``eta``: rows at the iterate, ``R``: the sum of unit
    vectors towards the others); if ``||R|| <= eta`` the iterate is optimal. Every step lowers
    the objective. Needs n >= 2f + 1 (breakdown point 1/2). Computed in fp64.

    Args:
        eps: rows closer than ``eps * max_i ||g_i - z||`` to the iterate count as on it.
        max_iter: iteration cap.
        tol: stop when the objective drops by less than ``tol`` times its value.
    """

    name = "geomed"

    def __init__(self, eps: float = 1e-12, max_iter: int = 500, tol: float = 1e-12) -> None:
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if not tol >= 0:
            raise ValueError(f"tol must be >= 0, got {tol!r}")
        self.eps, self.max_iter, self.tol = float(eps), max_iter, float(tol)

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _requirement(self, f: int) -> str:
        return "2f + 1"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        x = grads.double()  # Weiszfeld weights 1/dist lose precision in fp32 near convergence
        z = coordinate_median(x)  # a robust start: the mean could begin far away
        dist = torch.linalg.vector_norm(x - z, dim=1)
        objective = dist.sum()
        for _ in range(self.max_iter):
            at = dist <= self.eps * dist.max()
            if bool(at.all()):
                break  # every row sits on z
            w = torch.where(at, torch.zeros_like(dist), 1.0 / dist.clamp_min(torch.finfo(x.dtype).tiny))
            weiszfeld = (w[:, None] * x).sum(dim=0) / w.sum()
            eta = int(at.sum())
            if eta:
                pull = torch.linalg.vector_norm((w[:, None] * (x - z)).sum(dim=0))
                if pull <= eta:
                    break  # the optimality condition at a data point
                step = min(1.0, float(eta / pull))
                z_new = (1.0 - step) * weiszfeld + step * z
            else:
                z_new = weiszfeld
            dist_new = torch.linalg.vector_norm(x - z_new, dim=1)
            objective_new = dist_new.sum()
            if objective_new >= objective:
                break  # rounding: no more progress
            converged = objective - objective_new <= self.tol * objective
            z, dist, objective = z_new, dist_new, objective_new
            if converged:
                break
        return z.to(grads.dtype)


class Bulyan(Aggregator):
    """Bulyan (El Mhamdi et al. 2018): select ``theta = n - 2f`` gradients with repeated
    ``selection`` (Krum under any p-norm), then apply ``final`` to the selected rows with the
    same ``f`` (default: per coordinate, the mean of the ``theta - 2f`` values closest to the
    median). Needs n >= 4f + 3 (and ``theta`` rows for ``final``).
    """

    def __init__(self, selection: Krum | None = None, final: Aggregator | None = None) -> None:
        self.selection = selection if selection is not None else Krum(p=2)
        if not hasattr(self.selection, "select"):
            raise ValueError("selection must provide select(grads, f, count) (e.g. Krum)")
        self.final = final if final is not None else MeanAroundMedian()
        if not isinstance(self.final, Aggregator):
            raise ValueError(f"final must be an Aggregator, got {type(self.final).__name__}")
        self.name = f"bulyan({self.selection.name},{self.final.name})"

    def min_workers(self, f: int) -> int:
        return max(4 * f + 3, 2 * f + self.final.min_workers(f))

    def _requirement(self, f: int) -> str:
        return "4f + 3" if 4 * f + 3 >= 2 * f + self.final.min_workers(f) else "2f + final requirement"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        theta = grads.shape[0] - 2 * f
        chosen = self.selection.select(grads, f, theta)
        return self.final._aggregate(grads[chosen], f)


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
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
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
            v = v + clip_rows(grads - v, self.tau).mean(dim=0)
        if self.center == "previous":
            self._previous = v.detach().clone()
        return v

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self._previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"previous"}:
            raise ValueError(f"state must have exactly the key 'previous', got {sorted(state)}")
        self._previous = state["previous"]


class _SubsetRule(Aggregator):
    """Rules that search every subset of ``n - f`` rows (MDA, SMEA): exact, combinatorial.

    ``max_subsets`` bounds the search; :meth:`check_workers` refuses configurations above it
    (so a DDP job fails at its first step, on every rank, not in the middle of training).
    """

    def __init__(self, max_subsets: int = 100_000) -> None:
        if isinstance(max_subsets, bool) or not isinstance(max_subsets, int) or max_subsets < 1:
            raise ValueError(f"max_subsets must be an int >= 1, got {max_subsets!r}")
        self.max_subsets = max_subsets

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _requirement(self, f: int) -> str:
        return "2f + 1"

    def check_workers(self, n: int, f: int) -> None:
        super().check_workers(n, f)
        if math.comb(n, f) > self.max_subsets:
            raise ValueError(
                f"{self.name} would search C(n={n}, f={f}) = {math.comb(n, f)} subsets, more than "
                f"max_subsets={self.max_subsets}"
            )

    @abc.abstractmethod
    def _scores(self, grads: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        """Score of every subset (rows of ``subsets``, indices); the lowest wins."""

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        # lexicographic order: ties go to the first subset, identically on every rank
        subsets = torch.tensor(list(itertools.combinations(range(n), n - f)), dtype=torch.long, device=grads.device)
        best = int(torch.argmin(self._scores(grads, subsets)))
        return grads[subsets[best]].mean(dim=0)


class MDA(_SubsetRule):
    """Minimum diameter averaging (El Mhamdi et al. 2020): the mean of the ``n - f`` rows whose
    largest pairwise L2 distance is smallest. Needs n >= 2f + 1; searches ``C(n, f)`` subsets."""

    name = "mda"

    def _scores(self, grads: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        dist = pairwise_distances(grads, 2.0)
        return dist[subsets[:, :, None], subsets[:, None, :]].amax(dim=(1, 2))


class SMEA(_SubsetRule):
    """Smallest maximum eigenvalue averaging (Allouah et al. 2025): the mean of the ``n - f``
    rows whose empirical covariance has the smallest largest eigenvalue. Needs n >= 2f + 1;
    searches ``C(n, f)`` subsets, each through its ``(n - f) x (n - f)`` centred Gram matrix
    (same nonzero spectrum as the ``d x d`` covariance)."""

    name = "smea"

    def _scores(self, grads: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        centred = grads - grads.mean(dim=0)  # a shift leaves covariances unchanged; less cancellation
        gram = (centred @ centred.T).double()
        size = subsets.shape[1]
        block = gram[subsets[:, :, None], subsets[:, None, :]]
        h = torch.eye(size, dtype=gram.dtype, device=gram.device) - 1.0 / size
        return torch.linalg.eigvalsh(h @ block @ h)[:, -1] / size


class MoNNA(Aggregator):
    """MoNNA (Farhadkhani et al. 2023): the mean of the ``n - f`` rows nearest (L2) to the row
    ``pivot``, which the caller trusts (its own vector in peer-to-peer learning; in
    :func:`~commcomp.robust.simulation.simulate` the honest rows come first, so the default
    0 is honest). ``pivot`` indexes the rows the rule receives: after invalid rows were dropped
    the indices shift (keep the trusted row first), and a pivot past the rows left falls to the
    last row. Needs n >= max(2f + 1, pivot + 1)."""

    def __init__(self, pivot: int = 0) -> None:
        if isinstance(pivot, bool) or not isinstance(pivot, int) or pivot < 0:
            raise ValueError(f"pivot must be an int >= 0, got {pivot!r}")
        self.pivot = pivot
        self.name = "monna" if pivot == 0 else f"monna(pivot={pivot})"

    def min_workers(self, f: int) -> int:
        return max(2 * f + 1, self.pivot + 1)

    def _requirement(self, f: int) -> str:
        return "max(2f + 1, pivot + 1)"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        dist = torch.linalg.vector_norm(grads - grads[min(self.pivot, n - 1)], dim=1)
        # stable: ties go to the lower index; the pivot (distance 0) is always among them
        nearest = torch.sort(dist, stable=True).indices[: n - f]
        return grads[nearest].mean(dim=0)


class CAF(Aggregator):
    """Covariance-bound agnostic filter (Allouah, Guerraoui & Stephan 2025).

    Weights ``c_i = 1``; while ``sum c > n - 2f``: the weighted mean ``mu_c`` and covariance
    ``Sigma_c``, its top eigenpair ``(lambda, v)``, ``tau_i = ((g_i - mu_c) . v)^2``, and
    ``c_i <- c_i (1 - tau_i / max_j tau_j)`` (max over rows still weighted, so each round
    removes at least one row). Returns the ``mu_c`` with the smallest ``lambda`` seen.
    The eigenpair is exact, from the ``n x n`` Gram matrix (the papers use power iterations).
    Needs n >= 2f + 1; ``f = 0`` is the mean.
    """

    name = "caf"

    def min_workers(self, f: int) -> int:
        return 2 * f + 1

    def _requirement(self, f: int) -> str:
        return "2f + 1"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        centred = grads - grads.mean(dim=0)
        gram = (centred @ centred.T).double()  # everything below is n x n
        c = torch.ones(n, dtype=torch.float64, device=grads.device)
        best_c, best_lambda = c.clone(), math.inf
        while float(c.sum()) > n - 2 * f:
            total = c.sum()
            p = c / total
            # Gram of the rows centred on mu_c:  K - K p 1^T - 1 p^T K + (p^T K p) 1 1^T
            kp = gram @ p
            k_mu = gram - kp[None, :] - kp[:, None] + p @ kp
            root = p.sqrt()
            evals, evecs = torch.linalg.eigh(root[:, None] * k_mu * root[None, :])
            lam, u = float(evals[-1]), evecs[:, -1]
            if lam < best_lambda:
                best_lambda, best_c = lam, c.clone()
            if lam <= 0.0:
                break  # no spread left
            # projections of every centred row on v = A^T u / sqrt(lambda), A = diag(sqrt p) Y
            tau = (k_mu @ (root * u)).square() / lam
            tau_max = tau[c > 0].max()
            if not tau_max > 0:
                break
            c = (c * (1.0 - tau / tau_max)).clamp_min(0.0)
        weights = (best_c / best_c.sum()).to(grads.dtype)
        return weights @ grads
