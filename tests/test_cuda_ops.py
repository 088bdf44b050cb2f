"""CUDA ops on a GPU (skipped without one; tools/gpu_check.sh runs them): ``torch.library.opcheck``
of every op on CUDA tensors, and CUDA against CPU bit for bit where the other GPU tests do not
look — edge sizes, more payloads than one launch decodes, caller-given norms, and the errors of the
decoders on corrupt payloads (same bucket, same reason)."""

from __future__ import annotations

import re

import pytest
import torch

from commcomp import ops

pytestmark = pytest.mark.gpu

LEVELS = torch.tensor([0.0, 0.125, 0.25, 0.5, 1.0])
SIZES = (1, 63, 64, 65, 5 * 64 + 21, 1_000_003)


def _opcheck_cases():
    x = torch.randn(300)
    norms, symbols = ops.quantize(x, LEVELS, 64, "l2", 1, 2)
    lengths, stream = ops.elias_encode(symbols, 5, 64, 300, 0)
    return {
        "bucket_norms": (torch.ops.commcomp.bucket_norms.default, (x, 64, "linf")),
        "quantize": (torch.ops.commcomp.quantize.default, (x, LEVELS, 64, "l2", 1, 2)),
        "quantize_half": (torch.ops.commcomp.quantize.default, (x.half(), LEVELS, 100, "linf", 1, 2)),
        "quantize_given_norms": (torch.ops.commcomp.quantize.default, (x, LEVELS, 64, "l2", 1, 2, norms * 2)),
        "dequantize": (torch.ops.commcomp.dequantize.default, (norms, symbols, LEVELS, 64, 300)),
        "dequantize_accumulate": (
            torch.ops.commcomp.dequantize_accumulate.default,
            (torch.zeros(300), [norms, norms], [symbols, symbols], LEVELS, 64, 0.5),
        ),
        "pack_symbols": (
            torch.ops.commcomp.pack_symbols.default,
            (torch.randint(0, 8, (50,), dtype=torch.uint8), 3),
        ),
        "unpack_symbols": (torch.ops.commcomp.unpack_symbols.default, (symbols, 4, 300)),
        "elias_decode": (torch.ops.commcomp.elias_decode.default, (lengths, stream, 5, 64, 300, 0)),
        "level_stats": (torch.ops.commcomp.level_stats.default, (x, ops.bucket_norms(x, 64, "l2"), 64, 128)),
    }


def _cuda(args):
    return tuple(
        a.cuda() if isinstance(a, torch.Tensor) else [t.cuda() for t in a] if isinstance(a, list) else a
        for a in args
    )


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_opcheck_on_cuda(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(
        op, _cuda(args), test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    )


def test_elias_encode_runs_on_cuda_like_cpu():
    # Its output size depends on the data, so opcheck's fake-tensor test does not apply.
    _, symbols = ops.quantize(torch.randn(1000), LEVELS, 64, "l2", 1, 2)
    for code in (0, 1, 2):
        cpu = ops.elias_encode(symbols, 5, 64, 1000, code)
        gpu = ops.elias_encode(symbols.cuda(), 5, 64, 1000, code)
        assert all(g.is_cuda and torch.equal(g.cpu(), c) for g, c in zip(gpu, cpu))


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_bucket_norms_and_level_stats_on_edge_sizes(norm, dtype):
    for n in SIZES:
        x = (torch.randn(n) * torch.rand(n).pow(4)).to(dtype)
        norms = ops.bucket_norms(x, 64, norm)
        assert torch.equal(ops.bucket_norms(x.cuda(), 64, norm).cpu(), norms)
        assert torch.equal(
            torch.ops.commcomp.level_stats(x.cuda(), norms.cuda(), 64, 1000).cpu(),
            torch.ops.commcomp.level_stats(x, norms, 64, 1000),
        )


def test_quantize_against_given_norms():
    x = torch.randn(10_007)
    shared = ops.bucket_norms(x, 100, "l2") * 1.5
    cpu = ops.quantize(x, LEVELS, 100, "l2", 3, 1, norms=shared)
    gpu = ops.quantize(x.cuda(), LEVELS.cuda(), 100, "l2", 3, 1, norms=shared.cuda())
    assert torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])


@pytest.mark.parametrize("payloads", [31, 32, 33, 70])  # the binding decodes 32 per launch
def test_dequantize_accumulate_of_many_payloads(payloads):
    n = 5_003
    quantized = [ops.quantize(torch.randn(n), LEVELS, 64, "linf", 7, k) for k in range(payloads)]
    norms, symbols = [q[0] for q in quantized], [q[1] for q in quantized]
    out_cpu, out_gpu = torch.randn(n), None
    out_gpu = out_cpu.cuda()
    ops.dequantize_accumulate(out_cpu, norms, symbols, LEVELS, 64, 0.25)
    ops.dequantize_accumulate(
        out_gpu, [t.cuda() for t in norms], [t.cuda() for t in symbols], LEVELS.cuda(), 64, 0.25
    )
    assert torch.equal(out_gpu.cpu(), out_cpu)


def test_dequantize_rejects_missing_levels_on_cuda():
    norms, symbols = ops.quantize(torch.randn(1000), LEVELS, 64, "l2", 1, 0)
    raw = ops.unpack_symbols(symbols, 4, 1000)
    raw[17] = 7 << 1  # index 7 of a 5-level table
    corrupt = ops.pack_symbols(raw, 4)
    with pytest.raises(ValueError, match="level index"):
        ops.dequantize(norms.cuda(), corrupt.cuda(), LEVELS.cuda(), 64, 1000)


def _error(fn):
    try:
        fn()
    except ValueError as e:
        return re.sub(r"\s+", " ", str(e).splitlines()[0])
    return None


def test_elias_errors_match_cpu():
    g = torch.Generator().manual_seed(3)
    n, bucket = 20_003, 37
    raw = torch.randint(1, 5, (n,), generator=g) * (torch.rand(n, generator=g) < 0.3)
    raw = ((raw << 1) | torch.randint(0, 2, (n,), generator=g) * (raw > 0)).to(torch.uint8)
    packed = ops.pack_symbols(raw, 4)
    bad = raw.clone()
    bad[[4000, 9000]] = torch.tensor([1, 6 << 1], dtype=torch.uint8)  # a signed zero, a missing level
    bad_packed = ops.pack_symbols(bad, 4)
    cpu = _error(lambda: ops.elias_encode(bad_packed, 5, bucket, n, 0))
    assert cpu is not None and cpu == _error(lambda: ops.elias_encode(bad_packed.cuda(), 5, bucket, n, 0))
    for code in (0, 1, 2):
        lengths, stream = ops.elias_encode(packed, 5, bucket, n, code)
        for trial in range(20):
            s = stream.clone()
            s[torch.randint(0, s.numel(), (1 + trial % 3,), generator=g)] ^= 1 << (trial % 8)
            cpu = _error(lambda: ops.elias_decode(lengths, s, 5, bucket, n, code))
            gpu = _error(lambda: ops.elias_decode(lengths.cuda(), s.cuda(), 5, bucket, n, code))
            assert gpu == cpu, (code, trial)
            if cpu is None:
                assert torch.equal(
                    ops.elias_decode(lengths.cuda(), s.cuda(), 5, bucket, n, code).cpu(),
                    ops.elias_decode(lengths, s, 5, bucket, n, code),
                )
