// Quantization level tables. A table is sorted, starts at 0 and ends at 1; quantized magnitudes
// are level values times the bucket norm. Uniform tables give QSGD, exponential ones NUQSGD, and
// fitted ones ALQ/AMQ — the kernels only ever see the table.
#pragma once

#include "macros.h"

namespace commcomp {

constexpr int kMaxLevels = 128;  // 7 index bits + 1 sign bit = one byte per symbol at most

// Passed by value to kernels (fits in CUDA's kernel-parameter space).
struct LevelTable {
  float value[kMaxLevels];
  float inv_width[kMaxLevels];  // 1 / (value[j+1] - value[j]) in float32: a multiply, not a divide, per coordinate
  int count;       // number of levels, 2..kMaxLevels
  int index_bits;  // ceil(log2(count))
};

// Bits needed for a level index: ceil(log2(count)), at least 1.
COMMCOMP_HD int index_bits_for(int count) {
  int bits = 1;
  while ((1 << bits) < count) ++bits;
  return bits;
}

// Fixed symbol width on the wire: index bits plus one sign bit.
COMMCOMP_HD int symbol_width_for(int count) { return index_bits_for(count) + 1; }

// Largest j in [0, count-2] with value[j] <= r: the left end of the interval holding r.
// r is expected in [0, 1]; NaN lands in interval 0, never out of bounds. Small tables (up to 4
// bits) count the interior levels <= r: independent comparisons, no dependent loads or branches to
// mispredict on random gradients (the trip count is fixed per table, so its branch predicts).
// Larger tables use a binary search.
constexpr int kLinearSearchMaxLevels = 16;

COMMCOMP_HD int find_interval(const float* value, int count, float r) {
  if (count <= kLinearSearchMaxLevels) {
    int j = 0;
    for (int k = 1; k < count - 1; ++k) j += static_cast<int>(value[k] <= r);
    return j;
  }
  int lo = 0;
  int len = count - 1;  // candidates lo .. lo + len - 1
  while (len > 1) {
    const int half = len >> 1;
    lo = value[lo + half] <= r ? lo + half : lo;
    len -= half;
  }
  return lo;
}

// Why a table of level values is not a level table (level_values_status).
enum class LevelsStatus : int {
  Ok = 0,
  BadCount = 1,       // fewer than 2 or more than kMaxLevels entries
  NotANumber = 2,     // some value is NaN
  BadEnds = 3,        // the first value is not +0 or the last is not 1
  NotIncreasing = 4,  // value[at] <= value[at - 1]
};

COMMCOMP_HD bool is_plus_zero(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v) == 0u;
#else
  uint32_t bits = 0;
  __builtin_memcpy(&bits, &v, sizeof bits);
  return bits == 0u;
#endif
}

// Checks that value[0..count) is a level table: 2..kMaxLevels entries, no NaN, starting at +0
// (-0 would be a second spelling of the same table) and ending at 1, strictly increasing. On
// failure `at` is the offending index. Shared by the op argument checks and the wire decoder.
COMMCOMP_HD LevelsStatus level_values_status(const float* value, int64_t count, int& at) {
  at = 0;
  if (count < 2 || count > kMaxLevels) return LevelsStatus::BadCount;
  for (int j = 0; j < count; ++j) {
    if (value[j] != value[j]) {
      at = j;
      return LevelsStatus::NotANumber;
    }
  }
  if (!is_plus_zero(value[0]) || value[count - 1] != 1.0f) return LevelsStatus::BadEnds;
  for (int j = 1; j < count; ++j) {
    if (!(value[j] > value[j - 1])) {
      at = j;
      return LevelsStatus::NotIncreasing;
    }
  }
  return LevelsStatus::Ok;
}

// The named level families, defined here once (commcomp.quantizers.Levels computes the same
// float32 values):
//   uniform (QSGD):         value[j] = float32(j) / float32(count - 1), correctly rounded;
//   exponential (NUQSGD):   0, 2^-(count-2), ..., 1/4, 1/2, 1 (exact powers of two).
COMMCOMP_HD void uniform_level_values(int count, float* value) {
  for (int j = 0; j < count; ++j) {
    value[j] = fdiv_rn(static_cast<float>(j), static_cast<float>(count - 1));
  }
}

COMMCOMP_HD void exponential_level_values(int count, float* value) {
  float v = 1.0f;
  for (int j = count - 1; j >= 1; --j) {
    value[j] = v;
    v = fmul_rn(v, 0.5f);
  }
  value[0] = 0.0f;
}

// Fills inv_width from value (count entries); shared by every backend so all round it alike.
COMMCOMP_HD void fill_inverse_widths(LevelTable& table) {
  for (int j = 0; j + 1 < table.count; ++j) {
    table.inv_width[j] = fdiv_rn(1.0f, fsub_rn(table.value[j + 1], table.value[j]));
  }
}

}  // namespace commcomp
