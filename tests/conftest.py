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
    config.addinivalue_line(
        "markers", "comm_modes: multi-rank hook tests, run in both modes: native Gloo and NCCL's strict mode"
    )
    config.addinivalue_line("markers", "native_only: a comm_modes test that stays on native Gloo (say why)")


def pytest_generate_tests(metafunc):
    definition = metafunc.definition
    if definition.get_closest_marker("comm_modes") and not definition.get_closest_marker("native_only"):
        # module scope: a module's shared multi-rank results (its `results` fixtures) exist once per mode
        metafunc.parametrize("comm_mode", ["native", "strict"], indirect=True, scope="module")


@pytest.fixture(autouse=True, scope="module")
def comm_mode(request):
    """The mode _dist.run_ranks runs ranks in (tests/_strict_nccl.py): "native" unless the test is
    parametrized over both."""
    import _dist

    _dist.MODE = getattr(request, "param", "native")
    yield _dist.MODE
    _dist.MODE = "native"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
