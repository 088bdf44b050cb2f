"""ALQ and AMQ: quantizers whose level table is refitted, on a schedule, to the gradients seen.

Both keep ``2**(bits-1)`` levels in [0, 1] (including 0 and 1) and start from NUQSGD's
exponential table. At the iterations of their :class:`UpdateSchedule` they

1. **observe** the uncompressed flat gradient(s) of that iteration: ``commcomp::level_stats``
   histograms the normalized magnitudes, weighted by squared bucket norms (csrc/core/stats.h);
2. **update**: all ranks ``all_reduce`` (sum) the float64 histogram, so every rank holds the same
   statistics, then fit levels on the CPU with deterministic float64 code — identical levels on
   every rank, bit for bit, with no broadcast;
3. use the new table from the next quantization on.

ALQ fits each level by coordinate descent (:func:`commcomp.adaptive.fit.fit_alq`), warm-started
from the better, under the new statistics, of its current table and the AMQ fit; AMQ fits the
multiplier ``p`` of ``{0, p^(s-1), ..., p, 1}`` by gradient descent
(:func:`commcomp.adaptive.fit.fit_amq`). See docs/adaptive.md.

Example::

    >>> import torch
    >>> from commcomp.adaptive import ALQ, UpdateSchedule
    >>> q = ALQ(bits=3, bucket_size=256, update_schedule=UpdateSchedule(at=(0,), every=None))
    >>> q.levels.values[1:3]                       # NUQSGD's table to start
    (0.25, 0.5)
    >>> g = torch.randn(8192)
    >>> if q.should_observe(0):
    ...     q.observe(g)
    >>> q.maybe_update(0)                          # collective when torch.distributed is up
    True
    >>> 0.0 < q.levels.values[1] < q.levels.values[2] < 0.5   # Gaussian buckets: levels move down
    True
    >>> payload = q.quantize(g, seed=1)            # the Quantizer API, with the fitted table
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..ops import DEFAULT_BINS, MAX_BINS, NormName, level_stats
from ..quantizers import Levels, Quantizer, _check_bits, register_scheme
from .fit import FitResult, Histogram, fit_alq, fit_amq, to_float32_levels

__all__ = ["UpdateSchedule", "AdaptiveQuantizer", "ALQ", "AMQ"]


@dataclass(frozen=True)
class UpdateSchedule:
    """Iterations at which levels are refitted: each of ``at``, and every ``every`` iterations.

    The paper updates early (the gradient distribution changes fastest at the start) and then
    rarely; the default refits at iterations 100, 2000 and 10000 and every 10000 after that.
    """

    at: tuple[int, ...] = (100, 2000, 10000)
    every: int | None = 10000

    def __post_init__(self) -> None:
        at = tuple(sorted(set(int(i) for i in self.at)))
        if any(i < 0 for i in at):
            raise ValueError(f"update_schedule.at must hold non-negative iterations, got {self.at}")
        if self.every is not None and (not isinstance(self.every, int) or self.every <= 0):
            raise ValueError(f"update_schedule.every must be a positive int or None, got {self.every!r}")
        object.__setattr__(self, "at", at)

    def due(self, iteration: int) -> bool:
        """Whether levels are refitted at the end of ``iteration``."""
        if iteration in self.at:
            return True
        return self.every is not None and iteration > 0 and iteration % self.every == 0

    def to_dict(self) -> dict[str, Any]:
        return {"at": list(self.at), "every": self.every}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UpdateSchedule":
        return cls(tuple(d["at"]), d["every"])


class AdaptiveQuantizer(Quantizer):
    """Base of :class:`ALQ` and :class:`AMQ`: statistics, synchronization, schedule, state.

    Protocol for a training loop or DDP hook (every rank, same iterations):

    * ``if q.should_observe(it): q.observe(flat_grad)`` — before or after quantizing, on the
      uncompressed gradient, once per gradient bucket (any device; cheap, asynchronous on CUDA);
    * ``q.maybe_update(it, group)`` — once per iteration after the last ``observe``; a collective
      (one ``all_reduce``) on iterations where ``should_observe`` is true, a no-op otherwise;
    * decode a payload with the levels it was encoded with (``QuantizedTensor.levels``), since a
      refit may land between encoding and decoding.
    """

    def __init__(
        self,
        bits: int,
        bucket_size: int = 512,
        update_schedule: UpdateSchedule | None = None,
        norm: NormName = "l2",
        bins: int = DEFAULT_BINS,
    ) -> None:
        super().__init__(bucket_size, norm)
        self._count = _check_bits(bits)
        if update_schedule is None:
            update_schedule = UpdateSchedule()
        if not isinstance(update_schedule, UpdateSchedule):
            raise ValueError(f"update_schedule must be an UpdateSchedule, got {update_schedule!r}")
        if not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
            raise ValueError(f"bins must be an int in [1, {MAX_BINS}], got {bins!r}")
        self.update_schedule = update_schedule
        self.bins = bins
        self._levels = Levels.exponential(self._count)
        self._pending: torch.Tensor | None = None  # this rank's histogram since the last update
        self.updates = 0
        self.last_fit: FitResult | None = None

    @property
    def levels(self) -> Levels:
        return self._levels

    def should_observe(self, iteration: int) -> bool:
        """Whether gradients of ``iteration`` feed the refit at its end."""
        return self.update_schedule.due(iteration)

    def observe(self, x: torch.Tensor, norms: torch.Tensor | None = None) -> None:
        """Add the statistics of gradient ``x`` (any shape; flattened) to this rank's pending ones.

        ``norms`` may pass this quantizer's per-bucket norms of ``x`` if already computed
        (``QuantizedTensor.norms``), saving a pass. Buckets with a non-finite norm are skipped.
        """
        flat = x.detach().reshape(-1)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        stats = level_stats(flat, self.bucket_size, self.norm, self.bins, norms)
        self._pending = stats if self._pending is None else self._pending + stats.to(self._pending.device)

    def update(self, group: dist.ProcessGroup | None = None, device: torch.device | None = None) -> bool:
        """Sum the pending statistics over ``group`` (if torch.distributed is initialized) and refit.

        A collective: every rank of ``group`` must call it, also ranks that observed nothing.
        ``device``: where the sum runs when this rank observed nothing (default: the CPU); the
        group's backend for that device carries it. Returns whether the levels changed. Without
        any mass anywhere, levels are kept.
        """
        return self.start_update(group, device).wait()

    def start_update(
        self, group: dist.ProcessGroup | None = None, device: torch.device | None = None
    ) -> torch.futures.Future[bool]:
        """:meth:`update` without waiting: launches the ``all_reduce`` and refits when it completes.

        Callers that quantize while the future is pending use the levels they read before
        calling. (commcomp's hooks launch the sum through their own communication thread instead:
        :meth:`take_statistics` and :meth:`refit`.)
        """
        stats = self.take_statistics(device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
            reduced = dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group, async_op=True).get_future()
            return reduced.then(lambda f: self.refit(f.wait()[0]))
        done: torch.futures.Future[bool] = torch.futures.Future()
        done.set_result(self.refit(stats))
        return done

    def take_statistics(self, device: torch.device | None = None) -> torch.Tensor:
        """This rank's pending statistics (float64 bin masses), handed over for summing across ranks
        and forgotten here: on the device they were observed on, or zeros on ``device`` (default:
        the CPU) when this rank observed nothing."""
        stats, self._pending = self._pending, None
        if stats is None:
            return torch.zeros(self.bins, dtype=torch.float64, device=device if device is not None else "cpu")
        return stats if device is None else stats.to(device)

    def refit(self, stats: torch.Tensor) -> bool:
        """Refit the levels to the statistics summed over every rank; returns whether they changed."""
        hist = Histogram.from_stats(stats)
        self.updates += 1
        if not hist.total > 0:
            return False
        old = self._levels
        self.last_fit = self._fit(hist)
        self._levels = Levels(to_float32_levels(self.last_fit.levels))
        return self._levels != old

    def maybe_update(self, iteration: int, group: dist.ProcessGroup | None = None) -> bool:
        """:meth:`update` if the schedule says so at ``iteration``; returns whether levels changed."""
        return self.update(group) if self.should_observe(iteration) else False

    def _fit(self, hist: Histogram) -> FitResult:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Levels, fit state and pending statistics: enough to resume exactly."""
        return {
            "scheme": self.name,
            "bits": self.bits,
            "bucket_size": self.bucket_size,
            "norm": self.norm,
            "bins": self.bins,
            "levels": list(self._levels.values),
            "updates": self.updates,
            "update_schedule": self.update_schedule.to_dict(),
            "pending": None if self._pending is None else self._pending.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; the configuration must match this quantizer's."""
        for key in ("scheme", "bits", "bucket_size", "norm", "bins"):
            mine = self.name if key == "scheme" else getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(f"state_dict {key} is {state.get(key)!r}, this quantizer has {mine!r}")
        levels = Levels(tuple(state["levels"]))
        if len(levels) != self._count:
            raise ValueError(f"state_dict levels has {len(levels)} entries, expected {self._count}")
        pending = state.get("pending")
        if pending is not None and (not isinstance(pending, torch.Tensor) or pending.shape != (self.bins,)):
            raise ValueError(f"state_dict pending must be None or a tensor of shape ({self.bins},)")
        self._levels = levels
        self.updates = int(state["updates"])
        self.update_schedule = UpdateSchedule.from_dict(state["update_schedule"])
        self._pending = None if pending is None else pending.to(torch.float64).clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bits={self.bits}, bucket_size={self.bucket_size}, norm={self.norm!r}, "
            f"update_schedule={self.update_schedule}, bins={self.bins})"
        )


@register_scheme
class ALQ(AdaptiveQuantizer):
    """Adaptive Levels Quantization: every level fitted (coordinate descent on the expected variance).

    Args:
        bits: fixed-width bits per coordinate (index + sign), ``2**(bits-1)`` levels; in [2, 8].
        bucket_size: coordinates per bucket sharing one norm.
        update_schedule: when to refit (:class:`UpdateSchedule`).
        norm: bucket norm, ``"l2"`` (the paper's) or ``"linf"``.
        bins: histogram resolution of the statistics.
    """

    name = "alq"

    def __init__(self, bits: int = 3, bucket_size: int = 512, update_schedule: UpdateSchedule | None = None,
                 norm: NormName = "l2", bins: int = DEFAULT_BINS) -> None:
        super().__init__(bits, bucket_size, update_schedule, norm, bins)

    def _fit(self, hist: Histogram) -> FitResult:
        # Coordinate descent finds a local minimum near its start. Start from the better of the
        # current table and the best exponential one, so ALQ is never worse than AMQ on the model.
        current = np.asarray(self._levels.values, dtype=np.float64)
        exponential = fit_amq(hist, self._count).levels
        start = min((current, exponential), key=hist.objective)
        return fit_alq(hist, start)


@register_scheme
class AMQ(AdaptiveQuantizer):
    """Adaptive Multiplier Quantization: levels ``{0, p^(s-1), ..., p, 1}`` with ``p`` fitted.

    Arguments as for :class:`ALQ`. ``multiplier`` is the current ``p`` (1/2, NUQSGD, at start).
    """

    name = "amq"

    def __init__(self, bits: int = 3, bucket_size: int = 512, update_schedule: UpdateSchedule | None = None,
                 norm: NormName = "l2", bins: int = DEFAULT_BINS) -> None:
        super().__init__(bits, bucket_size, update_schedule, norm, bins)
        self.multiplier = 0.5

    def _fit(self, hist: Histogram) -> FitResult:
        result = fit_amq(hist, self._count, p0=self.multiplier)
        self.multiplier = float(result.multiplier)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "multiplier": self.multiplier}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = float(state["multiplier"])
        if not 0.0 < p < 1.0 or math.isnan(p):
            raise ValueError(f"state_dict multiplier must be in (0, 1), got {p}")
        super().load_state_dict(state)
        self.multiplier = p
