// The wire format of one quantized tensor (docs/codecs.md), read and validated in one place:
// torch-free, host only. A payload is untrusted input, so every header field, every section size
// and every value is checked before it is used to read or allocate anything, in this order:
//
//   check_header     magic, version, field ranges, fixed stream size  (codecs.read_header)
//   check_layout     element count against the caller's limits, section sizes vs payload size
//   check_sections   level table (+ CRC, canonical kind, expected levels), norms, bucket lengths
//   stream           fixed: check_fixed_padding, check_fixed_indices; Elias: every bucket
//                    (core/elias.h)
//
// The ops behind commcomp.codecs (read_payload_header, decode_payload: csrc/payload/) call these
// functions, and so does the libFuzzer harness (fuzz/payload_fuzzer.cpp) on raw bytes, through
// decode_payload_serial below. A failing check returns false with the message the Python decoder
// raises after "malformed payload: ".
#pragma once

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "bitpack.h"
#include "crc32.h"
#include "elias.h"
#include "levels.h"
#include "sizes.h"

// Level tables and norms are read and written as the host's float32 bytes; the format is
// little-endian (codecs.py refuses other hosts too).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format needs a little-endian host");

namespace commcomp {
namespace wire {

constexpr uint8_t kMagic[4] = {'C', 'C', 'Q', 'W'};
constexpr int kVersion = 1;
constexpr int64_t kHeaderBytes = 36;  // keeps the float32 sections 4-byte aligned

enum Coding : int { kFixed = 0, kEliasGamma = 1, kEliasDelta = 2, kEliasOmega = 3 };
enum LevelsKind : int { kUniform = 1, kExponential = 2, kTable = 3 };
enum DType : int { kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3 };

inline const char* coding_name(int coding) {
  switch (coding) {
    case kFixed: return "fixed";
    case kEliasGamma: return "elias-gamma";
    case kEliasDelta: return "elias-delta";
    case kEliasOmega: return "elias-omega";
  }
  return "?";
}

inline const char* levels_kind_name(int kind) {
  switch (kind) {
    case kUniform: return "uniform";
    case kExponential: return "exponential";
    case kTable: return "table";
  }
  return "?";
}

inline EliasCode elias_code_of(int coding) { return static_cast<EliasCode>(coding - 1); }

// A failed check's message, formatted once.
struct Error {
  char message[400] = {0};

  // Formats the message and returns false, so checks read `return e.fail(...)`.
  __attribute__((format(printf, 2, 3))) bool fail(const char* format, ...) {
    va_list args;
    va_start(args, format);
    std::vsnprintf(message, sizeof message, format, args);
    va_end(args);
    return false;
  }
};

// ---- Header: 36 bytes, little-endian --------------------------------------------------------

struct Header {
  uint8_t magic[4];
  uint8_t version, coding, levels_kind, num_levels, bits, dtype, length_bytes, reserved;
  uint32_t bucket_size;
  uint64_t numel, stream_bytes;
  uint32_t levels_crc;
};

inline uint64_t load_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | p[k];
  return v;
}

inline void store_le(uint64_t v, uint8_t* p, int bytes) {
  for (int k = 0; k < bytes; ++k) p[k] = static_cast<uint8_t>(v >> (8 * k));
}

// Reads the fields of kHeaderBytes bytes at `p` (no checks).
inline Header load_header(const uint8_t* p) {
  Header h;
  std::memcpy(h.magic, p, 4);
  h.version = p[4];
  h.coding = p[5];
  h.levels_kind = p[6];
  h.num_levels = p[7];
  h.bits = p[8];
  h.dtype = p[9];
  h.length_bytes = p[10];
  h.reserved = p[11];
  h.bucket_size = static_cast<uint32_t>(load_le(p + 12, 4));
  h.numel = load_le(p + 16, 8);
  h.stream_bytes = load_le(p + 24, 8);
  h.levels_crc = static_cast<uint32_t>(load_le(p + 32, 4));
  return h;
}

// The inverse of load_header (kHeaderBytes bytes at `p`).
inline void store_header(const Header& h, uint8_t* p) {
  std::memcpy(p, h.magic, 4);
  const uint8_t small[8] = {h.version, h.coding, h.levels_kind, h.num_levels,
                            h.bits,    h.dtype,  h.length_bytes, h.reserved};
  std::memcpy(p + 4, small, 8);
  store_le(h.bucket_size, p + 12, 4);
  store_le(h.numel, p + 16, 8);
  store_le(h.stream_bytes, p + 24, 8);
  store_le(h.levels_crc, p + 32, 4);
}

// Python's repr of 4 bytes (b'CCQW', b'\x00...'), for the bad-magic message.
inline void bytes_repr(const uint8_t* b, int n, char* out, size_t size) {
  size_t at = 0;
  auto put = [&](const char* s) {
    for (; *s && at + 1 < size; ++s) out[at++] = *s;
  };
  put("b'");
  for (int k = 0; k < n; ++k) {
    char piece[8];
    const uint8_t c = b[k];
    if (c == '\\' || c == '\'') {
      std::snprintf(piece, sizeof piece, "\\%c", c);
    } else if (c == '\t' || c == '\n' || c == '\r') {
      std::snprintf(piece, sizeof piece, "\\%c", c == '\t' ? 't' : c == '\n' ? 'n' : 'r');
    } else if (c >= 32 && c < 127) {
      std::snprintf(piece, sizeof piece, "%c", c);
    } else {
      std::snprintf(piece, sizeof piece, "\\x%02x", c);
    }
    put(piece);
  }
  put("'");
  out[at] = '\0';
}

// The header checks of codecs.read_header: `size` is the whole payload's byte count.
inline bool check_header(const uint8_t* data, int64_t size, Header& h, Error& e) {
  if (size < kHeaderBytes) {
    return e.fail("%lld bytes is shorter than the %lld-byte header (truncated)",
                  static_cast<long long>(size), static_cast<long long>(kHeaderBytes));
  }
  h = load_header(data);
  if (std::memcmp(h.magic, kMagic, 4) != 0) {
    char got[40], want[40];
    bytes_repr(h.magic, 4, got, sizeof got);
    bytes_repr(kMagic, 4, want, sizeof want);
    return e.fail("bad magic %s, expected %s (not a commcomp payload)", got, want);
  }
  if (h.version != kVersion) {
    return e.fail("unsupported format version %d, this build reads version %d", h.version,
                  kVersion);
  }
  if (h.coding > kEliasOmega) return e.fail("unknown coding id %d", h.coding);
  if (h.levels_kind < kUniform || h.levels_kind > kTable) {
    return e.fail("unknown levels kind %d", h.levels_kind);
  }
  if (h.num_levels < 2 || h.num_levels > kMaxLevels) {
    return e.fail("level count %d outside [2, %d]", h.num_levels, kMaxLevels);
  }
  const int width = symbol_width_for(h.num_levels);
  if (h.bits != width) {
    return e.fail("bits=%d disagrees with %d levels (expected %d)", h.bits, h.num_levels, width);
  }
  if (h.dtype < kFloat32 || h.dtype > kBFloat16) return e.fail("unknown dtype code %d", h.dtype);
  const bool fixed = h.coding == kFixed;
  if (fixed ? h.length_bytes != 0 : h.length_bytes != 2 && h.length_bytes != 4) {
    return e.fail("bucket length field of %d bytes is invalid for coding '%s'", h.length_bytes,
                  coding_name(h.coding));
  }
  if (h.reserved != 0) return e.fail("reserved byte is %d, expected 0", h.reserved);
  if (h.bucket_size == 0) return e.fail("bucket size 0");
  if (fixed && h.stream_bytes != packed_bytes_u64(h.numel, h.bits)) {
    return e.fail("fixed-width stream of %llu bytes cannot hold %llu symbols of %d bits",
                  static_cast<unsigned long long>(h.stream_bytes),
                  static_cast<unsigned long long>(h.numel), h.bits);
  }
  return true;
}

// ---- Layout: limits and section sizes ------------------------------------------------------

// What the receiver expects; -1 / nullptr: no constraint.
struct Expect {
  int64_t max_numel = kMaxNumel;  // kMaxNumel applies too, whatever the caller asks
  int64_t numel = -1;
  int64_t bucket_size = -1;
  const float* levels = nullptr;
  int num_levels = 0;
};

// Byte offsets of the sections of a payload whose sizes agree with its header.
struct Layout {
  int64_t numel;
  int64_t buckets;
  int64_t table_at, norms_at, lengths_at, stream_at, end;
};

inline bool check_layout(const Header& h, int64_t size, const Expect& x, Layout& at, Error& e) {
  const unsigned long long numel = h.numel;
  if (x.numel >= 0 && numel != static_cast<uint64_t>(x.numel)) {
    return e.fail("holds %llu elements, expected %lld", numel, static_cast<long long>(x.numel));
  }
  if (numel > static_cast<uint64_t>(x.max_numel)) {
    return e.fail("announces %llu elements, above max_numel=%lld", numel,
                  static_cast<long long>(x.max_numel));
  }
  if (numel > static_cast<uint64_t>(kMaxNumel)) {
    return e.fail("announces %llu elements, above the %lld any op accepts", numel,
                  static_cast<long long>(kMaxNumel));
  }
  if (x.bucket_size >= 0 && h.bucket_size != x.bucket_size) {
    return e.fail("bucket size %u differs from the expected quantizer's %lld", h.bucket_size,
                  static_cast<long long>(x.bucket_size));
  }
  // numel <= 2^48 from here on: every section but the stream is small enough to add.
  at.numel = static_cast<int64_t>(numel);
  at.buckets = bucket_count(at.numel, h.bucket_size);
  at.table_at = kHeaderBytes;
  at.norms_at = at.table_at + (h.levels_kind == kTable ? 4 * h.num_levels : 0);
  at.lengths_at = at.norms_at + 4 * at.buckets;
  at.stream_at = at.lengths_at + h.length_bytes * at.buckets;
  const bool fits = h.stream_bytes <= static_cast<uint64_t>(kInt64Max) &&
                    checked_add(at.stream_at, static_cast<int64_t>(h.stream_bytes), at.end);
  if (!fits || at.end != size) {
    const char* what = !fits || size < at.end ? "truncated" : "oversized";
    if (!fits) {
      return e.fail("%lld bytes but the header announces more than %lld (%s)",
                    static_cast<long long>(size), static_cast<long long>(kInt64Max), what);
    }
    return e.fail("%lld bytes but the header announces %lld (%s)", static_cast<long long>(size),
                  static_cast<long long>(at.end), what);
  }
  return true;
}

// ---- Sections before the stream --------------------------------------------------------------

struct LevelValues {
  float value[kMaxLevels];
  int count;
};

// The message of a LevelsStatus for `value[0..count)`, as the op argument checks and the decoder
// word it.
inline void describe_levels_error(LevelsStatus s, const float* value, int64_t count, int at,
                                  char* out, size_t size) {
  switch (s) {
    case LevelsStatus::Ok:
      std::snprintf(out, size, "ok");
      break;
    case LevelsStatus::BadCount:
      std::snprintf(out, size, "levels must have 2..%d entries, got %lld", kMaxLevels,
                    static_cast<long long>(count));
      break;
    case LevelsStatus::NotANumber:
      std::snprintf(out, size, "levels must not be NaN, got NaN at levels[%d]", at);
      break;
    case LevelsStatus::BadEnds:
      std::snprintf(out, size, "levels must start at 0 and end at 1, got %.9g and %.9g",
                    static_cast<double>(value[0]), static_cast<double>(value[count - 1]));
      break;
    case LevelsStatus::NotIncreasing:
      std::snprintf(out, size,
                    "levels must be strictly increasing, but levels[%d] = %.9g <= levels[%d] = %.9g",
                    at, static_cast<double>(value[at]), at - 1,
                    static_cast<double>(value[at - 1]));
      break;
  }
}

inline bool same_levels(const float* a, const float* b, int count) {
  for (int j = 0; j < count; ++j) {
    if (!(a[j] == b[j])) return false;
  }
  return true;
}

// The kind an encoder writes for a table: the first named family it equals, else kTable.
inline int canonical_levels_kind(const float* value, int count) {
  float named[kMaxLevels];
  uniform_level_values(count, named);
  if (same_levels(value, named, count)) return kUniform;
  exponential_level_values(count, named);
  if (same_levels(value, named, count)) return kExponential;
  return kTable;
}

inline uint32_t levels_crc(const float* value, int count) {
  uint8_t bytes[4 * kMaxLevels];
  std::memcpy(bytes, value, 4 * static_cast<size_t>(count));  // little-endian host (codecs.py)
  return crc32(bytes, 4 * static_cast<size_t>(count));
}

// The level table a payload announces (embedded or named), checked as a table, against the
// header's CRC, for its canonical kind and against the expected levels.
inline bool check_levels(const uint8_t* data, const Header& h, const Layout& at, const Expect& x,
                         LevelValues& levels, Error& e) {
  const int count = h.num_levels;
  levels.count = count;
  if (h.levels_kind == kTable) {
    std::memcpy(levels.value, data + at.table_at, 4 * static_cast<size_t>(count));
    int bad = 0;
    const LevelsStatus s = level_values_status(levels.value, count, bad);
    if (s != LevelsStatus::Ok) {
      char why[200];
      describe_levels_error(s, levels.value, count, bad, why, sizeof why);
      return e.fail("level table is invalid: %s", why);
    }
  } else if (h.levels_kind == kUniform) {
    uniform_level_values(count, levels.value);
  } else {
    exponential_level_values(count, levels.value);
  }
  if (levels_crc(levels.value, count) != h.levels_crc) {
    return e.fail("level table CRC mismatch: the sender used different levels");
  }
  if (canonical_levels_kind(levels.value, count) != h.levels_kind) {
    return e.fail("levels of kind '%s' are those of another kind (non-canonical payload)",
                  levels_kind_name(h.levels_kind));
  }
  if (x.levels != nullptr &&
      (x.num_levels != count || !same_levels(x.levels, levels.value, count))) {
    return e.fail("level table differs from the expected quantizer's (%d levels, the payload's %d)",
                  x.num_levels, count);
  }
  return true;
}

// Norms a decoder may scale by: finite and >= 0.
inline bool check_norms(const uint8_t* data, const Layout& at, Error& e) {
  for (int64_t b = 0; b < at.buckets; ++b) {
    float n;
    std::memcpy(&n, data + at.norms_at + 4 * b, 4);
    if (!(n >= 0.0f && n <= kFloatMax)) return e.fail("norms must be finite and >= 0");
  }
  return true;
}

// One length per bucket, each within the stream, summing to it (the elias_decode op's check too).
inline bool check_bucket_lengths(const int64_t* lengths, int64_t buckets, int64_t stream_bytes,
                                 Error& e) {
  if (buckets == 0) {
    if (stream_bytes != 0) {
      return e.fail("stream must be empty for numel=0, got %lld bytes",
                    static_cast<long long>(stream_bytes));
    }
    return true;
  }
  int64_t lo = lengths[0], hi = lengths[0];
  for (int64_t b = 1; b < buckets; ++b) {
    lo = lengths[b] < lo ? lengths[b] : lo;
    hi = lengths[b] > hi ? lengths[b] : hi;
  }
  if (lo < 0 || hi > stream_bytes) {
    return e.fail("bucket_bytes must lie in [0, %lld] (the stream's size), got values in [%lld, %lld]",
                  static_cast<long long>(stream_bytes), static_cast<long long>(lo),
                  static_cast<long long>(hi));
  }
  int64_t total = 0;
  for (int64_t b = 0; b < buckets; ++b) {
    if (!checked_add(total, lengths[b], total)) {
      return e.fail("bucket_bytes sum to more than %lld but the stream holds %lld bytes",
                    static_cast<long long>(kInt64Max), static_cast<long long>(stream_bytes));
    }
  }
  if (total != stream_bytes) {
    return e.fail("bucket_bytes sum to %lld but the stream holds %lld bytes",
                  static_cast<long long>(total), static_cast<long long>(stream_bytes));
  }
  return true;
}

// Reads an Elias payload's bucket lengths into lengths[0..buckets) and checks them.
inline bool read_lengths(const uint8_t* data, const Header& h, const Layout& at, int64_t* lengths,
                         Error& e) {
  int64_t hi = -1;
  for (int64_t b = 0; b < at.buckets; ++b) {
    lengths[b] = static_cast<int64_t>(load_le(data + at.lengths_at + h.length_bytes * b,
                                              h.length_bytes));
    hi = lengths[b] > hi ? lengths[b] : hi;
  }
  if (h.length_bytes == 4 && hi < (int64_t{1} << 16)) {
    return e.fail("32-bit bucket lengths where 16-bit ones fit (non-canonical payload)");
  }
  return check_bucket_lengths(lengths, at.buckets, at.end - at.stream_at, e);
}

// Everything before the stream: `data` holds at least at.stream_at bytes. `lengths` (Elias only)
// receives at.buckets entries.
inline bool check_sections(const uint8_t* data, const Header& h, const Layout& at, const Expect& x,
                           LevelValues& levels, int64_t* lengths, Error& e) {
  if (!check_levels(data, h, at, x, levels, e)) return false;
  if (!check_norms(data, at, e)) return false;
  return h.coding == kFixed || read_lengths(data, h, at, lengths, e);
}

// ---- The stream ----------------------------------------------------------------------------

// A fixed-width stream (exactly packed_bytes(numel, bits) bytes, the last one `last_byte`) must
// end in zero padding bits.
inline bool check_fixed_padding(uint8_t last_byte, const Header& h, const Layout& at, Error& e) {
  const int64_t used_bits = at.numel * h.bits;  // numel <= 2^48
  if (used_bits % 8 != 0 && (last_byte >> (used_bits % 8)) != 0) {
    return e.fail("padding bits after the last fixed-width symbol are not zero");
  }
  return true;
}

// Whether some index value of a `bits`-wide symbol names no level (e.g. 5 levels in 3 index bits).
inline bool fixed_indices_need_check(const Header& h) {
  return h.num_levels < (1 << (h.bits - 1));
}

// No symbol of a fixed-width stream may name a level the table lacks.
inline bool check_fixed_indices(const uint8_t* stream, const Header& h, const Layout& at,
                                Error& e) {
  if (!fixed_indices_need_check(h)) return true;
  const int width = h.bits;
  uint32_t max_index = 0;
  const int64_t groups = ceil_div(at.numel, kPackGroup);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t left = at.numel - g * kPackGroup;
    const int n = left < kPackGroup ? static_cast<int>(left) : kPackGroup;
    const uint64_t bits = load_group(stream, g, n, width);
    for (int k = 0; k < n; ++k) {
      const uint32_t index = group_symbol(bits, k, width) >> 1;
      max_index = index > max_index ? index : max_index;
    }
  }
  if (max_index >= h.num_levels) {
    return e.fail("a symbol names level index %u but there are %d levels", max_index,
                  h.num_levels);
  }
  return true;
}

inline bool elias_bucket_error(int64_t bucket, EliasStatus s, Error& e) {
  return e.fail("malformed Elias stream in bucket %lld: %s", static_cast<long long>(bucket),
                elias_status_message(s));
}

// Decodes every bucket of an Elias stream, one after the other, into `packed`
// (packed_bytes(numel, bits) bytes): the per-bucket decoder of the CPU and CUDA ops
// (core/elias.h), without their parallel loops; `tabulated` picks the CPU's table fast path
// (what the CPU op runs) or the plain bit reader (what the CUDA kernels run).
inline bool decode_elias_stream(const uint8_t* stream, const int64_t* lengths, const Header& h,
                                const Layout& at, uint8_t* packed, Error& e,
                                bool tabulated = true) {
  const EliasCode code = elias_code_of(h.coding);
  const auto table = tabulated ? std::make_unique<DecodeTable>(code, h.num_levels) : nullptr;
  PackedWriter sink(packed);
  int64_t offset = 0;
  for (int64_t b = 0; b < at.buckets; ++b) {
    const int64_t first = b * static_cast<int64_t>(h.bucket_size);
    const int64_t count = at.numel - first < h.bucket_size ? at.numel - first : h.bucket_size;
    const EliasStatus s = elias_decode_bucket(stream + offset, lengths[b], count, h.num_levels,
                                              h.bits, code, sink, table.get());
    if (s != EliasStatus::Ok) return elias_bucket_error(b, s, e);
    offset += lengths[b];
  }
  sink.finish();
  return true;
}

// ---- Whole payloads ------------------------------------------------------------------------

// A decoded payload: what codecs.decode returns, as plain arrays.
struct Decoded {
  Header header;
  Layout layout;
  LevelValues levels;
  std::vector<float> norms;
  std::vector<uint8_t> symbols;  // packed at header.bits per element
};

// Validates and decodes `size` bytes with every check, serially. The libFuzzer harness and the C++
// tests use it; the ops run the same checks, with their backends' parallel Elias decoders.
inline bool decode_payload_serial(const uint8_t* data, int64_t size, const Expect& x, Decoded& out,
                                  Error& e, bool tabulated = true) {
  Header& h = out.header;
  Layout& at = out.layout;
  if (!check_header(data, size, h, e) || !check_layout(h, size, x, at, e)) return false;
  std::vector<int64_t> lengths(h.coding == kFixed ? 0 : static_cast<size_t>(at.buckets));
  if (!check_sections(data, h, at, x, out.levels, lengths.data(), e)) return false;
  out.norms.resize(static_cast<size_t>(at.buckets));
  if (at.buckets) std::memcpy(out.norms.data(), data + at.norms_at, 4 * out.norms.size());
  const uint8_t* stream = data + at.stream_at;
  if (h.coding == kFixed) {
    const int64_t bytes = at.end - at.stream_at;
    if (bytes > 0 && !check_fixed_padding(stream[bytes - 1], h, at, e)) return false;
    if (!check_fixed_indices(stream, h, at, e)) return false;
    out.symbols.assign(stream, data + at.end);
    return true;
  }
  out.symbols.assign(static_cast<size_t>(packed_bytes(at.numel, h.bits)), 0);
  return decode_elias_stream(stream, lengths.data(), h, at, out.symbols.data(), e, tabulated);
}

}  // namespace wire
}  // namespace commcomp
