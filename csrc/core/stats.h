// Sufficient statistics for fitting adaptive (ALQ/AMQ) level tables: a weighted histogram of the
// normalized magnitudes r = |x_i| / ||bucket||.
//
// Why a histogram: the quantity ALQ/AMQ minimize is E||Q(x) - x||^2 = sum_b ||x_b||^2 *
// sum_{i in b} (L_{j+1} - r_i)(r_i - L_j). Coordinate i therefore counts with weight ||x_b||^2, and
// the levels only see the weighted distribution of r. A histogram of that distribution is additive
// (ranks and iterations combine by summing — one all_reduce), and needs no parametric assumption.
//
// Why fixed point: float atomics on a GPU add in a racy order. Each coordinate instead adds the
// integer round_down(2^32 * w_b / w_max) to its bin; integer sums are exact and order-free, so the
// CPU and CUDA histograms are bit-identical. Weights below 2^-32 * w_max vanish — such buckets
// contribute less than 2^-32 of the objective. The caller converts with bin_mass() at the end.
//
// Bins are uniform in sqrt(r): bin k covers [(k/K)^2, ((k+1)/K)^2). Normalized magnitudes of a
// d-coordinate bucket sit around 1/sqrt(d), far below 1, so bins there must be narrow; sqrt spacing
// gives width ~2 sqrt(r)/K, i.e. resolution proportional to sqrt(r) rather than a fixed 1/K.
#pragma once

#include "macros.h"

namespace commcomp {

constexpr int kMaxStatBins = 4096;     // shared-memory histogram of 8-byte counters: 32 KiB
constexpr float kStatFixedScale = 4294967296.0f;  // 2^32
constexpr double kStatFixedInv = 1.0 / 4294967296.0;

// Bin of a normalized magnitude r in [0, 1], or -1 when the coordinate carries no information:
// r == 0 (exact zeros round to level 0 with zero variance under every table) and NaN.
COMMCOMP_HD int stat_bin(float r, int bins) {
  if (!(r > 0.0f)) return -1;
  const float s = fsqrt_rn(fmin_hd(r, 1.0f));
  const int k = static_cast<int>(fmul_rn(s, static_cast<float>(bins)));
  return k < bins ? k : bins - 1;  // r == 1 lands on the upper edge of the last bin
}

// Normalized magnitude of x in a bucket of norm `norm`, clamped to 1 as in quantize_one.
COMMCOMP_HD float stat_magnitude(float x, float norm) {
  return fmin_hd(fdiv_rn(fabs_hd(x), norm), 1.0f);
}

// Fixed-point weight of every coordinate of a bucket with norm `norm`, relative to w_max, the
// largest squared finite norm of the call. Zero for empty, non-finite or negligible buckets.
COMMCOMP_HD uint64_t stat_weight(float norm, float w_max) {
  const float w = fmul_rn(norm, norm);
  // The comparisons are false for NaN, so NaN and infinite norms (and an overflowing w_max) get 0.
  if (!(norm > 0.0f) || !(w <= w_max) || !(w_max > 0.0f && w_max <= kFloatMax)) return 0ull;
  return static_cast<uint64_t>(fmul_rn(fdiv_rn(w, w_max), kStatFixedScale));
}

// Squared norm used as the fixed-point reference: the largest finite norm, squared.
COMMCOMP_HD float stat_reference_weight(float max_finite_norm) {
  return fmul_rn(max_finite_norm, max_finite_norm);
}

// Bin mass in units of squared norm: sum over its coordinates of ||x_b||^2 (up to fixed point).
COMMCOMP_HD double bin_mass(uint64_t fixed_sum, float w_max) {
  return static_cast<double>(fixed_sum) * static_cast<double>(w_max) * kStatFixedInv;
}

// Largest element count for which no bin can overflow: each coordinate adds at most 2^32.
constexpr int64_t kMaxStatElements = (int64_t{1} << 31) - 1;

}  // namespace commcomp
