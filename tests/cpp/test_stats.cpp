// Checks of csrc/core/stats.h against hand-computed values. Build and run:
//   g++ -std=c++17 -ffp-contract=off -I csrc tests/cpp/test_stats.cpp -o test_stats && ./test_stats
#include <cmath>
#include <cstdio>

#include "core/stats.h"

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  if (!ok) {
    std::printf("FAIL: %s\n", what);
    ++failures;
  }
}

void test_bins() {
  using commcomp::stat_bin;
  // bin k covers [(k/K)^2, ((k+1)/K)^2): with K = 4 the edges are 0, 1/16, 1/4, 9/16, 1.
  expect(stat_bin(0.0f, 4) == -1, "exact zero is skipped");
  expect(stat_bin(std::nanf(""), 4) == -1, "NaN is skipped");
  expect(stat_bin(1e-30f, 4) == 0, "tiny magnitude lands in bin 0");
  expect(stat_bin(0.0624f, 4) == 0, "just below 1/16 is bin 0");
  expect(stat_bin(0.0625f, 4) == 1, "1/16 (sqrt = 1/4 exactly) opens bin 1");
  expect(stat_bin(0.25f, 4) == 2, "1/4 opens bin 2");
  expect(stat_bin(0.5f, 4) == 2, "1/2 (sqrt 0.707) is bin 2");
  expect(stat_bin(0.5625f, 4) == 3, "9/16 opens bin 3");
  expect(stat_bin(1.0f, 4) == 3, "r = 1 stays in the last bin");
  expect(stat_bin(1.0f, 1) == 0 && stat_bin(0.3f, 1) == 0, "one bin holds everything");
  // Every bin of a fine histogram is reachable and the mapping is monotone in r.
  int last = -1;
  bool monotone = true;
  for (int i = 1; i <= 1 << 16; ++i) {
    const int k = stat_bin(static_cast<float>(i) / 65536.0f, 1024);
    monotone &= k >= last && k < 1024;
    last = k;
  }
  expect(monotone && last == 1023, "bins increase with r and end at the last bin");
}

void test_magnitude() {
  using commcomp::stat_magnitude;
  expect(stat_magnitude(-3.0f, 4.0f) == 0.75f, "|x| / norm");
  expect(stat_magnitude(5.0f, 4.0f) == 1.0f, "clamped to 1 like quantize_one");
}

void test_weights() {
  using commcomp::stat_weight;
  const float w_max = commcomp::stat_reference_weight(2.0f);  // largest norm 2 -> w_max = 4
  expect(w_max == 4.0f, "reference weight is the squared largest norm");
  expect(stat_weight(2.0f, w_max) == (1ull << 32), "largest bucket weighs 2^32");
  expect(stat_weight(1.0f, w_max) == (1ull << 30), "norm 1 of 2 weighs 2^32 / 4");
  expect(stat_weight(0.0f, w_max) == 0ull, "empty bucket weighs nothing");
  expect(stat_weight(INFINITY, w_max) == 0ull, "infinite norm weighs nothing");
  expect(stat_weight(std::nanf(""), w_max) == 0ull, "NaN norm weighs nothing");
  expect(stat_weight(1.0f, INFINITY) == 0ull, "overflowing reference gives no weights");
  expect(stat_weight(1.0f, 0.0f) == 0ull, "zero reference gives no weights");
  // (1e-6)^2 * 2^32 = 0.0043: a bucket below 2^-32 of the largest one truncates to no weight.
  expect(stat_weight(1e-6f, 1.0f) == 0ull, "negligible buckets truncate to zero");
  expect(stat_weight(0.5f, 1.0f) == (1ull << 30), "weights are exact for powers of two");
}

void test_mass() {
  // A bin holding two coordinates of a norm-2 bucket and one of a norm-1 bucket: 4 + 4 + 1.
  const float w_max = commcomp::stat_reference_weight(2.0f);
  const uint64_t sum = 2 * commcomp::stat_weight(2.0f, w_max) + commcomp::stat_weight(1.0f, w_max);
  expect(commcomp::bin_mass(sum, w_max) == 9.0, "bin mass is the sum of squared norms");
  expect(commcomp::bin_mass(0ull, w_max) == 0.0, "empty bin has no mass");
}

}  // namespace

int main() {
  test_bins();
  test_magnitude();
  test_weights();
  test_mass();
  if (failures == 0) std::printf("test_stats: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
