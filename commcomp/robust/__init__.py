"""Byzantine-robust gradient aggregation, attacks, and MixTailor.

* :mod:`~commcomp.robust.aggregators`: mean, coordinate median, trimmed mean, mean around the
  median, Krum / Multi-Krum (any p-norm), geometric median, Bulyan, centered clipping, MDA,
  SMEA, MoNNA, CAF; :func:`aggregate_untrusted` for rows that may be invalid.
* :mod:`~commcomp.robust.preaggregation`: bucketing, nearest-neighbour mixing, static
  clipping, adaptive robust clipping (ARC).
* :mod:`~commcomp.robust.mixtailor`: a random rule from a pool at every step.
* :mod:`~commcomp.robust.draws`: the commit-reveal draw MixTailor uses in a DDP job.
* :mod:`~commcomp.robust.attacks`: sign flip, Gaussian, IPM, ALIE, label flip, mimic, NaN,
  the adaptive (tailored) IPM attacker and the line-search "optimal" IPM / ALIE.
* :mod:`~commcomp.robust.simulation`: n workers in one process (the papers' setting).
* :mod:`~commcomp.robust.hook`: a DDP comm hook that all-gathers (optionally compressed)
  gradients and aggregates them robustly, with simulated Byzantine ranks.

Example::

    >>> import torch
    >>> from commcomp.robust import MixTailor, build_pool, ALIE
    >>> honest = torch.randn(10, 5)
    >>> grads = torch.cat([honest, ALIE(z=1.5)(honest, f=2)])
    >>> rule = MixTailor(build_pool(norms=[1, 2]))
    >>> rule(grads, f=2).shape
    torch.Size([5])
"""
from .aggregators import (
    CAF,
    MDA,
    SMEA,
    Aggregation,
    Aggregator,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MeanAroundMedian,
    MoNNA,
    TrimmedMean,
    aggregate_untrusted,
)
from .attacks import (
    ALIE,
    IPM,
    AdaptiveIPM,
    Attack,
    Gaussian,
    LabelFlip,
    Mimic,
    NonFinite,
    OptimalALIE,
    OptimalIPM,
    SignFlip,
    flip_labels,
)
from .mixtailor import MixTailor, PoolView, build_pool
from .preaggregation import ARC, Bucketing, NearestNeighborMixing, StaticClipping
from .validation import sanitize

__all__ = [
    "Aggregator",
    "Aggregation",
    "aggregate_untrusted",
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
    "Bucketing",
    "NearestNeighborMixing",
    "StaticClipping",
    "ARC",
    "MixTailor",
    "PoolView",
    "build_pool",
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
    "flip_labels",
    "sanitize",
]
