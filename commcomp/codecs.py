"""Wire format of a quantized tensor: a versioned header, per-bucket norms, and the symbol stream
coded either at fixed width or with Elias codes (QSGD §3.2 / NUQSGD §4).

Layout (all integers and floats little-endian; see ``docs/codecs.md`` for the field table)::

    header (36 bytes) | level table (float32 x levels, table kind only) | norms (float32 x buckets)
    | bucket byte lengths (uint16/uint32 x buckets, Elias only) | symbol stream

Codings:

* ``"fixed"`` — the packed ``(index << 1) | sign`` symbols of :func:`commcomp.ops.quantize`,
  ``bits`` per coordinate.
* ``"elias-gamma"``, ``"elias-delta"``, ``"elias-omega"`` — per bucket, each nonzero symbol as
  (Elias code of the zero run before it + 1, Elias code of its level index, raw sign bit), and a
  final zero run if the bucket ends in zeros. Buckets are byte-aligned, so both directions run in
  parallel over buckets; sparse or low-magnitude gradients cost far fewer bits than ``bits``.

:func:`decode` treats the payload as hostile: every header field, section length, norm and code
is checked before use, and any inconsistency raises ``ValueError``. The element count it will
allocate for is capped by ``max_numel`` (or pinned by ``numel``) because an Elias payload of a few
bytes can legitimately describe millions of zeros. The checks are written once, in C++
(``csrc/core/wire.h``, behind :func:`commcomp.ops.decode_payload`), where the libFuzzer harness
``fuzz/payload_fuzzer.cpp`` runs them on raw bytes.

Example::

    >>> import torch
    >>> from commcomp import NUQSGD, codecs
    >>> q = NUQSGD(bits=4, bucket_size=512)
    >>> x = torch.randn(10_000)
    >>> x[::2] = 0                                  # e.g. dead ReLU units
    >>> payload = codecs.encode_tensor(x, q, seed=0, coding="elias-gamma")
    >>> fixed = codecs.encode_tensor(x, q, seed=0, coding="fixed")
    >>> payload.dtype, payload.numel() < 0.85 * fixed.numel()
    (torch.uint8, True)
    >>> x_hat = codecs.decode_tensor(payload, q)
    >>> bool(torch.equal(x_hat, q.dequantize(q.quantize(x, seed=0))))
    True
"""
from __future__ import annotations

import functools
import struct
import sys
import zlib
from dataclasses import dataclass
from typing import Literal

import torch

from . import ops
from .quantizers import Levels, QuantizedTensor, Quantizer, saturating_cast

__all__ = [
    "CODINGS",
    "CODING_ALIASES",
    "canonical_coding",
    "MAGIC",
    "VERSION",
    "DEFAULT_MAX_NUMEL",
    "PayloadHeader",
    "read_header",
    "fixed_payload_bytes",
    "encode",
    "encode_into",
    "decode",
    "encode_tensor",
    "decode_tensor",
    "TensorCodec",
]

if sys.byteorder != "little":  # norms are reinterpreted in place as little-endian float32
    raise ImportError("commcomp.codecs supports little-endian hosts only")

Coding = Literal["fixed", "elias-gamma", "elias-delta", "elias-omega"]
CODINGS: dict[str, int] = {"fixed": 0, "elias-gamma": 1, "elias-delta": 2, "elias-omega": 3}
_CODING_NAMES = {v: k for k, v in CODINGS.items()}
# Short names accepted wherever a coding is named (specs, states, codecs).
CODING_ALIASES: dict[str, str] = {"elias": "elias-gamma"}


def canonical_coding(coding: str) -> str:
    """The coding ``coding`` names (aliases resolved), or ``ValueError`` listing every accepted form."""
    name = CODING_ALIASES.get(coding, coding) if isinstance(coding, str) else None
    if name not in CODINGS:
        accepted = list(CODINGS) + [f"{alias} (= {target})" for alias, target in CODING_ALIASES.items()]
        raise ValueError(f"coding must be one of {', '.join(accepted)}; got {coding!r}")
    return name

MAGIC = b"CCQW"
VERSION = 1
# A decoded tensor may hold at most this many elements unless the caller raises the cap: 2^27
# float32 values are 512 MiB, well above a DDP bucket (25 MiB by default).
DEFAULT_MAX_NUMEL = 1 << 27

# magic, version, coding, levels kind, levels, bits, dtype, length bytes, reserved,
# bucket size, numel, stream bytes, CRC-32 of the level table.
_HEADER = struct.Struct("<4sBBBBBBBBIQQI")
HEADER_BYTES = _HEADER.size  # 36: keeps the float32 sections 4-byte aligned

# The fields of the header tensor ops.read_payload_header / ops.decode_payload return, in order.
_HEADER_FIELDS = ("coding", "levels_kind", "num_levels", "bits", "dtype", "length_bytes", "bucket_size", "numel",
                  "stream_bytes", "levels_crc")
_UINT64 = 2**64

_UNIFORM, _EXPONENTIAL, _TABLE = 1, 2, 3
_LEVEL_KIND_NAMES = {_UNIFORM: "uniform", _EXPONENTIAL: "exponential", _TABLE: "table"}
_DTYPES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
_DTYPE_OF_CODE = {v: k for k, v in _DTYPES.items()}
_MAX_BUCKET_SIZE = 2**32 - 1


@dataclass(frozen=True)
class PayloadHeader:
    """The fixed fields at the start of a payload, as read (and range-checked) by :func:`read_header`."""

    coding: str
    levels_kind: str  # "uniform" (QSGD), "exponential" (NUQSGD) or "table" (embedded, e.g. ALQ)
    num_levels: int
    bits: int
    dtype: torch.dtype
    length_bytes: int  # bytes per bucket length (Elias), 0 for fixed
    bucket_size: int
    numel: int
    stream_bytes: int
    levels_crc: int

    @property
    def num_buckets(self) -> int:
        return (self.numel + self.bucket_size - 1) // self.bucket_size

    def section_sizes(self) -> tuple[int, int, int, int]:
        """Bytes of (level table, norms, bucket lengths, stream) this header announces."""
        table = 4 * self.num_levels if self.levels_kind == "table" else 0
        return table, 4 * self.num_buckets, self.length_bytes * self.num_buckets, self.stream_bytes

    @property
    def payload_bytes(self) -> int:
        return HEADER_BYTES + sum(self.section_sizes())


def _levels_bytes(levels: Levels) -> bytes:
    return struct.pack(f"<{len(levels)}f", *levels.values)


@functools.lru_cache(maxsize=None)
def _named_levels(kind: int, count: int) -> Levels:
    # Cached: building a Levels rounds every value through float32, too slow for a hot path.
    return Levels.uniform(count) if kind == _UNIFORM else Levels.exponential(count)


def _levels_kind(levels: Levels) -> int:
    # Named families travel as (kind, count); anything else carries its table.
    for kind in (_UNIFORM, _EXPONENTIAL):
        if levels == _named_levels(kind, len(levels)):
            return kind
    return _TABLE


def fixed_payload_bytes(numel: int, bucket_size: int, levels: Levels) -> int:
    """Exact size of a ``"fixed"``-coded payload: what every rank can compute without asking."""
    table = 4 * len(levels) if _levels_kind(levels) == _TABLE else 0
    buckets = (numel + bucket_size - 1) // bucket_size
    return HEADER_BYTES + table + 4 * buckets + ops.packed_bytes(numel, levels.bits)


def _check_norms_encodable(q: QuantizedTensor) -> None:
    # A payload with a non-finite or negative norm is one every decoder refuses; say so here.
    if q.allow_nonfinite or q.norms.numel() == 0:
        return
    bad = ~(torch.isfinite(q.norms) & (q.norms >= 0))
    if bool(bad.any()):
        bucket = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"q.norms must be finite and >= 0, got {float(q.norms[bucket])} for bucket {bucket}: send non-finite "
            "buckets uncompressed (or quantize with allow_nonfinite=True and send them behind a marker)"
        )


def _check_quantized(q: QuantizedTensor) -> int:
    if not isinstance(q, QuantizedTensor):
        raise ValueError(f"q must be a QuantizedTensor, got {type(q).__name__}")
    if not isinstance(q.numel, int) or q.numel < 0:
        raise ValueError(f"q.numel must be a non-negative int, got {q.numel!r}")
    if not isinstance(q.bucket_size, int) or not 1 <= q.bucket_size <= _MAX_BUCKET_SIZE:
        raise ValueError(f"q.bucket_size must be an int in [1, 2^32), got {q.bucket_size!r}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"q.dtype must be one of {list(_DTYPES)}, got {q.dtype}")
    buckets = (q.numel + q.bucket_size - 1) // q.bucket_size
    width = q.levels.bits
    if q.norms.dtype != torch.float32 or q.norms.shape != (buckets,):
        raise ValueError(f"q.norms must be float32 of shape ({buckets},), got {q.norms.dtype} {tuple(q.norms.shape)}")
    if q.symbols.dtype != torch.uint8 or q.symbols.shape != (ops.packed_bytes(q.numel, width),):
        raise ValueError(
            f"q.symbols must be uint8 of shape ({ops.packed_bytes(q.numel, width)},) for {q.numel} symbols of "
            f"{width} bits, got {q.symbols.dtype} {tuple(q.symbols.shape)}"
        )
    if q.norms.device != q.symbols.device:
        raise ValueError(f"q.norms and q.symbols must share a device, got {q.norms.device} and {q.symbols.device}")
    _check_norms_encodable(q)
    return width


def _le_bytes(values: torch.Tensor, nbytes: int) -> torch.Tensor:
    """int64 values -> their low ``nbytes`` bytes each, little-endian, as one uint8 tensor."""
    return torch.stack([(values >> (8 * k)) & 0xFF for k in range(nbytes)], dim=1).to(torch.uint8).reshape(-1)


def _encoded_parts(q: QuantizedTensor, coding: Coding, fallback_to_fixed: bool) -> list[torch.Tensor]:
    coding = canonical_coding(coding)
    width = _check_quantized(q)
    device = q.symbols.device
    kind = _levels_kind(q.levels)
    table = _levels_bytes(q.levels)
    symbols = q.symbols.contiguous()
    length_bytes, lengths, stream = 0, None, symbols
    if coding != "fixed":
        counts, coded = ops.elias_encode(
            symbols, len(q.levels), q.bucket_size, q.numel, coding.removeprefix("elias-")  # type: ignore[arg-type]
        )
        # A bucket's code is at most ~2 bytes per element; 16-bit lengths cover typical buckets.
        nbytes = 2 if counts.numel() == 0 or int(counts.max()) < 2**16 else 4
        if fallback_to_fixed and coded.numel() + nbytes * counts.numel() >= symbols.numel():
            coding = "fixed"  # the Elias code would not be smaller: the header says fixed
        else:
            length_bytes, lengths, stream = nbytes, _le_bytes(counts, nbytes), coded
    header = _HEADER.pack(
        MAGIC, VERSION, CODINGS[coding], kind, len(q.levels), width, _DTYPES[q.dtype], length_bytes, 0,
        q.bucket_size, q.numel, stream.numel(), zlib.crc32(table),
    )
    parts = [torch.frombuffer(bytearray(header), dtype=torch.uint8).to(device)]
    if kind == _TABLE:
        parts.append(torch.frombuffer(bytearray(table), dtype=torch.uint8).to(device))
    parts.append(q.norms.contiguous().view(torch.uint8))
    if lengths is not None:
        parts.append(lengths)
    parts.append(stream)
    return parts


def encode(q: QuantizedTensor, coding: Coding = "fixed", *, fallback_to_fixed: bool = False) -> torch.Tensor:
    """Serialize ``q`` into one uint8 tensor on ``q``'s device (see the module docstring).

    With ``fallback_to_fixed``, an Elias coding that would not be smaller than the fixed-width
    stream is replaced by fixed width (the header records which coding a payload uses, so
    decoding needs nothing else): the payload never costs more than ``"fixed"``.

    Raises ``ValueError`` for an unknown ``coding`` or an inconsistent ``q``, including norms that
    are non-finite or negative (no decoder accepts them) unless ``q.allow_nonfinite`` is set.
    """
    return torch.cat(_encoded_parts(q, coding, fallback_to_fixed))


def encode_into(q: QuantizedTensor, out: torch.Tensor, coding: Coding = "fixed", *, fallback_to_fixed: bool = False) -> int:
    """:func:`encode` written straight into ``out`` (a 1-D uint8 tensor, e.g. a slice of a send
    buffer); returns the bytes written. Raises ``ValueError`` if ``out`` is too small."""
    parts = _encoded_parts(q, coding, fallback_to_fixed)
    total = sum(part.numel() for part in parts)
    if out.dtype != torch.uint8 or out.dim() != 1 or out.numel() < total:
        raise ValueError(f"out must be a 1-D uint8 tensor of at least {total} bytes, got {out.dtype} {tuple(out.shape)}")
    at = 0
    for part in parts:
        out[at : at + part.numel()] = part
        at += part.numel()
    return total


def _check_payload_type(payload: object) -> None:
    if not isinstance(payload, torch.Tensor):
        raise ValueError(f"payload must be a torch.Tensor, got {type(payload).__name__}")


def _header_of(fields: torch.Tensor) -> PayloadHeader:
    f = dict(zip(_HEADER_FIELDS, fields.tolist()))
    return PayloadHeader(
        _CODING_NAMES[f["coding"]], _LEVEL_KIND_NAMES[f["levels_kind"]], f["num_levels"], f["bits"],
        _DTYPE_OF_CODE[f["dtype"]], f["length_bytes"], f["bucket_size"], f["numel"] % _UINT64,
        f["stream_bytes"] % _UINT64, f["levels_crc"],
    )


def read_header(payload: torch.Tensor) -> PayloadHeader:
    """Parse and range-check the header of ``payload`` (a 1-D uint8 tensor). Raises ``ValueError``."""
    _check_payload_type(payload)
    return _header_of(ops.read_payload_header(payload))


def decode(
    payload: torch.Tensor,
    expected: Quantizer | None = None,
    *,
    numel: int | None = None,
    max_numel: int = DEFAULT_MAX_NUMEL,
) -> QuantizedTensor:
    """Parse and validate a payload of :func:`encode` back into a :class:`QuantizedTensor`.

    Args:
        payload: 1-D uint8 tensor (CPU or CUDA, any strides), e.g. received from another rank.
        expected: if given, the payload's bucket size and level table must equal this quantizer's.
        numel: if given, the payload must hold exactly this many elements.
        max_numel: upper bound on the element count a payload may announce (the decoder allocates
            for that many symbols; :data:`commcomp.ops.MAX_NUMEL` bounds it too).

    Raises ``ValueError`` (message starting "malformed payload") on any inconsistency: size,
    magic, version, field ranges, level table, norms (finite, >= 0), bucket lengths, codes; and
    ``ValueError`` naming the argument for a bad ``numel`` or ``max_numel``. The header, level
    table, norms and bucket lengths are validated on the host; the symbol stream is decoded on
    the payload's device.
    """
    _check_payload_type(payload)
    fields, level_values, norms, symbols = ops.decode_payload(
        payload, max_numel, numel,
        None if expected is None else expected.bucket_size,
        None if expected is None else expected.levels.tensor(),
    )
    h = _header_of(fields)
    if h.levels_kind == "table":
        levels = Levels(tuple(level_values.tolist()))
    else:
        levels = _named_levels(_UNIFORM if h.levels_kind == "uniform" else _EXPONENTIAL, h.num_levels)
    return QuantizedTensor(norms, symbols, h.numel, h.bucket_size, levels, h.dtype)


def encode_tensor(
    x: torch.Tensor, quantizer: Quantizer, seed: int = 0, offset: int = 0, coding: Coding = "fixed"
) -> torch.Tensor:
    """Quantize ``x`` with ``quantizer`` at Philox stream ``(seed, offset)`` and :func:`encode` it."""
    return encode(quantizer.quantize(x, seed, offset), coding)


def decode_tensor(
    payload: torch.Tensor,
    quantizer: Quantizer | None = None,
    *,
    numel: int | None = None,
    max_numel: int = DEFAULT_MAX_NUMEL,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """:func:`decode` and dequantize: a flat tensor of ``dtype`` (default: the sender's dtype).

    Decoding runs in float32; values beyond ``dtype``'s range saturate
    (:func:`commcomp.quantizers.saturating_cast`) rather than become inf.
    """
    q = decode(payload, quantizer, numel=numel, max_numel=max_numel)
    out = ops.dequantize(q.norms, q.symbols, q.levels.tensor(q.norms.device), q.bucket_size, q.numel)
    return saturating_cast(out, dtype or q.dtype)


class TensorCodec:
    """A quantizer and a coding bundled as ``encode(tensor) -> payload`` / ``decode(payload, numel)``:
    the compressor interface of :class:`commcomp.robust.RobustAggregationState`.

    Each ``encode`` draws from the next Philox offset of stream ``seed``; give every rank its own
    ``seed`` so quantization noise is independent across ranks.

    Example::

        >>> import torch
        >>> from commcomp import NUQSGD
        >>> from commcomp.codecs import TensorCodec
        >>> codec = TensorCodec(NUQSGD(4, 256), coding="elias-gamma", seed=1)
        >>> x = torch.randn(1000)
        >>> codec.decode(codec.encode(x), 1000).shape
        torch.Size([1000])
    """

    def __init__(self, quantizer: Quantizer, coding: Coding = "fixed", seed: int = 0) -> None:
        if not isinstance(quantizer, Quantizer):
            raise ValueError(f"quantizer must be a commcomp Quantizer, got {type(quantizer).__name__}")
        coding = canonical_coding(coding)
        self.quantizer, self.coding, self.seed, self.offset = quantizer, coding, seed, 0

    def encode(self, tensor: torch.Tensor) -> torch.Tensor:
        payload = encode_tensor(tensor, self.quantizer, self.seed, self.offset, self.coding)
        self.offset += 1
        return payload

    def decode(self, payload: torch.Tensor, numel: int) -> torch.Tensor:
        """Validate and decode a (possibly hostile) payload of exactly ``numel`` elements to fp32."""
        return decode_tensor(payload, self.quantizer, numel=numel, dtype=torch.float32)
