"""The harness itself: CUDA's execution semantics, checked through the probe kernels of
kernels/probes.cu against values derived from the CUDA Programming Guide, and its rejection of
kernels that break CUDA's rules.

The semantic tests also run on a real GPU when ``COMMCOMP_PROBE_CUDA_LIB`` names the probes built
by nvcc (tools/gpu_check.sh does this), so the expectations are the hardware's, not the harness's.
"""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

import _emu
from _check import assert_same_bits

_i, _p = ctypes.c_int, ctypes.c_void_p
PROBES = {
    "probe_shuffle": [_i, _i, _i, _i, _p],
    "probe_shuffle64": [_p, _p],
    "probe_vote": [_i, _p],
    "probe_half_warp": [_p],
    "probe_index": [_i, _i, _i, _i, _i, _i, _p],
    "probe_shared": [_i, _i, _p],
    "probe_dynamic_shared": [_i, _i, _i, _p],
    "probe_atomics": [_i, _i, _p, _p, _p, _p, _p],
    "probe_ordered": [_p, _i],
    "probe_copy_args": [_p],
    "probe_convert": [_p, _p, _i, _p, _p],
    "probe_misuse": [_i, _i, _p],
    "probe_big_shared": [_p],
    "probe_missing_barrier": [_p],
    "probe_bad_config": [_i, _p],
}


class Probes:
    """Calls probe_* on one backend: the harness (CPU tensors) or nvcc-built probes (CUDA tensors)."""

    def __init__(self, lib: ctypes.CDLL, device: str, synchronize, explain=lambda: "") -> None:
        self.lib, self.device, self._sync, self._explain = lib, device, synchronize, explain
        for name, argtypes in PROBES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = _i, argtypes

    def tensor(self, values) -> torch.Tensor:
        return torch.as_tensor(values).to(self.device)

    def poisoned(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        return _emu.poisoned(n, dtype).to(self.device)

    def run(self, name: str, *args) -> None:
        args = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        rc = getattr(self.lib, name)(*args)
        if rc != 0:  # a kernel failing before the launch call returns is reported here too
            raise _emu.LaunchError(f"{name}: launch error {rc} {self._explain()}")
        self._sync(name)


def _backends():
    yield "emu"
    if os.environ.get("COMMCOMP_PROBE_CUDA_LIB"):
        if not torch.cuda.is_available():
            raise RuntimeError("COMMCOMP_PROBE_CUDA_LIB is set but torch sees no CUDA device")
        yield "cuda"


@pytest.fixture
def harness(emulator):
    emulator.configure()
    emulator.reset()
    yield Probes(emulator.lib, "cpu", emulator.sync, emulator.error_message)
    emulator.reset()
    emulator.configure()


@pytest.fixture(params=list(_backends()))
def probes(request, harness):
    if request.param == "emu":
        return harness
    lib = ctypes.CDLL(os.environ["COMMCOMP_PROBE_CUDA_LIB"])
    return Probes(lib, "cuda", lambda what: torch.cuda.synchronize())


# ---- Semantics (harness and GPU) -----------------------------------------------------------------


def expected_shuffle(op: str, lane: int, arg: int, width: int) -> int:
    """Source lane of the CUDA Programming Guide's description of each __shfl_*_sync."""
    start = lane - lane % width  # the lane's segment of `width` lanes
    if op == "idx":
        return start + arg % width
    if op == "up":
        return lane - arg if lane % width >= arg else lane
    if op == "down":
        return lane + arg if lane % width + arg < width else lane
    src = lane ^ arg  # xor: later segments are out of reach, earlier ones are not
    return src if src < start + width else lane


SHUFFLES = [
    (op, a, w)
    for op in ("idx", "up", "down", "xor")
    for w in (32, 16, 8, 4, 1)
    for a in (0, 1, 3, 5, 9, 16, 31, 33)
    if (a < 2 * w + 2 or w == 32) and not (op == "xor" and a >= 32)  # xor lane masks are < 32
]


@pytest.mark.parametrize("op,arg,width", SHUFFLES)
def test_shuffles_follow_cuda(probes, op, arg, width):
    out = probes.poisoned(64, torch.int32)
    probes.run("probe_shuffle", ["idx", "up", "down", "xor"].index(op), arg, width, 64, out)
    expected = [100 + t - t % 32 + expected_shuffle(op, t % 32, arg, width) for t in range(64)]
    assert out.cpu().tolist() == expected


def test_shuffles_move_64_bit_values(probes):
    d, ll = probes.poisoned(64, torch.float64), probes.poisoned(64, torch.int64)
    probes.run("probe_shuffle64", d, ll)
    down = [t + 1 if t % 32 < 31 else t for t in range(64)]
    assert d.cpu().tolist() == [1.0 + s / 1024.0 for s in down]
    assert ll.cpu().tolist() == [(1 << 40) + (t ^ 3) for t in range(64)]


@pytest.mark.parametrize("threads", [32, 96])
def test_votes(probes, threads):
    out = probes.poisoned(4 * threads, torch.int32)
    probes.run("probe_vote", threads, out)
    ballot = sum(1 << lane for lane in range(32) if lane % 3 == 0)
    count = sum(1 for t in range(threads) if t % 5 == 0)
    expected = [ctypes.c_int32(ballot).value, 1, 0, count] * threads
    assert out.cpu().tolist() == expected


def test_collectives_of_disjoint_half_warps(probes):
    out = probes.poisoned(64, torch.int32)
    probes.run("probe_half_warp", out)
    assert out.cpu().tolist() == [(t + 4 if t % 16 < 12 else t) + 8000 for t in range(64)]


@pytest.mark.parametrize(
    "grid,block", [((2, 3, 1), (4, 2, 3)), ((3, 1, 2), (32, 1, 1)), ((1, 1, 1), (8, 8, 16))]
)
def test_index_variables_of_3d_launches(probes, grid, block):
    blocks, threads = grid[0] * grid[1] * grid[2], block[0] * block[1] * block[2]
    out = probes.poisoned(6 * blocks * threads, torch.int32)
    probes.run("probe_index", *grid, *block, out)
    expected = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            expected += [bx, by, bz, tx, ty, tz]
    assert out.cpu().tolist() == expected


def test_each_block_has_its_own_shared_memory(probes):
    out = probes.poisoned(3 * 64, torch.int32)
    probes.run("probe_shared", 3, 64, out)
    assert out.cpu().tolist() == [1000 * b + (t + 1) % 64 + 2 for b in range(3) for t in range(64)]


def test_dynamic_shared_memory_and_shared_atomics(probes):
    out = probes.poisoned(2 * 100, torch.int64)
    probes.run("probe_dynamic_shared", 2, 64, 100, out)
    assert out.cpu().tolist() == [64 * k + sum(range(64)) for _ in range(2) for k in range(100)]


def test_global_atomics(probes):
    blocks, threads = 3, 47
    n = blocks * threads
    i = probes.tensor(torch.tensor([0, 0, -1, 0], dtype=torch.int32))
    u = probes.tensor(torch.tensor([0, -1, 0, 0, 0, 0], dtype=torch.int64).to(torch.int32))
    ull = probes.tensor(torch.tensor([0, -1, 0], dtype=torch.int64))
    f, d = probes.tensor(torch.zeros(1)), probes.tensor(torch.zeros(1, dtype=torch.float64))
    probes.run("probe_atomics", blocks, threads, i, u, ull, f, d)
    assert i.cpu().tolist() == [n, -2 * n, n - 1, -(n - 1)]
    unsigned = [v & 0xFFFFFFFF for v in u.cpu().tolist()]
    parity = sum(1 << b for b in range(8) if sum(1 for g in range(n) if g % 8 == b) % 2)
    assert unsigned[:4] == [0xFFFFFFFF, 0xFFFE0000, parity, n % 10]
    assert 1 <= unsigned[4] <= n and unsigned[5] == unsigned[4]  # one CAS winner, seen by atomicExch
    assert ull.cpu().tolist() == [n * (n - 1) // 2, 5, (n - 1) << 33]
    assert f.item() == n and d.item() == n / 2


def test_a_stream_runs_its_launches_in_order(probes):
    x = probes.tensor(torch.arange(1000, dtype=torch.int32))
    probes.run("probe_ordered", x, 1000)
    assert x.cpu().tolist() == [100 * v + 12 for v in range(1000)]


def test_launch_copies_its_arguments(probes):
    for _ in range(20):
        out = probes.poisoned(64, torch.int32)
        probes.run("probe_copy_args", out)
        assert out.cpu().tolist() == [7 * k for k in range(64)]


def test_half_and_bfloat16_to_float_are_exact(probes):
    bits = torch.arange(65536, dtype=torch.int32).to(torch.int16)
    h, b = bits.view(torch.float16), bits.view(torch.bfloat16)
    fh, fb = probes.poisoned(65536, torch.float32), probes.poisoned(65536, torch.float32)
    probes.run("probe_convert", probes.tensor(h), probes.tensor(b), 65536, fh, fb)
    assert_same_bits(fh.cpu(), h.float(), "half")
    assert_same_bits(fb.cpu(), b.float(), "bfloat16")


def test_launch_configurations_cuda_rejects(probes):
    out = probes.poisoned(32, torch.int32)
    for which, error in [(0, 9), (1, 9), (2, 1)]:  # cudaErrorInvalidConfiguration, ...InvalidValue
        rc = probes.lib.probe_bad_config(which, out.data_ptr())
        assert rc == error, (which, rc)


# ---- The harness's own settings and diagnostics -----------------------------------------------------


def test_capped_grids_shrink_grid_and_block_dimensions(emulator, harness):
    emulator.configure(max_blocks=2, max_threads=32)
    out = harness.poisoned(6 * 5 * 64, torch.int32)
    harness.run("probe_index", 5, 1, 1, 64, 1, 1, out)
    rows = out.view(5 * 64, 6)
    ran = rows[:, 0] != _emu.poisoned(1, torch.int32).item()
    # Two blocks of 32 threads ran (kernels written as grid-stride loops still cover all work).
    assert int(ran.sum()) == 64 and rows[ran].tolist() == [
        [b, 0, 0, t, 0, 0] for b in range(2) for t in range(32)
    ]


def test_forgotten_barrier_reads_poisoned_shared_memory(harness):
    out = harness.poisoned(64, torch.int32)
    harness.run("probe_missing_barrier", out)
    # Forward order: thread t reads tile[t + 1] before thread t + 1 has written it.
    assert out.tolist() == [-1] * 63 + [0]


@pytest.mark.parametrize(
    "which,threads,message",
    [
        (0, 64, r"__syncthreads"),
        (1, 64, r"__syncthreads"),
        (2, 40, r"names lanes warp 1 does not have"),
        (3, 32, r"diverged"),
        (4, 32, r"calling lane \d+ is not in mask"),
        (5, 32, r"reads lane \d+, which is not in mask 0x0000ffff"),
        (6, 64, r"deadlock"),
        (7, 32, r"__trap"),
        (8, 32, r"not a power of two"),
    ],
)
@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_misuse_fails_the_launch_with_a_diagnosis(emulator, harness, which, threads, message, schedule):
    emulator.configure(schedule=schedule)
    out = harness.poisoned(threads, torch.int32)
    with pytest.raises(_emu.LaunchError, match=message):
        harness.run("probe_misuse", which, threads, out)
    assert "misuse_kernel" in emulator.error_message()


def test_shared_memory_beyond_48_kib_fails_the_launch(harness):
    with pytest.raises(_emu.LaunchError, match="shared memory"):
        harness.run("probe_big_shared", harness.poisoned(32, torch.int32))


def test_a_failed_launch_is_sticky_until_reset(emulator, harness):
    out = harness.poisoned(64, torch.int32)
    with pytest.raises(_emu.LaunchError):
        harness.run("probe_misuse", 7, 32, out)
    assert harness.lib.probe_copy_args(out.data_ptr()) == 719  # cudaErrorLaunchFailure
    emulator.reset()
    harness.run("probe_copy_args", out)


def test_invalid_settings_are_refused(emulator):
    with pytest.raises(ValueError):
        emulator.configure(max_threads=48)  # not a whole number of warps
    with pytest.raises(ValueError):
        emulator.configure(workers=0)


def test_float_to_half_and_bfloat16_round_as_cuda(emulator):
    """The harness's float -> half/bfloat16 conversions (cuda_fp16.h, cuda_bf16.h stand-ins)
    round to nearest even like torch's; NaN becomes CUDA's canonical 0x7fff."""
    lib = ctypes.CDLL(str(emulator.path))
    fn = lib.emu_float_to_half_and_bfloat16
    fn.restype, fn.argtypes = None, [_p, ctypes.c_int64, _p, _p]
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randint(-(2**31), 2**31 - 1, (200000,), generator=g, dtype=torch.int32).view(torch.float32),
            torch.tensor(
                [
                    0.0,
                    -0.0,
                    65504.0,
                    65519.99,
                    65520.0,
                    2.0**-24,
                    2.0**-25,
                    2.0**-25 * 1.0001,
                    1e-8,
                    3.4e38,
                    float("inf"),
                    -float("inf"),
                ]
            ),
            (
                torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
                * (1 + 2.0**-11)
            ),
        ]
    )
    x = x[~torch.isnan(x)]
    h, b = torch.empty(x.numel(), dtype=torch.int16), torch.empty(x.numel(), dtype=torch.int16)
    fn(x.data_ptr(), x.numel(), h.data_ptr(), b.data_ptr())
    assert_same_bits(h.view(torch.float16), x.to(torch.float16), "half")
    assert_same_bits(b.view(torch.bfloat16), x.to(torch.bfloat16), "bfloat16")
    nan = torch.tensor([float("nan")])
    fn(nan.data_ptr(), 1, h.data_ptr(), b.data_ptr())
    assert h[0].item() == 0x7FFF and b[0].item() == 0x7FFF
