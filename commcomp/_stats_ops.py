"""Typed wrapper and fake kernel of ``commcomp::level_stats`` (csrc/core/stats.h).

The op summarizes a flat gradient for adaptive level fitting (:mod:`commcomp.adaptive`): a
histogram, over ``bins`` bins uniform in ``sqrt(r)``, of the normalized magnitudes
``r = |x_i| / ||bucket||``, each coordinate weighted by its bucket's squared norm. Bin ``k`` covers
``[(k/bins)^2, ((k+1)/bins)^2)``; exact zeros and buckets with a zero or non-finite norm are left
out (they carry no quantization variance, or are sent uncompressed). Weights are summed in 64-bit
fixed point relative to the largest bucket, so CPU and CUDA return bit-identical histograms.

Example::

    >>> import torch, commcomp
    >>> from commcomp._stats_ops import level_stats
    >>> x = torch.randn(4096)
    >>> h = level_stats(x, bucket_size=512, bins=256)
    >>> h.dtype, h.shape
    (torch.float64, torch.Size([256]))
    >>> bool(abs(h.sum() / x.pow(2).sum() - 512) < 1)   # each bucket adds 512 * ||x_b||^2
    True
"""
from __future__ import annotations

from typing import Literal

import torch

from . import _C  # noqa: F401  (defines torch.ops.commcomp.level_stats)
from . import ops

__all__ = ["level_stats", "DEFAULT_BINS", "MAX_BINS"]

DEFAULT_BINS = 1024
MAX_BINS = 4096  # kMaxStatBins in csrc/core/stats.h


def level_stats(
    x: torch.Tensor,
    bucket_size: int,
    norm: Literal["l2", "linf"] = "l2",
    bins: int = DEFAULT_BINS,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted ``sqrt``-spaced histogram of normalized magnitudes of flat ``x`` (float64, ``bins``).

    ``norms`` are the per-bucket norms if already computed (e.g. returned by :func:`ops.quantize`);
    otherwise they are computed with ``norm``. Bin masses are in units of squared norm: for the L2
    norm, the histogram sums to ``sum_b n_b ||x_b||^2`` over buckets of ``n_b`` nonzero coordinates.
    """
    if not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an int in [1, {MAX_BINS}], got {bins!r}")
    if not isinstance(bucket_size, int) or bucket_size <= 0:
        raise ValueError(f"bucket_size must be a positive int, got {bucket_size!r}")
    if norms is None:
        norms = ops.bucket_norms(x, bucket_size, norm)
    return torch.ops.commcomp.level_stats(x, norms, bucket_size, bins)


@torch.library.register_fake("commcomp::level_stats")
def _level_stats_fake(x, norms, bucket_size, bins):
    return x.new_empty((bins,), dtype=torch.float64)
