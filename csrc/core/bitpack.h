// Fixed-width bit packing of symbols, little-endian bit order: symbol k of the stream occupies
// bits [k*w, (k+1)*w). Eight symbols of width w fill exactly w bytes, so groups of eight are
// packed independently (one thread or loop iteration per group) with no read-modify-write.
#pragma once

#include "macros.h"
#include "sizes.h"  // packed_bytes: bytes of n symbols, overflow-free

namespace commcomp {

constexpr int kPackGroup = 8;

// Packs up to eight symbols (the rest must be zero) into the low 8*width bits.
COMMCOMP_HD uint64_t pack_group(const uint32_t* symbols, int n, int width) {
  uint64_t bits = 0;
  for (int k = 0; k < n; ++k) bits |= static_cast<uint64_t>(symbols[k]) << (k * width);
  return bits;
}

// Writes the bytes of group `group` (n symbols, n < 8 only for the final group).
COMMCOMP_HD void store_group(uint8_t* out, int64_t group, uint64_t bits, int n, int width) {
  const int nbytes = (n * width + 7) / 8;
  uint8_t* dst = out + group * width;
  for (int b = 0; b < nbytes; ++b) dst[b] = static_cast<uint8_t>(bits >> (8 * b));
}

COMMCOMP_HD uint64_t load_group(const uint8_t* in, int64_t group, int n, int width) {
  const int nbytes = (n * width + 7) / 8;
  const uint8_t* src = in + group * width;
  uint64_t bits = 0;
  for (int b = 0; b < nbytes; ++b) bits |= static_cast<uint64_t>(src[b]) << (8 * b);
  return bits;
}

COMMCOMP_HD uint32_t group_symbol(uint64_t bits, int k, int width) {
  return static_cast<uint32_t>((bits >> (k * width)) & ((1ull << width) - 1ull));
}

}  // namespace commcomp
