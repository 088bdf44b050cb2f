"""csrc/cuda/stats.cu on the CPU harness: level_stats (per-block shared-memory histograms merged
with 64-bit atomics, then the bin masses) bit for bit against the CPU op."""

from __future__ import annotations

import pytest
import torch

from commcomp import ops
from _check import assert_same_bits, gradient, sizes


@pytest.mark.kernels("level_stats_kernel", "bin_mass_kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bins", [1, 7, 1024, 4096])  # 4096: 32 KiB of shared memory per block
@pytest.mark.parametrize("bucket_size", [64, 100])
def test_level_stats(emu, dtype, bins, bucket_size):
    for n in sizes(bucket_size):
        x = gradient(n, dtype, seed=n)
        norms = ops.bucket_norms(x, bucket_size, "l2")
        expected = torch.ops.commcomp.level_stats(x, norms, bucket_size, bins)
        assert_same_bits(emu.level_stats(x, norms, bucket_size, bins), expected, f"n={n}")


@pytest.mark.kernels("level_stats_kernel", "bin_mass_kernel")
def test_level_stats_with_zero_tiny_and_non_finite_norms(emu):
    bucket_size = 50
    x = gradient(60 * bucket_size + 11, seed=4)
    x[:bucket_size] = 0.0
    x[bucket_size + 3] = float("nan")
    norms = ops.bucket_norms(x, bucket_size, "linf")
    norms[2] = float("inf")
    norms[3] = float("nan")
    norms[4] = 1e-30  # weight below 2^-32 of the largest: vanishes
    norms[5] = norms.nan_to_num(posinf=0).max() * 4  # the reference weight comes from here
    for bins in (3, 512):
        assert_same_bits(
            emu.level_stats(x, norms, bucket_size, bins),
            torch.ops.commcomp.level_stats(x, norms, bucket_size, bins),
        )


@pytest.mark.kernels("level_stats_kernel", "bin_mass_kernel")
def test_level_stats_when_every_norm_is_zero(emu):
    x = torch.zeros(1000)
    norms = ops.bucket_norms(x, 64, "l2")
    assert_same_bits(emu.level_stats(x, norms, 64, 16), torch.ops.commcomp.level_stats(x, norms, 64, 16))
