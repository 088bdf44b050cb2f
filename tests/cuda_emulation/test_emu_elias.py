"""csrc/cuda/elias.cu on the CPU harness against the CPU ops: bucket lengths, the encoded stream and
the decoded symbols bit for bit, the lowest bucket of an uncodable symbol, and the lowest failing
bucket and reason on corrupt streams (the CPU decoder takes a table-driven fast path the kernels
do not, so agreement on hostile input is not a given)."""

from __future__ import annotations

import re

import pytest
import torch

from commcomp import ops
from _check import assert_same_bits, gradient, sizes

CODES = {"gamma": 0, "delta": 1, "omega": 2}
CASES = [  # (levels, bucket size): widths 2..8, byte-aligned and unaligned buckets
    (2, 1),
    (3, 5),
    (8, 8),
    (17, 64),
    (128, 100),
]


def symbols_for(n: int, num_levels: int, density: float, seed: int) -> torch.Tensor:
    """Codable symbols: index in [0, num_levels), sign only on nonzero indices; mostly zeros when
    density is low (long runs), mostly nonzero when high."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(1, num_levels, (n,), generator=g)
    index[torch.rand(n, generator=g) >= density] = 0
    sign = torch.randint(0, 2, (n,), generator=g) * (index > 0)
    return ((index << 1) | sign).to(torch.uint8)


def elias_sizes(bucket_size: int) -> list[int]:
    # Small buckets get enough of them for the decoder's chunk loop (up to 8 buckets per chunk) to
    # stride past a capped grid of 192 threads.
    return sizes(bucket_size) + ([2000 * bucket_size + 3] if bucket_size <= 8 else [])


def encode_both(emu, packed, num_levels, bucket_size, n, code):
    lengths, bad = emu.elias_bucket_bytes(packed, num_levels, bucket_size, n, code)
    assert bad is None
    return lengths, emu.elias_write(packed, num_levels, bucket_size, n, code, lengths)


@pytest.mark.kernels("elias_bucket_bytes_kernel", "elias_write_kernel", "elias_decode_kernel")
@pytest.mark.parametrize("code", list(CODES))
@pytest.mark.parametrize("num_levels,bucket_size", CASES)
@pytest.mark.parametrize("density", [0.05, 0.9])
def test_encode_and_decode(emu, code, num_levels, bucket_size, density):
    width = ops.symbol_width(num_levels)
    for n in elias_sizes(bucket_size):
        packed = ops.pack_symbols(symbols_for(n, num_levels, density, seed=n), width)
        expected_lengths, expected_stream = ops.elias_encode(packed, num_levels, bucket_size, n, CODES[code])
        lengths, stream = encode_both(emu, packed, num_levels, bucket_size, n, CODES[code])
        assert_same_bits(lengths, expected_lengths, f"bucket bytes n={n}")
        assert_same_bits(stream, expected_stream, f"stream n={n}")
        decoded, error = emu.elias_decode(lengths, stream, num_levels, bucket_size, n, CODES[code])
        assert error is None, f"n={n}: {error}"
        assert_same_bits(decoded, packed, f"decode n={n}")


@pytest.mark.kernels("elias_bucket_bytes_kernel", "elias_write_kernel", "elias_decode_kernel")
def test_encode_quantized_gradients(emu):
    levels = torch.tensor([0.0, 0.125, 0.25, 0.5, 1.0])
    for n in sizes(512):
        _, packed = ops.quantize(gradient(n, seed=n), levels, 512, "l2", 4, 0)
        expected = ops.elias_encode(packed, 5, 512, n, 0)
        lengths, stream = encode_both(emu, packed, 5, 512, n, 0)
        assert_same_bits(lengths, expected[0])
        assert_same_bits(stream, expected[1])
        assert_same_bits(emu.elias_decode(lengths, stream, 5, 512, n, 0)[0], packed)


@pytest.mark.kernels("elias_bucket_bytes_kernel")
@pytest.mark.parametrize("num_levels,bucket_size", [(3, 5), (17, 64)])
def test_uncodable_symbols_name_the_lowest_bucket(emu, num_levels, bucket_size):
    width = ops.symbol_width(num_levels)
    n = 300 * bucket_size + 1
    g = torch.Generator().manual_seed(1)
    for trial in range(6):
        symbols = symbols_for(n, num_levels, 0.5, seed=trial)
        where = torch.randint(0, n, (3,), generator=g)
        # A signed zero, or an index the table lacks.
        symbols[where] = torch.tensor([1, num_levels << 1, (2**width - 1)], dtype=torch.uint8)
        packed = ops.pack_symbols(symbols, width)
        with pytest.raises(ValueError, match=r"symbol in bucket (\d+)") as info:
            ops.elias_encode(packed, num_levels, bucket_size, n, trial % 3)
        expected_bucket = int(re.search(r"bucket (\d+)", str(info.value)).group(1))
        lengths, bad = emu.elias_bucket_bytes(packed, num_levels, bucket_size, n, trial % 3)
        assert bad == expected_bucket == int(where.min()) // bucket_size
        assert int(lengths[bad]) == 0


def corruptions(lengths: torch.Tensor, stream: torch.Tensor, g: torch.Generator):
    """Hostile variants of a valid (lengths, stream) whose lengths still sum to the stream's size
    (what the bindings' checks let through to the kernel)."""
    buckets = lengths.numel()
    for _ in range(6):  # bit flips
        s = stream.clone()
        s[int(torch.randint(0, s.numel(), (1,), generator=g))] ^= 1 << int(
            torch.randint(0, 8, (1,), generator=g)
        )
        yield lengths, s
    nonempty = (lengths > 0).nonzero().flatten()
    if nonempty.numel():
        b = int(nonempty[-1])
        short = lengths.clone()
        short[b] -= 1  # the last bucket truncated
        end = int(lengths[: b + 1].sum())
        yield short, torch.cat([stream[: end - 1], stream[end:]])
        long = lengths.clone()
        long[b] += 1  # a zero byte after the last bucket's code
        yield long, torch.cat([stream[:end], torch.zeros(1, dtype=torch.uint8), stream[end:]])
    if buckets > 1:
        for _ in range(4):  # one bucket's byte moved to its neighbour
            b = int(torch.randint(0, buckets - 1, (1,), generator=g))
            if lengths[b] > 0:
                moved = lengths.clone()
                moved[b] -= 1
                moved[b + 1] += 1
                yield moved, stream
    for _ in range(4):  # garbage, split at random points
        total = int(stream.numel())
        cuts = torch.sort(torch.randint(0, total + 1, (buckets - 1,), generator=g)).values
        edges = torch.cat([torch.zeros(1, dtype=torch.int64), cuts, torch.tensor([total])])
        yield edges[1:] - edges[:-1], torch.randint(0, 256, (total,), generator=g, dtype=torch.uint8)


@pytest.mark.kernels("elias_decode_kernel")
@pytest.mark.parametrize("code", list(CODES))
@pytest.mark.parametrize("num_levels,bucket_size", [(3, 5), (8, 8), (17, 64)])
def test_decoders_reject_the_same_corrupt_streams(emu, code, num_levels, bucket_size):
    width = ops.symbol_width(num_levels)
    g = torch.Generator().manual_seed(num_levels)
    n = 200 * bucket_size + 3
    rejected = 0
    for density in (0.1, 0.8):
        packed = ops.pack_symbols(symbols_for(n, num_levels, density, seed=7), width)
        lengths, stream = ops.elias_encode(packed, num_levels, bucket_size, n, CODES[code])
        for bad_lengths, bad_stream in corruptions(lengths, stream, g):
            decoded, error = emu.elias_decode(
                bad_lengths, bad_stream, num_levels, bucket_size, n, CODES[code]
            )
            try:
                expected = ops.elias_decode(bad_lengths, bad_stream, num_levels, bucket_size, n, CODES[code])
            except ValueError as e:
                match = re.search(r"malformed Elias stream in bucket (\d+): (.*)", str(e))
                assert match, str(e)
                assert error is not None, f"the CPU rejects ({e}) what the kernel accepts"
                bucket, status = error
                assert bucket == int(match.group(1)), (error, str(e))
                assert emu.elias_status_message(status) == match.group(2).strip(), (error, str(e))
                rejected += 1
            else:
                assert error is None, f"the kernel rejects {error} what the CPU accepts"
                assert_same_bits(decoded, expected)
    assert rejected > 10  # the corruptions mostly are rejected
