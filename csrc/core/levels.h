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

// Fills inv_width from value (count entries); shared by every backend so all round it alike.
COMMCOMP_HD void fill_inverse_widths(LevelTable& table) {
  for (int j = 0; j + 1 < table.count; ++j) {
    table.inv_width[j] = fdiv_rn(1.0f, fsub_rn(table.value[j + 1], table.value[j]));
  }
}

}  // namespace commcomp
