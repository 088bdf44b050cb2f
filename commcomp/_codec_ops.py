"""Typed wrappers and fake kernels of the Elias codec ops (``csrc/core/elias.h``).

Most users want :mod:`commcomp.codecs`, which wraps these in a validated wire format. The ops work
on the packed fixed-width symbols that :func:`commcomp.ops.quantize` produces.

Example::

    >>> import torch, commcomp
    >>> from commcomp import _codec_ops
    >>> packed = commcomp.ops.pack_symbols(torch.tensor([0, 0, 2, 0, 5], dtype=torch.uint8), 3)
    >>> lengths, stream = _codec_ops.elias_encode(packed, num_levels=4, bucket_size=8, numel=5)
    >>> lengths.tolist(), stream.numel()   # gamma: 011 1 0 (2 zeros, index 1, +), 010 010 1 (1 zero, index 2, -)
    ([2], 2)
    >>> bool(torch.equal(_codec_ops.elias_decode(lengths, stream, 4, 8, 5), packed))
    True
"""
from __future__ import annotations

from typing import Literal

import torch

from .ops import packed_bytes, symbol_width

__all__ = ["ELIAS_CODES", "elias_encode", "elias_decode"]

# Elias code ids of the ops (and of csrc/core/elias.h's EliasCode).
ELIAS_CODES: dict[str, int] = {"gamma": 0, "delta": 1, "omega": 2}
EliasName = Literal["gamma", "delta", "omega"]


def _code_id(code: EliasName | int) -> int:
    if isinstance(code, str):
        if code not in ELIAS_CODES:
            raise ValueError(f"code must be one of {sorted(ELIAS_CODES)}, got {code!r}")
        return ELIAS_CODES[code]
    return int(code)


def elias_encode(
    packed: torch.Tensor, num_levels: int, bucket_size: int, numel: int, code: EliasName | int = "gamma"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elias-code packed symbols per bucket: ``(bucket_bytes int64[buckets], stream uint8)``.

    Each bucket is byte-aligned in ``stream`` and holds ``bucket_bytes[b]`` bytes. Raises
    ``ValueError`` on a symbol whose level index is ``>= num_levels`` or a zero with its sign set.
    """
    return torch.ops.commcomp.elias_encode(packed, num_levels, bucket_size, numel, _code_id(code))


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
    return torch.ops.commcomp.elias_decode(bucket_bytes, stream, num_levels, bucket_size, numel, _code_id(code))


# Fake kernels. The stream length depends on the data, so it is a fresh symbolic size.
@torch.library.register_fake("commcomp::elias_encode")
def _elias_encode_fake(packed, num_levels, bucket_size, numel, code):
    buckets = (numel + bucket_size - 1) // bucket_size
    stream_bytes = torch.library.get_ctx().new_dynamic_size()
    return packed.new_empty((buckets,), dtype=torch.int64), packed.new_empty((stream_bytes,), dtype=torch.uint8)


@torch.library.register_fake("commcomp::elias_decode")
def _elias_decode_fake(bucket_bytes, stream, num_levels, bucket_size, numel, code):
    return stream.new_empty((packed_bytes(numel, symbol_width(num_levels)),), dtype=torch.uint8)
