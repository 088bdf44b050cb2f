"""Inputs and bitwise comparisons shared by the CUDA emulation tests."""

from __future__ import annotations

import torch

from commcomp import Levels

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def sizes(bucket_size: int) -> list[int]:
    """1, bucket-1, bucket, bucket+1, several buckets with a partial last one, and enough for
    every grid-stride loop of a capped grid (2-3 blocks of 32-64 threads) to run several times."""
    return sorted(
        {
            1,
            max(1, bucket_size - 1),
            bucket_size,
            bucket_size + 1,
            5 * bucket_size + bucket_size // 3,
            max(41 * bucket_size + 7, 3001),
        }
    )


def gradient(n: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Gradient-like values: heavy tails over several magnitudes, exact zeros, both signs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.exp(2.0 * torch.randn(n, generator=g))
    x[torch.rand(n, generator=g) < 0.1] = 0.0
    return x.to(dtype)


def level_tables() -> dict[str, torch.Tensor]:
    """Uniform (QSGD) and exponential (NUQSGD) tables of 2..128 levels, and irregular ones on both
    sides of the linear/binary interval search switch (16 levels)."""
    g = torch.Generator().manual_seed(5)

    def irregular(count: int) -> torch.Tensor:
        inner = torch.sort(torch.rand(count - 2, generator=g)).values
        return torch.cat([torch.zeros(1), inner, torch.ones(1)])

    return {
        "uniform2": Levels.uniform(2).tensor(),
        "uniform3": Levels.uniform(3).tensor(),
        "nuqsgd8": Levels.exponential(8).tensor(),
        "irregular16": irregular(16),
        "irregular17": irregular(17),
        "uniform128": Levels.uniform(128).tensor(),
    }


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Bitwise equality (NaN == NaN whatever its payload, which CPUs and GPUs set differently)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        what,
        actual.dtype,
        actual.shape,
        expected.shape,
    )
    a, e = actual.contiguous(), expected.contiguous()
    same = a.view(_INT_VIEW[a.element_size()]) == e.view(_INT_VIEW[e.element_size()])
    if a.is_floating_point():
        same |= torch.isnan(a) & torch.isnan(e)
    if not bool(same.all()):
        bad = (~same).nonzero().flatten()
        first = int(bad[0])
        raise AssertionError(
            f"{what}: {bad.numel()} of {a.numel()} elements differ; first at {first}: {a[first].item()!r} != {e[first].item()!r}"
        )
