// CPU stand-in for <cuda_fp16.h> (tests/cuda_emulation): the __half storage type and its exact
// conversions, bit for bit as CUDA's (round to nearest even; NaN to float keeps its payload).
#pragma once

#include <stdint.h>

#include "commcomp_emu/device.h"

namespace commcomp_emu {

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu;
  uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1Fu) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalize
    exponent = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
  }
  return __builtin_bit_cast(float, bits);
}

// q + 1 when the `shift` low bits of `value` dropped from it round it up (nearest, ties to even).
inline uint32_t round_shifted(uint32_t value, int shift) {
  const uint32_t q = value >> shift;
  const uint32_t rest = value & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  return q + static_cast<uint32_t>(rest > half || (rest == half && (q & 1u)));
}

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = __builtin_bit_cast(uint32_t, f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return 0x7FFFu;  // NaN: CUDA's canonical half NaN
  if (magnitude >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520: inf
  const uint32_t exponent = magnitude >> 23;
  if (exponent >= 113) {  // normal half: drop 13 mantissa bits (a carry may bump the exponent)
    return static_cast<uint16_t>(sign | round_shifted(magnitude - (112u << 23), 13));
  }
  const int shift = 126 - static_cast<int>(exponent);  // subnormal half: units of 2^-24
  if (shift > 24) return static_cast<uint16_t>(sign);  // below 2^-25 (or exactly it): zero
  return static_cast<uint16_t>(sign | round_shifted((magnitude & 0x7FFFFFu) | 0x800000u, shift));
}

}  // namespace commcomp_emu

struct __half_raw {
  unsigned short x;
};

struct __half {
  unsigned short __x;
  __half() = default;
  constexpr __half(__half_raw raw) : __x(raw.x) {}
  __half(float f) : __x(::commcomp_emu::float_to_half_bits(f)) {}
  operator float() const { return ::commcomp_emu::half_bits_to_float(__x); }
  constexpr operator __half_raw() const { return __half_raw{__x}; }
};

inline float __half2float(__half h) { return ::commcomp_emu::half_bits_to_float(h.__x); }
inline __half __float2half(float f) { return __half_raw{::commcomp_emu::float_to_half_bits(f)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short x) { return __half_raw{x}; }
