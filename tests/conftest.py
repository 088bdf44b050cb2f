import os
import random
import sys

import numpy as np
import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(TESTS), "examples")
sys.path.insert(0, TESTS)  # lets tests import _dist
# The example harness and paper recipes (``common.*``, ``recipes.*``) live in examples/, outside the
# installed library. Gloo ranks spawned by _dist.run_ranks inherit this sys.path (spawn copies it).
sys.path.insert(0, EXAMPLES)


# The CPU kernel paths (csrc/cpu/simd): "scalar" is the core loops, the others vector kernels this
# machine may or may not support. Tests that take the `cpu_path` fixture run once per path.
CPU_PATHS = ("scalar", "avx2", "avx512")


def supported_cpu_paths() -> list[str]:
    import commcomp  # noqa: F401  (registers torch.ops.commcomp)

    return list(torch.ops.commcomp._cpu_paths())


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request, monkeypatch):
    """Forces the CPU kernels onto one path (COMMCOMP_CPU_PATH, read at every op call)."""
    if request.param not in supported_cpu_paths():
        pytest.skip(f"this CPU has no {request.param} path")
    monkeypatch.setenv("COMMCOMP_CPU_PATH", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running; excluded from CI by -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
