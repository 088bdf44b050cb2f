"""Typed wrappers over the ``torch.ops.commcomp`` operators, and their fake (meta) kernels.

The operators work on flat tensors and explicit level tables; most users want the configs in
:mod:`commcomp.quantizers` instead. Every op has a CPU kernel, a CUDA kernel in CUDA builds, and a
fake implementation here so it traces under ``torch.compile``.

Example::

    >>> import torch, commcomp
    >>> from commcomp import ops
    >>> levels = torch.tensor([0.0, 0.5, 1.0])
    >>> norms, symbols = ops.quantize(torch.randn(1000), levels, bucket_size=256, seed=1)
    >>> x_hat = ops.dequantize(norms, symbols, levels, bucket_size=256, numel=1000)
    >>> x_hat.shape, symbols.numel()   # 3 levels -> 2 index bits + sign = 3 bits per element
    (torch.Size([1000]), 375)
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch

__all__ = [
    "bucket_norms",
    "quantize",
    "dequantize",
    "dequantize_accumulate",
    "pack_symbols",
    "unpack_symbols",
    "symbol_width",
    "packed_bytes",
]

NormName = Literal["l2", "linf"]


def symbol_width(num_levels: int) -> int:
    """Bits per coordinate on the wire: ceil(log2(num_levels)) index bits plus a sign bit."""
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    return max(1, (num_levels - 1).bit_length()) + 1


def packed_bytes(numel: int, width: int) -> int:
    """Bytes holding ``numel`` symbols of ``width`` bits."""
    return (numel * width + 7) // 8


def _num_buckets(numel: int, bucket_size: int) -> int:
    return (numel + bucket_size - 1) // bucket_size


def bucket_norms(x: torch.Tensor, bucket_size: int, norm: NormName = "l2") -> torch.Tensor:
    """Per-bucket L2 or L-inf norm of flat ``x`` (last bucket may be partial), float32."""
    return torch.ops.commcomp.bucket_norms(x, bucket_size, norm)


def quantize(
    x: torch.Tensor,
    levels: torch.Tensor,
    bucket_size: int,
    norm: NormName = "l2",
    seed: int = 0,
    offset: int = 0,
    norms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastically round flat ``x`` onto ``levels`` per bucket; return ``(norms, symbols)``.

    ``symbols`` is a uint8 stream packed at :func:`symbol_width` bits per element. Draws come from
    Philox at ``(seed, offset, element index)``: the same triple gives the same bits on every device.
    ``norms``, if given, replaces the per-bucket scales (each must be >= the bucket's own ``norm``;
    e.g. the max over ranks, for a shared scale). Raises ``ValueError`` if a bucket holds inf/NaN.
    """
    return torch.ops.commcomp.quantize(x, levels, bucket_size, norm, seed, offset, norms)


def dequantize(
    norms: torch.Tensor, symbols: torch.Tensor, levels: torch.Tensor, bucket_size: int, numel: int
) -> torch.Tensor:
    """Decode a payload of :func:`quantize` into ``numel`` float32 values."""
    return torch.ops.commcomp.dequantize(norms, symbols, levels, bucket_size, numel)


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
    torch.ops.commcomp.dequantize_accumulate(out, list(norms), list(symbols), levels, bucket_size, scale)


def pack_symbols(symbols: torch.Tensor, width: int) -> torch.Tensor:
    """Pack uint8 symbols (each < 2**width) at ``width`` bits, little-endian bit order."""
    return torch.ops.commcomp.pack_symbols(symbols, width)


def unpack_symbols(packed: torch.Tensor, width: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_symbols`: ``numel`` uint8 symbols."""
    return torch.ops.commcomp.unpack_symbols(packed, width, numel)


# Fake kernels: output shapes from input shapes only, so the ops trace without data.
@torch.library.register_fake("commcomp::bucket_norms")
def _bucket_norms_fake(x, bucket_size, norm):
    return x.new_empty((_num_buckets(x.numel(), bucket_size),), dtype=torch.float32)


@torch.library.register_fake("commcomp::quantize")
def _quantize_fake(x, levels, bucket_size, norm, seed, offset, norms=None):
    width = symbol_width(levels.numel())
    norms = x.new_empty((_num_buckets(x.numel(), bucket_size),), dtype=torch.float32)
    return norms, x.new_empty((packed_bytes(x.numel(), width),), dtype=torch.uint8)


@torch.library.register_fake("commcomp::dequantize")
def _dequantize_fake(norms, symbols, levels, bucket_size, numel):
    return norms.new_empty((numel,), dtype=torch.float32)


@torch.library.register_fake("commcomp::dequantize_accumulate")
def _dequantize_accumulate_fake(out, norms, symbols, levels, bucket_size, scale):
    return None


@torch.library.register_fake("commcomp::pack_symbols")
def _pack_symbols_fake(symbols, width):
    return symbols.new_empty((packed_bytes(symbols.numel(), width),), dtype=torch.uint8)


@torch.library.register_fake("commcomp::unpack_symbols")
def _unpack_symbols_fake(packed, width, numel):
    return packed.new_empty((numel,), dtype=torch.uint8)
