// Plain C++ tests of csrc/core/elias.h (no torch): code tables from the definitions, round trips,
// rejection of malformed codes, and a random-bytes fuzz loop with the canonical re-encode check.
// Build: g++ -std=c++17 -O2 -I csrc tests/cpp/test_elias.cpp -o test_elias && ./test_elias
// (add -fsanitize=address,undefined to check that the decoder stays in bounds).
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/elias.h"

using namespace commcomp;

static int failures = 0;

#define EXPECT(cond, ...)                                   \
  do {                                                      \
    if (!(cond)) {                                          \
      ++failures;                                           \
      std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                    \
      std::fprintf(stderr, "\n");                           \
    }                                                       \
  } while (0)

// Codes straight from their textbook definitions, as '0'/'1' strings.
static std::string binary(uint64_t v) {
  std::string s;
  while (v) {
    s.insert(s.begin(), static_cast<char>('0' + (v & 1)));
    v >>= 1;
  }
  return s;
}
static std::string ref_gamma(uint64_t v) {
  const std::string b = binary(v);
  return std::string(b.size() - 1, '0') + b;
}
static std::string ref_delta(uint64_t v) {
  const std::string b = binary(v);
  return ref_gamma(b.size()) + b.substr(1);
}
static std::string ref_omega(uint64_t v) {
  std::string code = "0";
  while (v > 1) {
    const std::string b = binary(v);
    code = b + code;
    v = b.size() - 1;
  }
  return code;
}
static std::string ref_code(uint64_t v, EliasCode c) {
  return c == EliasCode::Gamma ? ref_gamma(v) : c == EliasCode::Delta ? ref_delta(v) : ref_omega(v);
}

static std::vector<uint8_t> bits_to_bytes(const std::string& bits) {
  std::vector<uint8_t> out((bits.size() + 7) / 8, 0);
  for (size_t i = 0; i < bits.size(); ++i)
    if (bits[i] == '1') out[i / 8] |= static_cast<uint8_t>(0x80u >> (i % 8));
  return out;
}

static const EliasCode kCodes[] = {EliasCode::Gamma, EliasCode::Delta, EliasCode::Omega};

static void test_hand_checked_codes() {
  EXPECT(ref_gamma(1) == "1" && ref_gamma(2) == "010" && ref_gamma(5) == "00101", "gamma");
  EXPECT(ref_delta(1) == "1" && ref_delta(2) == "0100" && ref_delta(17) == "001010001", "delta");
  EXPECT(ref_omega(1) == "0" && ref_omega(2) == "100" && ref_omega(16) == "10100100000", "omega");
}

static void test_codes_match_definitions() {
  std::mt19937_64 rng(1);
  std::vector<uint64_t> values;
  for (uint64_t v = 1; v <= 3000; ++v) values.push_back(v);
  for (int k = 0; k < 3000; ++k) values.push_back((rng() >> (rng() % 64)) | 1ull);
  values.push_back(~0ull);
  values.push_back(1ull << 63);
  for (EliasCode c : kCodes) {
    for (uint64_t v : values) {
      const std::string ref = ref_code(v, c);
      EXPECT(elias_length(v, c) == static_cast<int>(ref.size()), "length of %llu", (unsigned long long)v);
      std::vector<uint8_t> buf(32, 0xAA);
      BitWriter w(buf.data());
      write_elias(w, v, c);
      w.finish();
      const std::vector<uint8_t> want = bits_to_bytes(ref);
      EXPECT(std::memcmp(buf.data(), want.data(), want.size()) == 0 &&
                 w.out == buf.data() + want.size(),
             "bytes of code %d for %llu", static_cast<int>(c), (unsigned long long)v);
      BitReader r(want.data(), static_cast<int64_t>(want.size()));
      uint64_t got = 0;
      EXPECT(read_elias(r, c, ~0ull, got) == EliasStatus::Ok && got == v && r.pos == (int64_t)ref.size(),
             "decode of %llu", (unsigned long long)v);
      // A code cut short by its last byte never decodes: the reader stays inside the bytes it
      // has, and no proper prefix of a prefix-free codeword is a codeword.
      if (want.size() > 1) {
        BitReader rc(want.data(), static_cast<int64_t>(want.size()) - 1);
        uint64_t other = 0;
        EXPECT(read_elias(rc, c, ~0ull, other) == EliasStatus::Truncated,
               "code %d of %llu cut short was accepted", static_cast<int>(c), (unsigned long long)v);
      }
    }
  }
}

static void test_rejections() {
  // 64 zeros then a 1: a gamma code of a 65-bit value.
  std::vector<uint8_t> long_code(17, 0);
  long_code[8] = 0x80;
  for (EliasCode c : {EliasCode::Gamma, EliasCode::Delta}) {
    BitReader r(long_code.data(), 17);
    uint64_t v = 0;
    EXPECT(read_elias(r, c, ~0ull, v) == EliasStatus::CodeTooLong, "65-bit code, code %d", (int)c);
  }
  // Delta whose length prefix says 65 bits: gamma(65) = 000000 1000001.
  {
    std::vector<uint8_t> b = bits_to_bytes("0000001000001" + std::string(70, '1'));
    BitReader r(b.data(), (int64_t)b.size());
    uint64_t v = 0;
    EXPECT(read_delta(r, ~0ull, v) == EliasStatus::CodeTooLong, "delta length 65");
  }
  // Omega groups growing past 64 bits: 1 1 ... -> groups 2..3, then 4..7, then 8..255 bits...
  {
    std::vector<uint8_t> b(64, 0xFF);
    BitReader r(b.data(), 64);
    uint64_t v = 0;
    EXPECT(read_omega(r, ~0ull, v) == EliasStatus::CodeTooLong, "omega of all ones");
  }
  // All zeros: gamma runs out of bits.
  {
    std::vector<uint8_t> b(4, 0);
    BitReader r(b.data(), 4);
    uint64_t v = 0;
    EXPECT(read_gamma(r, ~0ull, v) == EliasStatus::Truncated, "all-zero gamma");
  }
  // Value above the allowed maximum: gamma(9) with max 8.
  {
    std::vector<uint8_t> b = bits_to_bytes(ref_gamma(9));
    BitReader r(b.data(), (int64_t)b.size());
    uint64_t v = 0;
    EXPECT(read_gamma(r, 8, v) == EliasStatus::RunPastEnd, "gamma above max");
  }
  // An empty reader never reads.
  {
    BitReader r(nullptr, 0);
    uint64_t v = 0;
    EXPECT(read_elias(r, EliasCode::Omega, ~0ull, v) == EliasStatus::Truncated, "empty omega");
  }
}

static std::vector<uint8_t> pack(const std::vector<uint32_t>& symbols, int width) {
  std::vector<uint8_t> out(packed_bytes((int64_t)symbols.size(), width), 0);
  for (size_t i = 0; i < symbols.size(); ++i)
    for (int b = 0; b < width; ++b)
      if ((symbols[i] >> b) & 1u) out[(i * width + b) / 8] |= static_cast<uint8_t>(1u << ((i * width + b) % 8));
  return out;
}

// Encodes every bucket, concatenated; returns per-bucket byte lengths.
static std::vector<int64_t> encode_all(const std::vector<uint8_t>& packed, int width, int levels,
                                       int64_t n, int64_t bucket, EliasCode c,
                                       std::vector<uint8_t>& stream) {
  std::vector<int64_t> lengths;
  stream.clear();
  for (int64_t b = 0; b * bucket < n; ++b) {
    const int64_t begin = b * bucket, end = std::min(n, begin + bucket);
    const int64_t bits = elias_bucket_bits(packed.data(), width, levels, begin, end, c);
    if (bits < 0) return {};
    const size_t at = stream.size();
    stream.resize(at + (bits + 7) / 8);
    elias_encode_bucket(packed.data(), width, begin, end, c, stream.data() + at);
    lengths.push_back((bits + 7) / 8);
  }
  return lengths;
}

static EliasStatus decode_all(const std::vector<uint8_t>& stream, const std::vector<int64_t>& lengths,
                              int width, int levels, int64_t n, int64_t bucket, EliasCode c,
                              std::vector<uint8_t>& out, const DecodeTable* table = nullptr) {
  out.assign(packed_bytes(n, width), 0xCD);
  PackedWriter sink(out.data());
  int64_t at = 0;
  for (size_t b = 0; b < lengths.size(); ++b) {
    const int64_t count = std::min<int64_t>(bucket, n - (int64_t)b * bucket);
    const EliasStatus s = elias_decode_bucket(stream.data() + at, lengths[b], count, levels, width, c, sink, table);
    if (s != EliasStatus::Ok) return s;
    at += lengths[b];
  }
  sink.finish();
  return EliasStatus::Ok;
}

static void test_bucket_round_trips() {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 600; ++trial) {
    const int width = 2 + static_cast<int>(rng() % 7);
    const int levels = 2 + static_cast<int>(rng() % ((1u << (width - 1)) - 1));
    const int64_t n = static_cast<int64_t>(rng() % 700);
    const int64_t bucket = 1 + static_cast<int64_t>(rng() % 97);
    const double p_zero = (rng() % 100) / 100.0;
    std::vector<uint32_t> sym(n);
    for (auto& s : sym) {
      if (std::uniform_real_distribution<double>(0, 1)(rng) < p_zero) {
        s = 0;
      } else {
        s = ((1 + rng() % (levels - 1)) << 1) | (rng() & 1);
      }
    }
    const std::vector<uint8_t> packed = pack(sym, width);
    for (EliasCode c : kCodes) {
      std::vector<uint8_t> stream, decoded;
      const std::vector<int64_t> lengths = encode_all(packed, width, levels, n, bucket, c, stream);
      EXPECT((int64_t)lengths.size() == (n + bucket - 1) / bucket, "lengths");
      // Stream length against the textbook code lengths.
      int64_t want_bits = 0, got_bytes = 0;
      for (int64_t b = 0; b * bucket < n; ++b) {
        int64_t bits = 0, run = 0;
        for (int64_t i = b * bucket; i < std::min(n, (b + 1) * bucket); ++i) {
          if (sym[i] == 0) { ++run; continue; }
          bits += ref_code(run + 1, c).size() + ref_code(sym[i] >> 1, c).size() + 1;
          run = 0;
        }
        if (run) bits += ref_code(run + 1, c).size();
        want_bits += (bits + 7) / 8;
        got_bytes += lengths[b];
      }
      EXPECT(want_bits == got_bytes, "byte count %lld vs %lld", (long long)got_bytes, (long long)want_bits);
      EXPECT(decode_all(stream, lengths, width, levels, n, bucket, c, decoded) == EliasStatus::Ok &&
                 decoded == packed,
             "round trip width=%d n=%lld bucket=%lld", width, (long long)n, (long long)bucket);
      // The table-driven paths (what the CPU backend runs) give the same bytes.
      const DecodeTable table(c, levels);
      EXPECT(decode_all(stream, lengths, width, levels, n, bucket, c, decoded, &table) == EliasStatus::Ok &&
                 decoded == packed,
             "table decode width=%d n=%lld bucket=%lld", width, (long long)n, (long long)bucket);
      const TableCoder coder(c);
      std::vector<uint8_t> again;
      for (int64_t b = 0; b * bucket < n; ++b) {
        const int64_t begin = b * bucket, end = std::min(n, begin + bucket);
        const int64_t bits = elias_bucket_bits(packed.data(), width, levels, begin, end, coder);
        std::vector<uint8_t> part((bits + 7) / 8);
        elias_encode_bucket(packed.data(), width, begin, end, coder, part.data());
        again.insert(again.end(), part.begin(), part.end());
      }
      EXPECT(again == stream, "table encode width=%d n=%lld", width, (long long)n);
      // The one-pass encoder (the CPU backend's) writes the same bytes, within its bound.
      std::vector<uint8_t> once;
      for (int64_t b = 0; b * bucket < n; ++b) {
        const int64_t begin = b * bucket, end = std::min(n, begin + bucket);
        std::vector<uint8_t> part(elias_bucket_bound_bytes(end - begin) + 16, 0xA5);
        const int64_t bytes = elias_encode_bucket_checked(packed.data(), width, levels, begin, end, coder,
                                                          part.data());
        EXPECT(bytes >= 0 && bytes <= elias_bucket_bound_bytes(end - begin), "one-pass bytes %lld",
               (long long)bytes);
        for (size_t k = static_cast<size_t>(std::max<int64_t>(bytes, 0)); k < part.size(); ++k) {
          EXPECT(part[k] == 0xA5, "one-pass encoder wrote past its length");
        }
        once.insert(once.end(), part.begin(), part.begin() + std::max<int64_t>(bytes, 0));
      }
      EXPECT(once == stream, "one-pass encode width=%d n=%lld", width, (long long)n);
    }
  }
  // Uncodable symbols are refused by the encoder.
  std::vector<uint8_t> bad = pack({0, 1, 4}, 3);
  EXPECT(elias_bucket_bits(bad.data(), 3, 4, 0, 3, EliasCode::Gamma) == -1, "signed zero");
  std::vector<uint8_t> scratch(64);
  EXPECT(elias_encode_bucket_checked(bad.data(), 3, 4, 0, 3, TableCoder(EliasCode::Gamma), scratch.data()) == -1,
         "one-pass: signed zero");
  bad = pack({0, 6, 4}, 3);
  EXPECT(elias_bucket_bits(bad.data(), 3, 3, 0, 3, EliasCode::Gamma) == -1, "index 3 of 3 levels");
  EXPECT(elias_encode_bucket_checked(bad.data(), 3, 3, 0, 3, TableCoder(EliasCode::Omega), scratch.data()) == -1,
         "one-pass: index 3 of 3 levels");
  // The bound holds for the costliest inputs: every symbol the largest index, and one long run.
  for (EliasCode c : kCodes) {
    const TableCoder coder(c);
    std::vector<uint32_t> dense(1000, 255u), sparse(100000, 0u);
    sparse.back() = 2u;
    for (const auto& symbols : {dense, sparse}) {
      const std::vector<uint8_t> p = pack(symbols, 8);
      const int64_t count = static_cast<int64_t>(symbols.size());
      const int64_t bits = elias_bucket_bits(p.data(), 8, 128, 0, count, coder);
      EXPECT(bits >= 0 && (bits + 7) / 8 <= elias_bucket_bound_bytes(count), "bound: %lld bits for %lld",
             (long long)bits, (long long)count);
    }
  }
}

static void test_random_bytes() {
  std::mt19937_64 rng(11);
  static std::vector<std::vector<DecodeTable>> tables;
  for (EliasCode c : kCodes) {
    tables.emplace_back();
    for (int levels = 0; levels <= 128; ++levels) tables.back().emplace_back(c, levels < 2 ? 2 : levels);
  }
  int accepted = 0;
  for (int trial = 0; trial < 300000; ++trial) {
    const int width = 2 + static_cast<int>(rng() % 7);
    const int levels = 2 + static_cast<int>(rng() % ((1u << (width - 1)) - 1));
    const EliasCode c = kCodes[rng() % 3];
    const int64_t count = 1 + static_cast<int64_t>(rng() % 40);
    // Bytes skewed towards zeros and ones so codes get both long and short.
    std::vector<uint8_t> bytes(rng() % 24);
    const int mode = static_cast<int>(rng() % 3);
    for (auto& b : bytes) b = mode == 0 ? (uint8_t)rng() : mode == 1 ? (uint8_t)(rng() % 4) : (uint8_t)(0xF0 | rng());
    // Exactly-sized heap buffer: ASan catches any read past it.
    std::vector<uint8_t> out(packed_bytes(count, width));
    PackedWriter sink(out.data());
    const EliasStatus s = elias_decode_bucket(bytes.data(), (int64_t)bytes.size(), count, levels, width, c, sink);
    EXPECT((int)s >= 0 && (int)s <= 6, "status %d", (int)s);
    {  // The table fast path accepts and rejects exactly the same buckets.
      const DecodeTable& table = tables[static_cast<int>(c)][levels];
      std::vector<uint8_t> out2(out.size());
      PackedWriter sink2(out2.data());
      const EliasStatus s2 = elias_decode_bucket(bytes.data(), (int64_t)bytes.size(), count, levels, width, c, sink2, &table);
      EXPECT(s2 == s, "table status %d vs %d", (int)s2, (int)s);
      if (s == EliasStatus::Ok) {
        sink.finish();
        sink2.finish();
        EXPECT(sink.out == out.data() + out.size(), "decoded size");
        EXPECT(out2 == out, "table decode differs");
      }
    }
    if (s == EliasStatus::Ok) {
      ++accepted;
      // Canonical: re-encoding what was accepted gives the same bytes.
      const int64_t bits = elias_bucket_bits(out.data(), width, levels, 0, count, c);
      std::vector<uint8_t> again((bits + 7) / 8);
      elias_encode_bucket(out.data(), width, 0, count, c, again.data());
      EXPECT(again == bytes, "re-encode of an accepted random bucket differs");
    }
  }
  EXPECT(accepted > 100, "only %d random buckets accepted: the fuzz loop misses the happy path", accepted);
}

int main() {
  test_hand_checked_codes();
  test_codes_match_definitions();
  test_rejections();
  test_bucket_round_trips();
  test_random_bytes();
  if (failures) {
    std::fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  std::printf("test_elias: all passed\n");
  return 0;
}
