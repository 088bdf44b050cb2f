// libFuzzer harness of the wire decoder: every input is a payload, the bytes commcomp.codecs.decode
// takes (header, level table, norms, bucket lengths, stream), run through the checks of
// csrc/core/wire.h that decode_payload runs, with the element cap of the atheris harness
// (max_numel = 2^20). On any input the decoder must return a verdict without reading outside the
// payload or writing outside its output (ASan), without undefined behaviour (UBSan), and:
//   * an accepted payload re-encodes to the identical bytes (the format is canonical);
//   * the table fast path (the CPU op's) and the plain bit reader (the CUDA kernels') give the
//     same verdict, message and symbols.
//
//   clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
//       -I csrc -I fuzz fuzz/payload_fuzzer.cpp -o payload_fuzzer
//   cp -r fuzz/corpus /tmp/corpus && ./payload_fuzzer -max_total_time=60 -max_len=4096 /tmp/corpus
//
// fuzz/corpus holds valid payloads of every coding and level kind (fuzz/make_corpus.py).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/wire.h"
#include "reencode.h"

using namespace commcomp;

namespace {

constexpr int64_t kFuzzMaxNumel = int64_t{1} << 20;  // as fuzz/fuzz_decode.py

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // An exactly sized heap copy of the payload: any read outside it is an ASan report.
  const std::vector<uint8_t> payload(data, data + size);
  wire::Expect expect;
  expect.max_numel = kFuzzMaxNumel;
  wire::Decoded fast, plain;
  wire::Error fast_error, plain_error;
  const int64_t n = static_cast<int64_t>(size);
  const bool ok = wire::decode_payload_serial(payload.data(), n, expect, fast, fast_error, true);
  const bool ok_plain = wire::decode_payload_serial(payload.data(), n, expect, plain, plain_error, false);
  if (ok != ok_plain || std::strcmp(fast_error.message, plain_error.message) != 0) std::abort();
  if (!ok) {
    if (fast_error.message[0] == '\0') std::abort();  // every rejection says why
    return 0;
  }
  if (fast.symbols != plain.symbols) std::abort();
  if (reencode_payload(fast) != payload) std::abort();
  return 0;
}
