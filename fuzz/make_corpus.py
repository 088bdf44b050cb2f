"""Writes the seed corpus of both fuzz harnesses: valid payloads of every coding, level kind and
dtype, small enough for ``-max_len=4096``.

    python fuzz/make_corpus.py fuzz/corpus

The libFuzzer harness (fuzz/payload_fuzzer.cpp) and the atheris one (fuzz/fuzz_decode.py) read
these bytes as they are: what ``commcomp.codecs.decode`` takes. tests/test_fuzz_corpus.py checks
that every file is a valid, canonical payload.
"""
from __future__ import annotations

import os
import sys

import torch

from commcomp import NUQSGD, QSGD, FixedLevels, QSGDInf, codecs


def seed_payloads() -> dict[str, bytes]:
    """Name -> payload bytes of every seed."""
    gen = torch.Generator().manual_seed(0)
    seeds: dict[str, bytes] = {}

    def add(name: str, quantizer, n: int, dtype: torch.dtype = torch.float32, codings=tuple(codecs.CODINGS)) -> None:
        for coding in codings:
            x = torch.randn(n, generator=gen)
            x[torch.rand(n, generator=gen) < 0.4] = 0
            payload = codecs.encode_tensor(x.to(dtype), quantizer, seed=n, coding=coding)
            seeds[f"{name}-{coding}.bin"] = payload.numpy().tobytes()

    add("qsgd2", QSGD(bits=2, bucket_size=7), 100)  # uniform levels, 2 of them
    add("nuqsgd4", NUQSGD(bits=4, bucket_size=32), 100)  # exponential levels
    add("table", FixedLevels([0.0, 0.1, 0.4, 1.0], bucket_size=9), 100)  # embedded table
    add("qsgd4", QSGD(bits=4, bucket_size=64), 200, codings=("fixed", "elias-delta"))  # 8 uniform levels
    add("qsgdinf3-fp16", QSGDInf(bits=3, bucket_size=16), 60, torch.float16, ("fixed", "elias-omega"))
    add("nuqsgd3-bf16", NUQSGD(bits=3, bucket_size=10), 60, torch.bfloat16, ("fixed", "elias-gamma"))
    add("table5", FixedLevels([0.0, 0.2, 0.3, 0.7, 1.0], bucket_size=5), 40, codings=("fixed", "elias-gamma"))  # odd count
    add("qsgd8", QSGD(bits=8, bucket_size=3), 20, codings=("fixed", "elias-omega"))  # 128 levels, 8-bit symbols
    add("empty", QSGD(bits=3, bucket_size=4), 0, codings=("fixed", "elias-gamma"))
    return seeds


def write_seed_corpus(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, payload in seed_payloads().items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(payload)


if __name__ == "__main__":
    write_seed_corpus(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus"))
