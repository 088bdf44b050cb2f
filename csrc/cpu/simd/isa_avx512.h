// The vector operations kernels_impl.h needs, on AVX-512 (F, BW, VL, DQ, VBMI): 16 float lanes,
// opmask registers for conditions, vpermb for byte compaction. Included only by avx512.cpp, after
// its target pragma.
#pragma once

#include <immintrin.h>
#include <stdint.h>

#include "vector_types.h"

#define COMMCOMP_SIMD_INLINE inline __attribute__((always_inline))

namespace commcomp {
namespace simd {
namespace avx512 {
namespace {

struct Avx512 {
  static constexpr int W = 16;  // float lanes
  using F = __m512;
  using I = __m512i;
  using M = __mmask16;
  using B = __m512i;  // 4W = 64 bytes: the symbols of one chunk

  // ---- float ------------------------------------------------------------------------------
  static COMMCOMP_SIMD_INLINE F load(const float* p) { return _mm512_loadu_ps(p); }
  // F16C conversion is exact, as the scalar static_cast<float>(c10::Half).
  static COMMCOMP_SIMD_INLINE F load(const F16Bits* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  // bfloat16 is the upper half of a float32.
  static COMMCOMP_SIMD_INLINE F load(const BF16Bits* p) {
    const I wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static COMMCOMP_SIMD_INLINE void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static COMMCOMP_SIMD_INLINE F set1(float v) { return _mm512_set1_ps(v); }
  static COMMCOMP_SIMD_INLINE F add(F a, F b) { return _mm512_add_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F div(F a, F b) { return _mm512_div_ps(a, b); }
  // a < b ? a : b and a > b ? a : b, NaN in either giving b: fmin_hd / fmax_hd exactly.
  static COMMCOMP_SIMD_INLINE F min(F a, F b) { return _mm512_min_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F max(F a, F b) { return _mm512_max_ps(a, b); }
  static COMMCOMP_SIMD_INLINE F clear_sign(F a) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7FFFFFFF)));
  }
  static COMMCOMP_SIMD_INLINE F flip_sign(F a) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN)));
  }
  static COMMCOMP_SIMD_INLINE F xor_bits(F a, I bits) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), bits));
  }

  // ---- conditions -------------------------------------------------------------------------
  static COMMCOMP_SIMD_INLINE M lt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static COMMCOMP_SIMD_INLINE M le(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static COMMCOMP_SIMD_INLINE M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static COMMCOMP_SIMD_INLINE M is_nan(F a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static COMMCOMP_SIMD_INLINE M both(M a, M b) { return static_cast<M>(a & b); }
  static COMMCOMP_SIMD_INLINE M either(M a, M b) { return static_cast<M>(a | b); }
  static COMMCOMP_SIMD_INLINE bool any(M a) { return a != 0; }
  static COMMCOMP_SIMD_INLINE F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }
  static COMMCOMP_SIMD_INLINE I select(M m, I a, I b) { return _mm512_mask_blend_epi32(m, b, a); }
  static COMMCOMP_SIMD_INLINE M lanes_below(int64_t k) {
    return k >= W ? static_cast<M>(0xFFFF) : static_cast<M>((1u << (k > 0 ? k : 0)) - 1u);
  }

  // ---- int32 lanes ------------------------------------------------------------------------
  static COMMCOMP_SIMD_INLINE I load_i(const uint32_t* p) { return _mm512_loadu_si512(p); }
  static COMMCOMP_SIMD_INLINE I set1_i(uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static COMMCOMP_SIMD_INLINE I iota() {
    return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  }
  static COMMCOMP_SIMD_INLINE I add_i(I a, I b) { return _mm512_add_epi32(a, b); }
  static COMMCOMP_SIMD_INLINE I and_i(I a, I b) { return _mm512_and_si512(a, b); }
  static COMMCOMP_SIMD_INLINE I or_i(I a, I b) { return _mm512_or_si512(a, b); }
  static COMMCOMP_SIMD_INLINE I xor_i(I a, I b) { return _mm512_xor_si512(a, b); }
  template <int S>
  static COMMCOMP_SIMD_INLINE I shr(I a) { return _mm512_srli_epi32(a, S); }
  template <int S>
  static COMMCOMP_SIMD_INLINE I shl(I a) { return _mm512_slli_epi32(a, S); }
  static COMMCOMP_SIMD_INLINE M ne_i(I a, I b) { return _mm512_cmpneq_epi32_mask(a, b); }
  static COMMCOMP_SIMD_INLINE M ge_u(I a, I b) { return _mm512_cmpge_epu32_mask(a, b); }
  static COMMCOMP_SIMD_INLINE I min_u(I a, I b) { return _mm512_min_epu32(a, b); }
  // All ones in the true lanes.
  static COMMCOMP_SIMD_INLINE I mask_to_int(M m) { return _mm512_movm_epi32(m); }
  // a + 1 where m.
  static COMMCOMP_SIMD_INLINE I increment(I a, M m) {
    return _mm512_mask_add_epi32(a, m, a, _mm512_set1_epi32(1));
  }
  // Exact: the inputs are below 2^24.
  static COMMCOMP_SIMD_INLINE F to_float(I a) { return _mm512_cvtepi32_ps(a); }
  // Lane k of the result: carry out of (base + k) in 32 bits, for base + iota.
  static COMMCOMP_SIMD_INLINE I carry(I sum, I base) {
    return _mm512_maskz_set1_epi32(_mm512_cmplt_epu32_mask(sum, base), 1);
  }

  // hi:lo = a * b, 32 x 32 -> 64 bits per lane (b's low 32 bits of each 64-bit pair are used),
  // with lanes 1 and 2 of every 128-bit block swapped (shufps takes the words of both products in
  // two instructions; the swap is its own inverse, see kernels_impl.h: philox_round).
  static COMMCOMP_SIMD_INLINE void mulhilo_swapped(I a, I b, I& hi, I& lo) {
    const __m512 even = _mm512_castsi512_ps(_mm512_mul_epu32(a, b));
    const __m512 odd = _mm512_castsi512_ps(_mm512_mul_epu32(_mm512_srli_epi64(a, 32), b));
    hi = _mm512_castps_si512(_mm512_shuffle_ps(even, odd, _MM_SHUFFLE(3, 1, 3, 1)));
    lo = _mm512_castps_si512(_mm512_shuffle_ps(even, odd, _MM_SHUFFLE(2, 0, 2, 0)));
  }

  // r[k] lane c holds word k of counter c, except that r[2] and r[3] have lanes 1 and 2 of every
  // 128-bit block swapped; afterwards r[q] holds words 4q .. 4q+3 of the element order: counter
  // 4q + c/4, word c%4.
  static COMMCOMP_SIMD_INLINE void transpose4(I r[4]) {
    const __m512 t0 = _mm512_castsi512_ps(_mm512_unpacklo_epi32(r[0], r[1]));  // c0 d0 c1 d1
    const __m512 t1 = _mm512_castsi512_ps(_mm512_unpackhi_epi32(r[0], r[1]));  // c2 d2 c3 d3
    const __m512 u2 = _mm512_castsi512_ps(_mm512_unpacklo_epi32(r[2], r[3]));  // a0 b0 a2 b2
    const __m512 u3 = _mm512_castsi512_ps(_mm512_unpackhi_epi32(r[2], r[3]));  // a1 b1 a3 b3
    // s_m, 128-bit block L: the four words of counter 4L + m.
    const I s0 = _mm512_castps_si512(_mm512_shuffle_ps(t0, u2, _MM_SHUFFLE(1, 0, 1, 0)));
    const I s1 = _mm512_castps_si512(_mm512_shuffle_ps(t0, u3, _MM_SHUFFLE(1, 0, 3, 2)));
    const I s2 = _mm512_castps_si512(_mm512_shuffle_ps(t1, u2, _MM_SHUFFLE(3, 2, 1, 0)));
    const I s3 = _mm512_castps_si512(_mm512_shuffle_ps(t1, u3, _MM_SHUFFLE(3, 2, 3, 2)));
    const I a01 = _mm512_shuffle_i32x4(s0, s1, _MM_SHUFFLE(1, 0, 1, 0));
    const I a23 = _mm512_shuffle_i32x4(s2, s3, _MM_SHUFFLE(1, 0, 1, 0));
    const I b01 = _mm512_shuffle_i32x4(s0, s1, _MM_SHUFFLE(3, 2, 3, 2));
    const I b23 = _mm512_shuffle_i32x4(s2, s3, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm512_shuffle_i32x4(a01, a23, _MM_SHUFFLE(2, 0, 2, 0));
    r[1] = _mm512_shuffle_i32x4(a01, a23, _MM_SHUFFLE(3, 1, 3, 1));
    r[2] = _mm512_shuffle_i32x4(b01, b23, _MM_SHUFFLE(2, 0, 2, 0));
    r[3] = _mm512_shuffle_i32x4(b01, b23, _MM_SHUFFLE(3, 1, 3, 1));
  }

  // ---- tables of up to 128 floats looked up by lane index ---------------------------------
  struct Table {
    F part[8];  // 16 entries each
    int parts;
  };
  // Tables of at most kSmallTable entries take a single permute (lookup<true>).
  static constexpr int kSmallTable = 16;
  static Table make_table(const float* values, int count) {
    Table t;
    t.parts = (count + 15) / 16;
    // Lookups select among parts by index bits; parts past the table (never selected) are zero.
    const int loaded = t.parts <= 2 ? t.parts : t.parts <= 4 ? 4 : 8;
    for (int p = 0; p < 8; ++p) {
      const int left = count - 16 * p;
      const __mmask16 valid = left >= 16 ? 0xFFFF : left > 0 ? static_cast<__mmask16>((1u << left) - 1u) : 0;
      t.part[p] = p < loaded ? _mm512_maskz_loadu_ps(valid, values + 16 * p) : _mm512_setzero_ps();
    }
    return t;
  }
  // idx < 16 * parts (< 16 if kSmall).
  template <bool kSmall>
  static COMMCOMP_SIMD_INLINE F lookup(const Table& t, I idx) {
    if (kSmall || t.parts == 1) return _mm512_permutexvar_ps(idx, t.part[0]);
    const F low = _mm512_permutex2var_ps(t.part[0], idx, t.part[1]);
    if (t.parts == 2) return low;
    const M bit5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
    const F mid = _mm512_mask_blend_ps(bit5, low, _mm512_permutex2var_ps(t.part[2], idx, t.part[3]));
    if (t.parts <= 4) return mid;
    const F high = _mm512_mask_blend_ps(
        bit5, _mm512_permutex2var_ps(t.part[4], idx, t.part[5]),
        _mm512_permutex2var_ps(t.part[6], idx, t.part[7]));
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(64)), mid, high);
  }

  // ---- symbol bytes and fixed-width packing ------------------------------------------------
  static COMMCOMP_SIMD_INLINE B to_bytes(const I s[4]) {
    B b = _mm512_castsi128_si512(_mm512_cvtepi32_epi8(s[0]));
    b = _mm512_inserti32x4(b, _mm512_cvtepi32_epi8(s[1]), 1);
    b = _mm512_inserti32x4(b, _mm512_cvtepi32_epi8(s[2]), 2);
    return _mm512_inserti32x4(b, _mm512_cvtepi32_epi8(s[3]), 3);
  }
  static COMMCOMP_SIMD_INLINE void from_bytes(B b, I s[4]) {
    s[0] = _mm512_cvtepu8_epi32(_mm512_castsi512_si128(b));
    s[1] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(b, 1));
    s[2] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(b, 2));
    s[3] = _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(b, 3));
  }
  static COMMCOMP_SIMD_INLINE B load_bytes(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static COMMCOMP_SIMD_INLINE void store_bytes(uint8_t* p, B b) { _mm512_storeu_si512(p, b); }

  // Eight w-bit symbols, one per byte of a 64-bit lane, become the lane's low 8w bits: pairs of
  // bytes, then of 16-bit and of 32-bit halves, each time shifting the upper one down onto the
  // lower one's end. Then vpermb moves each lane's w bytes next to the previous lane's.
  struct Packer {
    int width;
    __m128i w1, w2, w4;   // shift counts w, 2w, 4w
    B compact, spread;    // vpermb indices
    __mmask64 packed_mask, spread_mask;
    I low_w, low_2w, low_4w;  // masks of the low w (per 16 bits), 2w (per 32), 4w (per 64) bits
  };
  static Packer make_packer(int width) {
    Packer p;
    p.width = width;
    p.w1 = _mm_cvtsi32_si128(width);
    p.w2 = _mm_cvtsi32_si128(2 * width);
    p.w4 = _mm_cvtsi32_si128(4 * width);
    alignas(64) uint8_t compact[64], spread[64];
    uint64_t spread_mask = 0;
    for (int j = 0; j < 64; ++j) {
      compact[j] = static_cast<uint8_t>(j < 8 * width ? (j / width) * 8 + j % width : 0);
      const int lane = j / 8, k = j % 8;
      spread[j] = static_cast<uint8_t>(k < width ? lane * width + k : 0);
      if (k < width) spread_mask |= 1ull << j;
    }
    p.compact = _mm512_load_si512(compact);
    p.spread = _mm512_load_si512(spread);
    p.packed_mask = width == 8 ? ~0ull : (1ull << (8 * width)) - 1ull;
    p.spread_mask = spread_mask;
    p.low_w = _mm512_set1_epi16(static_cast<short>((1u << width) - 1u));
    p.low_2w = _mm512_set1_epi32(static_cast<int>((1u << (2 * width)) - 1u));
    p.low_4w = _mm512_set1_epi64(static_cast<long long>(width == 8 ? 0xFFFFFFFFull : (1ull << (4 * width)) - 1ull));
    return p;
  }
  // Writes exactly the 8 * width bytes of 64 symbols (masked: nothing at or past `limit`).
  static COMMCOMP_SIMD_INLINE void pack_store(const Packer& p, B b, uint8_t* out, const uint8_t* /*limit*/) {
    I t = _mm512_or_si512(_mm512_and_si512(b, _mm512_set1_epi16(0x00FF)),
                          _mm512_sll_epi16(_mm512_srli_epi16(b, 8), p.w1));
    t = _mm512_or_si512(_mm512_and_si512(t, _mm512_set1_epi32(0xFFFF)),
                        _mm512_sll_epi32(_mm512_srli_epi32(t, 16), p.w2));
    t = _mm512_or_si512(_mm512_and_si512(t, _mm512_set1_epi64(0xFFFFFFFFll)),
                        _mm512_sll_epi64(_mm512_srli_epi64(t, 32), p.w4));
    _mm512_mask_storeu_epi8(out, p.packed_mask, _mm512_permutexvar_epi8(p.compact, t));
  }
  // Reads exactly the 8 * width bytes of 64 symbols.
  static COMMCOMP_SIMD_INLINE B load_unpack(const Packer& p, const uint8_t* in, const uint8_t* /*limit*/) {
    const B raw = _mm512_maskz_loadu_epi8(p.packed_mask, in);
    I t = _mm512_maskz_permutexvar_epi8(p.spread_mask, p.spread, raw);
    t = _mm512_or_si512(_mm512_and_si512(t, p.low_4w),
                        _mm512_slli_epi64(_mm512_srl_epi64(t, p.w4), 32));
    t = _mm512_or_si512(_mm512_and_si512(t, p.low_2w),
                        _mm512_slli_epi32(_mm512_srl_epi32(t, p.w2), 16));
    return _mm512_or_si512(_mm512_and_si512(t, p.low_w),
                           _mm512_slli_epi16(_mm512_srl_epi16(t, p.w1), 8));
  }
};

}  // namespace
}  // namespace avx512
}  // namespace simd
}  // namespace commcomp
