"""Byzantine-robust gradient aggregation, attacks, and MixTailor.

* :mod:`~commcomp.robust.aggregators`: mean, coordinate median, trimmed mean, Krum /
  Multi-Krum (any p-norm), geometric median, Bulyan, centered clipping.
* :mod:`~commcomp.robust.preaggregation`: bucketing, nearest-neighbour mixing.
* :mod:`~commcomp.robust.mixtailor`: a uniformly random rule from a pool at every step.
* :mod:`~commcomp.robust.attacks`: sign flip, Gaussian, IPM, ALIE, label flip, mimic, NaN,
  and the adaptive (tailored) IPM attacker.
* :mod:`~commcomp.robust.simulation`: n workers in one process (the papers' setting).
* :mod:`~commcomp.robust.hook`: a DDP comm hook that all-gathers (optionally compressed)
  gradients and aggregates them robustly, with simulated Byzantine ranks.

Example::

    >>> import torch
    >>> from commcomp.robust import MixTailor, build_pool, ALIE
    >>> honest = torch.randn(10, 5)
    >>> grads = torch.cat([honest, ALIE(z=1.5)(honest, f=2)])
    >>> rule = MixTailor(build_pool(norms=[1, 2]), seed=0)
    >>> rule(grads, f=2).shape
    torch.Size([5])
"""
from .aggregators import (
    Aggregator,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MeanAroundMedian,
    TrimmedMean,
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
    SignFlip,
    flip_labels,
)
from .mixtailor import MixTailor, build_pool
from .preaggregation import Bucketing, NearestNeighborMixing
from .validation import sanitize

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
    "Bucketing",
    "NearestNeighborMixing",
    "MixTailor",
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
    "flip_labels",
    "sanitize",
]
