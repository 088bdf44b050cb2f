// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320: what zlib.crc32 computes), used by the
// wire format to fingerprint a payload's level table. Torch-free, host only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace commcomp {

struct Crc32Table {
  uint32_t entry[256];
  constexpr Crc32Table() : entry() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      entry[i] = c;
    }
  }
};

inline uint32_t crc32(const uint8_t* data, size_t size) {
  static constexpr Crc32Table table;
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table.entry[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

}  // namespace commcomp
