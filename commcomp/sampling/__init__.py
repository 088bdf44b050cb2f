"""Gradient Clustering and gradient-variance statistics (Faghri et al., "A Study of Gradient
Variance in Deep Learning", arXiv 2007.04532).

* :mod:`.factors`: inner products of factored per-example Linear/Conv2d weight gradients.
* :mod:`.capture`: :class:`PerExampleGradients` (hooks for Linear/Conv2d, ``torch.func`` for the rest).
* :mod:`.centers`: :class:`GradientCenters` (rank-``r`` blocks) and :class:`ClusterSums`.
* :mod:`.clustering`: :class:`GradientClustering`, weighted k-means in gradient space.
* :mod:`.sampler`: :class:`GradientClusterSampler` and its distributed variant.
* :mod:`.stats`: :func:`estimate_gradient_variance` (variance and normalized variance).

Example::

    >>> import torch
    >>> from commcomp.sampling import GradientClustering, GradientClusterSampler, estimate_gradient_variance
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model, loss_fn = torch.nn.Linear(6, 3), torch.nn.CrossEntropyLoss(reduction="none")
    >>> x, y = torch.randn(200, 6), torch.randint(0, 3, (200,))
    >>> gc = GradientClustering(num_clusters=8)
    >>> _ = gc.fit_pass(model, loss_fn, x, y)
    >>> sampler = GradientClusterSampler(gc.assignments)
    >>> def draw():
    ...     idx = sampler.sample_rounds(1)
    ...     return x[idx], y[idx], sampler.weights(idx)
    >>> stats = estimate_gradient_variance(model, loss_fn, draw, num_samples=10)
    >>> 0.0 <= stats.normalized_variance <= 1.0
    True
"""
from .capture import BatchGradients, LayerFactors, PerExampleGradients
from .centers import ClusterSums, GradientCenters
from .clustering import ClusteringStats, GradientClustering
from .sampler import DistributedGradientClusterSampler, GradientClusterSampler
from .stats import GradientVariance, MomentAccumulator, estimate_gradient_variance, variance_statistics

__all__ = [
    "BatchGradients",
    "LayerFactors",
    "PerExampleGradients",
    "ClusterSums",
    "GradientCenters",
    "ClusteringStats",
    "GradientClustering",
    "GradientClusterSampler",
    "DistributedGradientClusterSampler",
    "GradientVariance",
    "MomentAccumulator",
    "estimate_gradient_variance",
    "variance_statistics",
]
