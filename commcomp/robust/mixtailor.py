"""MixTailor (Ramezani-Kebrya et al., arXiv 2207.07941): aggregate with a rule drawn at random
from a pool at every step, so an attacker cannot tailor its gradients to the rule.

Where a step's draw comes from:

* **In the DDP hook** (a real job, where Byzantine ranks are ranks of the job itself) from a
  commit-reveal exchange among the ranks (:mod:`commcomp.robust.draws`): no rank can predict or
  steer it before it has sent its gradients, and no seed is involved.
* **Called directly / in the one-process simulation** from ``sha256(seed, step)``: all buckets
  of a step share one rule and a checkpoint only needs ``(seed, step)``. The default seed is
  128 fresh random bits (never a constant), and attacks only ever receive
  :meth:`MixTailor.attacker_view`: the pool, without the seed or any draw.

Example::

    >>> import torch
    >>> from commcomp.robust import MixTailor, Krum, CoordinateMedian
    >>> mix = MixTailor([Krum(p=1), Krum(p=2), CoordinateMedian()])   # a fresh random seed
    >>> g = torch.randn(7, 3)
    >>> out = mix(g, f=1)                       # draws a rule for step 0, then advances
    >>> mix.for_step(5) is mix.for_step(5)      # the same rule for the same step
    True
    >>> mix.add(Krum(p=3))                      # integrate a rule on the fly
    >>> len(mix.pool), sum(mix.counts), len(mix.counts)
    (4, 1, 4)
"""
from __future__ import annotations

import bisect
import copy
import hashlib
import itertools
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from .aggregators import (
    Aggregator,
    Bulyan,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    TrimmedMean,
)

__all__ = ["MixTailor", "PoolView", "build_pool", "POOL_FAMILIES", "index_from_digest"]

#: families :func:`build_pool` knows; ``krum`` and ``bulyan`` vary over the norms
POOL_FAMILIES = ("krum", "bulyan", "median", "trimmed_mean", "geomed")

_UNIFORM_BITS = 128


def build_pool(
    families: Iterable[str] = POOL_FAMILIES,
    norms: Iterable[float] = tuple(range(1, 17)),
) -> list[Aggregator]:
    """A pool of ``families x parameters``: Krum and Bulyan (Krum selection) once per p-norm
    in ``norms``; median, trimmed mean and geometric median once each (they have no norm).

    >>> [a.name for a in build_pool(["krum", "median"], norms=[1, 2])]
    ['krum(p=1)', 'krum(p=2)', 'median']
    """
    norms = [float(p) for p in norms]
    families = list(families)
    unknown = [name for name in families if name not in POOL_FAMILIES]
    if unknown:
        raise ValueError(f"families must be among {POOL_FAMILIES}, got unknown {unknown}")
    if not norms and any(name in ("krum", "bulyan") for name in families):
        raise ValueError("norms must be non-empty when the pool has krum or bulyan")
    pool: list[Aggregator] = []
    for name in families:
        if name == "krum":
            pool += [Krum(p=p) for p in norms]
        elif name == "bulyan":
            pool += [Bulyan(selection=Krum(p=p)) for p in norms]
        elif name == "median":
            pool.append(CoordinateMedian())
        elif name == "trimmed_mean":
            pool.append(TrimmedMean())
        elif name == "geomed":
            pool.append(GeometricMedian())
    return pool


def index_from_digest(digest: bytes, size: int, weights: Sequence[float] | None = None) -> int:
    """Map a uniformly random digest (>= 16 bytes) to a pool index: uniform over ``size``
    members (exact up to ``size / 2**128``), or by ``weights`` (cumulative, in float64)."""
    if len(digest) < _UNIFORM_BITS // 8:
        raise ValueError(f"digest must have >= {_UNIFORM_BITS // 8} bytes, got {len(digest)}")
    u = int.from_bytes(digest[: _UNIFORM_BITS // 8], "little")
    if weights is None:
        return (u * size) >> _UNIFORM_BITS
    cumulative = list(itertools.accumulate(float(w) for w in weights))
    return min(bisect.bisect_right(cumulative, u / 2.0**_UNIFORM_BITS), size - 1)


@dataclass(frozen=True)
class PoolView:
    """What an attacker of a :class:`MixTailor` knows: the members (copies) and their weights,
    not the seed and no draw. :class:`~commcomp.robust.attacks.AdaptiveIPM` and the optimal
    attacks average their objective over ``pool``."""

    pool: tuple[Aggregator, ...]
    weights: tuple[float, ...] | None
    name: str


def _check_weights(weights: Sequence[float], size: int) -> list[float]:
    w = [float(x) for x in weights]
    valid = len(w) == size and all(x >= 0 and math.isfinite(x) for x in w)
    if not valid or not math.isclose(sum(w), 1.0, rel_tol=1e-6):
        raise ValueError(f"weights must be {size} non-negative probabilities summing to 1")
    total = sum(w)
    return [x / total for x in w]


class MixTailor(Aggregator):
    """Randomized aggregation over ``pool``.

    Args:
        pool: candidate rules (at least one). All must accept the same ``(n, f)``:
            the requirement is the strictest member's.
        seed: for draws outside the DDP hook: step t uses ``sha256(seed, t)``. Default: 128
            fresh random bits (store :meth:`state_dict` to resume the same draws).
        weights: optional selection probabilities (default uniform, as in the paper).

    ``rule(grads, f)`` uses the rule for the internal ``step`` counter and advances it;
    ``for_step(t)`` returns the rule of step t without touching the counter. In the DDP hook the
    draw comes from the ranks' commit-reveal instead (:meth:`draw`). ``counts`` tallies how often
    each member was applied; :meth:`add` integrates a new member.
    """

    randomized = True

    def __init__(self, pool: Sequence[Aggregator], seed: int | None = None, weights: Sequence[float] | None = None) -> None:
        pool = list(pool)
        if not pool or not all(isinstance(a, Aggregator) for a in pool):
            raise ValueError("pool must be a non-empty sequence of Aggregator instances")
        if any(a.randomized for a in pool):
            raise ValueError("pool must not contain a randomized rule such as MixTailor (draws would nest)")
        if seed is None:
            seed = secrets.randbits(128)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
        self.weights: list[float] | None = None if weights is None else _check_weights(weights, len(pool))
        self.pool, self.seed, self.step = pool, seed, 0
        self.counts = [0] * len(pool)
        self.last_choice: int | None = None
        self.name = f"mixtailor({len(pool)})"

    # -- draws -------------------------------------------------------------------------------
    def draw(self, digest: bytes) -> int:
        """Index of the member a uniformly random ``digest`` selects (uniform or by ``weights``)."""
        return index_from_digest(digest, len(self.pool), self.weights)

    def choose(self, step: int) -> int:
        """Index of the pool member used at ``step`` (seeded draws, outside the DDP hook)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        return self.draw(hashlib.sha256(f"commcomp/mixtailor/seeded/{self.seed}/{step}".encode()).digest())

    def for_step(self, step: int) -> Aggregator:
        return self.pool[self.choose(step)]

    def record(self, index: int) -> Aggregator:
        """Count member ``index`` as applied once and return it."""
        self.counts[index] += 1
        self.last_choice = index
        return self.pool[index]

    # -- the pool ----------------------------------------------------------------------------
    def add(self, rule: Aggregator, weight: float | None = None) -> None:
        """Integrate ``rule`` into the pool ("on the fly", as the paper allows).

        ``weight``: the new member's probability; the others keep their proportions, scaled by
        ``1 - weight``. Default ``1 / (len(pool) + 1)``, so a uniform pool stays uniform.
        In a DDP job call it at the same step on every rank (the hook checks the pools agree).
        """
        if not isinstance(rule, Aggregator) or rule.randomized:
            raise ValueError(f"rule must be a deterministic Aggregator, got {type(rule).__name__}")
        size = len(self.pool)
        if weight is None:
            weight = 1.0 / (size + 1)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise ValueError(f"weight must be a probability in [0, 1], got {weight!r}")
        if self.weights is not None or weight != 1.0 / (size + 1):
            old = self.weights if self.weights is not None else [1.0 / size] * size
            self.weights = _check_weights([w * (1.0 - weight) for w in old] + [float(weight)], size + 1)
        self.pool.append(rule)
        self.counts.append(0)
        self.name = f"mixtailor({len(self.pool)})"

    def fingerprint(self) -> bytes:
        """sha256 of the members' configurations and the weights: equal on every rank that
        built the same pool (the DDP hook compares it every step)."""
        desc = {
            "members": [a.config() for a in self.pool],
            "weights": None if self.weights is None else [float(w).hex() for w in self.weights],
        }
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).digest()

    def attacker_view(self) -> PoolView:
        weights = None if self.weights is None else tuple(self.weights)
        return PoolView(tuple(copy.deepcopy(a) for a in self.pool), weights, self.name)

    # -- Aggregator --------------------------------------------------------------------------
    def member(self, index: int) -> Aggregator:
        return self.pool[index]

    def min_workers(self, f: int) -> int:
        return max(a.min_workers(f) for a in self.pool)

    def check_workers(self, n: int, f: int) -> None:
        for a in self.pool:  # name the member that fails, not just the pool
            a.check_workers(n, f)

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        idx = self.choose(self.step)
        self.step += 1
        return self.record(idx)._aggregate(grads, f)

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "step": self.step,
            "counts": list(self.counts),
            "pool": self.fingerprint().hex(),
            "members": [a.state_dict() for a in self.pool],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"seed", "step", "counts", "pool", "members"}
        if set(state) != keys or len(state["members"]) != len(self.pool):
            raise ValueError(f"state must have keys {sorted(keys)} for {len(self.pool)} members, got {sorted(state)}")
        if state["pool"] != self.fingerprint().hex():
            raise ValueError("state was saved with a different pool (members or weights differ)")
        self.seed, self.step = int(state["seed"]), int(state["step"])
        self.counts = [int(c) for c in state["counts"]]
        for a, s in zip(self.pool, state["members"]):
            a.load_state_dict(s)
