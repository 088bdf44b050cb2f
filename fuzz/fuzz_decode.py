"""Coverage-guided fuzzing of commcomp.codecs.decode with atheris (pip install atheris).

Every input is a payload; decode must either raise ValueError or return a QuantizedTensor that
re-encodes to the identical bytes. Anything else (another exception, a crash, a hang, an
out-of-memory) is a bug. Seeds the corpus with valid payloads of every coding.

    python fuzz/fuzz_decode.py -atheris_runs=2000000 -max_len=4096 -timeout=10 -rss_limit_mb=2048 fuzz/corpus

The C++ decoder alone is faster to fuzz with libFuzzer: see fuzz/elias_fuzzer.cpp.
"""
import os
import sys

import atheris

with atheris.instrument_imports():
    import torch

    from commcomp import NUQSGD, QSGD, FixedLevels, codecs

torch.set_num_threads(1)


def write_seed_corpus(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for quantizer in (QSGD(bits=2, bucket_size=7), NUQSGD(bits=4, bucket_size=32),
                      FixedLevels([0.0, 0.1, 0.4, 1.0], bucket_size=9)):
        for coding in codecs.CODINGS:
            x = torch.randn(100, generator=gen)
            x[torch.rand(100, generator=gen) < 0.4] = 0
            payload = codecs.encode_tensor(x, quantizer, coding=coding)
            with open(os.path.join(folder, f"{quantizer.name}-{coding}"), "wb") as f:
                f.write(payload.numpy().tobytes())


def test_one_input(data: bytes) -> None:
    payload = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    try:
        q = codecs.decode(payload, max_numel=1 << 20)
    except ValueError:
        return
    again = codecs.encode(q, codecs.read_header(payload).coding)
    if not torch.equal(again, payload):
        raise AssertionError("accepted payload does not re-encode to the same bytes")


if __name__ == "__main__":
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        write_seed_corpus(corpus[0])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
