"""The CPU kernel paths (csrc/cpu/simd): every vector path gives the scalar path's bits, and the
reference's, at the sizes where vector code breaks (around vector widths, chunk and bucket
boundaries, buckets shorter than a vector), for every dtype, scheme and symbol width, on
non-finite input, and when at::parallel_for splits the work. COMMCOMP_CPU_PATH forces a path."""
import math
import os
import re

import pytest
import torch

from commcomp import NUQSGD, QSGD, FixedLevels, QSGDInf, ops
from commcomp import _reference as ref

from conftest import CPU_PATHS, supported_cpu_paths

VECTOR_PATHS = [p for p in CPU_PATHS if p != "scalar"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BUCKETS = [1, 7, 8, 15, 16, 17, 31, 32, 33, 37, 63, 64, 65, 100, 511, 512, 513]


def _on_path(path, fn, *args):
    old = os.environ.get("COMMCOMP_CPU_PATH")
    os.environ["COMMCOMP_CPU_PATH"] = path
    try:
        return fn(*args)
    finally:
        if old is None:
            del os.environ["COMMCOMP_CPU_PATH"]
        else:
            os.environ["COMMCOMP_CPU_PATH"] = old


def _vector_path(path):
    if path not in supported_cpu_paths():
        pytest.skip(f"this CPU has no {path} path")
    return path


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float32 tensor: -0.0 and NaN payloads compare exactly."""
    return t.view(torch.int32)


def _schemes():
    yield from (QSGD(b, 64) for b in range(2, 9))
    yield from (QSGDInf(b, 64) for b in (2, 3, 5, 8))
    yield from (NUQSGD(b, 64) for b in (2, 4, 6, 8))
    gen = torch.Generator().manual_seed(3)
    for count in (3, 5, 9, 16, 17, 33, 100, 128):  # fitted-like tables: every size class
        inner = torch.randperm(9999, generator=gen)[: count - 2].add(1).sort().values.double() / 10000
        yield FixedLevels([0.0, *inner.tolist(), 1.0], 64, "l2" if count % 2 else "linf")


SCHEMES = list(_schemes())


def test_paths_listed_match_the_cpu():
    paths = supported_cpu_paths()
    assert paths[0] == "scalar" and set(paths) <= set(CPU_PATHS)
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", open("/proc/cpuinfo").read(), re.M).group(1).split())
    except (OSError, AttributeError):
        pytest.skip("no x86 /proc/cpuinfo flags")
    assert ("avx2" in paths) == ({"avx2", "f16c"} <= flags)
    avx512 = {"avx2", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi"}
    assert ("avx512" in paths) == (avx512 <= flags)


@pytest.mark.parametrize("value", ["avx3", "AVX2", " scalar", "sse"])
def test_unknown_path_is_a_value_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("COMMCOMP_CPU_PATH", value)
    with pytest.raises(ValueError, match="COMMCOMP_CPU_PATH"):
        ops.quantize(torch.randn(100), torch.tensor([0.0, 1.0]), 64, "l2", 0, 0)


def test_empty_variable_means_the_best_path(monkeypatch):
    x = torch.randn(1000)
    lv = NUQSGD(4).levels.tensor()
    monkeypatch.setenv("COMMCOMP_CPU_PATH", "")
    best = ops.quantize(x, lv, 100, "l2", 1, 2)
    monkeypatch.setenv("COMMCOMP_CPU_PATH", "scalar")
    scalar = ops.quantize(x, lv, 100, "l2", 1, 2)
    assert torch.equal(best[1], scalar[1]) and torch.equal(_bits(best[0]), _bits(scalar[0]))


def _all_ops(x, q, seed, offset, allow_nonfinite=False):
    """Every op's output on x under quantizer q, as a tuple of tensors."""
    lv = q.levels.tensor()
    norms, symbols = ops.quantize(x, lv, q.bucket_size, q.norm, seed, offset, None, allow_nonfinite)
    finite = norms.nan_to_num(nan=1.0, posinf=1.0)  # decodable stand-ins for the non-finite buckets
    decoded = ops.dequantize(finite, symbols, lv, q.bucket_size, x.numel())
    norms2, symbols2 = ops.quantize(x.flip(0), lv, q.bucket_size, q.norm, seed + 1, offset, None, True)
    acc = torch.linspace(-1, 1, x.numel())
    ops.dequantize_accumulate(acc, [finite, norms2.nan_to_num(nan=2.0, posinf=2.0)], [symbols, symbols2], lv,
                              q.bucket_size, 0.3)
    l2, linf = ops.bucket_norms(x, q.bucket_size, "l2"), ops.bucket_norms(x, q.bucket_size, "linf")
    return norms, symbols, decoded, acc, l2, linf


def _assert_same(got, want):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        if g.dtype == torch.float32:
            assert torch.equal(_bits(g), _bits(w))
        else:
            assert torch.equal(g, w)


@pytest.mark.parametrize("path", VECTOR_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_size_from_1_to_67_matches_scalar(path, dtype):
    _vector_path(path)
    for numel in range(1, 68):
        x = (torch.randn(numel) * 2).to(dtype)
        for q in (NUQSGD(4, 512), QSGD(8, 16), QSGDInf(3, 5)):
            want = _on_path("scalar", _all_ops, x, q, 7, 3)
            _assert_same(_on_path(path, _all_ops, x, q, 7, 3), want)


@pytest.mark.parametrize("path", VECTOR_PATHS)
@pytest.mark.parametrize("bucket_size", BUCKETS)
def test_bucket_sizes_around_vector_widths_match_scalar_and_reference(path, bucket_size):
    _vector_path(path)
    for dtype in DTYPES:
        for numel in (bucket_size - 1, bucket_size + 1, 3 * bucket_size, 1000 + bucket_size):
            if numel <= 0:
                continue
            x = (torch.randn(numel) * 3).to(dtype)
            q = SCHEMES[(bucket_size + numel) % len(SCHEMES)]
            q = type(q)(q.bits, bucket_size) if not isinstance(q, FixedLevels) else FixedLevels(q.levels.values, bucket_size, q.norm)
            want = _on_path("scalar", _all_ops, x, q, 11, 5)
            got = _on_path(path, _all_ops, x, q, 11, 5)
            _assert_same(got, want)
            ref_norms, ref_symbols = ref.quantize(x.float(), q.levels.tensor(), bucket_size, q.norm, 11, 5)
            assert torch.equal(got[0], ref_norms) and torch.equal(got[1], ref_symbols)


@pytest.mark.parametrize("path", VECTOR_PATHS)
@pytest.mark.parametrize("scheme", range(len(SCHEMES)))
def test_every_scheme_and_width_matches_reference(path, scheme):
    _vector_path(path)
    q = SCHEMES[scheme]
    lv = q.levels.tensor()
    for dtype in DTYPES:
        x = (torch.randn(5003) * torch.linspace(0.01, 3, 5003)).to(dtype)
        got = _on_path(path, _all_ops, x, q, 2**35 + 1, 2**32 - 1)
        _assert_same(got, _on_path("scalar", _all_ops, x, q, 2**35 + 1, 2**32 - 1))
        want_norms, want_symbols = ref.quantize(x.float(), lv, q.bucket_size, q.norm, 2**35 + 1, 2**32 - 1)
        assert torch.equal(got[0], want_norms) and torch.equal(got[1], want_symbols)
        assert torch.equal(got[2], ref.dequantize(want_norms, want_symbols, lv, q.bucket_size, x.numel()))


@pytest.mark.parametrize("path", VECTOR_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_and_signed_zero_inputs_match_scalar(path, dtype):
    _vector_path(path)
    x = torch.randn(4000)
    x[[5, 700, 701, 1900, 3999]] = torch.tensor([math.nan, math.inf, -math.inf, math.nan, -math.inf])
    x[2048:2112] = -0.0  # a bucket of signed zeros: its L-inf norm keeps the sign, on every path
    x[3000:3064] = 0.0
    x[1024:1088] = 3e38  # L2 overflows to inf, L-inf stays finite
    x = x.to(dtype)
    for q in (QSGD(4, 64), QSGDInf(8, 64), NUQSGD(3, 33), FixedLevels([0.0, 0.3, 1.0], 17)):
        want = _on_path("scalar", _all_ops, x, q, 5, 1, True)
        got = _on_path(path, _all_ops, x, q, 5, 1, True)
        _assert_same(got, want)
        _, ref_symbols = ref.quantize(x.float(), q.levels.tensor(), q.bucket_size, q.norm, 5, 1)
        assert torch.equal(got[1], ref_symbols)
        assert not torch.isfinite(got[0]).all()


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_pack_unpack_every_width_matches_scalar(path):
    _vector_path(path)
    for width in range(1, 9):
        for numel in (1, 8, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 1000, 4096 + 24):
            s = torch.randint(0, 2**width, (numel,), dtype=torch.uint8)
            packed = _on_path(path, ops.pack_symbols, s, width)
            assert torch.equal(packed, ref.pack(s, width))
            assert torch.equal(packed, _on_path("scalar", ops.pack_symbols, s, width))
            assert torch.equal(_on_path(path, ops.unpack_symbols, packed, width, numel), s)


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_corrupt_symbols_are_caught_by_every_path(path):
    _vector_path(path)
    lv = torch.tensor([0.0, 0.3, 0.6, 0.8, 1.0])  # 5 levels: index values 5..7 are invalid
    norms, symbols = ops.quantize(torch.randn(4096), lv, 64, "l2", 0, 0)
    for byte in (0, 700, 1535):  # in the first chunk, mid-stream, in the last group
        corrupt = symbols.clone()
        corrupt[byte] = 0b11101110  # two symbols of index 7
        with pytest.raises(ValueError, match="level index"):
            _on_path(path, ops.dequantize, norms, corrupt, lv, 64, 4096)
        with pytest.raises(ValueError, match="level index"):
            _on_path(path, ops.dequantize_accumulate, torch.zeros(4096), [norms, norms], [symbols, corrupt], lv, 64, 1.0)


@pytest.mark.parametrize("path", VECTOR_PATHS)
def test_two_threads_split_like_one(path):
    # at::parallel_for cuts the work between threads; the cut points must not show in the bits.
    _vector_path(path)
    threads = torch.get_num_threads()
    x = torch.randn(1_000_003)
    q = NUQSGD(3, 100)
    try:
        torch.set_num_threads(2)
        two = _on_path(path, _all_ops, x, q, 9, 9)
        torch.set_num_threads(1)
        one = _on_path(path, _all_ops, x, q, 9, 9)
    finally:
        torch.set_num_threads(threads)
    _assert_same(two, one)
    _assert_same(one, _on_path("scalar", _all_ops, x, q, 9, 9))
