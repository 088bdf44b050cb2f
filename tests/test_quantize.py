"""Core quantization ops: equality with the reference, statistics, determinism, bad input.

Every test runs once per CPU kernel path this machine supports (the `cpu_path` fixture of
conftest.py): the scalar core loops and each vector path must pass all of them."""
import functools
import math

import pytest
import torch

from commcomp import NUQSGD, QSGD, FixedLevels, Levels, QSGDInf, ops
from commcomp import _reference as ref

pytestmark = pytest.mark.usefixtures("cpu_path")

SCHEMES = {
    "qsgd4": QSGD(4, 512),
    "qsgdinf3": QSGDInf(3, 512),
    "nuqsgd4": NUQSGD(4, 512),
    "nuqsgd2": NUQSGD(2, 512),
    "alq-like": FixedLevels([0.0, 0.05, 0.2, 0.45, 1.0], 512, "l2"),
    "qsgd8": QSGD(8, 512),
}


def _quantize_both(q, x, seed=11, offset=5):
    lv = q.levels.tensor()
    got = ops.quantize(x, lv, q.bucket_size, q.norm, seed, offset)
    want = ref.quantize(x.float(), lv, q.bucket_size, q.norm, seed, offset)
    return lv, got, want


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("numel", [1, 511, 513, 4099])
def test_matches_reference(scheme, dtype, numel):
    q = SCHEMES[scheme]
    x = (torch.randn(numel) * 3).to(dtype)
    lv, (norms, symbols), (ref_norms, ref_symbols) = _quantize_both(q, x)
    assert torch.equal(norms, ref_norms)
    assert torch.equal(symbols, ref_symbols)
    decoded = ops.dequantize(norms, symbols, lv, q.bucket_size, numel)
    assert torch.equal(decoded, ref.dequantize(ref_norms, ref_symbols, lv, q.bucket_size, numel))


@functools.lru_cache(maxsize=1)
def _ten_million_reference():
    # The same input for every path (the generator is seeded), its reference computed once.
    x = torch.randn(10**7, generator=torch.Generator().manual_seed(16))
    q = NUQSGD(4, 1024)
    return q, x, ref.quantize(x, q.levels.tensor(), q.bucket_size, q.norm, 2**40 + 3, 2**33)


def test_matches_reference_ten_million():
    q, x, (ref_norms, ref_symbols) = _ten_million_reference()
    norms, symbols = ops.quantize(x, q.levels.tensor(), q.bucket_size, q.norm, 2**40 + 3, 2**33)
    assert torch.equal(norms, ref_norms)
    assert torch.equal(symbols, ref_symbols)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_bucket_norms_match_torch(norm):
    x = torch.randn(10_000, dtype=torch.float64).float()
    got = ops.bucket_norms(x, 1000, norm)
    want = torch.linalg.vector_norm(x.double().view(10, 1000), ord=2 if norm == "l2" else math.inf, dim=1)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_symbol_width_is_minimal():
    # 8 levels -> 3 index bits + 1 sign bit = 4 bits per coordinate.
    x = torch.randn(1000)
    for bits in range(2, 9):
        q = QSGD(bits, 128)
        assert q.bits == bits
        assert q.quantize(x).symbols.numel() == math.ceil(1000 * bits / 8)
    assert FixedLevels([0.0, 0.3, 0.6, 0.9, 1.0]).bits == 4  # 5 levels need 3 index bits


@pytest.mark.parametrize("scheme", ["qsgd4", "qsgdinf3", "nuqsgd4", "alq-like"])
def test_unbiased(scheme):
    q = SCHEMES[scheme]
    x = torch.randn(300) * torch.linspace(0.01, 2, 300)
    trials = 3000
    decoded = torch.stack([q.dequantize(q.quantize(x, seed=7, offset=t)) for t in range(trials)]).double()
    mean = decoded.mean(0)
    # Per-coordinate variance of one draw, exactly: n^2 (r - L_j)(L_j+1 - r).
    var = decoded.var(0)
    keep = var > 0
    z = ((mean - x.double())[keep] ** 2 / (var[keep] / trials)).sum()
    dof = int(keep.sum())
    # z ~ chi^2(dof) when unbiased; 6 standard deviations above its mean.
    assert z < dof + 6 * math.sqrt(2 * dof), f"z={z:.1f}, dof={dof}"


@pytest.mark.parametrize("cls", [QSGD, QSGDInf, NUQSGD])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_variance_within_bound(cls, bits):
    d = 512
    q = cls(bits, d)
    x = torch.randn(d * 4)
    trials = 400
    errors = torch.stack(
        [(q.dequantize(q.quantize(x, seed=1, offset=t)) - x).double().view(4, d).pow(2).sum(1) for t in range(trials)]
    )
    per_bucket_norm2 = x.double().view(4, d).pow(2).sum(1)
    measured = (errors.mean(0) / per_bucket_norm2).max().item()
    exact = ref.expected_variance(x[:d], q.levels.tensor(), d, q.norm) / per_bucket_norm2[0].item()
    assert exact <= q.variance_bound(d) + 1e-9
    assert measured <= q.variance_bound(d) * 1.1 + 1e-6
    # And the empirical variance of bucket 0 agrees with the exact expectation (5% over 400 draws).
    first = (errors[:, 0] / per_bucket_norm2[0]).mean().item()
    assert first == pytest.approx(exact, rel=0.08)


def test_deterministic_for_seed_and_offset():
    x = torch.randn(5000)
    q = NUQSGD(3, 256)
    a, b = q.quantize(x, seed=5, offset=9), q.quantize(x, seed=5, offset=9)
    assert torch.equal(a.symbols, b.symbols)
    c = q.quantize(x, seed=5, offset=10)
    assert not torch.equal(a.symbols, c.symbols)


def test_offsets_give_independent_draws():
    u0 = ref.uniforms(3, 0, 200_000).double()
    u1 = ref.uniforms(3, 1, 200_000).double()
    corr = torch.corrcoef(torch.stack([u0, u1]))[0, 1].item()
    assert abs(corr) < 5 / math.sqrt(200_000)
    # The kernels draw exactly these: a coordinate halfway between two levels rounds up iff u < 0.5.
    x = torch.full((2000,), 0.5)
    x[0] = 1.0  # bucket norm 1 (linf), so r = 0.5 for the rest
    _, symbols = ops.quantize(x, torch.tensor([0.0, 1.0]), 2000, "linf", 3, 1)
    index = ops.unpack_symbols(symbols, 2, 2000).long() >> 1
    assert torch.equal(index[1:], (ref.uniforms(3, 1, 2000)[1:] < 0.5).long())


def test_zero_bucket_decodes_to_zero():
    x = torch.cat([torch.zeros(512), torch.randn(100)])
    q = QSGD(4, 512)
    out = q.dequantize(q.quantize(x))
    assert torch.equal(out[:512], torch.zeros(512))
    assert q.quantize(x).norms[0].item() == 0.0


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_input_raises(bad):
    x = torch.randn(2000)
    x[1500] = bad
    with pytest.raises(ValueError, match="non-finite.*bucket 2"):
        QSGD(4, 512).quantize(x)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("position", [0, 31, 32, 200, 511])  # first/last of a lane, mid, bucket end
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_values_give_a_nonfinite_norm(norm, dtype, position, bad):
    # Before NaN propagated, the L-inf max skipped a NaN unless it was its lane's last element.
    x = torch.randn(1536).to(dtype)
    x[512 + position] = bad
    norms = ops.bucket_norms(x, 512, norm)
    assert bool(torch.isfinite(norms[[0, 2]]).all())
    assert math.isnan(norms[1]) if math.isnan(bad) else norms[1] == math.inf
    assert torch.equal(norms.nan_to_num(), ref.bucket_norms(x, 512, norm).nan_to_num())


@pytest.mark.parametrize("scheme", SCHEMES)
def test_allow_nonfinite_zeroes_those_buckets_and_keeps_the_rest(scheme):
    q = SCHEMES[scheme]
    x = torch.randn(3000)
    x[[10, 1500]] = torch.tensor([math.nan, -math.inf])
    with pytest.raises(ValueError, match="non-finite"):
        q.quantize(x, seed=3)
    out = q.quantize(x, seed=3, allow_nonfinite=True)
    bad = ~torch.isfinite(out.norms)
    assert bad.nonzero().flatten().tolist() == [10 // q.bucket_size, 1500 // q.bucket_size]
    symbols = ops.unpack_symbols(out.symbols, q.bits, x.numel())
    in_bad = bad.repeat_interleave(q.bucket_size)[: x.numel()]
    assert int(symbols[in_bad].max()) == 0  # valid zero symbols: Elias codes them too
    clean = x.clone()
    clean[in_bad] = 0.0
    expected = q.quantize(clean, seed=3)  # same Philox stream: the other buckets are unchanged
    expected_symbols = ops.unpack_symbols(expected.symbols, q.bits, x.numel())
    assert torch.equal(symbols[~in_bad], expected_symbols[~in_bad])
    assert torch.equal(out.norms[~bad], expected.norms[~bad])
    _, packed = ref.quantize(x, q.levels.tensor(), q.bucket_size, q.norm, 3, 0)
    assert torch.equal(packed, out.symbols)
    with pytest.raises(ValueError, match="non-finite"):  # shared scales still need finite buckets
        ops.quantize(x, q.levels.tensor(), q.bucket_size, q.norm, 3, 0, out.norms.nan_to_num(posinf=1e30), True)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pieces_with_stream_index_reproduce_the_whole(scheme, dtype):
    q = SCHEMES[scheme]
    x = torch.randn(5 * q.bucket_size + 37).to(dtype)
    whole = q.quantize(x, seed=4, offset=9)
    cuts = [0, q.bucket_size, 3 * q.bucket_size, x.numel()]
    norms, symbols = [], []
    for a, b in zip(cuts, cuts[1:]):
        piece = q.quantize(x[a:b], seed=4, offset=9, stream_index=a)
        norms.append(piece.norms)
        symbols.append(ops.unpack_symbols(piece.symbols, q.bits, b - a))
        _, expected = ref.quantize(x[a:b], q.levels.tensor(), q.bucket_size, q.norm, 4, 9, stream_index=a)
        assert torch.equal(piece.symbols, expected)
    assert torch.equal(torch.cat(norms), whole.norms)
    assert torch.equal(torch.cat(symbols), ops.unpack_symbols(whole.symbols, q.bits, x.numel()))


@pytest.mark.parametrize("bad", [-8, 3, 12])
def test_stream_index_must_be_a_nonnegative_multiple_of_8(bad):
    with pytest.raises(ValueError, match="stream_index must be a non-negative multiple of 8"):
        ops.quantize(torch.randn(64), torch.tensor([0.0, 1.0]), 16, "l2", 0, 0, None, False, bad)


def test_empty_input():
    q = QSGD(4, 512)
    p = q.quantize(torch.empty(0))
    assert p.norms.numel() == 0 and p.symbols.numel() == 0
    assert q.dequantize(p).numel() == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(bucket_size=0), "bucket_size must be positive"),
        (dict(norm="l3"), "norm must be 'l2' or 'linf'"),
        (dict(seed=-1), "seed must be non-negative"),
        (dict(offset=-2), "offset must be non-negative"),
        (dict(levels=torch.tensor([0.0, 0.6, 0.5, 1.0])), "strictly increasing"),
        (dict(levels=torch.tensor([0.0, 0.5, 0.9])), "end at 1"),
        (dict(levels=torch.tensor([0.0, 1.0], dtype=torch.float64)), "levels must be float32"),
        (dict(levels=torch.linspace(0, 1, 129)), "2..128 entries"),
        (dict(x=torch.randn(4, 4)), "x must be a flat"),
        (dict(x=torch.arange(10)), "x must be float32, float16 or bfloat16"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    args = dict(x=torch.randn(100), levels=torch.tensor([0.0, 0.5, 1.0]), bucket_size=64, norm="l2", seed=0, offset=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ops.quantize(**args)


def test_decoder_rejects_inconsistent_payloads():
    lv = torch.tensor([0.0, 0.3, 0.6, 0.8, 1.0])  # 5 levels: index values 5..7 are invalid
    norms, symbols = ops.quantize(torch.randn(100), lv, 64, "l2", 0, 0)
    with pytest.raises(ValueError, match="expected 2 norms"):
        ops.dequantize(norms[:1], symbols, lv, 64, 100)
    with pytest.raises(ValueError, match="symbol bytes"):
        ops.dequantize(norms, symbols[:-1], lv, 64, 100)
    with pytest.raises(ValueError, match="non-finite"):
        ops.dequantize(torch.tensor([1.0, math.nan]), symbols, lv, 64, 100)
    with pytest.raises(ValueError, match="non-negative"):
        ops.dequantize(torch.tensor([1.0, -1.0]), symbols, lv, 64, 100)
    corrupt = symbols.clone()
    corrupt[0] = 0b1110  # first symbol: index 7 of a 5-level table
    with pytest.raises(ValueError, match="level index"):
        ops.dequantize(norms, corrupt, lv, 64, 100)


def test_dequantize_accumulate_sums_payloads():
    q = NUQSGD(4, 128)
    xs = [torch.randn(1001) for _ in range(5)]
    payloads = [q.quantize(x, seed=1, offset=k) for k, x in enumerate(xs)]
    out = torch.full((1001,), 0.5)
    ops.dequantize_accumulate(out, [p.norms for p in payloads], [p.symbols for p in payloads], q.levels.tensor(), 128, 0.2)
    want = torch.full((1001,), 0.5)
    for p in payloads:  # same order and rounding as the kernel
        want = want + 0.2 * q.dequantize(p)
    assert torch.equal(out, want)


def test_pack_unpack_round_trip():
    for width in range(1, 9):
        for n in (0, 1, 7, 8, 9, 1000):
            s = torch.randint(0, 2**width, (n,), dtype=torch.uint8)
            packed = ops.pack_symbols(s, width)
            assert torch.equal(packed, ref.pack(s, width))
            assert torch.equal(ops.unpack_symbols(packed, width, n), s)
    with pytest.raises(ValueError, match="fit in width=2"):
        ops.pack_symbols(torch.tensor([4], dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="width must be in"):
        ops.unpack_symbols(torch.zeros(1, dtype=torch.uint8), 9, 1)


def test_quantizer_configs_validate():
    with pytest.raises(ValueError, match="bits must be an int in"):
        QSGD(1)
    with pytest.raises(ValueError, match="bits must be an int in"):
        NUQSGD(9)
    with pytest.raises(ValueError, match="bucket_size must be a positive int"):
        QSGDInf(4, 0)
    assert NUQSGD(3).levels.values == (0.0, 0.25, 0.5, 1.0)
    assert Levels.uniform(3).values == (0.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="start at 0"):
        Levels((0.1, 1.0))


def test_quantizer_handles_shapes_and_dtypes():
    q = QSGD(4, 64)
    x = torch.randn(3, 5, 7, dtype=torch.bfloat16)
    p = q.quantize(x)
    out = q.dequantize(p)
    assert out.dtype == torch.bfloat16 and out.numel() == x.numel()


def _opcheck_samples():
    lv = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x = torch.randn(300)
    norms, symbols = ops.quantize(x, lv, 64, "l2", 1, 2)
    return [
        (torch.ops.commcomp.bucket_norms.default, (x, 64, "linf")),
        (torch.ops.commcomp.quantize.default, (x, lv, 64, "l2", 1, 2)),
        (torch.ops.commcomp.quantize.default, (x.half(), lv, 100, "linf", 1, 2)),
        (torch.ops.commcomp.quantize.default, (torch.where(x > 2, float("inf"), x), lv, 64, "linf", 1, 2, None, True)),
        (torch.ops.commcomp.quantize.default, (x, lv, 64, "l2", 1, 2, None, False, 640)),
        (torch.ops.commcomp.dequantize.default, (norms, symbols, lv, 64, 300)),
        (torch.ops.commcomp.dequantize_accumulate.default, (torch.zeros(300), [norms, norms], [symbols, symbols], lv, 64, 0.5)),
        (torch.ops.commcomp.pack_symbols.default, (torch.randint(0, 8, (50,), dtype=torch.uint8), 3)),
        (torch.ops.commcomp.unpack_symbols.default, (symbols, 3, 300)),
    ]


@pytest.mark.parametrize("sample", range(9))
def test_opcheck(sample):
    op, args = _opcheck_samples()[sample]
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph():
    lv = NUQSGD(4).levels.tensor()

    def round_trip(x):
        norms, symbols = torch.ops.commcomp.quantize(x, lv, 128, "l2", 3, 0)
        return torch.ops.commcomp.dequantize(norms, symbols, lv, 128, x.numel()) * 2

    x = torch.randn(1000)
    compiled = torch.compile(round_trip, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), round_trip(x))


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu_bit_for_bit(scheme, dtype):
    q = SCHEMES[scheme]
    lv = q.levels.tensor()
    for numel in (1, 511, 513, 1_000_003):
        x = (torch.randn(numel) * 2).to(dtype)
        cpu = ops.quantize(x, lv, q.bucket_size, q.norm, 9, 4)
        gpu = ops.quantize(x.cuda(), lv.cuda(), q.bucket_size, q.norm, 9, 4)
        assert torch.equal(cpu[0], gpu[0].cpu())
        assert torch.equal(cpu[1], gpu[1].cpu())
        dec_cpu = ops.dequantize(*cpu, lv, q.bucket_size, numel)
        dec_gpu = ops.dequantize(*gpu, lv.cuda(), q.bucket_size, numel)
        assert torch.equal(dec_cpu, dec_gpu.cpu())
        out_cpu, out_gpu = torch.ones(numel), torch.ones(numel, device="cuda")
        ops.dequantize_accumulate(out_cpu, [cpu[0]] * 3, [cpu[1]] * 3, lv, q.bucket_size, 0.5)
        ops.dequantize_accumulate(out_gpu, [gpu[0]] * 3, [gpu[1]] * 3, lv.cuda(), q.bucket_size, 0.5)
        assert torch.equal(out_cpu, out_gpu.cpu())
        for width in (2, 3, 8):
            s = torch.randint(0, 2**width, (numel,), dtype=torch.uint8)
            assert torch.equal(ops.pack_symbols(s, width), ops.pack_symbols(s.cuda(), width).cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_cuda_nonfinite_norms_and_zeroed_buckets_match_cpu(norm):
    x = torch.randn(5000)
    x[[3, 700, 4999]] = torch.tensor([math.nan, math.inf, -math.inf])
    lv = NUQSGD(4).levels.tensor()
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        xd = x.to(dtype)
        cpu = ops.quantize(xd, lv, 256, norm, 9, 4, None, True, 256)
        gpu = ops.quantize(xd.cuda(), lv.cuda(), 256, norm, 9, 4, None, True, 256)
        assert torch.equal(cpu[0].nan_to_num(), gpu[0].cpu().nan_to_num())
        assert torch.equal(torch.isnan(cpu[0]), torch.isnan(gpu[0].cpu()))
        assert torch.equal(cpu[1], gpu[1].cpu())


def test_shared_norms_match_reference_and_stay_unbiased():
    x = torch.randn(1000)
    lv = QSGD(3).levels.tensor()
    shared = ops.bucket_norms(x, 100, "l2") * 1.7
    got = ops.quantize(x, lv, 100, "l2", 4, 2, shared)
    want = ref.quantize(x, lv, 100, "l2", 4, 2, shared)
    assert torch.equal(got[0], shared) and torch.equal(got[1], want[1])
    mean = torch.stack([ops.dequantize(*ops.quantize(x, lv, 100, "l2", 4, t, shared), lv, 100, 1000) for t in range(2000)]).mean(0)
    # Per-coordinate std of one draw is at most scale / (2 s) = 1.7 * norm / 6.
    tol = 6 * (shared.max() / 6) / math.sqrt(2000)
    assert (mean - x).abs().max() < tol
    with pytest.raises(ValueError, match="norms must be >= each bucket's own norm"):
        ops.quantize(x, lv, 100, "l2", 0, 0, shared / 2)
    with pytest.raises(ValueError, match="one entry per bucket"):
        ops.quantize(x, lv, 100, "l2", 0, 0, shared[:3])
    torch.library.opcheck(torch.ops.commcomp.quantize.default, (x, lv, 100, "l2", 4, 2, shared))
