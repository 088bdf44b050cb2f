// Philox-4x32-10 counter-based RNG (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC'11). A pure function of (key, counter): any element's random number can be computed
// independently, on any device, in any order — which is what makes CPU and CUDA outputs identical
// and lets a run resume exactly from an (seed, offset) pair.
#pragma once

#include "macros.h"

namespace commcomp {

struct Philox4 {
  uint32_t v[4];
};

namespace philox_detail {
constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1

COMMCOMP_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}
}  // namespace philox_detail

// Ten rounds of Philox-4x32 on `counter` under `key` (the published reference algorithm).
COMMCOMP_HD Philox4 philox4x32_10(Philox4 counter, uint32_t key0, uint32_t key1) {
  using namespace philox_detail;
  uint32_t* c = counter.v;
COMMCOMP_UNROLL
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], hi0, lo0);
    mulhilo(kMul1, c[2], hi1, lo1);
    const uint32_t n0 = hi1 ^ c[1] ^ key0;
    const uint32_t n1 = lo1;
    const uint32_t n2 = hi0 ^ c[3] ^ key1;
    const uint32_t n3 = lo0;
    c[0] = n0;
    c[1] = n1;
    c[2] = n2;
    c[3] = n3;
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

// Top 24 bits of a 32-bit draw scaled to [0, 1): exactly representable in float, so every backend
// and the Python reference obtain the same value.
COMMCOMP_HD float uint_to_unit_float(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// Four uniforms for elements 4*group .. 4*group+3 of the stream (seed, offset). The counter holds
// (group, offset), the key holds the seed: distinct offsets give independent streams.
COMMCOMP_HD void uniforms4(uint64_t seed, uint64_t offset, uint64_t group, float out[4]) {
  Philox4 counter = {{static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                      static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32)}};
  const Philox4 r =
      philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
COMMCOMP_UNROLL
  for (int k = 0; k < 4; ++k) out[k] = uint_to_unit_float(r.v[k]);
}

}  // namespace commcomp
