"""User-facing quantizer configs: which level table, which norm, what bucket size.

* :class:`QSGD` — uniform levels, L2 norm (Alistarh et al., 2017).
* :class:`QSGDInf` — uniform levels, L-inf norm.
* :class:`NUQSGD` — exponential levels ``{0, 2^-(s-1), ..., 1/2, 1}``, L2 norm (Ramezani-Kebrya et al.).
* :class:`FixedLevels` — any sorted table in [0, 1]: what ALQ/AMQ fit (see :mod:`commcomp.adaptive`).

Quantizers built from a bit width register their scheme name (:func:`register_scheme`), so command-line
specs (:func:`commcomp.hooks.hook_from_spec`) and configs name them the same way everywhere:
:func:`make_quantizer` builds one from ``(scheme, bits, bucket_size)``; :func:`scheme_names` lists them.

``bits`` is the fixed-width wire cost per coordinate: ``bits - 1`` bits of level index plus a
sign bit, i.e. ``2**(bits-1)`` levels including 0.

Example::

    >>> import torch
    >>> from commcomp import QSGD
    >>> q = QSGD(bits=4, bucket_size=512)
    >>> len(q.levels), q.levels.values[:3]
    (8, (0.0, 0.1428571492433548, 0.2857142984867096))
    >>> payload = q.quantize(torch.randn(2000), seed=3)
    >>> payload.symbols.numel()   # 2000 coordinates x 4 bits
    1000
    >>> q.dequantize(payload).shape
    torch.Size([2000])
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import numpy as np
import torch

from . import ops
from .ops import NORMS, NormName

__all__ = [
    "Levels",
    "QuantizedTensor",
    "Quantizer",
    "QSGD",
    "QSGDInf",
    "NUQSGD",
    "FixedLevels",
    "register_scheme",
    "make_quantizer",
    "scheme_names",
    "saturating_cast",
]

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class Levels:
    """A sorted level table in [0, 1] starting at 0 and ending at 1 (float32 values)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        # float32 values; + 0.0 turns a -0.0 into the one zero the wire format spells.
        values = tuple(float(torch.tensor(v, dtype=torch.float32)) + 0.0 for v in self.values)
        object.__setattr__(self, "values", values)
        if any(math.isnan(v) for v in values):
            raise ValueError(f"levels must not be NaN, got {values}")
        if not 2 <= len(values) <= 2 ** (MAX_BITS - 1):
            raise ValueError(f"levels must have 2..{2 ** (MAX_BITS - 1)} entries, got {len(values)}")
        if values[0] != 0.0 or values[-1] != 1.0:
            raise ValueError(f"levels must start at 0 and end at 1, got {values[0]} and {values[-1]}")
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ValueError(f"levels must be strictly increasing, got {values}")

    @classmethod
    def uniform(cls, count: int) -> "Levels":
        """``count`` evenly spaced levels: QSGD with ``count - 1`` intervals.

        Level ``j`` is ``float32(j) / float32(count - 1)``, correctly rounded: the definition the
        wire decoder shares (``uniform_level_values`` in csrc/core/levels.h), and the same on
        every machine (``torch.linspace`` rounds some levels differently by CPU vector width).
        """
        _check_count(count)
        return cls(tuple((np.arange(count, dtype=np.float32) / np.float32(count - 1)).tolist()))

    @classmethod
    def exponential(cls, count: int, base: float = 0.5) -> "Levels":
        """``{0, base^(count-2), ..., base, 1}``: NUQSGD for ``base = 1/2``, AMQ's family for others."""
        _check_count(count)
        if not 0.0 < base < 1.0:
            raise ValueError(f"base must be in (0, 1), got {base}")
        return cls((0.0,) + tuple(base ** k for k in range(count - 2, 0, -1)) + (1.0,))

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "Levels":
        return cls(tuple(t.detach().to(torch.float32).cpu().tolist()))

    def tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.tensor(self.values, dtype=torch.float32, device=device)

    @property
    def bits(self) -> int:
        """Fixed-width bits per coordinate (index + sign)."""
        return ops.symbol_width(len(self.values))

    def __len__(self) -> int:
        return len(self.values)


def _check_count(count: int) -> None:
    if not isinstance(count, int) or not 2 <= count <= 2 ** (MAX_BITS - 1):
        raise ValueError(f"level count must be an int in [2, {2 ** (MAX_BITS - 1)}], got {count!r}")


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return 2 ** (bits - 1)


@dataclass(frozen=True)
class QuantizedTensor:
    """One quantized flat tensor: per-bucket norms, packed symbols, and what decoding needs.

    ``allow_nonfinite`` is set by ``quantize(..., allow_nonfinite=True)``: norms may then be
    inf/NaN (those buckets' symbols are zero). :func:`commcomp.codecs.encode` refuses non-finite
    norms otherwise; with it, it encodes them without looking (no device synchronization) for a
    caller that sends such a payload only behind a non-finite marker, as the DDP hooks do.
    """

    norms: torch.Tensor
    symbols: torch.Tensor
    numel: int
    bucket_size: int
    levels: Levels
    dtype: torch.dtype
    allow_nonfinite: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes on the wire for norms + symbols (headers excluded)."""
        return self.norms.numel() * 4 + self.symbols.numel()


class Quantizer:
    """Base config: a level table, a norm, a bucket size. Subclasses choose the table."""

    name: ClassVar[str]

    def __init__(self, bucket_size: int = 512, norm: NormName = "l2") -> None:
        if not isinstance(bucket_size, int) or not 0 < bucket_size <= ops.MAX_BUCKET_SIZE:
            raise ValueError(f"bucket_size must be a positive int at most 2^40, got {bucket_size!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
        self.bucket_size = bucket_size
        self.norm: NormName = norm

    @property
    def levels(self) -> Levels:
        raise NotImplementedError

    @property
    def bits(self) -> int:
        return self.levels.bits

    def quantize(
        self, x: torch.Tensor, seed: int = 0, offset: int = 0, allow_nonfinite: bool = False, stream_index: int = 0
    ) -> QuantizedTensor:
        """Quantize ``x`` (any shape; flattened) with Philox stream ``(seed, offset)``.

        A bucket holding inf/NaN raises ``ValueError``, or with ``allow_nonfinite=True`` is
        returned with its non-finite norm and zero symbols; ``stream_index`` quantizes a piece of
        a larger tensor as the whole would be (see :func:`commcomp.ops.quantize`).
        """
        flat = x.reshape(-1)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        norms, symbols = ops.quantize(
            flat, self.levels.tensor(), self.bucket_size, self.norm, seed, offset, None, allow_nonfinite, stream_index
        )
        return QuantizedTensor(norms, symbols, flat.numel(), self.bucket_size, self.levels, x.dtype, allow_nonfinite)

    def dequantize(self, q: QuantizedTensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Decode ``q`` to a flat tensor of ``dtype`` (default: the quantized tensor's dtype).

        Decoding runs in float32; values beyond ``dtype``'s range saturate (:func:`saturating_cast`).
        """
        out = ops.dequantize(q.norms, q.symbols, q.levels.tensor(), q.bucket_size, q.numel)
        return saturating_cast(out, dtype or q.dtype)

    def variance_bound(self, d: int) -> float | None:
        """Known upper bound on E||Q(x) - x||^2 / ||x||^2 for a bucket of ``d`` coordinates, if any."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bits={self.bits}, bucket_size={self.bucket_size}, norm={self.norm!r})"


def saturating_cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (decoded float32 values) as ``dtype``, clamping finite values to its largest magnitude.

    A decoded coordinate is ``norm * level``: an unbiased estimate that may exceed what a narrower
    dtype holds even when every input did (fp16 buckets whose L2 norm is above 65504 round a small
    coordinate up to a level worth more than 65504). Saturating keeps such a value finite, so a
    finite gradient never turns into inf (and AMP never skips a step for it); NaN stays NaN.

    Example::

        >>> import torch
        >>> from commcomp.quantizers import saturating_cast
        >>> saturating_cast(torch.tensor([1e6, -1e6, 0.5]), torch.float16).tolist()
        [65504.0, -65504.0, 0.5]
    """
    if dtype != x.dtype and dtype.is_floating_point and torch.finfo(dtype).max < torch.finfo(x.dtype).max:
        big = torch.finfo(dtype).max
        x = x.clamp(-big, big)
    return x.to(dtype)


_Q = TypeVar("_Q", bound=type)
_SCHEMES: dict[str, Callable[..., Quantizer]] = {}


def register_scheme(cls: _Q) -> _Q:
    """Class decorator: make ``cls.name`` a scheme of :func:`make_quantizer`.

    ``cls(bits, bucket_size, **kwargs)`` must build the quantizer.
    """
    name = cls.name  # type: ignore[attr-defined]
    if name in _SCHEMES and _SCHEMES[name] is not cls:
        raise ValueError(f"scheme {name!r} is already registered by {_SCHEMES[name].__name__}")
    _SCHEMES[name] = cls
    return cls


def scheme_names() -> tuple[str, ...]:
    """Names :func:`make_quantizer` accepts, in registration order."""
    return tuple(_SCHEMES)


def make_quantizer(scheme: str, bits: int, bucket_size: int = 512, **kwargs: Any) -> Quantizer:
    """The quantizer a scheme name stands for (``kwargs`` go to its constructor, e.g. ALQ's schedule)."""
    if scheme not in _SCHEMES:
        raise ValueError(f"scheme must be one of {scheme_names()}, got {scheme!r}")
    return _SCHEMES[scheme](bits, bucket_size, **kwargs)


@register_scheme
class QSGD(Quantizer):
    """Uniform levels with the L2 norm (QSGD). ``bits`` in [2, 8]."""

    name = "qsgd"

    def __init__(self, bits: int = 4, bucket_size: int = 512) -> None:
        super().__init__(bucket_size, "l2")
        self._levels = Levels.uniform(_check_bits(bits))

    @property
    def levels(self) -> Levels:
        return self._levels

    def variance_bound(self, d: int) -> float:
        # Per coordinate, rounding r within an interval of width 1/s has variance
        # (r - a)(a + 1/s - r) <= min(1 / (4 s^2), r / s); summing with sum r_i <= sqrt(d) gives
        # min(d / (4 s^2), sqrt(d) / s) — QSGD's Lemma 3.1 with its constant tightened.
        s = len(self._levels) - 1
        return min(d / (4 * s**2), math.sqrt(d) / s)


@register_scheme
class QSGDInf(QSGD):
    """Uniform levels with the L-inf norm: finer effective resolution for dense buckets."""

    name = "qsgdinf"

    def __init__(self, bits: int = 4, bucket_size: int = 512) -> None:
        super().__init__(bits, bucket_size)
        self.norm = "linf"

    def variance_bound(self, d: int) -> float:
        # |x_i| / ||x||_inf <= 1 and each coordinate's rounding variance is <= (1/s)^2 / 4 of
        # ||x||_inf^2 <= ||x||_2^2: total <= d / (4 s^2) relative to ||x||_2^2.
        s = len(self.levels) - 1
        return d / (4 * s**2)


@register_scheme
class NUQSGD(Quantizer):
    """Exponential levels ``{0, 2^-(s-1), ..., 1/2, 1}`` with the L2 norm (NUQSGD). ``bits`` in [2, 8]."""

    name = "nuqsgd"

    def __init__(self, bits: int = 4, bucket_size: int = 512) -> None:
        super().__init__(bucket_size, "l2")
        self._levels = Levels.exponential(_check_bits(bits))

    @property
    def levels(self) -> Levels:
        return self._levels

    def variance_bound(self, d: int) -> float:
        # In [l, 2l] the rounding variance (r - l)(2l - r) is at most r^2 / 8 (sums to <= 1/8); in
        # the first interval [0, l1], l1 = 2^-(s-1), it is <= min(l1^2 / 4, l1 r). Hence
        # min(d l1^2 / 4, l1 sqrt(d)) + 1/8, the form of NUQSGD's Theorem 2.
        l1 = 2.0 ** (-(len(self._levels) - 2))
        return min(d * l1**2 / 4, l1 * math.sqrt(d)) + 0.125


class FixedLevels(Quantizer):
    """Any level table (e.g. fitted by ALQ/AMQ) with a chosen norm."""

    name = "levels"

    def __init__(self, levels: Levels | Sequence[float], bucket_size: int = 512, norm: NormName = "l2") -> None:
        super().__init__(bucket_size, norm)
        self._levels = levels if isinstance(levels, Levels) else Levels(tuple(levels))

    @property
    def levels(self) -> Levels:
        return self._levels
