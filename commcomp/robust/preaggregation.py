"""Pre-aggregation: transforms of the ``(n, d)`` input that make a robust rule stronger.

* :class:`Bucketing` (Karimireddy et al. 2022): shuffle the workers, average buckets of ``s``,
  aggregate the bucket means. With at most ``f`` Byzantine workers, at most ``f`` buckets are
  polluted, while honest noise shrinks by ``1/s``.
* :class:`NearestNeighborMixing` (NNM, Allouah et al. 2023): replace each gradient by the mean
  of its ``n - f`` nearest neighbours (itself included), then aggregate.
* :class:`StaticClipping`: clip every gradient to L2 norm ``threshold``, then aggregate.
* :class:`ARC` (adaptive robust clipping, Allouah et al. 2024): clip the
  ``k = floor(2 f (n - f) / n)`` largest gradients to the norm of the ``(k + 1)``-th largest.

All wrap an inner :class:`~commcomp.robust.aggregators.Aggregator` and are aggregators
themselves, so they compose with each other and with
:class:`~commcomp.robust.mixtailor.MixTailor`.

Example::

    >>> import torch
    >>> from commcomp.robust import CoordinateMedian, NearestNeighborMixing
    >>> g = torch.tensor([[0.0], [1.0], [2.0], [100.0]])
    >>> NearestNeighborMixing(CoordinateMedian())(g, f=1).tolist()
    [1.0]
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .aggregators import Aggregator, clip_rows, pairwise_distances

__all__ = ["Bucketing", "NearestNeighborMixing", "StaticClipping", "ARC", "arc_clipped_count"]


class _Wrapper(Aggregator):
    """A transform of the rows followed by ``inner`` with the same ``f``."""

    def __init__(self, inner: Aggregator) -> None:
        if not isinstance(inner, Aggregator):
            raise ValueError(f"inner must be an Aggregator, got {type(inner).__name__}")
        if inner.randomized:
            raise ValueError(f"inner must be a deterministic rule, got {inner.name} (wrap MixTailor's members instead)")
        self.inner = inner

    def min_workers(self, f: int) -> int:
        return self.inner.min_workers(f)

    def _requirement(self, f: int) -> str:
        return "inner requirement"

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"inner"}:
            raise ValueError(f"state must have the key 'inner', got {sorted(state)}")
        self.inner.load_state_dict(state["inner"])


class Bucketing(_Wrapper):
    """Average random buckets of ``bucket_size`` workers, then apply ``inner`` with the same f.

    The shuffle comes from a private CPU generator seeded with ``seed``; every rank that calls
    the rule the same number of times draws the same permutation (save/restore it with
    :meth:`state_dict`). Needs ``ceil(n / s) >= inner.min_workers(f)``.
    """

    def __init__(self, inner: Aggregator, bucket_size: int = 2, seed: int = 0) -> None:
        super().__init__(inner)
        if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"bucket_size must be an int >= 1, got {bucket_size!r}")
        self.bucket_size, self.seed = bucket_size, int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self.name = f"bucketing(s={bucket_size},{inner.name})"

    def min_workers(self, f: int) -> int:
        # the largest n with ceil(n / s) buckets below the inner requirement, plus one
        return self.bucket_size * (self.inner.min_workers(f) - 1) + 1

    def _requirement(self, f: int) -> str:
        return "s * (inner requirement - 1) + 1"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        perm = torch.randperm(n, generator=self._gen).to(grads.device)
        shuffled = grads[perm]
        means = torch.stack([chunk.mean(dim=0) for chunk in shuffled.split(self.bucket_size)])
        assert means.shape[0] == math.ceil(n / self.bucket_size)
        return self.inner._aggregate(means, f)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._gen.get_state(), "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"generator", "inner"}:
            raise ValueError(f"state must have keys 'generator' and 'inner', got {sorted(state)}")
        self._gen.set_state(state["generator"])
        self.inner.load_state_dict(state["inner"])


class NearestNeighborMixing(_Wrapper):
    """Replace each row by the mean of its ``n - f`` nearest rows (L2, itself included), then
    apply ``inner`` with the same f. Needs ``inner.min_workers(f)``."""

    def __init__(self, inner: Aggregator) -> None:
        super().__init__(inner)
        self.name = f"nnm({inner.name})"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        dist = pairwise_distances(grads, 2.0)
        # the diagonal is 0, so each row's own index is always among its nearest
        nearest = dist.topk(n - f, dim=1, largest=False).indices
        mixed = grads[nearest].mean(dim=1)
        return self.inner._aggregate(mixed, f)


class StaticClipping(_Wrapper):
    """Clip every row to L2 norm ``threshold`` (rows below it are unchanged), then ``inner``."""

    def __init__(self, inner: Aggregator, threshold: float = 1.0) -> None:
        super().__init__(inner)
        number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not (number and threshold > 0 and math.isfinite(threshold)):
            raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
        self.threshold = float(threshold)
        self.name = f"clipping(c={self.threshold:g},{inner.name})"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        return self.inner._aggregate(clip_rows(grads, self.threshold), f)


def arc_clipped_count(n: int, f: int) -> int:
    """ARC's ``k = floor(2 f (n - f) / n)``: how many of the largest rows it clips."""
    return (2 * f * (n - f)) // n


class ARC(_Wrapper):
    """Adaptive robust clipping: sort the rows by L2 norm, clip the ``k = floor(2 f (n - f) / n)``
    largest to the norm of the ``(k + 1)``-th largest, then apply ``inner`` (``f = 0``: no
    clipping)."""

    def __init__(self, inner: Aggregator) -> None:
        super().__init__(inner)
        self.name = f"arc({inner.name})"

    def _aggregate(self, grads: torch.Tensor, f: int) -> torch.Tensor:
        n = grads.shape[0]
        k = arc_clipped_count(n, f)
        if k > 0:
            norms = torch.linalg.vector_norm(grads, dim=1)
            threshold = norms.sort(descending=True).values[k]
            grads = clip_rows(grads, threshold)
        return self.inner._aggregate(grads, f)
