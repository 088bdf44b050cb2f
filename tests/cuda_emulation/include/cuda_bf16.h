// CPU stand-in for <cuda_bf16.h> (tests/cuda_emulation): the __nv_bfloat16 storage type and its
// exact conversions, bit for bit as CUDA's (round to nearest even; canonical NaN from float).
#pragma once

#include <stdint.h>

#include "commcomp_emu/device.h"
#include "cuda_fp16.h"

namespace commcomp_emu {

inline float bfloat16_bits_to_float(uint16_t b) {
  return __builtin_bit_cast(float, static_cast<uint32_t>(b) << 16);
}

inline uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t x = __builtin_bit_cast(uint32_t, f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FFFu;  // NaN
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace commcomp_emu

struct __nv_bfloat16_raw {
  unsigned short x;
};

struct __nv_bfloat16 {
  unsigned short __x;
  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(__nv_bfloat16_raw raw) : __x(raw.x) {}
  __nv_bfloat16(float f) : __x(::commcomp_emu::float_to_bfloat16_bits(f)) {}
  operator float() const { return ::commcomp_emu::bfloat16_bits_to_float(__x); }
  constexpr operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};

inline float __bfloat162float(__nv_bfloat16 b) {
  return ::commcomp_emu::bfloat16_bits_to_float(b.__x);
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  return __nv_bfloat16_raw{::commcomp_emu::float_to_bfloat16_bits(f)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16_raw{x}; }
