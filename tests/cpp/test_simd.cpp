// The vector kernels (csrc/cpu/simd) against the scalar core, bit for bit, on every path this CPU
// supports: Philox across the 2^32 counter carry, every level count 2..128, every symbol width,
// bucket sizes around the vector widths, NaN/inf/-0/subnormal inputs, fp16/bf16 bits, and ranges
// cut anywhere (as at::parallel_for cuts them).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "core/quantize.h"
#include "cpu/simd/kernels.h"

using namespace commcomp;
using simd::InputType;

namespace {

std::mt19937_64 rng(12345);

float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

uint32_t float_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// The float value of a 16-bit element, as static_cast<float> of c10::Half / c10::BFloat16.
float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (man << 13));
  if (exp == 0) return (sign ? -1.0f : 1.0f) * std::ldexp(static_cast<float>(man), -24);
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
}

float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

uint16_t float_to_bf16(float f) { return static_cast<uint16_t>(float_bits(f) >> 16); }

// Inputs of one dtype: the raw elements and their float values.
struct Input {
  InputType type;
  std::vector<float> f32;
  std::vector<uint16_t> bits16;
  std::vector<float> value;
  const void* data() const {
    return type == InputType::F32 ? static_cast<const void*>(f32.data())
                                  : static_cast<const void*>(bits16.data());
  }
};

Input make_input(InputType type, int64_t n, double special_rate, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  const float specials[] = {0.0f, -0.0f, 1e-40f, -1e-42f, INFINITY, -INFINITY, NAN, 65504.0f};
  Input in;
  in.type = type;
  for (int64_t i = 0; i < n; ++i) {
    float v = normal(rng);
    if (coin(rng) < special_rate) v = specials[rng() % 8];
    if (type == InputType::F32) {
      in.f32.push_back(v);
      in.value.push_back(v);
    } else if (type == InputType::BF16) {
      const uint16_t b = float_to_bf16(v);
      in.bits16.push_back(b);
      in.value.push_back(bf16_to_float(b));
    } else {
      // A random half: sign, exponent, mantissa, with the float values we want often enough.
      uint16_t h = static_cast<uint16_t>(rng());
      if (coin(rng) < 0.7) h = static_cast<uint16_t>((h & 0x83FFu) | ((14 + rng() % 3) << 10));
      in.bits16.push_back(h);
      in.value.push_back(half_to_float(h));
    }
  }
  return in;
}

std::vector<float> scalar_norms(const std::vector<float>& x, int64_t bucket_size, NormKind kind) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<float> norms;
  for (int64_t start = 0; start < n; start += bucket_size) {
    float lanes[kNormLanes] = {0.0f};
    for (int64_t i = start; i < std::min(n, start + bucket_size); ++i) {
      float& lane = lanes[(i - start) % kNormLanes];
      lane = norm_lane_update(lane, x[i], kind);
    }
    norms.push_back(norm_combine_lanes(lanes, kind));
  }
  return norms;
}

bool same_float(float a, float b) { return float_bits(a) == float_bits(b) || (a != a && b != b); }

// Random cut points of [0, groups): task ranges of any length.
std::vector<int64_t> cuts(int64_t groups) {
  std::vector<int64_t> c{0};
  while (c.back() < groups) c.push_back(std::min(groups, c.back() + 1 + static_cast<int64_t>(rng() % 40)));
  return c;
}

LevelTable random_table(int count) {
  LevelTable t{};
  t.count = count;
  t.index_bits = index_bits_for(count);
  std::vector<float> v{0.0f, 1.0f};
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  while (static_cast<int>(v.size()) < count) {
    const float f = rng() % 3 == 0 ? std::ldexp(1.0f, -static_cast<int>(rng() % 60)) : unit(rng);
    if (std::find(v.begin(), v.end(), f) == v.end() && f > 0.0f && f < 1.0f) v.push_back(f);
  }
  std::sort(v.begin(), v.end());
  for (int j = 0; j < count; ++j) t.value[j] = v[j];
  fill_inverse_widths(t);
  return t;
}

void check_path(const simd::Kernels& k) {
  const char* name = simd::path_name(k.path);
  int failures_before = g_failures;
  const InputType types[] = {InputType::F32, InputType::F16, InputType::BF16};
  const int64_t bucket_sizes[] = {1, 5, 8, 15, 16, 17, 31, 32, 33, 37, 63, 64, 65, 100, 511, 512, 513};
  for (int trial = 0; trial < 400; ++trial) {
    const InputType type = types[trial % 3];
    const int64_t n = trial < 70 ? 1 + trial : 1 + static_cast<int64_t>(rng() % 5000);
    const int64_t bucket_size = bucket_sizes[rng() % (sizeof(bucket_sizes) / sizeof(bucket_sizes[0]))];
    const NormKind kind = trial % 2 ? NormKind::L2 : NormKind::LInf;
    const double special = trial % 5 == 0 ? 0.05 : 0.0;
    const Input in = make_input(type, n, special, trial % 7 == 0 ? 1e19f : 1.0f);
    const int64_t buckets = (n + bucket_size - 1) / bucket_size;

    // Norms.
    const std::vector<float> want_norms = scalar_norms(in.value, bucket_size, kind);
    std::vector<float> norms(buckets, -1.0f);
    const std::vector<int64_t> bucket_cuts = cuts(buckets);
    for (size_t c = 0; c + 1 < bucket_cuts.size(); ++c) {
      k.bucket_norms(in.data(), type, n, bucket_size, static_cast<int>(kind), bucket_cuts[c],
                     bucket_cuts[c + 1], norms.data());
    }
    for (int64_t b = 0; b < buckets; ++b) CHECK(same_float(norms[b], want_norms[b]));

    // Quantize with these norms (zero / non-finite buckets give symbol 0) or with larger ones.
    const int count = trial % 9 == 0 ? 2 + static_cast<int>(rng() % 127) : 2 + static_cast<int>(rng() % 15);
    const LevelTable table = random_table(count);
    const int width = table.index_bits + 1;
    std::vector<float> scales = want_norms;
    if (trial % 4 == 1) for (float& s : scales) s = s * 1.5f;
    const uint64_t seed = rng(), offset = trial % 3 ? rng() : rng() % 4;
    const int64_t groups = group_count(n);
    std::vector<uint8_t> want(packed_bytes(n, width) + 64, 0xAB), got(want.size(), 0xAB);
    auto load = [&](int64_t i) { return in.value[i]; };
    for (int64_t g = 0; g < groups; ++g) {
      float u[kPackGroup];
      group_uniforms(seed, offset, g, u);
      const int size = group_size(g, n);
      store_group(want.data(), g, quantize_group_with(load, g, size, scales.data(), bucket_size, table.value,
                                                      table.inv_width, table.count, width, u),
                  size, width);
    }
    const simd::QuantizeArgs qa{in.data(), type, n, scales.data(), bucket_size, table.value,
                                table.inv_width, table.count, width, seed, offset, got.data()};
    const std::vector<int64_t> group_cuts = cuts(groups);
    for (size_t c = 0; c + 1 < group_cuts.size(); ++c) {
      int64_t g = k.quantize(qa, group_cuts[c], group_cuts[c + 1]);
      CHECK(g >= group_cuts[c] && g <= group_cuts[c + 1]);
      for (; g < group_cuts[c + 1]; ++g) {  // what the binding's scalar loop does
        float u[kPackGroup];
        group_uniforms(seed, offset, g, u);
        const int size = group_size(g, n);
        store_group(got.data(), g, quantize_group_with(load, g, size, scales.data(), bucket_size, table.value,
                                                       table.inv_width, table.count, width, u),
                    size, width);
      }
    }
    CHECK(got == want);  // the bytes after the payload too: nothing written past the end
    if (got != want) {
      for (size_t i = 0; i < got.size(); ++i)
        if (got[i] != want[i]) {
          std::fprintf(stderr, "  first differing byte %zu of %zu (group %zu): %02x vs %02x\n", i,
                       static_cast<size_t>(packed_bytes(n, width)), i / width, got[i], want[i]);
          break;
        }
    }

    // Dequantize (assign) and accumulate two payloads, with a corrupt symbol sometimes.
    // Decodable norms (finite), as the bindings check.
    std::vector<float> dec_norms = scales;
    for (float& s : dec_norms) if (!(s <= kFloatMax)) s = 1.0f;
    for (float& s : scales) if (!(s <= kFloatMax)) s = 2.0f;
    std::vector<uint8_t> symbols = want;
    const bool corrupt = trial % 6 == 0 && count < (1 << table.index_bits) && n > 0;
    if (corrupt) {  // index 2^index_bits - 1 >= count names a missing level
      const int64_t i = static_cast<int64_t>(rng() % n);
      const uint32_t bad = ((1u << table.index_bits) - 1u) << 1;
      const int64_t g = i / kPackGroup;
      const int kk = static_cast<int>(i % kPackGroup);
      uint64_t bits = load_group(symbols.data(), g, group_size(g, n), width);
      bits &= ~(((1ull << width) - 1ull) << (kk * width));
      bits |= static_cast<uint64_t>(bad) << (kk * width);
      store_group(symbols.data(), g, bits, group_size(g, n), width);
    }
    const float scale = 0.37f;
    for (int overwrite = 0; overwrite < 2; ++overwrite) {
      std::vector<float> want_out(n), got_out(n);
      for (int64_t i = 0; i < n; ++i) want_out[i] = got_out[i] = 0.25f * static_cast<float>(i % 7);
      const float* norm_ptrs[2] = {dec_norms.data(), scales.data()};
      const uint8_t* symbol_ptrs[2] = {symbols.data(), want.data()};
      bool want_ok = true, got_ok = true;
      for (int64_t g = 0; g < groups; ++g) {
        const int size = group_size(g, n);
        for (int p = 0; p < 2; ++p) {
          const bool assign = overwrite && p == 0;
          want_ok &= dequantize_group(load_group(symbol_ptrs[p], g, size, width), g, size, norm_ptrs[p],
                                      bucket_size, table.value, table.count, width, [&](int64_t i, float v) {
                                        want_out[i] = assign ? v : fadd_rn(want_out[i], fmul_rn(scale, v));
                                      });
        }
      }
      const simd::AccumulateArgs aa{got_out.data(), n, norm_ptrs, symbol_ptrs, 2, bucket_size,
                                    table.value, table.count, width, scale, overwrite == 1};
      for (size_t c = 0; c + 1 < group_cuts.size(); ++c) {
        int64_t g = k.accumulate(aa, group_cuts[c], group_cuts[c + 1], &got_ok);
        for (; g < group_cuts[c + 1]; ++g) {
          const int size = group_size(g, n);
          for (int p = 0; p < 2; ++p) {
            const bool assign = overwrite && p == 0;
            got_ok &= dequantize_group(load_group(symbol_ptrs[p], g, size, width), g, size, norm_ptrs[p],
                                       bucket_size, table.value, table.count, width, [&](int64_t i, float v) {
                                         got_out[i] = assign ? v : fadd_rn(got_out[i], fmul_rn(scale, v));
                                       });
          }
        }
      }
      CHECK(got_ok == want_ok);
      CHECK(!corrupt || !got_ok);
      for (int64_t i = 0; i < n; ++i) CHECK(same_float(got_out[i], want_out[i]));
    }
    if (g_failures > failures_before) {
      std::fprintf(stderr, "  path %s trial %d: n=%lld bucket=%lld type=%d kind=%d count=%d\n", name, trial,
                   static_cast<long long>(n), static_cast<long long>(bucket_size), static_cast<int>(type),
                   static_cast<int>(kind), count);
      return;
    }
  }

  // Pack / unpack at every width.
  for (int width = 1; width <= 8; ++width) {
    for (int64_t n : {0, 1, 7, 8, 63, 64, 65, 127, 128, 129, 1000, 4099}) {
      std::vector<uint8_t> s(n);
      for (auto& v : s) v = static_cast<uint8_t>(rng() & ((1u << width) - 1u));
      const int64_t groups = group_count(n);
      std::vector<uint8_t> want(packed_bytes(n, width) + 32, 0xCD), got(want.size(), 0xCD);
      auto scalar_pack = [&](std::vector<uint8_t>& out, int64_t g) {
        uint32_t group[kPackGroup] = {0, 0, 0, 0, 0, 0, 0, 0};
        const int size = group_size(g, n);
        for (int kk = 0; kk < size; ++kk) group[kk] = s[g * kPackGroup + kk];
        store_group(out.data(), g, pack_group(group, size, width), size, width);
      };
      for (int64_t g = 0; g < groups; ++g) scalar_pack(want, g);
      const std::vector<int64_t> c = cuts(groups);
      for (size_t t = 0; t + 1 < c.size(); ++t) {
        int64_t g = k.pack(s.data(), n, width, c[t], c[t + 1], got.data());
        for (; g < c[t + 1]; ++g) scalar_pack(got, g);
      }
      CHECK(got == want);
      std::vector<uint8_t> back(n + 64, 0xEE);
      for (size_t t = 0; t + 1 < c.size(); ++t) {
        int64_t g = k.unpack(want.data(), n, width, c[t], c[t + 1], back.data());
        for (; g < c[t + 1]; ++g) {
          const int size = group_size(g, n);
          const uint64_t bits = load_group(want.data(), g, size, width);
          for (int kk = 0; kk < size; ++kk) back[g * kPackGroup + kk] = static_cast<uint8_t>(group_symbol(bits, kk, width));
        }
      }
      CHECK(std::equal(s.begin(), s.end(), back.begin()));
      for (size_t i = n; i < back.size(); ++i) CHECK(back[i] == 0xEE);
    }
  }

  // Philox across the low counter word's carry: element indices near 4 * 2^32.
  {
    const int64_t n = (int64_t{1} << 34) + 4096;  // only the last groups are touched
    const LevelTable table = random_table(8);
    const int width = table.index_bits + 1;
    std::vector<float> x(4096 + 512);
    for (auto& v : x) v = std::normal_distribution<float>(0.0f, 1.0f)(rng);
    const int64_t base = (int64_t{1} << 34) - 2048;  // element of x[0]
    std::vector<float> norms(1, 1e30f);
    // A pointer such that element `base` is x[0]; the kernel only reads elements it quantizes.
    const float* shifted = x.data() - base;
    std::vector<uint8_t> want(packed_bytes(n, width) - packed_bytes(base, width) + 64, 0), got(want);
    uint8_t* out_shifted = got.data() - packed_bytes(base, width);
    const simd::QuantizeArgs qa{shifted, InputType::F32, n, norms.data(), n, table.value, table.inv_width,
                                table.count, width, 0x123456789ABCull, 0xFFFFFFFFull, out_shifted};
    const int64_t first = base / kPackGroup, last = first + 4096 / kPackGroup;
    const int64_t done = k.quantize(qa, first, last);
    CHECK(done > first);
    for (int64_t g = first; g < done; ++g) {
      float u[kPackGroup];
      group_uniforms(qa.seed, qa.offset, g, u);
      auto load = [&](int64_t i) { return shifted[i]; };
      const uint64_t bits = quantize_group_with(load, g, kPackGroup, norms.data(), n, table.value,
                                                table.inv_width, table.count, width, u);
      CHECK(bits == load_group(out_shifted, g, kPackGroup, width));
    }
  }
  if (g_failures == failures_before) std::printf("path %s: ok\n", name);
}

}  // namespace

int main() {
  int tested = 0;
  for (int p = 0; p < simd::kPathCount; ++p) {
    const simd::Kernels* k = simd::vector_kernels(static_cast<simd::Path>(p));
    if (k == nullptr) {
      std::printf("path %s: %s\n", simd::path_name(static_cast<simd::Path>(p)),
                  p == 0 ? "scalar (the core loops)" : "not supported here, skipped");
      continue;
    }
    check_path(*k);
    ++tested;
  }
  simd::Path best;
  CHECK(simd::resolve_path(nullptr, best));
  CHECK(simd::resolve_path("scalar", best) && best == simd::Path::Scalar);
  CHECK(!simd::resolve_path("avx3", best));
  return TEST_MAIN_RESULT();
}
