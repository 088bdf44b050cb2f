"""MixTailor (Ramezani-Kebrya et al., arXiv 2207.07941): aggregate with a rule drawn uniformly
at random from a pool at every step, so an attacker cannot tailor its gradients to the rule.

The draw at step ``t`` is a pure function of ``(seed, t)`` (numpy's SeedSequence hashes the
pair), not of a generator that advances: every honest rank that shares ``seed`` applies the
same rule at the same step without communicating, buckets of one DDP step share one rule, and
restoring a checkpoint only needs ``(seed, step)``. The seed must stay secret from the
attacker for the paper's guarantee; in these simulations the attacker is only given the pool.

Example::

    >>> import torch
    >>> from commcomp.robust import MixTailor, Krum, CoordinateMedian
    >>> mix = MixTailor([Krum(p=1), Krum(p=2), CoordinateMedian()], seed=0)
    >>> g = torch.randn(7, 3)
    >>> out = mix(g, f=1)                       # draws a rule for step 0, then advances
    >>> mix.for_step(5) is mix.for_step(5)      # the same rule for the same step
    True
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .aggregators import (
    Aggregator,
    Bulyan,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    TrimmedMean,
)

__all__ = ["MixTailor", "build_pool", "POOL_FAMILIES"]

#: families :func:`build_pool` knows; ``krum`` and ``bulyan`` vary over the norms
POOL_FAMILIES = ("krum", "bulyan", "median", "trimmed_mean", "geomed")


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


class MixTailor(Aggregator):
    """Randomized aggregation over ``pool``.

    Args:
        pool: candidate rules (at least one). All must accept the same ``(n, f)``:
            the requirement is the strictest member's.
        seed: shared by all honest ranks; the choice at step t depends on (seed, t) only.
        weights: optional selection probabilities (default uniform, as in the paper).

    ``rule(grads, f)`` uses the rule for the internal ``step`` counter and advances it;
    ``for_step(t)`` returns the rule of step t without touching the counter (the DDP hook uses
    its own iteration counter). ``counts`` tallies how often each member was applied.
    """

    def __init__(self, pool: Sequence[Aggregator], seed: int = 0, weights: Sequence[float] | None = None) -> None:
        pool = list(pool)
        if not pool or not all(isinstance(a, Aggregator) for a in pool):
            raise ValueError("pool must be a non-empty sequence of Aggregator instances")
        if any(isinstance(a, MixTailor) for a in pool):
            raise ValueError("pool must not contain a MixTailor (draws would nest)")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(pool),) or (w < 0).any() or not math.isclose(w.sum(), 1.0, rel_tol=1e-6):
                raise ValueError(f"weights must be {len(pool)} non-negative probabilities summing to 1")
            self.weights: np.ndarray | None = w / w.sum()
        else:
            self.weights = None
        self.pool, self.seed, self.step = pool, seed, 0
        self.counts = [0] * len(pool)
        self.last_choice: int | None = None
        self.name = f"mixtailor({len(pool)})"

    def choose(self, step: int) -> int:
        """Index of the pool member used at ``step``."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        rng = np.random.default_rng([self.seed, step])
        return int(rng.choice(len(self.pool), p=self.weights))

    def for_step(self, step: int) -> Aggregator:
        return self.pool[self.choose(step)]

    def min_workers(self, f: int) -> int:
        return max(a.min_workers(f) for a in self.pool)

    def check_workers(self, n: int, f: int) -> None:
        for a in self.pool:  # name the member that fails, not just the pool
            a.check_workers(n, f)

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        idx = self.choose(self.step)
        self.step += 1
        self.last_choice = idx
        self.counts[idx] += 1
        return self.pool[idx](grads, f)

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "step": self.step, "members": [a.state_dict() for a in self.pool]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"seed", "step", "members"} or len(state["members"]) != len(self.pool):
            raise ValueError(f"state must have keys seed, step, members ({len(self.pool)}), got {sorted(state)}")
        self.seed, self.step = int(state["seed"]), int(state["step"])
        for a, s in zip(self.pool, state["members"]):
            a.load_state_dict(s)
