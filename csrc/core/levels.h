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
// r is expected in [0, 1]; NaN lands in interval 0, never out of bounds.
COMMCOMP_HD int find_interval(const float* value, int count, float r) {
  int lo = 0, hi = count - 2;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (value[mid] <= r) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Exact powers of two for exponential tables, computed without libm so host and device agree.
COMMCOMP_HD float exp2_neg_int(int k) {
  float v = 1.0f;
  for (int i = 0; i < k; ++i) v *= 0.5f;
  return v;
}

}  // namespace commcomp
