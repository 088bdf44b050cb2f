// Tests of csrc/core without torch: Philox against published known-answer vectors, bit packing
// round trips, interval search and the unbiasedness of one-coordinate rounding.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "check.h"
#include "core/bitpack.h"
#include "core/philox.h"
#include "core/quantize.h"

using namespace commcomp;

// Known-answer vectors of philox4x32_10 from Random123's kat_vectors file.
static void test_philox_known_answers() {
  struct Case {
    uint32_t ctr[4], key[2], out[4];
  } cases[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Case& c : cases) {
    Philox4 ctr = {{c.ctr[0], c.ctr[1], c.ctr[2], c.ctr[3]}};
    const Philox4 r = philox4x32_10(ctr, c.key[0], c.key[1]);
    for (int k = 0; k < 4; ++k) CHECK(r.v[k] == c.out[k]);
  }
}

static void test_uniforms_in_unit_interval_and_mean() {
  double sum = 0.0;
  const int groups = 100000;
  for (int g = 0; g < groups; ++g) {
    float u[4];
    uniforms4(42, 7, g, u);
    for (float v : u) {
      CHECK(v >= 0.0f && v < 1.0f);
      sum += v;
    }
  }
  const double mean = sum / (4.0 * groups);
  CHECK(std::fabs(mean - 0.5) < 5 * std::sqrt(1.0 / 12 / (4.0 * groups)));
}

static void test_pack_round_trip() {
  std::mt19937 rng(1);
  for (int width = 1; width <= 8; ++width) {
    for (int n = 0; n <= 37; ++n) {
      std::vector<uint32_t> sym(n);
      for (auto& s : sym) s = rng() & ((1u << width) - 1);
      std::vector<uint8_t> packed(packed_bytes(n, width), 0xAB);
      for (int64_t g = 0; g < group_count(n); ++g) {
        const int size = group_size(g, n);
        store_group(packed.data(), g, pack_group(&sym[g * kPackGroup], size, width), size, width);
      }
      for (int64_t g = 0; g < group_count(n); ++g) {
        const int size = group_size(g, n);
        const uint64_t bits = load_group(packed.data(), g, size, width);
        for (int k = 0; k < size; ++k) CHECK(group_symbol(bits, k, width) == sym[g * kPackGroup + k]);
      }
    }
  }
}

static void test_find_interval() {
  const float levels[] = {0.0f, 0.25f, 0.5f, 1.0f};
  CHECK(find_interval(levels, 4, 0.0f) == 0);
  CHECK(find_interval(levels, 4, 0.2f) == 0);
  CHECK(find_interval(levels, 4, 0.25f) == 1);
  CHECK(find_interval(levels, 4, 0.75f) == 2);
  CHECK(find_interval(levels, 4, 1.0f) == 2);  // clamped: the last interval is [0.5, 1]
  CHECK(find_interval(levels, 4, std::nanf("")) == 0);
}

static void test_quantize_one_unbiased() {
  const float levels[] = {0.0f, 0.25f, 0.5f, 1.0f};
  const float inv_width[] = {4.0f, 4.0f, 2.0f};
  const float norm = 2.0f, x = -0.7f;  // r = 0.35 between 0.25 and 0.5
  double sum = 0.0;
  const int trials = 200000;
  for (int t = 0; t < trials; t += 4) {
    float u[4];
    uniforms4(3, 0, t / 4, u);
    for (float v : u) {
      const uint32_t s = quantize_one(x, norm, levels, inv_width, 4, v);
      CHECK(symbol_index(s) == 1 || symbol_index(s) == 2);
      CHECK(symbol_negative(s));
      sum += dequantize_one(s, norm, levels);
    }
  }
  // Var per draw = norm^2 (r - 0.25)(0.5 - r) = 0.09; 6 standard errors.
  CHECK(std::fabs(sum / trials - x) < 6 * std::sqrt(0.09 / trials));
  CHECK(quantize_one(1.0f, 0.0f, levels, inv_width, 4, 0.5f) == 0u);  // zero bucket
  CHECK(quantize_one(-0.0f, 1.0f, levels, inv_width, 4, 0.0f) == 0u);  // zero keeps sign 0
}

int main() {
  test_philox_known_answers();
  test_uniforms_in_unit_interval_and_mean();
  test_pack_round_trip();
  test_find_interval();
  test_quantize_one_unbiased();
  return TEST_MAIN_RESULT();
}
