"""Typed wrappers over every ``torch.ops.commcomp`` operator, and their fake (meta) kernels.

The operators work on flat tensors and explicit level tables; most users want the configs in
:mod:`commcomp.quantizers` and the wire format in :mod:`commcomp.codecs` instead. Every op has a
CPU kernel, a CUDA kernel in CUDA builds, and a fake implementation here so it traces under
``torch.compile``. The fakes check what they can without data with ``torch._check_value``, so a
traced call fails as early, and with the same kind of error, as an eager one.

Ops:

* quantization: :func:`bucket_norms`, :func:`quantize`, :func:`dequantize`,
  :func:`dequantize_accumulate`, :func:`pack_symbols`, :func:`unpack_symbols`;
* Elias coding of packed symbols: :func:`elias_encode`, :func:`elias_decode`;
* payloads of the wire format (what :mod:`commcomp.codecs` calls): :func:`read_payload_header`,
  :func:`decode_payload`;
* adaptive-level statistics: :func:`level_stats`.

Every integer argument is checked before it reaches the C++ schema (``ValueError`` naming it):
element counts are at most :data:`MAX_NUMEL` (2^48), bucket sizes at most :data:`MAX_BUCKET_SIZE`
(2^40), seeds and offsets in ``[0, 2^63)``; the kernels check the same bounds again.

Example::

    >>> import torch, commcomp
    >>> from commcomp import ops
    >>> levels = torch.tensor([0.0, 0.5, 1.0])
    >>> norms, symbols = ops.quantize(torch.randn(1000), levels, bucket_size=256, seed=1)
    >>> x_hat = ops.dequantize(norms, symbols, levels, bucket_size=256, numel=1000)
    >>> x_hat.shape, symbols.numel()   # 3 levels -> 2 index bits + sign = 3 bits per element
    (torch.Size([1000]), 375)
    >>> packed = ops.pack_symbols(torch.tensor([0, 0, 2, 0, 5], dtype=torch.uint8), 3)
    >>> lengths, stream = ops.elias_encode(packed, num_levels=4, bucket_size=8, numel=5)
    >>> lengths.tolist(), stream.numel()   # gamma: 011 1 0 (2 zeros, index 1, +), 010 010 1 (1 zero, index 2, -)
    ([2], 2)
    >>> bool(torch.equal(ops.elias_decode(lengths, stream, 4, 8, 5), packed))
    True
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

from . import _C  # noqa: F401  (registers torch.ops.commcomp)

__all__ = [
    "NormName",
    "NORMS",
    "EliasName",
    "ELIAS_CODES",
    "DEFAULT_BINS",
    "MAX_BINS",
    "MAX_NUMEL",
    "MAX_BUCKET_SIZE",
    "symbol_width",
    "packed_bytes",
    "num_buckets",
    "bucket_norms",
    "quantize",
    "dequantize",
    "dequantize_accumulate",
    "pack_symbols",
    "unpack_symbols",
    "elias_encode",
    "elias_decode",
    "read_payload_header",
    "decode_payload",
    "level_stats",
]

NormName = Literal["l2", "linf"]
NORMS: tuple[str, ...] = ("l2", "linf")
# Elias code ids of the ops (and of csrc/core/elias.h's EliasCode).
EliasName = Literal["gamma", "delta", "omega"]
ELIAS_CODES: dict[str, int] = {"gamma": 0, "delta": 1, "omega": 2}
DEFAULT_BINS = 1024
MAX_BINS = 4096  # kMaxStatBins in csrc/core/stats.h
_MAX_LEVELS = 128  # kMaxLevels in csrc/core/levels.h
MAX_NUMEL = 2**48  # kMaxNumel in csrc/core/sizes.h: the largest element count any op accepts
MAX_BUCKET_SIZE = 2**40  # kMaxBucketSize in csrc/core/sizes.h
_INT64_MAX = 2**63 - 1
_GRADIENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _int_arg(name: str, value: object, low: int, high: int, expected: str) -> int:
    """``value`` as an int in ``[low, high]``, or ``ValueError`` "``name`` must be ``expected``".

    Runs before the C++ schema sees the value, so an int outside int64 (``seed=2**63``) gets a
    message naming the argument rather than torch's "Expected int"; the messages are those of the
    C++ checks (csrc/checks/common.h).
    """
    if isinstance(value, torch.SymInt):  # traced: the fake kernels check it symbolically
        return value  # type: ignore[return-value]
    v = value.__index__() if hasattr(value, "__index__") and not isinstance(value, bool) else None  # type: ignore[attr-defined]
    if v is None or not low <= v <= high:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return v


def _bucket_size_arg(bucket_size: object) -> int:
    return _int_arg("bucket_size", bucket_size, 1, MAX_BUCKET_SIZE, f"positive and at most 2^40 ({MAX_BUCKET_SIZE})")


def _numel_arg(numel: object) -> int:
    return _int_arg("numel", numel, 0, MAX_NUMEL, f"non-negative and at most 2^48 ({MAX_NUMEL})")


def _width_arg(width: object) -> int:
    return _int_arg("width", width, 1, 8, "in [1, 8] bits")


def _num_levels_arg(num_levels: object) -> int:
    return _int_arg("num_levels", num_levels, 2, _MAX_LEVELS, f"in [2, {_MAX_LEVELS}]")


def _seed_args(seed: object, offset: object) -> tuple[int, int]:
    return (
        _int_arg("seed", seed, 0, _INT64_MAX, "non-negative and below 2^63"),
        _int_arg("offset", offset, 0, _INT64_MAX, "non-negative and below 2^63"),
    )


def symbol_width(num_levels: int) -> int:
    """Bits per coordinate on the wire: ceil(log2(num_levels)) index bits plus a sign bit."""
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    return max(1, (num_levels - 1).bit_length()) + 1


def packed_bytes(numel: int, width: int) -> int:
    """Bytes holding ``numel`` symbols of ``width`` bits."""
    return (numel * width + 7) // 8


def num_buckets(numel: int, bucket_size: int) -> int:
    """Buckets of ``bucket_size`` covering ``numel`` elements (the last may be partial)."""
    return (numel + bucket_size - 1) // bucket_size


def _elias_code_id(code: EliasName | int) -> int:
    if isinstance(code, str):
        if code not in ELIAS_CODES:
            raise ValueError(f"code must be one of {sorted(ELIAS_CODES)}, got {code!r}")
        return ELIAS_CODES[code]
    return int(code)


def bucket_norms(x: torch.Tensor, bucket_size: int, norm: NormName = "l2") -> torch.Tensor:
    """Per-bucket L2 or L-inf norm of flat ``x`` (last bucket may be partial), float32."""
    return torch.ops.commcomp.bucket_norms(x, _bucket_size_arg(bucket_size), norm)


def quantize(
    x: torch.Tensor,
    levels: torch.Tensor,
    bucket_size: int,
    norm: NormName = "l2",
    seed: int = 0,
    offset: int = 0,
    norms: torch.Tensor | None = None,
    allow_nonfinite: bool = False,
    stream_index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastically round flat ``x`` onto ``levels`` per bucket; return ``(norms, symbols)``.

    ``symbols`` is a uint8 stream packed at :func:`symbol_width` bits per element. Draws come from
    Philox at ``(seed, offset, element index)``: the same triple gives the same bits on every device.
    ``norms``, if given, replaces the per-bucket scales (each must be >= the bucket's own ``norm``;
    e.g. the max over ranks, for a shared scale).

    A bucket holding inf/NaN (or whose L2 norm overflows float32) has a non-finite norm — both
    norms propagate NaN. By default that raises ``ValueError``; with ``allow_nonfinite=True`` the
    bucket's symbols are all zero and its norm is returned as is, so a caller detects it from the
    norms without a second pass over ``x`` (what the DDP hooks do, to send it uncompressed).

    ``stream_index`` (a multiple of 8) is the Philox element index of ``x[0]``: quantizing
    ``x[s:]`` with ``stream_index=s`` (``s`` also a multiple of ``bucket_size``) gives exactly the
    bits the whole of ``x`` gives for those elements, so a tensor can be quantized in pieces.
    """
    seed, offset = _seed_args(seed, offset)
    return torch.ops.commcomp.quantize(
        x, levels, _bucket_size_arg(bucket_size), norm, seed, offset, norms, allow_nonfinite, stream_index
    )


def dequantize(
    norms: torch.Tensor, symbols: torch.Tensor, levels: torch.Tensor, bucket_size: int, numel: int
) -> torch.Tensor:
    """Decode a payload of :func:`quantize` into ``numel`` float32 values."""
    return torch.ops.commcomp.dequantize(norms, symbols, levels, _bucket_size_arg(bucket_size), _numel_arg(numel))


def dequantize_accumulate(
    out: torch.Tensor,
    norms: Sequence[torch.Tensor],
    symbols: Sequence[torch.Tensor],
    levels: torch.Tensor,
    bucket_size: int,
    scale: float = 1.0,
) -> None:
    """``out += scale * sum_k dequantize(norms[k], symbols[k])`` in one pass over ``out`` (float32).

    What an all-gather aggregation needs: payloads of all ranks are decoded and averaged without
    materializing each decoded tensor. Payloads are added in list order (deterministic).
    """
    torch.ops.commcomp.dequantize_accumulate(out, list(norms), list(symbols), levels, _bucket_size_arg(bucket_size), scale)


def pack_symbols(symbols: torch.Tensor, width: int) -> torch.Tensor:
    """Pack uint8 symbols (each < 2**width) at ``width`` bits, little-endian bit order."""
    return torch.ops.commcomp.pack_symbols(symbols, _width_arg(width))


def unpack_symbols(packed: torch.Tensor, width: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_symbols`: ``numel`` uint8 symbols."""
    return torch.ops.commcomp.unpack_symbols(packed, _width_arg(width), _numel_arg(numel))


def elias_encode(
    packed: torch.Tensor, num_levels: int, bucket_size: int, numel: int, code: EliasName | int = "gamma"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elias-code packed symbols per bucket: ``(bucket_bytes int64[buckets], stream uint8)``.

    Each bucket is byte-aligned in ``stream`` and holds ``bucket_bytes[b]`` bytes. Raises
    ``ValueError`` on a symbol whose level index is ``>= num_levels`` or a zero with its sign set.
    """
    return torch.ops.commcomp.elias_encode(
        packed, _num_levels_arg(num_levels), _bucket_size_arg(bucket_size), _numel_arg(numel),
        _elias_code_id(code),
    )


def elias_decode(
    bucket_bytes: torch.Tensor,
    stream: torch.Tensor,
    num_levels: int,
    bucket_size: int,
    numel: int,
    code: EliasName | int = "gamma",
) -> torch.Tensor:
    """Inverse of :func:`elias_encode`: the packed symbols (``packed_bytes(numel, width)`` bytes).

    Treats its input as untrusted: any malformed stream raises ``ValueError`` naming the bucket and
    what is wrong with it; nothing is read outside ``stream`` or written outside the output.
    """
    return torch.ops.commcomp.elias_decode(
        bucket_bytes, stream, _num_levels_arg(num_levels), _bucket_size_arg(bucket_size),
        _numel_arg(numel), _elias_code_id(code),
    )


def read_payload_header(payload: torch.Tensor) -> torch.Tensor:
    """The range-checked header fields of a wire payload as int64[10] on the host (see
    :func:`commcomp.codecs.read_header`, which wraps them). Raises ``ValueError`` ("malformed
    payload: ...") on a short payload or any field out of range."""
    return torch.ops.commcomp.read_payload_header(payload)


def decode_payload(
    payload: torch.Tensor,
    max_numel: int,
    numel: int | None = None,
    bucket_size: int | None = None,
    levels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and decode a wire payload: ``(header int64[10], levels float32, norms, symbols)``.

    What :func:`commcomp.codecs.decode` runs (csrc/core/wire.h): every field, section size, the
    level table, norms, bucket lengths and codes are checked before use, and the element count is
    capped by ``max_numel`` (and :data:`MAX_NUMEL`) or pinned by ``numel``; ``bucket_size`` and
    ``levels``, if given, must match. Raises ``ValueError`` starting "malformed payload". The
    header and levels are host tensors; norms and packed symbols are on the payload's device.

    Example::

        >>> import torch
        >>> from commcomp import QSGD, codecs, ops
        >>> payload = codecs.encode_tensor(torch.randn(100), QSGD(bits=3, bucket_size=32))
        >>> header, levels, norms, symbols = ops.decode_payload(payload, max_numel=1000)
        >>> levels.tolist(), norms.numel(), symbols.numel()   # 4 uniform levels, 4 buckets, 100 x 3 bits
        ([0.0, 0.3333333432674408, 0.6666666865348816, 1.0], 4, 38)
    """
    return torch.ops.commcomp.decode_payload(
        payload,
        min(_int_arg("max_numel", max_numel, 0, 2**128, "a non-negative int"), _INT64_MAX),
        -1 if numel is None else _int_arg("numel", numel, 0, _INT64_MAX, "a non-negative int below 2^63"),
        -1 if bucket_size is None else _bucket_size_arg(bucket_size),
        levels,
    )


def level_stats(
    x: torch.Tensor,
    bucket_size: int,
    norm: NormName = "l2",
    bins: int = DEFAULT_BINS,
    norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted ``sqrt``-spaced histogram of normalized magnitudes of flat ``x`` (float64, ``bins``).

    What adaptive level fitting (:mod:`commcomp.adaptive`) needs: bin ``k`` covers
    ``[(k/bins)^2, ((k+1)/bins)^2)`` of ``r = |x_i| / ||bucket||``, each coordinate weighted by its
    bucket's squared norm; exact zeros and buckets with a zero or non-finite norm are left out
    (they carry no quantization variance, or are sent uncompressed). Weights are summed in 64-bit
    fixed point relative to the largest bucket, so CPU and CUDA return bit-identical histograms.

    ``norms`` are the per-bucket norms if already computed (e.g. returned by :func:`quantize`);
    otherwise they are computed with ``norm``. Bin masses are in units of squared norm: for the L2
    norm, the histogram sums to ``sum_b n_b ||x_b||^2`` over buckets of ``n_b`` nonzero coordinates.

    Example::

        >>> import torch
        >>> from commcomp.ops import level_stats
        >>> x = torch.randn(4096)
        >>> h = level_stats(x, bucket_size=512, bins=256)
        >>> h.dtype, h.shape
        (torch.float64, torch.Size([256]))
        >>> bool(abs(h.sum() / x.pow(2).sum() - 512) < 1)   # each bucket adds 512 * ||x_b||^2
        True
    """
    if not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise ValueError(f"bins must be an int in [1, {MAX_BINS}], got {bins!r}")
    if not isinstance(bucket_size, int) or bucket_size <= 0:
        raise ValueError(f"bucket_size must be a positive int, got {bucket_size!r}")
    bucket_size = _bucket_size_arg(bucket_size)
    if norms is None:
        norms = bucket_norms(x, bucket_size, norm)
    return torch.ops.commcomp.level_stats(x, norms, bucket_size, bins)


# -- fake kernels ------------------------------------------------------------------------------
# Output shapes from input shapes only, so the ops trace without data. They check the arguments
# that need no data with the messages the C++ checks use.


def _check_gradient(x: torch.Tensor) -> None:
    torch._check_value(x.dim() == 1, lambda: f"x must be a flat (1-D) tensor, got shape {tuple(x.shape)}")
    torch._check_value(x.dtype in _GRADIENT_DTYPES, lambda: f"x must be float32, float16 or bfloat16, got {x.dtype}")


def _check_bucket_size(bucket_size: int) -> None:
    torch._check_value(
        0 < bucket_size <= MAX_BUCKET_SIZE,
        lambda: f"bucket_size must be positive and at most 2^40 ({MAX_BUCKET_SIZE}), got {bucket_size}",
    )


def _check_norm(norm: str) -> None:
    torch._check_value(norm in NORMS, lambda: f"norm must be 'l2' or 'linf', got '{norm}'")


def _check_levels(levels: torch.Tensor) -> None:
    torch._check_value(levels.dim() == 1, lambda: f"levels must be 1-D, got shape {tuple(levels.shape)}")
    torch._check_value(levels.dtype == torch.float32, lambda: f"levels must be float32, got {levels.dtype}")
    torch._check_value(
        2 <= levels.numel() <= _MAX_LEVELS, lambda: f"levels must have 2..{_MAX_LEVELS} entries, got {levels.numel()}"
    )


def _check_width(width: int) -> None:
    torch._check_value(1 <= width <= 8, lambda: f"width must be in [1, 8] bits, got {width}")


def _check_numel(numel: int) -> None:
    torch._check_value(numel >= 0, lambda: f"numel must be non-negative, got {numel}")
    torch._check_value(numel <= MAX_NUMEL, lambda: f"numel must be at most 2^48 ({MAX_NUMEL}), got {numel}")


def _check_payload(norms: torch.Tensor, symbols: torch.Tensor, numel: int, bucket_size: int, width: int, what: str) -> None:
    torch._check_value(norms.dim() == 1 and norms.dtype == torch.float32, lambda: f"{what}: norms must be a contiguous 1-D float32 tensor")
    torch._check_value(symbols.dim() == 1 and symbols.dtype == torch.uint8, lambda: f"{what}: symbols must be a contiguous 1-D uint8 tensor")
    torch._check_value(
        norms.numel() == num_buckets(numel, bucket_size),
        lambda: f"{what}: expected {num_buckets(numel, bucket_size)} norms for {numel} elements in buckets of {bucket_size}, got {norms.numel()}",
    )
    torch._check_value(
        symbols.numel() == packed_bytes(numel, width),
        lambda: f"{what}: expected {packed_bytes(numel, width)} symbol bytes for {numel} elements of {width} bits, got {symbols.numel()}",
    )


@torch.library.register_fake("commcomp::bucket_norms")
def _bucket_norms_fake(x, bucket_size, norm):
    _check_gradient(x)
    _check_bucket_size(bucket_size)
    _check_norm(norm)
    return x.new_empty((num_buckets(x.numel(), bucket_size),), dtype=torch.float32)


@torch.library.register_fake("commcomp::quantize")
def _quantize_fake(x, levels, bucket_size, norm, seed, offset, norms=None, allow_nonfinite=False, stream_index=0):
    _check_gradient(x)
    _check_levels(levels)
    _check_bucket_size(bucket_size)
    _check_norm(norm)
    torch._check_value(seed >= 0, lambda: f"seed must be non-negative, got {seed}")
    torch._check_value(offset >= 0, lambda: f"offset must be non-negative, got {offset}")
    torch._check_value(
        stream_index >= 0 and stream_index % 8 == 0,
        lambda: f"stream_index must be a non-negative multiple of 8, got {stream_index}",
    )
    buckets = num_buckets(x.numel(), bucket_size)
    if norms is not None:
        torch._check_value(norms.dim() == 1 and norms.dtype == torch.float32, lambda: "norms must be a 1-D float32 tensor")
        torch._check_value(
            norms.numel() == buckets,
            lambda: f"norms must hold one entry per bucket of {bucket_size} elements: expected {buckets}, got {norms.numel()}",
        )
    width = symbol_width(levels.numel())
    return x.new_empty((buckets,), dtype=torch.float32), x.new_empty((packed_bytes(x.numel(), width),), dtype=torch.uint8)


@torch.library.register_fake("commcomp::dequantize")
def _dequantize_fake(norms, symbols, levels, bucket_size, numel):
    _check_bucket_size(bucket_size)
    _check_numel(numel)
    _check_levels(levels)
    _check_payload(norms, symbols, numel, bucket_size, symbol_width(levels.numel()), "dequantize")
    return norms.new_empty((numel,), dtype=torch.float32)


@torch.library.register_fake("commcomp::dequantize_accumulate")
def _dequantize_accumulate_fake(out, norms, symbols, levels, bucket_size, scale):
    _check_bucket_size(bucket_size)
    _check_levels(levels)
    torch._check_value(out.dim() == 1 and out.dtype == torch.float32, lambda: "out must be a contiguous 1-D float32 tensor")
    torch._check_value(
        len(norms) == len(symbols),
        lambda: f"norms and symbols must list the same number of payloads, got {len(norms)} and {len(symbols)}",
    )
    for n, s in zip(norms, symbols):
        _check_payload(n, s, out.numel(), bucket_size, symbol_width(levels.numel()), "dequantize_accumulate")
    return None


@torch.library.register_fake("commcomp::pack_symbols")
def _pack_symbols_fake(symbols, width):
    _check_width(width)
    torch._check_value(symbols.dim() == 1 and symbols.dtype == torch.uint8, lambda: "symbols must be a 1-D uint8 tensor")
    return symbols.new_empty((packed_bytes(symbols.numel(), width),), dtype=torch.uint8)


@torch.library.register_fake("commcomp::unpack_symbols")
def _unpack_symbols_fake(packed, width, numel):
    _check_width(width)
    _check_numel(numel)
    torch._check_value(packed.dim() == 1 and packed.dtype == torch.uint8, lambda: "packed must be a 1-D uint8 tensor")
    expected = packed_bytes(numel, width)
    torch._check_value(
        packed.numel() == expected, lambda: f"packed must hold {expected} bytes for numel={numel} at width={width}, got {packed.numel()}"
    )
    return packed.new_empty((numel,), dtype=torch.uint8)


def _check_elias_shape(num_levels: int, bucket_size: int, numel: int, code: int) -> None:
    torch._check_value(
        2 <= num_levels <= _MAX_LEVELS, lambda: f"num_levels must be in [2, {_MAX_LEVELS}], got {num_levels}"
    )
    _check_bucket_size(bucket_size)
    _check_numel(numel)
    torch._check_value(code in ELIAS_CODES.values(), lambda: f"code must be 0 (gamma), 1 (delta) or 2 (omega), got {code}")


# The stream length depends on the data, so it is a fresh symbolic size.
@torch.library.register_fake("commcomp::elias_encode")
def _elias_encode_fake(packed, num_levels, bucket_size, numel, code):
    _check_elias_shape(num_levels, bucket_size, numel, code)
    torch._check_value(packed.dim() == 1 and packed.dtype == torch.uint8, lambda: "packed must be a 1-D uint8 tensor")
    stream_bytes = torch.library.get_ctx().new_dynamic_size()
    return (
        packed.new_empty((num_buckets(numel, bucket_size),), dtype=torch.int64),
        packed.new_empty((stream_bytes,), dtype=torch.uint8),
    )


@torch.library.register_fake("commcomp::elias_decode")
def _elias_decode_fake(bucket_bytes, stream, num_levels, bucket_size, numel, code):
    _check_elias_shape(num_levels, bucket_size, numel, code)
    torch._check_value(stream.dim() == 1 and stream.dtype == torch.uint8, lambda: "stream must be a 1-D uint8 tensor")
    torch._check_value(
        bucket_bytes.dim() == 1 and bucket_bytes.dtype == torch.int64, lambda: "bucket_bytes must be a 1-D int64 tensor"
    )
    return stream.new_empty((packed_bytes(numel, symbol_width(num_levels)),), dtype=torch.uint8)


_HEADER_FIELDS = 10  # kHeaderFields in csrc/composite/payload.cpp


def _check_payload_tensor(payload: torch.Tensor) -> None:
    torch._check_value(
        payload.dim() == 1 and payload.dtype == torch.uint8,
        lambda: f"payload must be a 1-D uint8 tensor, got {payload.dtype} of shape {tuple(payload.shape)}",
    )


@torch.library.register_fake("commcomp::read_payload_header")
def _read_payload_header_fake(payload):
    _check_payload_tensor(payload)
    return torch.empty((_HEADER_FIELDS,), dtype=torch.int64, device="cpu")


# Every size of a decoded payload comes from its bytes: fresh symbolic sizes.
@torch.library.register_fake("commcomp::decode_payload")
def _decode_payload_fake(payload, max_numel, numel, bucket_size, levels):
    _check_payload_tensor(payload)
    torch._check_value(max_numel >= 0, lambda: f"max_numel must be non-negative, got {max_numel}")
    ctx = torch.library.get_ctx()
    return (
        torch.empty((_HEADER_FIELDS,), dtype=torch.int64, device="cpu"),
        torch.empty((ctx.new_dynamic_size(),), dtype=torch.float32, device="cpu"),
        payload.new_empty((ctx.new_dynamic_size(),), dtype=torch.float32),
        payload.new_empty((ctx.new_dynamic_size(),), dtype=torch.uint8),
    )


@torch.library.register_fake("commcomp::level_stats")
def _level_stats_fake(x, norms, bucket_size, bins):
    _check_gradient(x)
    _check_bucket_size(bucket_size)
    torch._check_value(1 <= bins <= MAX_BINS, lambda: f"bins must be in [1, {MAX_BINS}], got {bins}")
    torch._check_value(norms.dim() == 1 and norms.dtype == torch.float32, lambda: "norms must be a contiguous 1-D float32 tensor")
    return x.new_empty((bins,), dtype=torch.float64)
