// The payload an encoder writes for decoded content: the canonical-form oracle of the libFuzzer
// harness (fuzz/payload_fuzzer.cpp) and the C++ wire tests (tests/cpp/test_wire.cpp). An accepted
// payload must re-encode to its own bytes; built from the format's pieces (wire.h, elias.h) in
// codecs.encode's layout, which tests/cpp/test_wire.cpp checks on the Python-written corpus.
// Test support, not library code.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/wire.h"

namespace commcomp {

inline std::vector<uint8_t> reencode_payload(const wire::Decoded& d) {
  const wire::Header& h = d.header;
  const wire::Layout& at = d.layout;
  std::vector<uint8_t> tail;  // bucket lengths, then the stream
  wire::Header out = h;
  if (h.coding == wire::kFixed) {
    tail = d.symbols;
  } else {
    const EliasCode code = wire::elias_code_of(h.coding);
    std::vector<int64_t> lengths(static_cast<size_t>(at.buckets));
    int64_t total = 0, longest = 0;
    for (int64_t b = 0; b < at.buckets; ++b) {
      const int64_t first = b * static_cast<int64_t>(h.bucket_size);
      const int64_t last = at.numel - first < h.bucket_size ? at.numel : first + h.bucket_size;
      const int64_t bits = elias_bucket_bits(d.symbols.data(), h.bits, h.num_levels, first, last, code);
      if (bits < 0) std::abort();  // the decoder produced a symbol the encoder cannot code
      lengths[b] = (bits + 7) / 8;
      total += lengths[b];
      longest = lengths[b] > longest ? lengths[b] : longest;
    }
    out.length_bytes = longest < (int64_t{1} << 16) ? 2 : 4;
    tail.resize(static_cast<size_t>(out.length_bytes * at.buckets + total));
    uint8_t* stream = tail.data() + out.length_bytes * at.buckets;
    for (int64_t b = 0; b < at.buckets; ++b) {
      wire::store_le(static_cast<uint64_t>(lengths[b]), tail.data() + out.length_bytes * b, out.length_bytes);
      const int64_t first = b * static_cast<int64_t>(h.bucket_size);
      const int64_t last = at.numel - first < h.bucket_size ? at.numel : first + h.bucket_size;
      elias_encode_bucket(d.symbols.data(), h.bits, first, last, code, stream);
      stream += lengths[b];
    }
    out.stream_bytes = static_cast<uint64_t>(total);
  }
  out.levels_kind = static_cast<uint8_t>(wire::canonical_levels_kind(d.levels.value, d.levels.count));
  out.levels_crc = wire::levels_crc(d.levels.value, d.levels.count);
  std::vector<uint8_t> bytes(wire::kHeaderBytes);
  wire::store_header(out, bytes.data());
  if (out.levels_kind == wire::kTable) {
    const uint8_t* table = reinterpret_cast<const uint8_t*>(d.levels.value);
    bytes.insert(bytes.end(), table, table + 4 * d.levels.count);
  }
  const uint8_t* norms = reinterpret_cast<const uint8_t*>(d.norms.data());
  bytes.insert(bytes.end(), norms, norms + 4 * d.norms.size());
  bytes.insert(bytes.end(), tail.begin(), tail.end());
  return bytes;
}

}  // namespace commcomp
