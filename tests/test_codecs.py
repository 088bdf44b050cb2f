"""Wire codecs: exact round trips (hypothesis), Elias streams against a textbook bit-string coder,
hand-checked bit patterns, fake kernels, and CUDA == CPU byte for byte."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import commcomp
from commcomp import codecs, ops
from commcomp._reference import pack
from commcomp.quantizers import NUQSGD, QSGD, FixedLevels, QSGDInf, QuantizedTensor

torch.set_num_threads(1)

ELIAS = ["elias-gamma", "elias-delta", "elias-omega"]
CODINGS = ["fixed"] + ELIAS


# ---- A textbook Elias coder on '0'/'1' strings: the oracle for the C++ streams. ----
def gamma(v: int) -> str:
    b = bin(v)[2:]
    return "0" * (len(b) - 1) + b


def delta(v: int) -> str:
    b = bin(v)[2:]
    return gamma(len(b)) + b[1:]


def omega(v: int) -> str:
    code = "0"
    while v > 1:
        b = bin(v)[2:]
        code = b + code
        v = len(b) - 1
    return code


REF = {"gamma": gamma, "delta": delta, "omega": omega}


def ref_bucket_bits(symbols: list[int], code: str) -> str:
    f, out, run = REF[code], [], 0
    for s in symbols:
        if s == 0:
            run += 1
            continue
        out += [f(run + 1), f(s >> 1), str(s & 1)]
        run = 0
    if run:
        out.append(f(run + 1))
    return "".join(out)


def bits_to_bytes(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def random_symbols(n: int, num_levels: int, p_zero: float, gen: torch.Generator) -> torch.Tensor:
    index = torch.randint(1, num_levels, (n,), generator=gen)
    sign = torch.randint(0, 2, (n,), generator=gen)
    zero = torch.rand(n, generator=gen) < p_zero
    return torch.where(zero, torch.zeros_like(index), (index << 1) | sign)


def test_textbook_codes_hand_checked():
    assert [gamma(v) for v in (1, 2, 5)] == ["1", "010", "00101"]
    assert [delta(v) for v in (1, 2, 17)] == ["1", "0100", "001010001"]
    assert [omega(v) for v in (1, 2, 16)] == ["0", "100", "10100100000"]


@pytest.mark.parametrize("code", ["gamma", "delta", "omega"])
def test_hand_checked_bucket(code):
    # Symbols 0, 0, (index 1, +), 0, (index 2, -), 0, 0: runs 2 and 1 before the nonzeros, 2 after.
    symbols = torch.tensor([0, 0, 2, 0, 5, 0, 0])
    expected = {
        "gamma": "011" "1" "0" "010" "010" "1" "011",
        "delta": "0101" "1" "0" "0100" "0100" "1" "0101",
        "omega": "110" "0" "0" "100" "100" "1" "110",
    }[code]
    lengths, stream = ops.elias_encode(pack(symbols, 3), 4, 7, 7, code)
    assert lengths.tolist() == [math.ceil(len(expected) / 8)]
    assert bytes(stream.tolist()) == bits_to_bytes(expected)


@pytest.mark.parametrize("code", ["gamma", "delta", "omega"])
@pytest.mark.parametrize("width,bucket_size,n", [(2, 1, 9), (3, 7, 100), (4, 33, 500), (8, 512, 1100), (5, 9, 0)])
def test_elias_stream_equals_textbook_coder(code, width, bucket_size, n):
    gen = torch.Generator().manual_seed(width * 1000 + n)
    num_levels = 2 ** (width - 1)
    for p_zero in (0.0, 0.5, 0.97):
        symbols = random_symbols(n, num_levels, p_zero, gen)
        lengths, stream = ops.elias_encode(pack(symbols, width), num_levels, bucket_size, n, code)
        expected, sizes = b"", []
        for b in range(0, n, bucket_size):
            chunk = bits_to_bytes(ref_bucket_bits(symbols[b : b + bucket_size].tolist(), code))
            expected += chunk
            sizes.append(len(chunk))
        assert lengths.tolist() == sizes
        assert bytes(stream.tolist()) == expected
        decoded = ops.elias_decode(lengths, stream, num_levels, bucket_size, n, code)
        assert torch.equal(decoded, pack(symbols, width))


@st.composite
def quantizers(draw):
    kind = draw(st.sampled_from(["qsgd", "qsgdinf", "nuqsgd", "table"]))
    bits = draw(st.integers(2, 8))
    bucket = draw(st.sampled_from([1, 2, 3, 7, 8, 31, 64, 100, 512]))
    if kind == "table":  # e.g. fitted by ALQ: any count up to 2^(bits-1), any spacing
        count = draw(st.integers(2, 2 ** (bits - 1)))
        inner = draw(st.sets(st.integers(1, 999), min_size=count - 2, max_size=count - 2))
        levels = [0.0, *(v / 1000 for v in sorted(inner)), 1.0]
        return FixedLevels(levels, bucket_size=bucket, norm=draw(st.sampled_from(["l2", "linf"])))
    return {"qsgd": QSGD, "qsgdinf": QSGDInf, "nuqsgd": NUQSGD}[kind](bits=bits, bucket_size=bucket)


# Once per CPU kernel path: the fixture only sets COMMCOMP_CPU_PATH, the same for every example.
@pytest.mark.usefixtures("cpu_path")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    quantizer=quantizers(),
    n=st.integers(0, 1500),
    sparsity=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
    scale=st.sampled_from([1e-3, 1.0, 1e4]),
    coding=st.sampled_from(CODINGS),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    seed=st.integers(0, 2**40),
)
def test_round_trip_is_exact(quantizer, n, sparsity, scale, coding, dtype, seed):
    gen = torch.Generator().manual_seed(seed % 2**31)
    x = torch.randn(n, generator=gen) * scale
    x[torch.rand(n, generator=gen) < sparsity] = 0
    x = x.to(dtype)
    q = quantizer.quantize(x, seed=seed)
    payload = codecs.encode(q, coding)
    assert payload.dtype == torch.uint8 and payload.dim() == 1
    back = codecs.decode(payload, quantizer, numel=n)
    assert (back.numel, back.bucket_size, back.levels, back.dtype) == (q.numel, q.bucket_size, q.levels, q.dtype)
    assert torch.equal(back.norms, q.norms)
    assert torch.equal(back.symbols, q.symbols)
    # Canonical: what decodes re-encodes to the same bytes.
    assert torch.equal(codecs.encode(back, coding), payload)
    x_hat = codecs.decode_tensor(payload, quantizer)
    assert x_hat.dtype == dtype
    assert torch.equal(x_hat, quantizer.dequantize(q))
    # The header announces exactly what the payload holds.
    h = codecs.read_header(payload)
    assert (h.coding, h.numel, h.bits, h.bucket_size) == (coding, n, quantizer.bits, quantizer.bucket_size)
    assert h.payload_bytes == payload.numel()


@pytest.mark.usefixtures("cpu_path")
def test_decode_without_expected_reconstructs_levels():
    for quantizer in (QSGD(bits=3, bucket_size=64), NUQSGD(bits=5, bucket_size=64),
                      FixedLevels([0.0, 0.1, 0.35, 1.0], bucket_size=64)):
        x = torch.randn(1000)
        payload = codecs.encode_tensor(x, quantizer, seed=4, coding="elias-delta")
        back = codecs.decode(payload)
        assert back.levels == quantizer.levels
        assert torch.equal(codecs.decode_tensor(payload), quantizer.dequantize(quantizer.quantize(x, seed=4)))


def test_section_sizes_and_level_kinds():
    x = torch.randn(1000)
    for quantizer, kind, table in ((QSGD(bits=4, bucket_size=100), "uniform", 0),
                                   (NUQSGD(bits=4, bucket_size=100), "exponential", 0),
                                   (FixedLevels([0.0, 0.2, 1.0], bucket_size=100), "table", 12)):
        payload = codecs.encode_tensor(x, quantizer, coding="fixed")
        h = codecs.read_header(payload)
        assert h.levels_kind == kind
        # header + table + 10 norms + 1000 symbols at `bits` bits
        assert payload.numel() == 36 + table + 40 + ops.packed_bytes(1000, quantizer.bits)


def test_elias_beats_fixed_on_sparse_input():
    quantizer = QSGD(bits=4, bucket_size=512)
    x = torch.randn(20_000)
    x[torch.rand(20_000) < 0.95] = 0
    fixed = codecs.encode_tensor(x, quantizer, coding="fixed").numel()
    for coding in ELIAS:
        assert codecs.encode_tensor(x, quantizer, coding=coding).numel() < fixed / 3


def test_encode_rejects_bad_arguments():
    quantizer = QSGD(bits=3, bucket_size=8)
    q = quantizer.quantize(torch.randn(20))
    with pytest.raises(ValueError, match="coding"):
        codecs.encode(q, "huffman")
    with pytest.raises(ValueError, match="QuantizedTensor"):
        codecs.encode(q.symbols)
    with pytest.raises(ValueError, match="q.symbols"):
        codecs.encode(QuantizedTensor(q.norms, q.symbols[:-1], q.numel, 8, q.levels, q.dtype))
    with pytest.raises(ValueError, match="q.norms"):
        codecs.encode(QuantizedTensor(q.norms[:1], q.symbols, q.numel, 8, q.levels, q.dtype))
    with pytest.raises(ValueError, match="q.dtype"):
        codecs.encode(QuantizedTensor(q.norms, q.symbols, q.numel, 8, q.levels, torch.int32))
    # A zero with its sign bit set has no Elias code.
    signed_zero = pack(torch.tensor([0, 1, 2]), 3)
    bad = QuantizedTensor(torch.ones(1), signed_zero, 3, 8, q.levels, torch.float32)
    assert codecs.decode(codecs.encode(bad, "fixed")).symbols.equal(signed_zero)
    with pytest.raises(ValueError, match="cannot be Elias coded"):
        codecs.encode(bad, "elias-gamma")


def test_ops_reject_bad_arguments():
    packed = pack(torch.tensor([0, 2, 4, 0]), 3)
    with pytest.raises(ValueError, match="num_levels"):
        ops.elias_encode(packed, 1, 4, 4)
    with pytest.raises(ValueError, match="bucket_size"):
        ops.elias_encode(packed, 4, 0, 4)
    with pytest.raises(ValueError, match="code must be"):
        ops.elias_encode(packed, 4, 4, 4, 7)
    with pytest.raises(ValueError, match="code must be one of"):
        ops.elias_encode(packed, 4, 4, 4, "rice")
    with pytest.raises(ValueError, match="packed must hold"):
        ops.elias_encode(packed, 4, 4, 6)
    with pytest.raises(ValueError, match="index is >= num_levels"):
        ops.elias_encode(pack(torch.tensor([0, 2, 6, 0]), 3), 3, 4, 4)  # index 3 of 3 levels
    lengths, stream = ops.elias_encode(packed, 4, 4, 4)
    with pytest.raises(ValueError, match="int64"):
        ops.elias_decode(lengths.int(), stream, 4, 4, 4)
    with pytest.raises(ValueError, match="one entry per bucket"):
        ops.elias_decode(lengths, stream, 4, 2, 4)


def test_fake_kernels_trace():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    packed = pack(torch.tensor([0, 2, 4, 0, 6, 0, 0]), 3)
    lengths, stream = ops.elias_encode(packed, 4, 3, 7)
    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        fl, fs = ops.elias_encode(mode.from_tensor(packed), 4, 3, 7)
        assert fl.shape == (3,) and fl.dtype == torch.int64 and fs.dtype == torch.uint8
        assert isinstance(fs.shape[0], torch.SymInt)  # data-dependent size
        out = ops.elias_decode(mode.from_tensor(lengths), mode.from_tensor(stream), 4, 3, 7)
        assert out.shape == packed.shape and out.dtype == torch.uint8


def test_opcheck_decode():
    packed = pack(random_symbols(300, 8, 0.5, torch.Generator().manual_seed(0)), 4)
    lengths, stream = ops.elias_encode(packed, 8, 37, 300, "omega")
    torch.library.opcheck(torch.ops.commcomp.elias_decode.default, (lengths, stream, 8, 37, 300, 2))


@pytest.mark.gpu
@pytest.mark.parametrize("coding", CODINGS)
def test_cuda_matches_cpu(coding):
    for quantizer in (QSGD(bits=2, bucket_size=7), NUQSGD(bits=4, bucket_size=512), QSGD(bits=8, bucket_size=100)):
        x = torch.randn(100_003)
        x[torch.rand(100_003) < 0.5] = 0
        q = quantizer.quantize(x, seed=5)
        q_cuda = QuantizedTensor(q.norms.cuda(), q.symbols.cuda(), q.numel, q.bucket_size, q.levels, q.dtype)
        payload = codecs.encode(q, coding)
        payload_cuda = codecs.encode(q_cuda, coding)
        assert payload_cuda.is_cuda and torch.equal(payload_cuda.cpu(), payload)
        back = codecs.decode(payload_cuda, quantizer)
        assert back.symbols.is_cuda and torch.equal(back.symbols.cpu(), q.symbols)
        broken = payload_cuda.clone()
        broken[-1] ^= 0x5A
        try:
            codecs.decode(broken, quantizer)
        except ValueError:
            pass
        else:  # a flipped last byte may still decode; then it must re-encode identically
            assert torch.equal(codecs.encode(codecs.decode(broken, quantizer), coding).cpu(), broken.cpu())


@pytest.mark.usefixtures("cpu_path")
def test_tensor_codec_round_trip_and_rejects_garbage():
    from commcomp.codecs import TensorCodec

    q = commcomp.NUQSGD(4, 128)
    codec = TensorCodec(q, coding="elias-delta", seed=3)
    x = torch.randn(1000)
    first, second = codec.encode(x), codec.encode(x)
    assert codec.offset == 2 and not torch.equal(first, second)  # a fresh Philox offset per call
    assert torch.equal(codec.decode(first, 1000), q.dequantize(q.quantize(x, seed=3, offset=0), torch.float32))
    with pytest.raises(ValueError, match="malformed payload"):
        codec.decode(torch.randint(0, 256, (64,), dtype=torch.uint8), 1000)
    with pytest.raises(ValueError, match="1000"):
        codec.decode(first, 999)
    with pytest.raises(ValueError, match="coding must be one of"):
        TensorCodec(q, coding="zip")


@pytest.mark.parametrize("coding", ELIAS)
def test_fallback_to_fixed_never_costs_more_than_fixed_width(coding):
    q = NUQSGD(4, 256)
    dense = q.quantize(torch.randn(4096) * torch.rand(4096), seed=1)  # many distinct levels: Elias loses
    sparse_x = torch.randn(4096)
    sparse_x[torch.rand(4096) < 0.9] = 0
    sparse = q.quantize(sparse_x, seed=1)  # long zero runs: Elias wins
    for qt in (dense, sparse):
        fixed = codecs.encode(qt, "fixed")
        chosen = codecs.encode(qt, coding, fallback_to_fixed=True)
        assert chosen.numel() <= fixed.numel()
        assert codecs.read_header(chosen).coding == ("fixed" if codecs.encode(qt, coding).numel() >= fixed.numel() else coding)
        decoded = codecs.decode(chosen, numel=4096)
        assert torch.equal(decoded.symbols, qt.symbols) and torch.equal(decoded.norms, qt.norms)
    assert codecs.read_header(codecs.encode(sparse, coding, fallback_to_fixed=True)).coding == coding
    fixed = codecs.encode(dense, "fixed")
    out = torch.zeros(fixed.numel() + 10, dtype=torch.uint8)
    assert codecs.encode_into(dense, out, "fixed") == fixed.numel() and torch.equal(out[: fixed.numel()], fixed)
    with pytest.raises(ValueError, match="at least"):
        codecs.encode_into(dense, out[:10], "fixed")
