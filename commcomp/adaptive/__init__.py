"""Adaptive level tables: ALQ and AMQ (Faghri et al., NeurIPS 2020).

* :mod:`.fit` — pure float64 fitting of a level table to gradient statistics (no torch state).
* :mod:`.quantizers` — :class:`ALQ`, :class:`AMQ`: quantizers that observe gradients and refit
  their levels on an :class:`UpdateSchedule`, identically on every rank.

Example::

    >>> import torch
    >>> from commcomp.adaptive import ALQ, UpdateSchedule
    >>> q = ALQ(bits=3, bucket_size=256, update_schedule=UpdateSchedule(at=(0,), every=None))
    >>> q.observe(torch.randn(4096))
    >>> q.maybe_update(0)
    True
"""
from .fit import FitResult, Histogram, fit_alq, fit_amq
from .quantizers import ALQ, AMQ, AdaptiveQuantizer, UpdateSchedule

__all__ = ["ALQ", "AMQ", "AdaptiveQuantizer", "UpdateSchedule", "Histogram", "FitResult", "fit_alq", "fit_amq"]
