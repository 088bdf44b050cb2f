"""Fixtures of the CUDA emulation tests: the library (built on first use) and harness settings.

Every kernel test runs under each of :data:`HARNESS_SETTINGS`: the grid and blocks as launched, and
grids capped to 2-3 blocks of 32-64 threads, so every grid-stride loop runs several iterations, with
threads resumed in forward, reverse and random order, on the default stream and on a created one.
A test marked ``@pytest.mark.kernels(...)`` fails unless it launched every kernel it names;
test_emu_coverage.py checks that these marks name every ``__global__`` function of csrc/cuda.
"""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # _emu, build

import _emu  # noqa: E402

HARNESS_SETTINGS = {
    "as-launched": dict(max_blocks=0, max_threads=0, workers=2, schedule="forward"),
    "2x32-reverse": dict(max_blocks=2, max_threads=32, workers=2, schedule="reverse"),
    "3x64-random": dict(max_blocks=3, max_threads=64, workers=3, schedule="random", seed=17),
}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call":
        item.call_failed = report.failed  # read by the emu fixture's teardown
    return report


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "kernels(*names): CUDA kernels the test must launch through the harness"
    )


@pytest.fixture(scope="session")
def emulator() -> _emu.Emulator:
    return _emu.Emulator(_emu.library_path())


@pytest.fixture(params=list(HARNESS_SETTINGS), ids=list(HARNESS_SETTINGS))
def emu(request, emulator: _emu.Emulator):
    """The emulator under one harness setting; the second and third use a non-default stream."""
    setting = request.param
    emulator.configure(**HARNESS_SETTINGS[setting])
    emulator.reset()
    stream = None
    if setting != "as-launched":
        stream = emulator.lib.emu_stream_create()
        assert stream, "cudaStreamCreate failed"
    emulator.stream = stream
    try:
        yield emulator
        marker = request.node.get_closest_marker("kernels")
        if marker is not None and not getattr(request.node, "call_failed", True):
            missing = set(marker.args) - set(emulator.launched())
            assert not missing, f"the test did not launch {sorted(missing)}"
    finally:
        emulator.stream = None
        if stream:
            emulator.lib.emu_stream_destroy(stream)
        emulator.reset()
        emulator.configure()
