"""Coverage-guided fuzzing of commcomp.codecs.decode with atheris (pip install atheris).

Every input is a payload; decode must either raise ValueError or return a QuantizedTensor that
re-encodes to the identical bytes. Anything else (another exception, a crash, a hang, an
out-of-memory) is a bug. Seeds the corpus with the valid payloads of fuzz/make_corpus.py.

    python fuzz/fuzz_decode.py -atheris_runs=2000000 -max_len=4096 -timeout=10 -rss_limit_mb=2048 fuzz/corpus

The same checks in C++ alone (csrc/core/wire.h) are faster to fuzz with libFuzzer, under ASan and
UBSan: see fuzz/payload_fuzzer.cpp (CI runs it for 60 s).
"""
import sys

import atheris

with atheris.instrument_imports():
    import torch

    from commcomp import codecs

from make_corpus import write_seed_corpus  # noqa: E402  (fuzz/, the script's directory)

torch.set_num_threads(1)


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
