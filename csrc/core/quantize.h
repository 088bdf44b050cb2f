// Stochastic, unbiased rounding of one coordinate onto a level table, and its inverse.
//
// A coordinate x in a bucket with norm n has normalized magnitude r = |x| / n in [0, 1]. With r in
// [L_j, L_{j+1}], it becomes L_{j+1} with probability p = (r - L_j) / (L_{j+1} - L_j) and L_j
// otherwise, so E[L] = r and the decoded value sign(x) * n * L is unbiased. A symbol is the level
// index shifted left by one with the sign in bit 0; zero magnitudes carry sign 0.
#pragma once

#include "bitpack.h"
#include "levels.h"
#include "macros.h"
#include "philox.h"

namespace commcomp {

enum class NormKind : int { L2 = 0, LInf = 1 };

// Bucket norms reduce over 32 strided lanes, then combine the lanes as a halving tree. A CUDA warp
// does the same with shuffles, so both backends add in the same order and agree bit for bit.
constexpr int kNormLanes = 32;

// NaN and inf must survive both norms: a bucket's norm is finite exactly when the bucket is (or
// its L2 norm overflows float32), which is how callers learn to send it uncompressed. Sums
// propagate them by themselves; the L-inf max uses fmax_nan, which a plain `a > b ? a : b` is not.
COMMCOMP_HD float norm_lane_update(float acc, float x, NormKind kind) {
  return kind == NormKind::L2 ? fadd_rn(acc, fmul_rn(x, x)) : fmax_nan(acc, fabs_hd(x));
}

COMMCOMP_HD float norm_lane_combine(float a, float b, NormKind kind) {
  return kind == NormKind::L2 ? fadd_rn(a, b) : fmax_nan(a, b);
}

COMMCOMP_HD float norm_finish(float acc, NormKind kind) {
  return kind == NormKind::L2 ? fsqrt_rn(acc) : acc;
}

// Host-side tree combine of kNormLanes partials, in the order of a warp's shfl_down reduction.
COMMCOMP_HD float norm_combine_lanes(float* lanes, NormKind kind) {
  for (int stride = kNormLanes / 2; stride > 0; stride >>= 1) {
    for (int i = 0; i < stride; ++i) lanes[i] = norm_lane_combine(lanes[i], lanes[i + stride], kind);
  }
  return norm_finish(lanes[0], kind);
}

// `u` is a uniform in [0, 1) from the Philox stream of this coordinate; `inv_width` as in
// LevelTable.
COMMCOMP_HD uint32_t quantize_one(float x, float norm, const float* levels, const float* inv_width,
                                  int count, float u) {
  // A zero bucket decodes to zero; so do buckets with an inf/NaN norm, which the op refuses
  // unless asked (allow_nonfinite) to leave their detection to the caller.
  if (!(norm > 0.0f && norm <= kFloatMax)) return 0u;
  const float r = fmin_hd(fdiv_rn(fabs_hd(x), norm), 1.0f);
  const int j = find_interval(levels, count, r);
  const float p = fmul_rn(fsub_rn(r, levels[j]), inv_width[j]);
  // Bitwise, not short-circuit: these outcomes are coin flips a branch would mispredict.
  const uint32_t index = static_cast<uint32_t>(j) + static_cast<uint32_t>(u < p);
  const uint32_t sign = static_cast<uint32_t>(index != 0u) & static_cast<uint32_t>(x < 0.0f);
  return (index << 1) | sign;
}

COMMCOMP_HD uint32_t symbol_index(uint32_t symbol) { return symbol >> 1; }
COMMCOMP_HD bool symbol_negative(uint32_t symbol) { return (symbol & 1u) != 0u; }

// Decoded value; the caller has checked symbol_index(symbol) < count. The sign is applied by
// multiplying with +-1 (exact) rather than a branch on a coin-flip bit.
COMMCOMP_HD float dequantize_one(uint32_t symbol, float norm, const float* levels) {
  const float magnitude = fmul_rn(norm, levels[symbol_index(symbol)]);
  return fmul_rn(magnitude, 1.0f - 2.0f * static_cast<float>(symbol & 1u));
}

}  // namespace commcomp

namespace commcomp {

// Bucket index of increasing element indices with one division per group instead of one per
// element (a 64-bit division costs more than the rest of the per-element work).
struct BucketCursor {
  int64_t bucket, next_start, bucket_size;
  COMMCOMP_HD BucketCursor(int64_t first, int64_t size)
      : bucket(first / size), next_start((first / size + 1) * size), bucket_size(size) {}
  COMMCOMP_HD int64_t at(int64_t i) {
    while (i >= next_start) {
      ++bucket;
      next_start += bucket_size;
    }
    return bucket;
  }
};

// One packing group: quantizes elements [8*group, 8*group + n) with the uniforms u[0..n) and
// returns their packed bits. `load(i)` returns element i as float; `norms` holds one norm per
// bucket. Shared verbatim by the CPU loop and the CUDA kernel so both produce the same bytes.
template <typename Load>
COMMCOMP_HD uint64_t quantize_group_with(Load load, int64_t group, int n, const float* norms,
                                         int64_t bucket_size, const float* levels,
                                         const float* inv_width, int count, int width,
                                         const float* u) {
  uint32_t symbols[kPackGroup] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t first = group * kPackGroup;
  BucketCursor bucket(first, bucket_size);
  COMMCOMP_UNROLL
  for (int k = 0; k < kPackGroup; ++k) {
    if (k < n) {
      const int64_t i = first + k;
      symbols[k] = quantize_one(load(i), norms[bucket.at(i)], levels, inv_width, count, u[k]);
    }
  }
  return pack_group(symbols, n, width);
}

// The uniforms of packing group `group` of stream (seed, offset): elements 8*group .. 8*group+7.
COMMCOMP_HD void group_uniforms(uint64_t seed, uint64_t offset, int64_t group, float u[kPackGroup]) {
  uniforms4(seed, offset, static_cast<uint64_t>(2 * group), u);
  uniforms4(seed, offset, static_cast<uint64_t>(2 * group + 1), u + 4);
}

// Decodes one packing group, calling `emit(i, value)` per element. Returns false if a symbol
// names a level the table does not have (possible only in a corrupt or hostile payload); such
// elements are emitted as 0.
template <typename Emit>
COMMCOMP_HD bool dequantize_group(uint64_t bits, int64_t group, int n, const float* norms,
                                  int64_t bucket_size, const float* levels, int count,
                                  int width, Emit emit) {
  bool ok = true;
  const int64_t first = group * kPackGroup;
  BucketCursor bucket(first, bucket_size);
  for (int k = 0; k < n; ++k) {
    const uint32_t symbol = group_symbol(bits, k, width);
    const int64_t i = first + k;
    // A symbol naming a missing level (corrupt payload) decodes as 0 and clears `ok`.
    const bool valid = symbol_index(symbol) < static_cast<uint32_t>(count);
    ok &= valid;
    emit(i, dequantize_one(valid ? symbol : 0u, norms[bucket.at(i)], levels));
  }
  return ok;
}

// Elements in the final (possibly partial) packing group of an n-element stream.
COMMCOMP_HD int group_size(int64_t group, int64_t n) {
  const int64_t left = n - group * kPackGroup;
  return left < kPackGroup ? static_cast<int>(left) : kPackGroup;
}

COMMCOMP_HD int64_t group_count(int64_t n) { return (n + kPackGroup - 1) / kPackGroup; }

}  // namespace commcomp
