// libFuzzer harness of the torch-free Elias decoder (csrc/core/elias.h). The first bytes choose
// the code, level count, element count and table use; the rest is the bucket. The decoder must
// return a status without reading outside the bucket or writing outside the output (ASan checks
// both), the table fast path must agree with the plain path, and an accepted bucket must
// re-encode to the same bytes.
//
//   clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -I csrc fuzz/elias_fuzzer.cpp -o elias_fuzzer
//   ./elias_fuzzer -max_total_time=3600 -max_len=512 fuzz/cpp_corpus
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/elias.h"
#include "core/levels.h"

using namespace commcomp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const EliasCode code = static_cast<EliasCode>(data[0] % 3);
  const int num_levels = 2 + data[1] % 127;
  const int width = symbol_width_for(num_levels);
  const int64_t count = 1 + data[2] % 200;
  // Exactly sized heap copies so ASan sees any out-of-bounds access.
  std::vector<uint8_t> bucket(data + 3, data + size);
  std::vector<uint8_t> plain(packed_bytes(count, width)), fast(plain.size());
  PackedWriter sink(plain.data()), sink_fast(fast.data());
  const EliasStatus s = elias_decode_bucket(bucket.data(), static_cast<int64_t>(bucket.size()), count,
                                            num_levels, width, code, sink);
  const DecodeTable table(code, num_levels);
  const EliasStatus s_fast = elias_decode_bucket(bucket.data(), static_cast<int64_t>(bucket.size()),
                                                 count, num_levels, width, code, sink_fast, &table);
  if (s != s_fast) std::abort();
  if (s != EliasStatus::Ok) return 0;
  sink.finish();
  sink_fast.finish();
  if (plain != fast) std::abort();
  const int64_t bits = elias_bucket_bits(plain.data(), width, num_levels, 0, count, code);
  std::vector<uint8_t> again((bits + 7) / 8);
  elias_encode_bucket(plain.data(), width, 0, count, code, again.data());
  if (again != bucket) std::abort();
  return 0;
}
