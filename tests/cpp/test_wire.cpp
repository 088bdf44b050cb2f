// Plain C++ tests (no torch) of the overflow-safe sizes (core/sizes.h), CRC-32, the named level
// families and the wire decoder (core/wire.h): the Python-written seed corpus decodes and
// re-encodes byte for byte, every truncation and header field error is rejected with a message,
// sizes from hostile headers never wrap.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "core/crc32.h"
#include "core/sizes.h"
#include "core/wire.h"
#include "reencode.h"

using namespace commcomp;

#ifndef COMMCOMP_CORPUS_DIR
#define COMMCOMP_CORPUS_DIR "fuzz/corpus"
#endif

using u128 = unsigned __int128;

static void test_sizes() {
  // packed_bytes is exact (== ceil(n * w / 8) in 128-bit arithmetic) for every int64 count,
  // including those where n * w wraps int64 (the crash of issue 14: 2^61 + 8 symbols of 8 bits).
  std::mt19937_64 rng(7);
  std::vector<int64_t> counts = {0, 1, 7, 8, 9, (int64_t{1} << 60), (int64_t{1} << 61) + 8,
                                 (int64_t{1} << 62) + 16, kInt64Max, kInt64Max - 7};
  for (int k = 0; k < 2000; ++k) counts.push_back(static_cast<int64_t>(rng() >> (1 + rng() % 63)));
  for (int64_t n : counts) {
    for (int w = 1; w <= 8; ++w) {
      const u128 want = (static_cast<u128>(n) * w + 7) / 8;
      CHECK(static_cast<u128>(packed_bytes(n, w)) == want);
      CHECK(static_cast<u128>(packed_bytes_u64(static_cast<uint64_t>(n), w)) == want);
    }
  }
  const uint64_t top = ~0ull;
  CHECK(static_cast<u128>(packed_bytes_u64(top, 8)) == (static_cast<u128>(top) * 8 + 7) / 8);
  // bucket_count never forms numel + bucket_size - 1.
  CHECK(bucket_count(10, kInt64Max) == 1);
  CHECK(bucket_count(0, kInt64Max) == 0);
  CHECK(bucket_count(kInt64Max, 1) == kInt64Max);
  CHECK(bucket_count(kInt64Max, 2) == kInt64Max / 2 + 1);
  int64_t out = 0;
  CHECK(checked_add(kInt64Max - 1, 1, out) && out == kInt64Max);
  CHECK(!checked_add(kInt64Max, 1, out));
  CHECK(checked_mul(int64_t{1} << 31, int64_t{1} << 31, out) && out == (int64_t{1} << 62));
  CHECK(!checked_mul(int64_t{1} << 32, int64_t{1} << 31, out));
  CHECK(checked_mul(0, kInt64Max, out) && out == 0);
}

static void test_crc32() {
  const char* text = "123456789";  // the standard check value of CRC-32/ISO-HDLC (zlib)
  CHECK(crc32(reinterpret_cast<const uint8_t*>(text), 9) == 0xCBF43926u);
  CHECK(crc32(nullptr, 0) == 0u);
}

static void test_named_levels() {
  for (int count = 2; count <= kMaxLevels; ++count) {
    float v[kMaxLevels];
    uniform_level_values(count, v);
    int at = 0;
    CHECK(level_values_status(v, count, at) == LevelsStatus::Ok);
    for (int j = 0; j < count; ++j) {
      // Correctly rounded: no float32 is nearer to j / (count - 1).
      const double exact = static_cast<double>(j) / (count - 1);
      const double err = std::fabs(v[j] - exact);
      CHECK(err <= std::fabs(std::nextafter(v[j], 2.0f) - exact));
      CHECK(err <= std::fabs(std::nextafter(v[j], -1.0f) - exact));
    }
    exponential_level_values(count, v);
    CHECK(level_values_status(v, count, at) == LevelsStatus::Ok);
    for (int j = 1; j < count; ++j) CHECK(v[j] == std::ldexp(1.0f, j - (count - 1)));
  }
  float bad[3] = {-0.0f, 0.5f, 1.0f};
  int at = 0;
  CHECK(level_values_status(bad, 3, at) == LevelsStatus::BadEnds);  // -0: a second spelling of 0
  bad[0] = 0.0f;
  bad[1] = std::nanf("");
  CHECK(level_values_status(bad, 3, at) == LevelsStatus::NotANumber && at == 1);
  bad[1] = 1.0f;
  CHECK(level_values_status(bad, 3, at) == LevelsStatus::NotIncreasing && at == 2);
  CHECK(level_values_status(bad, 1, at) == LevelsStatus::BadCount);
}

static std::vector<std::vector<uint8_t>> read_corpus() {
  std::vector<std::vector<uint8_t>> files;
  DIR* dir = opendir(COMMCOMP_CORPUS_DIR);
  if (dir == nullptr) return files;
  while (dirent* entry = readdir(dir)) {
    const std::string name = entry->d_name;
    if (name.size() < 4 || name.substr(name.size() - 4) != ".bin") continue;
    FILE* f = std::fopen((std::string(COMMCOMP_CORPUS_DIR) + "/" + name).c_str(), "rb");
    std::vector<uint8_t> bytes;
    int c;
    while ((c = std::fgetc(f)) != EOF) bytes.push_back(static_cast<uint8_t>(c));
    std::fclose(f);
    files.push_back(bytes);
  }
  closedir(dir);
  return files;
}

static bool decodes(const std::vector<uint8_t>& p, const wire::Expect& x, wire::Error& e) {
  wire::Decoded d;
  return wire::decode_payload_serial(p.data(), static_cast<int64_t>(p.size()), x, d, e);
}

static void test_corpus_round_trips() {
  const auto corpus = read_corpus();
  CHECK(corpus.size() >= 12);
  int kinds_seen = 0;
  for (const auto& p : corpus) {
    wire::Decoded d, plain;
    wire::Error e;
    const bool ok = wire::decode_payload_serial(p.data(), static_cast<int64_t>(p.size()), {}, d, e);
    CHECK(ok);
    if (!ok) {
      std::fprintf(stderr, "corpus payload rejected: %s\n", e.message);
      continue;
    }
    kinds_seen |= 1 << d.header.levels_kind;
    CHECK(reencode_payload(d) == p);
    CHECK(wire::decode_payload_serial(p.data(), static_cast<int64_t>(p.size()), {}, plain, e, false));
    CHECK(plain.symbols == d.symbols);
    // Every proper prefix is refused, with a message.
    for (size_t cut = 0; cut < p.size(); ++cut) {
      const std::vector<uint8_t> part(p.begin(), p.begin() + cut);
      wire::Error why;
      CHECK(!decodes(part, {}, why) && why.message[0] != '\0');
    }
    // The receiver's expectations.
    wire::Expect x;
    x.numel = d.layout.numel + 1;
    wire::Error why;
    CHECK(!decodes(p, x, why) && std::strstr(why.message, "elements, expected") != nullptr);
    x = {};
    x.max_numel = d.layout.numel - 1;
    CHECK(d.layout.numel == 0 || (!decodes(p, x, why) && std::strstr(why.message, "above max_numel")));
  }
  CHECK(kinds_seen == ((1 << wire::kUniform) | (1 << wire::kExponential) | (1 << wire::kTable)));
}

static std::vector<uint8_t> header_only(wire::Header h) {
  std::vector<uint8_t> p(wire::kHeaderBytes);
  wire::store_header(h, p.data());
  return p;
}

static wire::Header qsgd2_header(uint64_t numel, uint32_t bucket_size) {
  wire::Header h{};
  std::memcpy(h.magic, wire::kMagic, 4);
  h.version = 1;
  h.coding = wire::kEliasGamma;
  h.levels_kind = wire::kUniform;
  h.num_levels = 2;
  h.bits = 2;
  h.dtype = wire::kFloat32;
  h.length_bytes = 2;
  h.bucket_size = bucket_size;
  h.numel = numel;
  const float levels[2] = {0.0f, 1.0f};
  h.levels_crc = wire::levels_crc(levels, 2);
  return h;
}

static void test_hostile_sizes() {
  wire::Error e;
  wire::Expect x;
  x.max_numel = kInt64Max;  // the receiver asks for no cap: kMaxNumel still applies
  // Element counts past 2^48, up to 2^64 - 1, are refused before any size is computed.
  for (uint64_t numel : {(uint64_t{1} << 48) + 1, uint64_t{1} << 62, ~uint64_t{0}}) {
    const auto p = header_only(qsgd2_header(numel, 1));
    CHECK(!decodes(p, x, e) && std::strstr(e.message, numel > uint64_t{1} << 63 ? "above max_numel" : "any op accepts"));
  }
  // A stream length near 2^64 cannot overflow the payload size.
  wire::Header h = qsgd2_header(10, 4);
  h.stream_bytes = ~0ull - 3;
  CHECK(!decodes(header_only(h), x, e) && std::strstr(e.message, "announces more than") != nullptr);
  // A fixed-width header announcing 2^64 - 1 symbols: its stream size is computed exactly.
  h = qsgd2_header(~0ull, 1);
  h.coding = wire::kFixed;
  h.length_bytes = 0;
  h.stream_bytes = 7;
  CHECK(!decodes(header_only(h), x, e) && std::strstr(e.message, "cannot hold") != nullptr);
  // Bucket lengths summing past int64 (each within a huge claimed stream) are refused.
  const int64_t lengths[3] = {kInt64Max, kInt64Max, 2};
  CHECK(!wire::check_bucket_lengths(lengths, 3, kInt64Max, e) &&
        std::strstr(e.message, "sum to more than") != nullptr);
}

int main() {
  test_sizes();
  test_crc32();
  test_named_levels();
  test_corpus_round_trips();
  test_hostile_sizes();
  return TEST_MAIN_RESULT();
}
