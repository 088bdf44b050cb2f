// The vector operations kernels_impl.h needs, on AVX2 (+ F16C): 8 float lanes, all-ones lanes as
// conditions, pshufb for byte compaction. Included only by avx2.cpp, after its target pragma.
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "vector_types.h"

#define COMMCOMP_SIMD_INLINE inline __attribute__((always_inline))

namespace commcomp {
namespace simd {
namespace avx2 {
namespace {

struct Avx2 {
  static constexpr int W = 8;  // float lanes
  using F = __m256;
  using I = __m256i;
  using M = __m256;   // all-ones / all-zeros lanes
  using B = __m256i;  // 4W = 32 bytes: the symbols of one chunk

  // ---- float ------------------------------------------------------------------------------
  static COMMCOMP_SIMD_INLINE F load(const float* p) { return _mm256_loadu_ps(p); }
  static COMMCOMP_SIMD_INLINE F load(const F16Bits* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static COMMCOMP_SIMD_INLINE F load(const BF16Bits* p) {
    const I wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static COMMCOMP_SIMD_INLINE void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static COMMCOMP_SIMD_INLINE F set1(float v) { return _mm256_set1_ps(v); }
  static COMMCOMP_SIMD_INLINE F add(F a, F b) { return _mm256_add_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F div(F a, F b) { return _mm256_div_ps(a, b); }
  // a < b ? a : b and a > b ? a : b, NaN in either giving b: fmin_hd / fmax_hd exactly.
  static COMMCOMP_SIMD_INLINE F min(F a, F b) { return _mm256_min_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F max(F a, F b) { return _mm256_max_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F clear_sign(F a) {
    return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)));
  }
  static COMMCOMP_SIMD_INLINE F flip_sign(F a) {
    return _mm256_xor_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(INT32_MIN)));
  }
  static COMMCOMP_SIMD_INLINE F xor_bits(F a, I bits) {
    return _mm256_xor_ps(a, _mm256_castsi256_ps(bits));
  }

  // ---- conditions -------------------------------------------------------------------------
  static COMMCOMP_SIMD_INLINE M lt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static COMMCOMP_SIMD_INLINE M le(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static COMMCOMP_SIMD_INLINE M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static COMMCOMP_SIMD_INLINE M is_nan(F a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static COMMCOMP_SIMD_INLINE M both(M a, M b) { return _mm256_and_ps(a, b); }
  static COMMCOMP_SIMD_INLINE M either(M a, M b) { return _mm256_or_ps(a, b); }
  static COMMCOMP_SIMD_INLINE bool any(M a) { return _mm256_movemask_ps(a) != 0; }
  static COMMCOMP_SIMD_INLINE F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }
  static COMMCOMP_SIMD_INLINE I select(M m, I a, I b) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m));
  }
  static COMMCOMP_SIMD_INLINE M lanes_below(int64_t k) {
    const int kk = k >= W ? W : (k > 0 ? static_cast<int>(k) : 0);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(kk), iota()));
  }

  // ---- int32 lanes ------------------------------------------------------------------------
  static COMMCOMP_SIMD_INLINE I load_i(const uint32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static COMMCOMP_SIMD_INLINE I set1_i(uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static COMMCOMP_SIMD_INLINE I iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  static COMMCOMP_SIMD_INLINE I add_i(I a, I b) { return _mm256_add_epi32(a, b); }
  static COMMCOMP_SIMD_INLINE I and_i(I a, I b) { return _mm256_and_si256(a, b); }
  static COMMCOMP_SIMD_INLINE I or_i(I a, I b) { return _mm256_or_si256(a, b); }
  static COMMCOMP_SIMD_INLINE I xor_i(I a, I b) { return _mm256_xor_si256(a, b); }
  template <int S>
  static COMMCOMP_SIMD_INLINE I shr(I a) { return _mm256_srli_epi32(a, S); }
  template <int S>
  static COMMCOMP_SIMD_INLINE I shl(I a) { return _mm256_slli_epi32(a, S); }
  static COMMCOMP_SIMD_INLINE M ne_i(I a, I b) {
    return _mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(a, b), _mm256_set1_epi32(-1)));
  }
  // Unsigned a >= b: max(a, b) == a.
  static COMMCOMP_SIMD_INLINE M ge_u(I a, I b) {
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_max_epu32(a, b), a));
  }
  static COMMCOMP_SIMD_INLINE I min_u(I a, I b) { return _mm256_min_epu32(a, b); }
  // All ones in the true lanes.
  static COMMCOMP_SIMD_INLINE I mask_to_int(M m) { return _mm256_castps_si256(m); }
  static COMMCOMP_SIMD_INLINE I increment(I a, M m) {
    return _mm256_sub_epi32(a, _mm256_castps_si256(m));  // a true lane is -1
  }
  static COMMCOMP_SIMD_INLINE F to_float(I a) { return _mm256_cvtepi32_ps(a); }
  static COMMCOMP_SIMD_INLINE I carry(I sum, I base) {
    // sum < base unsigned: base == max(sum, base) and sum != base.
    const I le = _mm256_cmpeq_epi32(_mm256_max_epu32(sum, base), base);
    const I eq = _mm256_cmpeq_epi32(sum, base);
    return _mm256_and_si256(_mm256_andnot_si256(eq, le), _mm256_set1_epi32(1));
  }

  // hi:lo = a * b per lane, with lanes 1 and 2 of each 128-bit half swapped (as on AVX-512).
  static COMMCOMP_SIMD_INLINE void mulhilo_swapped(I a, I b, I& hi, I& lo) {
    const __m256 even = _mm256_castsi256_ps(_mm256_mul_epu32(a, b));
    const __m256 odd = _mm256_castsi256_ps(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b));
    hi = _mm256_castps_si256(_mm256_shuffle_ps(even, odd, _MM_SHUFFLE(3, 1, 3, 1)));
    lo = _mm256_castps_si256(_mm256_shuffle_ps(even, odd, _MM_SHUFFLE(2, 0, 2, 0)));
  }

  // r[k] lane c holds word k of counter c, except that r[2] and r[3] have lanes 1 and 2 of each
  // 128-bit half swapped; afterwards r[q] holds elements 8q .. 8q+7: counters 2q and 2q + 1,
  // words 0..3 of each.
  static COMMCOMP_SIMD_INLINE void transpose4(I r[4]) {
    const __m256 t0 = _mm256_castsi256_ps(_mm256_unpacklo_epi32(r[0], r[1]));  // c0 d0 c1 d1
    const __m256 t1 = _mm256_castsi256_ps(_mm256_unpackhi_epi32(r[0], r[1]));  // c2 d2 c3 d3
    const __m256 u2 = _mm256_castsi256_ps(_mm256_unpacklo_epi32(r[2], r[3]));  // a0 b0 a2 b2
    const __m256 u3 = _mm256_castsi256_ps(_mm256_unpackhi_epi32(r[2], r[3]));  // a1 b1 a3 b3
    // s_m, 128-bit half L: the four words of counter 4L + m.
    const I s0 = _mm256_castps_si256(_mm256_shuffle_ps(t0, u2, _MM_SHUFFLE(1, 0, 1, 0)));
    const I s1 = _mm256_castps_si256(_mm256_shuffle_ps(t0, u3, _MM_SHUFFLE(1, 0, 3, 2)));
    const I s2 = _mm256_castps_si256(_mm256_shuffle_ps(t1, u2, _MM_SHUFFLE(3, 2, 1, 0)));
    const I s3 = _mm256_castps_si256(_mm256_shuffle_ps(t1, u3, _MM_SHUFFLE(3, 2, 3, 2)));
    r[0] = _mm256_permute2x128_si256(s0, s1, 0x20);
    r[1] = _mm256_permute2x128_si256(s2, s3, 0x20);
    r[2] = _mm256_permute2x128_si256(s0, s1, 0x31);
    r[3] = _mm256_permute2x128_si256(s2, s3, 0x31);
  }

  // ---- tables of up to 128 floats: permutes up to 16 entries, gathers beyond ---------------
  struct Table {
    F part[2];
    float entries[128];  // for gathers
    int count;
  };
  // Tables of at most kSmallTable entries take a single permute (lookup<true>).
  static constexpr int kSmallTable = 8;
  static Table make_table(const float* values, int count) {
    Table t;
    for (int k = 0; k < 16; ++k) t.entries[k] = k < count ? values[k] : 0.0f;
    for (int k = 16; k < count; ++k) t.entries[k] = values[k];  // gathers read indices < count
    t.part[0] = _mm256_loadu_ps(t.entries);
    t.part[1] = _mm256_loadu_ps(t.entries + 8);
    t.count = count;
    return t;
  }
  template <bool kSmall>
  static COMMCOMP_SIMD_INLINE F lookup(const Table& t, I idx) {
    if (kSmall || t.count <= 8) return _mm256_permutevar8x32_ps(t.part[0], idx);
    if (t.count <= 16) {
      const M high = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
      return _mm256_blendv_ps(_mm256_permutevar8x32_ps(t.part[0], idx),
                              _mm256_permutevar8x32_ps(t.part[1], idx), high);
    }
    return _mm256_i32gather_ps(t.entries, idx, 4);
  }

  // ---- symbol bytes and fixed-width packing ------------------------------------------------
  static COMMCOMP_SIMD_INLINE B to_bytes(const I s[4]) {
    const I a = _mm256_packus_epi32(s[0], s[1]);  // 16-bit: s0[0..3] s1[0..3] | s0[4..7] s1[4..7]
    const I b = _mm256_packus_epi32(s[2], s[3]);
    const I bytes = _mm256_packus_epi16(a, b);  // 4-byte groups: s0lo s1lo s2lo s3lo | s0hi ...
    return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
  }
  static COMMCOMP_SIMD_INLINE void from_bytes(B b, I s[4]) {
    const __m128i lo = _mm256_castsi256_si128(b), hi = _mm256_extracti128_si256(b, 1);
    s[0] = _mm256_cvtepu8_epi32(lo);
    s[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    s[2] = _mm256_cvtepu8_epi32(hi);
    s[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
  }
  static COMMCOMP_SIMD_INLINE B load_bytes(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static COMMCOMP_SIMD_INLINE void store_bytes(uint8_t* p, B b) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), b);
  }

  // As on AVX-512, then pshufb moves the w bytes of each 64-bit lane together within each
  // 128-bit half: 2w packed bytes per half.
  struct Packer {
    int width;
    __m128i w1, w2, w4;
    I compact, spread;
    I low_w, low_2w, low_4w;
  };
  static Packer make_packer(int width) {
    Packer p;
    p.width = width;
    p.w1 = _mm_cvtsi32_si128(width);
    p.w2 = _mm_cvtsi32_si128(2 * width);
    p.w4 = _mm_cvtsi32_si128(4 * width);
    alignas(32) uint8_t compact[32], spread[32];
    for (int j = 0; j < 32; ++j) {
      const int k = j % 16;  // position within the 128-bit half
      compact[j] = static_cast<uint8_t>(k < 2 * width ? (k / width) * 8 + k % width : 0x80);
      spread[j] = static_cast<uint8_t>(k % 8 < width ? (k / 8) * width + k % 8 : 0x80);
    }
    p.compact = _mm256_load_si256(reinterpret_cast<const __m256i*>(compact));
    p.spread = _mm256_load_si256(reinterpret_cast<const __m256i*>(spread));
    p.low_w = _mm256_set1_epi16(static_cast<short>((1u << width) - 1u));
    p.low_2w = _mm256_set1_epi32(static_cast<int>((1u << (2 * width)) - 1u));
    p.low_4w = _mm256_set1_epi64x(static_cast<long long>(width == 8 ? 0xFFFFFFFFull : (1ull << (4 * width)) - 1ull));
    return p;
  }
  // Writes the 4 * width bytes of 32 symbols at `out`, with two 16-byte stores where they stay
  // below `limit` (the second one spills up to 16 - 2w zero bytes past the chunk, which later
  // chunks overwrite), else byte by byte.
  static COMMCOMP_SIMD_INLINE void pack_store(const Packer& p, B b, uint8_t* out, const uint8_t* limit) {
    I t = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi16(0x00FF)),
                          _mm256_sll_epi16(_mm256_srli_epi16(b, 8), p.w1));
    t = _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi32(0xFFFF)),
                        _mm256_sll_epi32(_mm256_srli_epi32(t, 16), p.w2));
    t = _mm256_or_si256(_mm256_and_si256(t, _mm256_set1_epi64x(0xFFFFFFFFll)),
                        _mm256_sll_epi64(_mm256_srli_epi64(t, 32), p.w4));
    t = _mm256_shuffle_epi8(t, p.compact);
    const int half = 2 * p.width;
    if (limit - out >= half + 16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(t));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + half), _mm256_extracti128_si256(t, 1));
      return;
    }
    alignas(32) uint8_t buffer[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(buffer), t);
    for (int k = 0; k < half; ++k) out[k] = buffer[k];
    for (int k = 0; k < half; ++k) out[half + k] = buffer[16 + k];
  }
  // Reads the 4 * width bytes of 32 symbols at `in`, with two 16-byte loads where they stay below
  // `limit`, else byte by byte.
  static COMMCOMP_SIMD_INLINE B load_unpack(const Packer& p, const uint8_t* in, const uint8_t* limit) {
    const int half = 2 * p.width;
    I raw;
    if (limit - in >= half + 16) {
      raw = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(in + half),
                                reinterpret_cast<const __m128i*>(in));
    } else {
      alignas(32) uint8_t buffer[32] = {0};
      for (int k = 0; k < half; ++k) buffer[k] = in[k];
      for (int k = 0; k < half; ++k) buffer[16 + k] = in[half + k];
      raw = _mm256_load_si256(reinterpret_cast<const __m256i*>(buffer));
    }
    I t = _mm256_shuffle_epi8(raw, p.spread);
    t = _mm256_or_si256(_mm256_and_si256(t, p.low_4w),
                        _mm256_slli_epi64(_mm256_srl_epi64(t, p.w4), 32));
    t = _mm256_or_si256(_mm256_and_si256(t, p.low_2w),
                        _mm256_slli_epi32(_mm256_srl_epi32(t, p.w2), 16));
    return _mm256_or_si256(_mm256_and_si256(t, p.low_w),
                           _mm256_slli_epi16(_mm256_srl_epi16(t, p.w1), 8));
  }
};

}  // namespace
}  // namespace avx2
}  // namespace simd
}  // namespace commcomp
