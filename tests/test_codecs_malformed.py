"""Decoding untrusted payloads: every malformed case raises ValueError with a clear message, and a
fuzz loop feeds >= 100,000 rejected payloads through the decoder (accepted mutations must
re-encode to the identical bytes: the format is canonical)."""
from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
import torch

from commcomp import codecs
from commcomp._reference import pack
from commcomp.quantizers import NUQSGD, QSGD, FixedLevels

torch.set_num_threads(1)

HEADER = codecs._HEADER
H = codecs.HEADER_BYTES
# Header field positions in codecs._HEADER.
MAGIC, VERSION, CODING, KIND, LEVELS, BITS, DTYPE, LENGTH_BYTES, RESERVED, BUCKET, NUMEL, STREAM, CRC = range(13)


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def split(payload: torch.Tensor) -> tuple[list, bytes, bytes, list[int], bytes]:
    """(header fields, level table, norms, bucket lengths, stream) of a valid payload."""
    raw = bytes(payload.tolist())
    h = codecs.read_header(payload)
    fields = list(HEADER.unpack(raw[:H]))
    table, norms, lengths, _ = h.section_sizes()
    at = H
    tbl, at = raw[at : at + table], at + table
    nrm, at = raw[at : at + norms], at + norms
    lens = [int.from_bytes(raw[at + i : at + i + h.length_bytes], "little") for i in range(0, lengths, max(1, h.length_bytes))]
    return fields, tbl, nrm, lens, raw[at + lengths :]


def assemble(fields, table, norms, lengths, stream, fix_stream_bytes=True) -> torch.Tensor:
    fields = list(fields)
    if fix_stream_bytes:
        fields[STREAM] = len(stream)
    lb = fields[LENGTH_BYTES]
    body = b"".join(v.to_bytes(lb, "little") for v in lengths) if lb else b""
    return as_tensor(HEADER.pack(*fields) + table + norms + body + stream)


def bits_to_bytes(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


@pytest.fixture(scope="module")
def elias_payload() -> torch.Tensor:
    x = torch.randn(40)
    x[::3] = 0
    return codecs.encode_tensor(x, QSGD(bits=3, bucket_size=16), seed=1, coding="elias-gamma")


@pytest.fixture(scope="module")
def fixed_payload() -> torch.Tensor:
    return codecs.encode_tensor(torch.randn(21), QSGD(bits=3, bucket_size=16), seed=1, coding="fixed")


def rejects(payload: torch.Tensor, match: str, **kwargs) -> None:
    with pytest.raises(ValueError, match=match):
        codecs.decode(payload, **kwargs)


def test_every_truncation_and_extension_is_rejected(elias_payload, fixed_payload):
    for payload in (elias_payload, fixed_payload):
        for cut in range(payload.numel()):
            with pytest.raises(ValueError, match="truncated|shorter than|cannot hold"):
                codecs.decode(payload[:cut].clone())
        rejects(torch.cat([payload, torch.zeros(1, dtype=torch.uint8)]), "oversized")


@pytest.mark.parametrize(
    "field,value,match",
    [
        (MAGIC, b"XXXX", "bad magic"),
        (VERSION, 2, "unsupported format version 2"),
        (CODING, 9, "unknown coding id 9"),
        (KIND, 7, "unknown levels kind 7"),
        (LEVELS, 1, "level count 1"),
        (LEVELS, 200, "level count 200"),
        (BITS, 5, "bits=5 disagrees"),
        (DTYPE, 77, "unknown dtype code"),
        (LENGTH_BYTES, 3, "length field of 3 bytes"),
        (LENGTH_BYTES, 0, "length field of 0 bytes"),
        (RESERVED, 1, "reserved byte"),
        (BUCKET, 0, "bucket size 0"),
        (CRC, 12345, "CRC mismatch"),
    ],
)
def test_bad_header_fields(elias_payload, field, value, match):
    fields, table, norms, lengths, stream = split(elias_payload)
    fields[field] = value
    rejects(assemble(fields, table, norms, lengths, stream), match)


def test_header_size_disagreements(elias_payload, fixed_payload):
    fields, table, norms, lengths, stream = split(elias_payload)
    fields[NUMEL] += 16  # one more bucket announced than present
    rejects(assemble(fields, table, norms, lengths, stream), "truncated")
    fields, table, norms, lengths, stream = split(fixed_payload)
    fields[NUMEL] = 24  # 24 * 3 bits = 9 bytes, the stream has 8
    rejects(assemble(fields, table, norms, lengths, stream), "cannot hold 24 symbols")
    rejects(fixed_payload, "holds 21 elements, expected 20", numel=20)


def test_huge_element_counts_are_refused_before_allocating():
    # A few bytes announcing 2^40 zeros in buckets of 2^32 - 1: a legitimate Elias form, refused
    # by the cap; a fixed payload announcing 2^63 elements cannot match its size.
    big = 2**40
    buckets = -(-big // (2**32 - 1))
    fields = [codecs.MAGIC, 1, 1, 1, 2, 2, 1, 4, 0, 2**32 - 1, big, 0, 0]
    table = b""
    fields[CRC] = __import__("zlib").crc32(struct.pack("<2f", 0.0, 1.0))
    payload = assemble(fields, table, bytes(4 * buckets), [0] * buckets, b"")
    rejects(payload, "above max_numel")
    fields = [codecs.MAGIC, 1, 0, 1, 2, 2, 1, 0, 0, 1, 2**63, 7, fields[CRC]]
    rejects(assemble(fields, b"", b"", [], bytes(7)), "cannot hold")


def test_expected_quantizer_mismatch(elias_payload):
    rejects(elias_payload, "level table differs", expected=NUQSGD(bits=3, bucket_size=16))
    rejects(elias_payload, "bucket size 16 differs", expected=QSGD(bits=3, bucket_size=32))
    rejects(elias_payload, "level table differs", expected=QSGD(bits=4, bucket_size=16))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_bad_norms(elias_payload, value):
    fields, table, norms, lengths, stream = split(elias_payload)
    norms = struct.pack("<f", value) + norms[4:]
    rejects(assemble(fields, table, norms, lengths, stream), "norms must be finite and >= 0")


def test_bucket_lengths_disagreeing_with_stream(elias_payload):
    fields, table, norms, lengths, stream = split(elias_payload)
    rejects(assemble(fields, table, norms, [lengths[0] + 1] + lengths[1:], stream), "sum to")
    rejects(assemble(fields, table, norms, [len(stream) + 1] + lengths[1:], stream), r"must lie in \[0")
    shifted = [lengths[0] + 1, lengths[1] - 1] + lengths[2:]  # same total, misplaced boundary
    rejects(assemble(fields, table, norms, shifted, stream), "bucket 0")
    fields[LENGTH_BYTES] = 4  # valid width, but 16-bit lengths fit: not what the encoder writes
    rejects(assemble(fields, table, norms, lengths, stream), "non-canonical")


def one_bucket(bits: str, numel: int = 4, levels: int = 4, coding: int = 1) -> torch.Tensor:
    """A single-bucket Elias payload of `numel` elements with the given code bits."""
    stream = bits_to_bytes(bits)
    width = max(1, (levels - 1).bit_length()) + 1
    crc = __import__("zlib").crc32(struct.pack(f"<{levels}f", *QSGD(bits=width, bucket_size=1).levels.values))
    fields = [codecs.MAGIC, 1, coding, 1, levels, width, 1, 2, 0, numel, numel, 0, crc]
    return assemble(fields, b"", struct.pack("<f", 1.0), [len(stream)], stream)


def test_stream_errors_name_the_problem():
    # Sanity: a well-formed bucket decodes — run 1, index 1, +, run 0, index 2, -, final run of 1.
    ok = one_bucket("010" "1" "0" "1" "010" "1" "010")
    assert codecs.decode(ok).symbols.tolist() == pack(torch.tensor([0, 2, 5, 0]), 3).tolist()
    rejects(one_bucket("00110"), "run of zeros reaches past the end")  # run of 5 in 4 elements
    rejects(one_bucket("1" "00100" "0"), "level index is out of range")  # index 4 of 4 levels
    rejects(one_bucket("0" * 70 + "1" + "0" * 70), "longer than 64 bits")
    rejects(one_bucket("1" "1"), "truncated")  # sign bit missing
    rejects(one_bucket("00101" "00000000"), "bytes left")  # run of 4, then a spare byte
    rejects(one_bucket("00101" "1"), "padding bits")
    rejects(one_bucket("0000001000001" + "1" * 80, coding=2), "longer than 64 bits")  # delta, 65-bit length
    # Omega groups grow 1 -> 3 -> 15 -> ...: refused as soon as the value passes what fits.
    rejects(one_bucket("1" * 120, coding=3), "past the end")


def test_fixed_stream_errors():
    # 21 symbols of 3 bits = 63 bits: the last bit of the last byte is padding.
    x = torch.randn(21)
    payload = codecs.encode_tensor(x, QSGD(bits=3, bucket_size=16), coding="fixed")
    bad = payload.clone()
    bad[-1] |= 0x80
    rejects(bad, "padding bits")
    # Three levels leave index 3 unused: a symbol naming it is refused.
    quantizer = FixedLevels([0.0, 0.5, 1.0], bucket_size=8)
    fields, table, norms, _, stream = split(codecs.encode_tensor(torch.randn(8), quantizer, coding="fixed"))
    rejects(assemble(fields, table, norms, [], pack(torch.tensor([6] + [0] * 7), 3).numpy().tobytes()),
            "names level index 3")


def test_bad_level_tables():
    quantizer = FixedLevels([0.0, 0.2, 0.5, 1.0], bucket_size=8)
    fields, table, norms, lengths, stream = split(codecs.encode_tensor(torch.randn(8), quantizer, coding="fixed"))
    rejects(assemble(fields, struct.pack("<4f", 0.0, 0.5, 0.25, 1.0), norms, lengths, stream), "level table is invalid")
    # A table equal to the uniform family must travel as "uniform": one form per payload.
    uniform = struct.pack("<4f", *QSGD(bits=3).levels.values)
    fields[CRC] = __import__("zlib").crc32(uniform)
    rejects(assemble(fields, uniform, norms, lengths, stream), "non-canonical")


def test_not_a_payload():
    with pytest.raises(ValueError, match="1-D uint8"):
        codecs.decode(torch.zeros(40, dtype=torch.int32))
    with pytest.raises(ValueError, match="1-D uint8"):
        codecs.decode(torch.zeros(4, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="torch.Tensor"):
        codecs.decode(b"CCQW")
    gen = torch.Generator().manual_seed(3)
    for n in range(0, 200, 7):
        with pytest.raises(ValueError, match="malformed payload"):
            codecs.decode(torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen))


# ---- Fuzzing ------------------------------------------------------------------------------------

def _seed_payloads() -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    seeds = []
    for quantizer in (QSGD(bits=2, bucket_size=7), NUQSGD(bits=4, bucket_size=32), QSGD(bits=8, bucket_size=5),
                      FixedLevels([0.0, 0.1, 0.4, 1.0], bucket_size=9)):
        for coding in codecs.CODINGS:
            for n in (0, 1, 13, 64, 300):
                x = torch.randn(n, generator=gen)
                x[torch.rand(n, generator=gen) < 0.4] = 0
                seeds.append(codecs.encode_tensor(x, quantizer, seed=n, coding=coding).numpy().copy())
    return seeds


def _mutate(rng: np.random.Generator, seeds: list[np.ndarray]) -> np.ndarray:
    p = seeds[rng.integers(len(seeds))].copy()
    op = rng.integers(9)
    if op >= 7 and p.size > H:  # flip bits in the last third: mostly the symbol stream
        for _ in range(rng.integers(1, 3)):
            i = rng.integers(p.size - (p.size - H) // 3 - 1, p.size)
            p[i] ^= np.uint8(1 << rng.integers(8))
    elif op == 0 and p.size:  # flip a few bits anywhere
        for _ in range(rng.integers(1, 4)):
            i = rng.integers(p.size)
            p[i] ^= np.uint8(1 << rng.integers(8))
    elif op == 1 and p.size > H:  # overwrite body bytes
        idx = rng.integers(H, p.size, size=rng.integers(1, 4))
        p[idx] = rng.integers(0, 256, size=idx.size, dtype=np.uint8)
    elif op == 2:  # truncate
        p = p[: rng.integers(p.size + 1)]
    elif op == 3:  # extend
        p = np.concatenate([p, rng.integers(0, 256, size=rng.integers(1, 9), dtype=np.uint8)])
    elif op == 4:  # a valid header, then random bytes
        p = np.concatenate([p[:H], rng.integers(0, 256, size=rng.integers(0, 80), dtype=np.uint8)])
    elif op == 5:  # a header field set to an arbitrary value
        fields = list(HEADER.unpack(p[:H].tobytes()))
        k = int(rng.integers(1, len(fields)))
        fields[k] = int(rng.integers(0, 256 if k < BUCKET else 2**31))
        if rng.random() < 0.5 and k == NUMEL:
            fields[k] = int(rng.integers(0, 2**63))
        p = np.concatenate([np.frombuffer(HEADER.pack(*fields), dtype=np.uint8), p[H:]])
    else:  # pure random bytes
        p = rng.integers(0, 256, size=rng.integers(0, 120), dtype=np.uint8)
    return p


def _fuzz(rejections_wanted: int, seed: int, time_limit: float) -> tuple[int, int, float]:
    rng = np.random.default_rng(seed)
    seeds = _seed_payloads()
    rejected = accepted = 0
    start = time.perf_counter()
    while rejected < rejections_wanted:
        p = _mutate(rng, seeds)
        payload = torch.from_numpy(p)
        try:
            q = codecs.decode(payload, max_numel=1 << 16)
        except ValueError:
            rejected += 1
            continue
        accepted += 1
        coding = codecs.read_header(payload).coding
        again = codecs.encode(q, coding)  # type: ignore[arg-type]
        assert torch.equal(again, payload), f"accepted payload is not canonical: {p.tobytes().hex()}"
        assert time.perf_counter() - start < time_limit, "fuzz loop too slow"
    return rejected, accepted, time.perf_counter() - start


def test_fuzz_100k_malformed_payloads():
    wanted = int(os.environ.get("COMMCOMP_FUZZ_REJECTIONS", "100000"))
    # ~15 s on an idle 2-core CI machine; the generous limit only catches a hang or a pathological
    # slowdown, not a busy machine.
    rejected, accepted, seconds = _fuzz(wanted, seed=1234, time_limit=120.0)
    print(f"fuzz: {rejected} rejected, {accepted} accepted (canonical) in {seconds:.1f} s")
    assert rejected >= wanted
    assert accepted > 100  # the mutations also reach the accepting path (e.g. norm bytes)
