"""commcomp::level_stats against an independent pure-torch oracle, bit for bit."""
import pytest
import torch

import commcomp  # noqa: F401  (loads the extension)
from commcomp import _reference, ops
from commcomp.ops import level_stats

torch.set_num_threads(1)


def reference_level_stats(x: torch.Tensor, bucket_size: int, bins: int, norm: str = "l2") -> torch.Tensor:
    """The histogram spelled out: float32 steps as in csrc/core/stats.h, exact int64 sums."""
    x = x.reshape(-1).float()
    norms = _reference.bucket_norms(x, bucket_size, norm)
    finite = torch.isfinite(norms)
    max_norm = torch.where(finite, norms, torch.zeros_like(norms)).max()
    w_max = max_norm * max_norm
    n = norms.repeat_interleave(bucket_size)[: x.numel()]
    w = ((n * n) / w_max) * 4294967296.0  # float32 ops, each correctly rounded
    valid = finite.repeat_interleave(bucket_size)[: x.numel()] & (n > 0) & (n * n <= w_max)
    fixed = torch.where(valid, w, torch.zeros_like(w)).to(torch.int64)  # truncation, as the C++ cast
    r = torch.clamp(x.abs() / torch.where(n > 0, n, torch.ones_like(n)), max=1.0)
    s = r.double().sqrt().float()  # correctly rounded float32 sqrt
    k = torch.clamp((s * float(bins)).to(torch.int64), max=bins - 1)
    keep = (r > 0) & (fixed > 0)
    total = torch.zeros(bins, dtype=torch.int64).index_add_(0, k[keep], fixed[keep])
    return total.double() * w_max.double() * 2.0**-32


@pytest.mark.parametrize("n,bucket_size,bins", [(1, 4, 8), (1000, 64, 16), (10_007, 512, 1024), (4096, 4096, 4096)])
def test_matches_reference_bit_for_bit(n, bucket_size, bins):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * torch.rand(n, generator=g).pow(4)  # heavy-tailed magnitudes
    x[::7] = 0.0  # exact zeros are skipped
    assert torch.equal(level_stats(x, bucket_size, bins=bins), reference_level_stats(x, bucket_size, bins))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_match_their_float32_values(dtype):
    x = torch.randn(3000).to(dtype)
    assert torch.equal(level_stats(x, 256, bins=64), level_stats(x.float(), 256, bins=64))


def test_linf_norm_and_given_norms():
    x = torch.randn(2048)
    norms = ops.bucket_norms(x, 128, "linf")
    assert torch.equal(level_stats(x, 128, "linf", bins=32), reference_level_stats(x, 128, 32, "linf"))
    assert torch.equal(level_stats(x, 128, bins=32, norms=norms), level_stats(x, 128, "linf", bins=32))


def test_mass_is_squared_norm_per_nonzero_coordinate():
    # sum_k mass_k = sum_b ||x_b||^2 * (nonzeros of b), up to float32 norms and weight ratios
    # (relative 2^-24 each) and the 2^-32 fixed-point truncation.
    x = torch.randn(5000) * torch.linspace(0.1, 10, 5000)
    x[x.abs() < 0.05] = 0
    h = level_stats(x, 500, bins=128)
    xb = x.double().view(10, 500)
    expected = (xb.pow(2).sum(1) * (xb != 0).sum(1)).sum()
    assert abs(h.sum() / expected - 1) < 1e-6


def test_hand_checkable_histogram():
    # bucket [3, 4]: norm 5, r = 0.6 and 0.8, sqrt = 0.775, 0.894 -> bin 3 of 4 (edges 0, 1/16,
    # 1/4, 9/16, 1); bucket [0, 5]: norm 5, r = 1 -> last bin, the zero is skipped. Weight 25 each.
    x = torch.tensor([3.0, 4.0, 0.0, 5.0])
    assert level_stats(x, 2, bins=4).tolist() == [0.0, 0.0, 0.0, 75.0]
    # A bucket of norm 1 next to one of norm 2 weighs 1/4 of it: 2 coordinates of 4 and one of 1.
    z = torch.tensor([1.2, 1.6, 0.0, 1.0])
    assert level_stats(z, 2, bins=4).tolist() == [0.0, 0.0, 0.0, 9.0]
    # Bin 1 of 4 is r in [1/16, 1/4): 0.1 and 0.2 land there, 0.05 in bin 0.
    y = torch.tensor([0.05, 0.1, 0.2, 0.0])
    h = level_stats(y, 4, bins=4, norms=torch.tensor([1.0]))
    assert h.tolist() == [1.0, 2.0, 0.0, 0.0]


def test_non_finite_buckets_are_skipped():
    x = torch.randn(1024)
    clean = level_stats(x[:512], 256, bins=64)
    x[600] = float("inf")
    x[900] = float("nan")
    assert torch.equal(level_stats(x, 256, bins=64), clean)


def test_empty_and_all_zero_inputs():
    assert level_stats(torch.zeros(0), 16, bins=8).tolist() == [0.0] * 8
    assert level_stats(torch.zeros(100), 16, bins=8).tolist() == [0.0] * 8


def test_bad_arguments_raise_value_error():
    x = torch.randn(100)
    with pytest.raises(ValueError, match="bins"):
        level_stats(x, 10, bins=0)
    with pytest.raises(ValueError, match="bins"):
        torch.ops.commcomp.level_stats(x, ops.bucket_norms(x, 10), 10, 5000)
    with pytest.raises(ValueError, match="norms"):
        level_stats(x, 10, norms=torch.ones(3))
    with pytest.raises(ValueError, match="norms"):
        level_stats(x, 10, norms=torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must be"):
        level_stats(torch.randn(4, 4), 4)
    with pytest.raises(ValueError, match="bucket_size"):
        level_stats(x, 0)


def test_opcheck():
    x = torch.randn(777)
    torch.library.opcheck(torch.ops.commcomp.level_stats, (x, ops.bucket_norms(x, 64), 64, 128))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(1_000_003, generator=g) * torch.rand(1_000_003, generator=g).pow(3)).to(dtype)
    x[5] = float("inf")
    for bucket_size, bins in [(512, 1024), (37, 4096), (1 << 20, 7)]:
        cpu = level_stats(x, bucket_size, bins=bins)
        cuda = level_stats(x.cuda(), bucket_size, bins=bins)
        assert cuda.device.type == "cuda"
        assert torch.equal(cuda.cpu(), cpu)
