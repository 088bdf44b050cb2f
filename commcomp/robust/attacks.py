"""Byzantine attacks: what the ``f`` Byzantine workers send.

An attack is called as ``attack(honest, f, own=..., aggregator=..., generator=...)`` and
returns the ``(f, d)`` gradients the Byzantine workers send:

* ``honest``: ``(h, d)`` honest gradients of this step; omniscient attacks (``omniscient =
  True``: IPM, ALIE, mimic, adaptive) need them, the others accept ``None``.
* ``own``: ``(f, d)`` gradients the Byzantine workers computed on their own data (for
  :class:`LabelFlip` on flipped labels); used by sign flip and label flip.
* ``aggregator``: what the attacker knows of the defence (:class:`AdaptiveIPM`,
  :class:`OptimalIPM` and :class:`OptimalALIE` look at it): the rule itself for a deterministic
  rule, a :class:`~commcomp.robust.mixtailor.PoolView` (pool and weights, no seed, no draw) for
  MixTailor; callers pass ``aggregator.attacker_view()``.
* ``tolerance``: the ``f`` the defence was configured with (default: ``f``).

Example::

    >>> import torch
    >>> from commcomp.robust import IPM
    >>> honest = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> IPM(epsilon=0.5)(honest, f=2).tolist()
    [[-1.0, -1.5], [-1.0, -1.5]]
"""
from __future__ import annotations

import abc
import copy
import math
from statistics import NormalDist
from typing import Any, Callable, Sequence

import torch

from .aggregators import Aggregator

__all__ = [
    "Attack",
    "SignFlip",
    "Gaussian",
    "IPM",
    "ALIE",
    "LabelFlip",
    "Mimic",
    "NonFinite",
    "AdaptiveIPM",
    "OptimalIPM",
    "OptimalALIE",
    "alie_default_z",
    "line_maximize",
    "flip_labels",
]


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flip ``y -> C - 1 - y`` (Allen-Zhu et al. 2020; Karimireddy et al. 2022)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return num_classes - 1 - y


def alie_default_z(n: int, f: int) -> float:
    """ALIE's z from Baruch et al. 2019: ``s = floor(n/2 + 1) - f``, ``z = Phi^-1((n - s)/n)``."""
    s = n // 2 + 1 - f
    return NormalDist().inv_cdf((n - s) / n)


class Attack(abc.ABC):
    """Base class. Subclasses implement :meth:`_craft`; ``__call__`` validates shapes."""

    name: str = "attack"
    #: needs the honest gradients of the step
    omniscient: bool = False
    #: the Byzantine workers train on flipped labels (the data pipeline applies :func:`flip_labels`)
    corrupts_labels: bool = False

    def __call__(
        self,
        honest: torch.Tensor | None,
        f: int,
        *,
        own: torch.Tensor | None = None,
        aggregator: Aggregator | None = None,
        tolerance: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if isinstance(f, bool) or not isinstance(f, int) or f < 1:
            raise ValueError(f"f (number of Byzantine workers) must be an int >= 1, got {f!r}")
        if honest is not None and (honest.dim() != 2 or honest.shape[0] < 1):
            raise ValueError(f"honest must be an (h >= 1, d) tensor, got shape {tuple(honest.shape)}")
        if self.omniscient and honest is None:
            raise ValueError(f"{self.name} is omniscient: honest gradients are required")
        if own is not None and (own.dim() != 2 or own.shape[0] != f):
            raise ValueError(f"own must have shape (f={f}, d), got {tuple(own.shape)}")
        if honest is not None and own is not None and honest.shape[1] != own.shape[1]:
            raise ValueError(f"honest and own must have the same d, got {honest.shape[1]} and {own.shape[1]}")
        if honest is None and own is None:
            raise ValueError(f"{self.name} needs honest or own gradients")
        return self._craft(honest, f, own, aggregator, f if tolerance is None else tolerance, generator)

    @abc.abstractmethod
    def _craft(
        self,
        honest: torch.Tensor | None,
        f: int,
        own: torch.Tensor | None,
        aggregator: Aggregator | None,
        tolerance: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor: ...

    def __repr__(self) -> str:
        return self.name


def _reference(honest: torch.Tensor | None, own: torch.Tensor | None, f: int) -> torch.Tensor:
    """Each Byzantine worker's true gradient: its own if known, else the honest mean."""
    if own is not None:
        return own
    assert honest is not None
    return honest.mean(dim=0).expand(f, -1)


class SignFlip(Attack):
    """Send ``-scale`` times the true gradient (own gradient, else the honest mean)."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = float(scale)
        self.name = "sign_flip" if scale == 1.0 else f"sign_flip(x{self.scale:g})"

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        return -self.scale * _reference(honest, own, f)


class Gaussian(Attack):
    """Send independent ``N(mean, std^2 I)`` vectors (mean: 0)."""

    def __init__(self, std: float = 1.0, mean: float = 0.0) -> None:
        if not std >= 0:
            raise ValueError(f"std must be >= 0, got {std!r}")
        self.std, self.mean = float(std), float(mean)
        self.name = f"gaussian(std={self.std:g})"

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        ref = honest if honest is not None else own
        d = ref.shape[1]
        noise = torch.randn(f, d, generator=generator, dtype=ref.dtype).to(ref.device)
        return self.mean + self.std * noise


class IPM(Attack):
    """Inner-product manipulation (Xie et al. 2020): every Byzantine worker sends
    ``-epsilon * mean(honest)``. Small epsilon fools distance-based rules (Krum), large
    epsilon fools the mean and coordinate-wise rules."""

    omniscient = True

    def __init__(self, epsilon: float = 0.1) -> None:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
        self.epsilon = float(epsilon)
        self.name = f"ipm(eps={self.epsilon:g})"

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        return (-self.epsilon * honest.mean(dim=0)).expand(f, -1).clone()


class ALIE(Attack):
    """A Little Is Enough (Baruch et al. 2019): send ``mu - z * sigma`` coordinate-wise, with
    the honest mean and standard deviation. ``z=None`` uses :func:`alie_default_z` of the
    total number of workers ``n = h + f``."""

    omniscient = True

    def __init__(self, z: float | None = None) -> None:
        self.z = None if z is None else float(z)
        self.name = "alie" if z is None else f"alie(z={self.z:g})"

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        z = alie_default_z(honest.shape[0] + f, f) if self.z is None else self.z
        sigma = honest.std(dim=0, unbiased=True) if honest.shape[0] > 1 else torch.zeros_like(honest[0])
        return (honest.mean(dim=0) - z * sigma).expand(f, -1).clone()


class LabelFlip(Attack):
    """Data poisoning: Byzantine workers compute honest-looking gradients on flipped labels
    (:func:`flip_labels`) and send them; ``own`` must be those gradients."""

    name = "label_flip"
    corrupts_labels = True

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        if own is None:
            raise ValueError("label_flip needs own= (gradients on flipped labels)")
        return own.clone()


class Mimic(Attack):
    """Every Byzantine worker copies honest worker ``target`` (Karimireddy et al. 2022), which
    over-weights one worker's data without ever looking like an outlier."""

    omniscient = True

    def __init__(self, target: int = 0) -> None:
        if not isinstance(target, int) or target < 0:
            raise ValueError(f"target must be an int >= 0, got {target!r}")
        self.target = target
        self.name = "mimic"

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        if self.target >= honest.shape[0]:
            raise ValueError(f"target={self.target} out of range for {honest.shape[0]} honest workers")
        return honest[self.target].expand(f, -1).clone()


class NonFinite(Attack):
    """Send NaN (or ``value``): exercises the invalid-row policy of the receivers."""

    def __init__(self, value: float = float("nan")) -> None:
        self.value = float(value)
        self.name = f"non_finite({self.value})"

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        ref = honest if honest is not None else own
        return torch.full((f, ref.shape[1]), self.value, dtype=ref.dtype, device=ref.device)


class AdaptiveIPM(Attack):
    """The tailored attacker: try IPM with each epsilon in ``epsilons``, run the defence on the
    resulting stack and send the one whose aggregate has the smallest inner product with the
    honest mean (the most harmful descent direction).

    Against a :class:`~commcomp.robust.mixtailor.MixTailor` the attacker knows the pool but not
    the draw, so it minimizes the inner product averaged over the pool members. Probing works on
    deep copies, so stateful rules (bucketing's shuffle, clipping's centre) are not advanced.
    ``probes=k`` bounds the cost for a large pool: each call averages over ``k`` members drawn
    at random (with ``generator``) instead of all of them.
    ``last_epsilon`` holds the choice of the latest call.
    """

    omniscient = True

    def __init__(self, epsilons: Sequence[float] = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0), probes: int | None = None) -> None:
        eps = [float(e) for e in epsilons]
        if not eps or any(not e > 0 for e in eps):
            raise ValueError(f"epsilons must be a non-empty sequence of values > 0, got {epsilons!r}")
        if probes is not None and (not isinstance(probes, int) or probes < 1):
            raise ValueError(f"probes must be an int >= 1 or None, got {probes!r}")
        self.epsilons, self.probes = eps, probes
        self.last_epsilon: float | None = None
        self.name = "adaptive_ipm"

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        members, weights = _defence_members(self.name, aggregator, self.probes, generator)
        mu = honest.mean(dim=0)
        best_eps, best_harm = self.epsilons[0], None
        for eps in self.epsilons:
            stack = torch.cat([honest, (-eps * mu).expand(f, -1)])
            harm = sum(w * float(a._apply(stack, tolerance) @ mu) for a, w in zip(members, weights))
            if best_harm is None or harm < best_harm:
                best_eps, best_harm = eps, harm
        self.last_epsilon = best_eps
        return (-best_eps * mu).expand(f, -1).clone()


def _defence_members(
    attack: str, aggregator: Any, probes: int | None, generator: torch.Generator | None
) -> tuple[list[Aggregator], list[float]]:
    """The rules an attacker evaluates, as deep copies (stateful rules are not advanced), and
    the weight of each in its objective: the rule itself, or a MixTailor view's pool (a fresh
    random subset of ``probes`` members per call, drawn by the pool's weights, when given)."""
    if aggregator is None:
        raise ValueError(f"{attack} needs aggregator= (the defence it tailors against)")
    pool = getattr(aggregator, "pool", None)
    if pool is None:
        if not isinstance(aggregator, Aggregator):
            raise ValueError(f"aggregator must be an Aggregator or a MixTailor view, got {type(aggregator).__name__}")
        return [copy.deepcopy(aggregator)], [1.0]
    members = list(pool)
    weights = getattr(aggregator, "weights", None)
    if probes is not None and probes < len(members):
        # a fresh random subset each call, an unbiased estimate of the pool-average objective:
        # without replacement for a uniform pool, by the weights (with replacement) otherwise
        if weights is None:
            pick = torch.randperm(len(members), generator=generator)[:probes].tolist()
        else:
            probs = torch.tensor(weights, dtype=torch.float64)
            pick = torch.multinomial(probs, probes, replacement=True, generator=generator).tolist()
        members, weights = [members[i] for i in pick], None
    weights = [1.0 / len(members)] * len(members) if weights is None else list(weights)
    return [copy.deepcopy(a) for a in members], weights


def line_maximize(objective: Callable[[float], float], low: float = 1e-2, high: float = 1e2, evals: int = 20) -> float:
    """Attack factor in ``{0} U [low, high]`` maximizing ``objective``, in ``evals`` evaluations:
    a geometric grid (0 and ``evals // 2`` points from ``low`` to ``high``), then golden-section
    refinement between the best grid point's neighbours. Returns the best factor evaluated;
    ties go to the smaller factor."""
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 3:
        raise ValueError(f"evals must be an int >= 3, got {evals!r}")
    count = max(2, evals // 2)
    grid = [0.0] + [low * (high / low) ** (i / (count - 1)) for i in range(count)]
    values = [objective(t) for t in grid]
    best = max(range(len(grid)), key=lambda i: (values[i], -i))
    best_t, best_v = grid[best], values[best]
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    remaining = evals - len(grid)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    x1, x2 = b - ratio * (b - a), a + ratio * (b - a)
    v1 = v2 = None
    while remaining > 0:
        if v1 is None:
            v1, remaining = objective(x1), remaining - 1
            if v1 > best_v:
                best_t, best_v = x1, v1
            continue
        if v2 is None:
            v2, remaining = objective(x2), remaining - 1
            if v2 > best_v:
                best_t, best_v = x2, v2
            continue
        if v1 >= v2:  # the maximum lies in [a, x2]
            b, x2, v2 = x2, x1, v1
            x1, v1 = b - ratio * (b - a), None
        else:
            a, x1, v1 = x1, x2, v2
            x2, v2 = a + ratio * (b - a), None
    return best_t


class _OptimalAttack(Attack):
    """An attack with one factor ``t``, chosen every step by :func:`line_maximize` to maximize
    the distance between the defence's aggregate and the honest mean (averaged over a
    MixTailor view's pool, or over ``probes`` random members of it)."""

    omniscient = True

    def __init__(self, evals: int = 20, low: float = 1e-2, high: float = 1e2, probes: int | None = None) -> None:
        if isinstance(evals, bool) or not isinstance(evals, int) or evals < 3:
            raise ValueError(f"evals must be an int >= 3, got {evals!r}")
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high, got low={low!r}, high={high!r}")
        if probes is not None and (isinstance(probes, bool) or not isinstance(probes, int) or probes < 1):
            raise ValueError(f"probes must be an int >= 1 or None, got {probes!r}")
        self.evals, self.low, self.high, self.probes = evals, float(low), float(high), probes
        self.last_factor: float | None = None

    @abc.abstractmethod
    def _rows(self, honest: torch.Tensor, f: int, factor: float) -> torch.Tensor: ...

    def harm(
        self, honest: torch.Tensor, f: int, factor: float,
        members: Sequence[Aggregator], weights: Sequence[float], tolerance: int,
    ) -> float:
        """The objective: weighted mean of ``||rule(honest + attack(factor)) - mean(honest)||``."""
        mu = honest.mean(dim=0)
        stack = torch.cat([honest, self._rows(honest, f, factor).to(honest.dtype)])
        distances = (torch.linalg.vector_norm(a._apply(stack, tolerance) - mu) for a in members)
        return sum(w * float(dist) for w, dist in zip(weights, distances))

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        members, weights = _defence_members(self.name, aggregator, self.probes, generator)
        objective = lambda t: self.harm(honest, f, t, members, weights, tolerance)  # noqa: E731
        factor = line_maximize(objective, self.low, self.high, self.evals)
        self.last_factor = factor
        return self._rows(honest, f, factor)


class OptimalIPM(_OptimalAttack):
    """IPM with the factor the line search finds: every Byzantine worker sends
    ``-t * mean(honest)``, ``t`` maximizing the aggregate's distance from the honest mean."""

    name = "optimal_ipm"

    def _rows(self, honest, f, factor):
        return (-factor * honest.mean(dim=0)).expand(f, -1).clone()


class OptimalALIE(_OptimalAttack):
    """ALIE with the factor the line search finds: ``mean - t * std`` coordinate-wise, ``t``
    maximizing the aggregate's distance from the honest mean."""

    name = "optimal_alie"

    def _rows(self, honest, f, factor):
        sigma = honest.std(dim=0, unbiased=True) if honest.shape[0] > 1 else torch.zeros_like(honest[0])
        return (honest.mean(dim=0) - factor * sigma).expand(f, -1).clone()
