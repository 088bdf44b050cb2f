"""No silent corruption and no crash from any input (issue 14, items 2, 4 and 5).

* Sizes: every op, given absurd element counts, bucket sizes, widths and level counts (2^60, 2^62,
  INT64_MAX, negative), raises ValueError naming the argument, through the C++ checks
  (torch.ops.commcomp.*) and through the typed wrappers (commcomp.ops.*); the raw Elias ops no
  longer segfault or corrupt the heap on numel >= 2^60 (checked in a child process).
* Smaller holes: NaN levels, non-contiguous payloads, fp16 dequantization to inf, non-finite norms
  at encode time, non-finite given norms, seeds outside int64.
* The fuzz corpus: valid, canonical payloads of every coding and level kind.
"""
from __future__ import annotations

import math
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

from commcomp import NUQSGD, QSGD, FixedLevels, Levels, codecs, ops
from commcomp.quantizers import QuantizedTensor, saturating_cast

C = torch.ops.commcomp
INT64_MAX = 2**63 - 1
CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"

# ---- Item 2: sizes from user integers ------------------------------------------------------------


def test_the_crashes_of_the_issue_are_value_errors():
    # The exact calls of issue 14 (run in a child: before the fix, encode segfaulted and decode
    # wrote past an 8-byte buffer). 2^61 + 8 symbols of 8 bits: numel * width wraps to 64 bits.
    script = textwrap.dedent(
        """
        import torch, commcomp
        C = torch.ops.commcomp
        n, bs = 2**61 + 8, 2**40
        buckets = -(-n // bs)
        def gamma(v):
            b = bin(v)[2:]
            return "0" * (len(b) - 1) + b
        def to_bytes(bits):
            bits += "0" * (-len(bits) % 8)
            return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
        full, last = to_bytes(gamma(bs + 1)), to_bytes(gamma(n - (buckets - 1) * bs + 1))
        stream = torch.frombuffer(bytearray(full * (buckets - 1) + last), dtype=torch.uint8)
        lengths = torch.tensor([len(full)] * (buckets - 1) + [len(last)], dtype=torch.int64)
        calls = [
            lambda: C.elias_encode(torch.zeros(8, dtype=torch.uint8), 128, bs, n, 0),
            lambda: C.elias_encode(torch.zeros(8, dtype=torch.uint8), 8, bs, 2**62 + 16, 0),
            lambda: C.elias_decode(lengths, stream, 128, bs, n, 0),
        ]
        for call in calls:
            try:
                call()
                print("accepted")
            except ValueError as err:
                print("ValueError:", str(err).splitlines()[0])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"child died with {done.returncode}: {done.stderr[-2000:]}"
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("ValueError: numel must be at most 2^48") for line in lines), lines


ABSURD_COUNTS = [2**48 + 1, 2**60, 2**61 + 8, 2**62, 2**62 + 16, INT64_MAX]
ABSURD_BUCKETS = [0, -1, 2**40 + 1, 2**60, 2**62, INT64_MAX]


def _byte(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.uint8)


LEVELS = torch.tensor([0.0, 0.5, 1.0])
# (op name, call(value) through torch.ops with the other arguments valid, argument named)
RAW_NUMEL_CALLS = [
    ("dequantize", lambda n: C.dequantize(torch.ones(1), _byte(8), LEVELS, 2**40, n)),
    ("unpack_symbols", lambda n: C.unpack_symbols(_byte(8), 8, n)),
    ("elias_encode", lambda n: C.elias_encode(_byte(8), 128, 2**40, n, 0)),
    ("elias_decode", lambda n: C.elias_decode(torch.ones(1, dtype=torch.int64), _byte(1), 128, 2**40, n, 0)),
]
RAW_BUCKET_CALLS = [
    ("bucket_norms", lambda b: C.bucket_norms(torch.randn(10), b, "l2")),
    ("quantize", lambda b: C.quantize(torch.randn(10), LEVELS, b, "l2", 0, 0, None, False)),
    ("dequantize", lambda b: C.dequantize(torch.ones(1), _byte(4), LEVELS, b, 10)),
    ("dequantize_accumulate", lambda b: C.dequantize_accumulate(torch.zeros(10), [torch.ones(1)], [_byte(4)], LEVELS, b, 1.0)),
    ("elias_encode", lambda b: C.elias_encode(_byte(4), 3, b, 10, 0)),
    ("elias_decode", lambda b: C.elias_decode(torch.ones(1, dtype=torch.int64), _byte(1), 3, b, 10, 0)),
    ("level_stats", lambda b: C.level_stats(torch.randn(10), torch.ones(1), b, 16)),
]


@pytest.mark.parametrize("value", [-1, -(2**62), *ABSURD_COUNTS])
@pytest.mark.parametrize("name,call", RAW_NUMEL_CALLS, ids=[c[0] for c in RAW_NUMEL_CALLS])
def test_raw_ops_refuse_absurd_element_counts(name, call, value):
    with pytest.raises(ValueError, match="numel must be"):
        call(value)


@pytest.mark.parametrize("value", ABSURD_BUCKETS)
@pytest.mark.parametrize("name,call", RAW_BUCKET_CALLS, ids=[c[0] for c in RAW_BUCKET_CALLS])
def test_raw_ops_refuse_absurd_bucket_sizes(name, call, value):
    with pytest.raises(ValueError, match="bucket_size must be positive and at most 2\\^40"):
        call(value)


@pytest.mark.parametrize("value", [0, -1, 9, 2**62, INT64_MAX])
def test_raw_ops_refuse_absurd_widths(value):
    with pytest.raises(ValueError, match="width must be in"):
        C.pack_symbols(_byte(8), value)
    with pytest.raises(ValueError, match="width must be in"):
        C.unpack_symbols(_byte(8), value, 8)


@pytest.mark.parametrize("value", [-1, 0, 1, 129, 2**62, INT64_MAX])
def test_raw_ops_refuse_absurd_level_counts(value):
    with pytest.raises(ValueError, match="num_levels must be in"):
        C.elias_encode(_byte(8), value, 4, 8, 0)
    with pytest.raises(ValueError, match="num_levels must be in"):
        C.elias_decode(torch.ones(2, dtype=torch.int64), _byte(2), value, 4, 8, 0)


def test_raw_payload_ops_refuse_bad_limits():
    p = codecs.encode_tensor(torch.randn(10), QSGD(3, 4))
    for args, match in (((-1, -1, -1), "max_numel"), ((100, -2, -1), "numel"), ((100, -1, -5), "bucket_size")):
        with pytest.raises(ValueError, match=match):
            C.decode_payload(p, *args, None)


WRAPPER_CALLS = [
    ("bucket_size", lambda v: ops.bucket_norms(torch.randn(10), v)),
    ("bucket_size", lambda v: ops.quantize(torch.randn(10), LEVELS, v)),
    ("seed", lambda v: ops.quantize(torch.randn(10), LEVELS, 4, seed=v)),
    ("offset", lambda v: ops.quantize(torch.randn(10), LEVELS, 4, offset=v)),
    ("numel", lambda v: ops.dequantize(torch.ones(1), _byte(8), LEVELS, 4, v)),
    ("width", lambda v: ops.pack_symbols(_byte(8), v)),
    ("numel", lambda v: ops.unpack_symbols(_byte(8), 8, v)),
    ("num_levels", lambda v: ops.elias_encode(_byte(8), v, 4, 8)),
    ("numel", lambda v: ops.elias_decode(torch.ones(1, dtype=torch.int64), _byte(1), 4, 4, v)),
    ("bucket_size", lambda v: ops.level_stats(torch.randn(10), v)),
    ("seed", lambda v: QSGD(4, 8).quantize(torch.randn(10), seed=v)),
    ("seed", lambda v: codecs.encode_tensor(torch.randn(10), NUQSGD(4, 8), seed=v)),
]


@pytest.mark.parametrize("value", [-1, 2**63, 2**64 + 5, -(2**70), 1.5, "3", None])
@pytest.mark.parametrize("name,call", WRAPPER_CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(WRAPPER_CALLS)])
def test_wrappers_name_out_of_range_ints(name, call, value):
    # seed=2**63 used to fail inside torch's schema with "Expected int, found type int".
    with pytest.raises(ValueError, match=f"{name} must be"):
        call(value)


def test_seeds_up_to_int64_max_work():
    q = QSGD(4, 8)
    x = torch.randn(10)
    a = q.quantize(x, seed=INT64_MAX, offset=INT64_MAX)
    assert torch.equal(a.symbols, q.quantize(x, seed=INT64_MAX, offset=INT64_MAX).symbols)


def test_quantizer_and_decode_arguments():
    with pytest.raises(ValueError, match="bucket_size must be a positive int at most 2\\^40"):
        QSGD(4, 2**41)
    p = codecs.encode_tensor(torch.randn(10), QSGD(3, 4))
    for kwargs, match in ((dict(numel=-1), "numel must be"), (dict(numel=2**64), "numel must be"),
                          (dict(max_numel=-1), "max_numel must be"), (dict(max_numel="x"), "max_numel must be")):
        with pytest.raises(ValueError, match=match):
            codecs.decode(p, **kwargs)
    assert codecs.decode(p, max_numel=2**100).numel == 10  # any cap above the payload's count


def test_dequantize_accumulate_refuses_non_finite_scale():
    q = QSGD(4, 8)
    p = q.quantize(torch.randn(10))
    for scale in (math.inf, math.nan):
        with pytest.raises(ValueError, match="scale must be finite"):
            ops.dequantize_accumulate(torch.zeros(10), [p.norms], [p.symbols], q.levels.tensor(), 8, scale)


# ---- Item 4: smaller holes -------------------------------------------------------------------------


def _table_payload(values: tuple[float, ...]) -> torch.Tensor:
    """A fixed payload of 8 zeros whose embedded table is ``values`` (CRC matching it)."""
    table = struct.pack(f"<{len(values)}f", *values)
    width = ops.symbol_width(len(values))
    header = codecs._HEADER.pack(codecs.MAGIC, 1, 0, 3, len(values), width, 1, 0, 0, 8, 8, width, zlib.crc32(table))
    return torch.frombuffer(bytearray(header + table + struct.pack("<f", 1.0) + bytes(width)), dtype=torch.uint8)


def test_nan_levels_are_refused_everywhere():
    with pytest.raises(ValueError, match="levels must not be NaN"):
        Levels((0.0, math.nan, 1.0))
    with pytest.raises(ValueError, match="levels must not be NaN"):
        ops.quantize(torch.randn(10), torch.tensor([0.0, math.nan, 1.0]), 4)
    assert codecs.decode(_table_payload((0.0, 0.3, 1.0))).levels.values[1] == pytest.approx(0.3)
    with pytest.raises(ValueError, match="^malformed payload: level table is invalid: levels must not be NaN"):
        codecs.decode(_table_payload((0.0, math.nan, 1.0)))


def test_negative_zero_is_one_spelling_of_zero():
    # Levels((-0.0, ...)) used to encode a CRC of -0.0 under the "uniform" kind: its own payload
    # was refused. It now is the uniform table; an embedded -0.0 is a second spelling, refused.
    levels = Levels((-0.0, 1.0))
    assert levels == Levels.uniform(2) and math.copysign(1.0, levels.values[0]) == 1.0
    q = FixedLevels(levels, bucket_size=4)
    x = torch.randn(9)
    assert torch.equal(codecs.decode_tensor(codecs.encode_tensor(x, q, seed=2), q), q.dequantize(q.quantize(x, seed=2)))
    with pytest.raises(ValueError, match="^malformed payload: level table is invalid: levels must start at 0"):
        codecs.decode(_table_payload((-0.0, 0.3, 1.0)))


@pytest.mark.parametrize("coding", list(codecs.CODINGS))
def test_strided_views_of_a_payload_decode(coding):
    x = torch.randn(300)
    x[::3] = 0
    q = NUQSGD(4, 32)
    payload = codecs.encode_tensor(x, q, seed=4, coding=coding)
    spread = torch.zeros(2 * payload.numel(), dtype=torch.uint8)
    spread[::2] = payload
    view = spread[::2]
    assert not view.is_contiguous()
    got = codecs.decode(view, q)
    want = codecs.decode(payload, q)
    assert torch.equal(got.symbols, want.symbols) and torch.equal(got.norms, want.norms)
    assert codecs.read_header(view) == codecs.read_header(payload)


@pytest.mark.parametrize("quantizer", [QSGD(4, 512), NUQSGD(2, 512), NUQSGD(4, 512)], ids=repr)
def test_fp16_decodes_saturate_instead_of_overflowing(quantizer):
    # Every input is finite in fp16, but the bucket's L2 norm (60000 * sqrt(512)) is not: a
    # coordinate rounded up to the first nonzero level is worth ~2e5, past fp16's 65504.
    x = torch.full((512,), 60000.0, dtype=torch.float16)
    x[::2] = -60000.0
    big = torch.finfo(torch.float16).max
    for seed in range(5):
        q = quantizer.quantize(x, seed=seed)
        wide = quantizer.dequantize(q, torch.float32)
        out = quantizer.dequantize(q)
        assert out.dtype == torch.float16 and bool(torch.isfinite(out).all())
        assert torch.equal(out, wide.clamp(-big, big).half())
        decoded = codecs.decode_tensor(codecs.encode(q, "elias-gamma"), quantizer)
        assert torch.equal(decoded, out)
    assert bool((wide.abs() > big).any())  # the case is real: fp32 values beyond fp16's range


def test_saturating_cast_keeps_nan_and_exact_values():
    x = torch.tensor([math.nan, 3.4e38, -3.4e38, 1.5, 0.0])
    half = saturating_cast(x, torch.float16)
    assert math.isnan(half[0]) and half[1:].tolist() == [65504.0, -65504.0, 1.5, 0.0]
    assert saturating_cast(x, torch.bfloat16)[1].item() == torch.finfo(torch.bfloat16).max
    assert saturating_cast(x, torch.float32) is x


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_encode_refuses_norms_no_decoder_accepts(value):
    q = QSGD(3, 4).quantize(torch.randn(10), seed=1)
    norms = q.norms.clone()
    norms[1] = value
    bad = QuantizedTensor(norms, q.symbols, q.numel, q.bucket_size, q.levels, q.dtype)
    for coding in codecs.CODINGS:
        with pytest.raises(ValueError, match="q.norms must be finite and >= 0, got .* for bucket 1"):
            codecs.encode(bad, coding)


def test_encode_of_an_allowed_nonfinite_quantization():
    # The hooks quantize with allow_nonfinite=True and send the payload behind a non-finite marker
    # without a device sync: encode must not look; the decoder still refuses such a payload.
    x = torch.randn(20)
    x[5] = math.inf
    q = QSGD(3, 8).quantize(x, allow_nonfinite=True)
    assert q.allow_nonfinite and not math.isfinite(q.norms[0])
    payload = codecs.encode(q)
    with pytest.raises(ValueError, match="malformed payload: norms must be finite"):
        codecs.decode(payload)


def test_given_norms_must_be_finite():
    x = torch.randn(20)
    levels = QSGD(3).levels.tensor()
    own = ops.bucket_norms(x, 8)
    for value in (math.inf, math.nan):
        given = own.clone()
        given[2] = value
        with pytest.raises(ValueError, match=f"norms must be finite, got {value} for bucket 2"):
            ops.quantize(x, levels, 8, norms=given)
    with pytest.raises(ValueError, match="norms must be >= each bucket's own norm"):
        ops.quantize(x, levels, 8, norms=own / 2)


# ---- The named level families: one definition in C++ and Python --------------------------------


@pytest.mark.parametrize("kind", ["uniform", "exponential"])
def test_named_level_tables_agree_with_the_wire_decoder(kind):
    for count in range(2, 129):
        levels = Levels.uniform(count) if kind == "uniform" else Levels.exponential(count)
        payload = codecs.encode(FixedLevels(levels, bucket_size=4).quantize(torch.randn(6), seed=count))
        header, values, _, _ = ops.decode_payload(payload, 100)
        assert tuple(values.tolist()) == levels.values, count


def test_uniform_levels_are_correctly_rounded():
    from fractions import Fraction

    import numpy as np

    for count in (4, 8, 16, 64, 128):
        for j, v in enumerate(Levels.uniform(count).values):
            exact = Fraction(j, count - 1)
            f = np.float32(v)
            for neighbour in (np.nextafter(f, np.float32(2)), np.nextafter(f, np.float32(-1))):
                assert abs(Fraction(float(f)) - exact) <= abs(Fraction(float(neighbour)) - exact)


def test_payload_ops_opcheck():
    payload = codecs.encode_tensor(torch.randn(50), NUQSGD(4, 16), seed=1, coding="elias-delta")
    torch.library.opcheck(C.read_payload_header.default, (payload,))
    torch.library.opcheck(C.decode_payload.default, (payload, 1000, 50, 16, NUQSGD(4, 16).levels.tensor()))
    fixed = codecs.encode_tensor(torch.randn(50), FixedLevels([0.0, 0.2, 0.5, 0.7, 1.0], 16), coding="fixed")
    torch.library.opcheck(C.decode_payload.default, (fixed, 1000, -1, -1, None))


# ---- Item 5: the fuzz corpus ------------------------------------------------------------------------


def test_fuzz_corpus_holds_valid_canonical_payloads_of_every_kind():
    files = sorted(CORPUS.glob("*.bin"))
    seen = set()
    for path in files:
        payload = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        h = codecs.read_header(payload)
        q = codecs.decode(payload, max_numel=1 << 20)  # the harnesses' cap
        assert torch.equal(codecs.encode(q, h.coding), payload), path.name  # type: ignore[arg-type]
        seen.add((h.coding, h.levels_kind))
        seen.add(h.dtype)
    assert len(files) >= 12
    assert {(c, k) for c in codecs.CODINGS for k in ("uniform", "exponential", "table")} <= seen
    assert {torch.float32, torch.float16, torch.bfloat16} <= seen
