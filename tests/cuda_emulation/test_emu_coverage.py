"""Every CUDA kernel of csrc/cuda runs through the harness: each ``__global__`` function is named by
a ``@pytest.mark.kernels`` test (whose fixture checks it really launched), and every launch goes
through COMMCOMP_LAUNCH, the one macro the harness intercepts."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CUDA_SOURCES = sorted((HERE.parents[1] / "csrc" / "cuda").glob("*.cu"))
TEST_MODULES = ["test_emu_quantize", "test_emu_elias", "test_emu_stats"]


def kernels_in_sources() -> set[str]:
    names = set()
    for cu in CUDA_SOURCES:
        names |= set(re.findall(r"__global__\s+void\s+(\w+)", cu.read_text()))
    return names


def kernels_named_by_tests() -> set[str]:
    names = set()
    for module in map(importlib.import_module, TEST_MODULES):
        for obj in vars(module).values():
            for mark in getattr(obj, "pytestmark", []):
                if mark.name == "kernels":
                    names |= set(mark.args)
    return names


def test_every_kernel_has_a_harness_test():
    in_sources = kernels_in_sources()
    assert len(in_sources) >= 10, in_sources  # the parse found the kernels
    assert kernels_named_by_tests() == in_sources


@pytest.mark.parametrize("cu", CUDA_SOURCES, ids=lambda p: p.name)
def test_every_launch_goes_through_the_launch_macro(cu):
    text = cu.read_text()
    assert (
        "<<<" not in text
    ), f"{cu.name}: launch with <<<...>>> directly; use COMMCOMP_LAUNCH (csrc/cuda/launch.h)"
    kernels = set(re.findall(r"__global__\s+void\s+(\w+)", text))
    launched = set(re.findall(r"COMMCOMP_LAUNCH\(\s*(\w+)", text))
    assert kernels <= launched, f"{cu.name}: kernels never launched: {sorted(kernels - launched)}"
