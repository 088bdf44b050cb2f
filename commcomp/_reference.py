"""Pure-torch reference implementations of the commcomp ops: the test oracle.

Written for clarity, not speed, but vectorized enough to check 10^7-element inputs. They follow
the same arithmetic order as csrc/core (32-lane norms, Philox by element index, float32 rounding
steps) so the compiled kernels must match them bit for bit.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
NORM_LANES = 32


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # 32x32 -> 64-bit product in int64 without overflow: split b into 16-bit halves.
    b_lo, b_hi = b & 0xFFFF, b >> 16
    lo_part = a * b_lo
    hi = (a * b_hi + (lo_part >> 16)) >> 16
    lo = (a * b) & MASK32  # int64 multiplication wraps modulo 2^64; the low 32 bits are exact
    return hi & MASK32, lo


def philox4x32_10(counter: torch.Tensor, key0: int, key1: int) -> torch.Tensor:
    """Philox-4x32-10 on int64 tensors holding uint32 values; ``counter`` has shape (..., 4)."""
    c0, c1, c2, c3 = (counter[..., i].to(torch.int64) for i in range(4))
    for _ in range(10):
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ key0, lo1, hi0 ^ c3 ^ key1, lo0
        key0, key1 = (key0 + _PHILOX_W0) & MASK32, (key1 + _PHILOX_W1) & MASK32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def uniforms(seed: int, offset: int, numel: int, stream_index: int = 0) -> torch.Tensor:
    """The float32 uniform the kernels draw for each element index stream_index..stream_index+numel-1."""
    groups = torch.arange(stream_index // 4, stream_index // 4 + (numel + 3) // 4, dtype=torch.int64)
    counter = torch.stack(
        [groups & MASK32, groups >> 32, torch.full_like(groups, offset & MASK32), torch.full_like(groups, offset >> 32)],
        dim=-1,
    )
    bits = philox4x32_10(counter, seed & MASK32, (seed >> 32) & MASK32).reshape(-1)[:numel]
    return (bits >> 8).to(torch.float32) * (1.0 / 16777216.0)


def bucket_norms(x: torch.Tensor, bucket_size: int, norm: str = "l2") -> torch.Tensor:
    """Per-bucket norms summed over 32 strided lanes, then a halving tree (the kernels' order)."""
    x = x.reshape(-1).to(torch.float32)
    buckets = (x.numel() + bucket_size - 1) // bucket_size
    rows_per_bucket = (bucket_size + NORM_LANES - 1) // NORM_LANES
    padded = torch.zeros(buckets * bucket_size, dtype=torch.float32)
    padded[: x.numel()] = x
    # Lane l of bucket b sees elements b*B + l, b*B + l + 32, ... in that order.
    per_bucket = torch.zeros(buckets, rows_per_bucket * NORM_LANES, dtype=torch.float32)
    per_bucket[:, :bucket_size] = padded.view(buckets, bucket_size)
    rows = per_bucket.view(buckets, rows_per_bucket, NORM_LANES)
    lanes = torch.zeros(buckets, NORM_LANES, dtype=torch.float32)
    for r in range(rows_per_bucket):
        v = rows[:, r, :]
        lanes = lanes + v * v if norm == "l2" else torch.maximum(lanes, v.abs())
    stride = NORM_LANES // 2
    while stride > 0:
        lanes = lanes[:, :stride] + lanes[:, stride : 2 * stride] if norm == "l2" else torch.maximum(
            lanes[:, :stride], lanes[:, stride : 2 * stride]
        )
        stride //= 2
    out = lanes[:, 0]
    # torch's vectorized float sqrt is not always correctly rounded; sqrt in float64 then rounding
    # to float32 is (53 >= 2 * 24 + 2 bits), and matches the kernels' IEEE sqrt.
    return out.double().sqrt().float() if norm == "l2" else out


def quantize_symbols(
    x: torch.Tensor, levels: torch.Tensor, bucket_size: int, norm: str, seed: int, offset: int, norms=None,
    stream_index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norms and *unpacked* symbols ``(index << 1) | sign`` as int64."""
    x = x.reshape(-1).to(torch.float32)
    norms = bucket_norms(x, bucket_size, norm) if norms is None else norms
    n = norms.repeat_interleave(bucket_size)[: x.numel()]
    count = levels.numel()
    usable = (n > 0) & torch.isfinite(n)  # zero and non-finite buckets decode to zero
    safe_n = torch.where(usable, n, torch.ones_like(n))
    r = torch.clamp(x.abs() / safe_n, max=1.0)
    j = torch.clamp(torch.searchsorted(levels, r, right=True) - 1, 0, count - 2)
    lo = levels[j]
    inv_width = 1.0 / (levels[1:] - levels[:-1])  # float32, as LevelTable.inv_width
    p = (r - lo) * inv_width[j]
    index = j + (uniforms(seed, offset, x.numel(), stream_index) < p).to(torch.int64)
    index = torch.where(usable, index, torch.zeros_like(index))
    sign = ((index != 0) & (x < 0)).to(torch.int64)
    return norms, (index << 1) | sign


def pack(symbols: torch.Tensor, width: int) -> torch.Tensor:
    """Little-endian bit packing, bit by bit (slow and obviously right)."""
    symbols = symbols.reshape(-1).to(torch.int64)
    shifts = torch.arange(width, dtype=torch.int64)
    bits = ((symbols[:, None] >> shifts) & 1).reshape(-1)
    pad = (-bits.numel()) % 8
    bits = torch.cat([bits, torch.zeros(pad, dtype=torch.int64)]).view(-1, 8)
    return (bits << torch.arange(8, dtype=torch.int64)).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, width: int, numel: int) -> torch.Tensor:
    bits = ((packed.to(torch.int64)[:, None] >> torch.arange(8, dtype=torch.int64)) & 1).reshape(-1)
    bits = bits[: numel * width].view(numel, width)
    return (bits << torch.arange(width, dtype=torch.int64)).sum(dim=1)


def quantize(
    x: torch.Tensor, levels: torch.Tensor, bucket_size: int, norm: str = "l2", seed: int = 0, offset: int = 0, norms=None,
    stream_index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    norms, symbols = quantize_symbols(x, levels, bucket_size, norm, seed, offset, norms, stream_index)
    width = max(1, (levels.numel() - 1).bit_length()) + 1
    return norms, pack(symbols, width)


def dequantize(norms: torch.Tensor, packed: torch.Tensor, levels: torch.Tensor, bucket_size: int, numel: int) -> torch.Tensor:
    width = max(1, (levels.numel() - 1).bit_length()) + 1
    symbols = unpack(packed, width, numel)
    magnitude = norms.repeat_interleave(bucket_size)[:numel] * levels[symbols >> 1]
    return torch.where((symbols & 1) == 1, -magnitude, magnitude)


def expected_variance(x: torch.Tensor, levels: torch.Tensor, bucket_size: int, norm: str = "l2") -> float:
    """Exact E||Q(x) - x||^2 of stochastic rounding: sum over coordinates of n^2 (r - L_j)(L_j+1 - r)."""
    x = x.reshape(-1).to(torch.float64)
    norms = bucket_norms(x.float(), bucket_size, norm).double()
    n = norms.repeat_interleave(bucket_size)[: x.numel()]
    lv = levels.double()
    r = torch.where(n > 0, x.abs() / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(n)).clamp(max=1)
    j = torch.clamp(torch.searchsorted(lv, r, right=True) - 1, 0, lv.numel() - 2)
    return float((n**2 * (r - lv[j]) * (lv[j + 1] - r)).sum())
