"""csrc/cuda/quantize.cu on the CPU harness, bit for bit against the CPU ops: bucket norms,
quantize, dequantize, dequantize_accumulate, pack and unpack, on sizes 1, bucket-1, bucket,
bucket+1 and several buckets with a partial last one, under every harness setting (conftest.py)."""

from __future__ import annotations

import pytest
import torch

from commcomp import ops
from _check import assert_same_bits, gradient, level_tables, sizes

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BUCKETS = (64, 100)
TABLES = level_tables()


@pytest.mark.kernels("bucket_norms_kernel")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("bucket_size", BUCKETS)
def test_bucket_norms(emu, dtype, norm, bucket_size):
    for n in sizes(bucket_size):
        x = gradient(n, dtype, seed=n)
        assert_same_bits(
            emu.bucket_norms(x, bucket_size, norm), ops.bucket_norms(x, bucket_size, norm), f"n={n}"
        )


@pytest.mark.kernels("bucket_norms_kernel")
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_bucket_norms_of_non_finite_and_zero_buckets(emu, norm):
    x = gradient(40 * 33 + 5, seed=3)
    x[0:33] = 0.0
    x[40] = float("inf")
    x[70] = -float("inf")
    x[100] = float("nan")
    x[200:202] = 3e38  # squares overflow to inf
    assert_same_bits(emu.bucket_norms(x, 33, norm), ops.bucket_norms(x, 33, norm), norm)


@pytest.mark.kernels("quantize_kernel", "bucket_norms_kernel")
@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_quantize(emu, table, dtype, norm):
    levels = TABLES[table]
    bucket_size = 100
    for n in sizes(bucket_size):
        x = gradient(n, dtype, seed=n + 1)
        seed, offset = 2**40 + n, 2**33 + 7  # both halves of Philox's 64-bit key and counter
        expected_norms, expected_symbols = ops.quantize(x, levels, bucket_size, norm, seed, offset)
        norms = emu.bucket_norms(x, bucket_size, norm)
        assert_same_bits(norms, expected_norms, f"norms n={n}")
        assert_same_bits(
            emu.quantize(x, norms, levels, bucket_size, seed, offset), expected_symbols, f"symbols n={n}"
        )


@pytest.mark.kernels("quantize_kernel")
def test_quantize_against_given_norms(emu):
    x = gradient(3 * 256 + 77, seed=9)
    levels = TABLES["nuqsgd8"]
    own = ops.bucket_norms(x, 256, "l2")
    shared = own * torch.tensor([1.0, 2.5, 1.0, 7.0])  # e.g. the max over ranks
    shared[0] = 0.0 if own[0] == 0 else shared[0]
    _, expected = ops.quantize(x, levels, 256, "l2", 3, 1, norms=shared)
    assert_same_bits(emu.quantize(x, shared, levels, 256, 3, 1), expected)


@pytest.mark.kernels("quantize_kernel")
@pytest.mark.parametrize("stream_index", [8, 256, 4096 + 512])
def test_quantize_with_a_stream_index(emu, stream_index):
    x = gradient(2 * 256 + 19, seed=4)
    levels = TABLES["nuqsgd8"]
    norms, expected = ops.quantize(x, levels, 256, "l2", 6, 2, stream_index=stream_index)
    assert_same_bits(emu.quantize(x, norms, levels, 256, 6, 2, stream_index), expected)


@pytest.mark.kernels("dequantize_accumulate_kernel")
@pytest.mark.parametrize("table", list(TABLES))
@pytest.mark.parametrize("bucket_size", BUCKETS)
def test_dequantize(emu, table, bucket_size):
    levels = TABLES[table]
    for n in sizes(bucket_size):
        norms, symbols = ops.quantize(gradient(n, seed=n), levels, bucket_size, "l2", 11, n)
        out, invalid = emu.dequantize(norms, symbols, levels, bucket_size, n)
        assert not invalid
        assert_same_bits(out, ops.dequantize(norms, symbols, levels, bucket_size, n), f"n={n}")


@pytest.mark.kernels("dequantize_accumulate_kernel")
@pytest.mark.parametrize("payloads", [1, 3, 32])  # 32: the most one launch decodes
@pytest.mark.parametrize("scale", [0.5, -1.25])
def test_dequantize_accumulate(emu, payloads, scale):
    levels, bucket_size = TABLES["irregular17"], 64
    for n in sizes(bucket_size):
        quantized = [
            ops.quantize(gradient(n, seed=k), levels, bucket_size, "linf", 5, k) for k in range(payloads)
        ]
        norms, symbols = [q[0] for q in quantized], [q[1] for q in quantized]
        start = gradient(n, seed=99)
        expected = start.clone()
        ops.dequantize_accumulate(expected, norms, symbols, levels, bucket_size, scale)
        out = start.clone()
        assert not emu.dequantize_accumulate(
            out, norms, symbols, levels, bucket_size, scale, assign_first=False
        )
        assert_same_bits(out, expected, f"n={n}")


@pytest.mark.kernels("dequantize_accumulate_kernel")
@pytest.mark.parametrize("table", ["uniform3", "irregular17"])  # 3 of 4 / 17 of 32 indices exist
def test_dequantize_flags_symbols_naming_missing_levels(emu, table):
    levels = TABLES[table]
    count, width, bucket_size, n = levels.numel(), ops.symbol_width(levels.numel()), 64, 1000
    norms, symbols = ops.quantize(gradient(n, seed=2), levels, bucket_size, "l2", 1, 0)
    raw = ops.unpack_symbols(symbols, width, n)
    corrupt = raw.clone()
    corrupt[[3, 500, n - 1]] = torch.tensor(
        [(count << 1) | 1, count << 1, (2 ** (width - 1) - 1) << 1], dtype=torch.uint8
    )
    corrupt_packed = ops.pack_symbols(corrupt, width)
    with pytest.raises(ValueError, match="level index"):
        ops.dequantize(norms, corrupt_packed, levels, bucket_size, n)
    out, invalid = emu.dequantize(norms, corrupt_packed, levels, bucket_size, n)
    assert invalid
    # Every other element still decodes; the missing levels decode as 0.
    sanitized = torch.where(corrupt >> 1 < count, corrupt, torch.zeros_like(corrupt))
    expected = ops.dequantize(norms, ops.pack_symbols(sanitized, width), levels, bucket_size, n)
    assert_same_bits(out, expected)


@pytest.mark.kernels("pack_kernel", "unpack_kernel")
@pytest.mark.parametrize("width", range(1, 9))
def test_pack_and_unpack(emu, width):
    g = torch.Generator().manual_seed(width)
    for n in sizes(64) + [7, 8, 9]:
        symbols = torch.randint(0, 2**width, (n,), generator=g, dtype=torch.uint8)
        packed = emu.pack(symbols, width)
        assert_same_bits(packed, ops.pack_symbols(symbols, width), f"pack n={n}")
        assert_same_bits(emu.unpack(packed, width, n), ops.unpack_symbols(packed, width, n), f"unpack n={n}")
        assert torch.equal(emu.unpack(packed, width, n), symbols)
