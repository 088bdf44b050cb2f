// Elias universal codes (gamma, delta, omega) and the per-bucket entropy coding of quantized
// symbols used by the wire format (QSGD §3.2, NUQSGD §4): a bucket is the sequence of
//   (zeros before the next nonzero symbol + 1, its level index, its sign bit)
// with a final zero run, if any, coded alone; the element count of the bucket marks its end.
//
// Bit order: Elias streams are MSB-first (bit 7 of byte 0 comes first), the natural order for
// prefix codes: the leading zeros of a gamma code are a count-leading-zeros of the next word.
// (Fixed-width symbol packing, bitpack.h, is LSB-first; the two never share a stream.)
//
// Every bucket starts on a byte boundary and ends with zero padding, so buckets are encoded and
// decoded independently (one loop iteration or one GPU thread each) once their byte offsets are
// known. The decoder trusts nothing: its reader never touches a byte outside the bucket, it
// rejects codes whose value would not fit in 64 bits, values above what the bucket can hold, and
// non-canonical padding, and it costs O(bits read + elements written) on any input.
#pragma once

#include "bitpack.h"
#include "macros.h"

namespace commcomp {

enum class EliasCode : int { Gamma = 0, Delta = 1, Omega = 2 };

COMMCOMP_HD bool valid_elias_code(int64_t code) { return code >= 0 && code <= 2; }

// Why a bucket failed to decode. Values are part of error messages only, not of the format.
enum class EliasStatus : int {
  Ok = 0,
  Truncated = 1,       // a code runs past the end of the bucket's bytes
  CodeTooLong = 2,     // a code's value would need more than 64 bits
  RunPastEnd = 3,      // a zero run reaches past the bucket's element count
  BadIndex = 4,        // a level index >= the number of levels
  TrailingBytes = 5,   // the bucket's bytes continue after its last element
  BadPadding = 6,      // nonzero padding bits after the last code
  BadSymbol = 7,       // (encoder) an input symbol with index >= levels, or index 0 with sign 1
};

COMMCOMP_HD const char* elias_status_message(EliasStatus s) {
  switch (s) {
    case EliasStatus::Ok: return "ok";
    case EliasStatus::Truncated: return "a code runs past the end of the bucket's bytes (truncated)";
    case EliasStatus::CodeTooLong: return "a code is longer than 64 bits";
    case EliasStatus::RunPastEnd: return "a run of zeros reaches past the end of the bucket";
    case EliasStatus::BadIndex: return "a level index is out of range for the level table";
    case EliasStatus::TrailingBytes: return "the bucket has bytes left after its last element";
    case EliasStatus::BadPadding: return "padding bits after the last code are not zero";
    case EliasStatus::BadSymbol: return "a symbol has an out-of-range level index or a signed zero";
  }
  return "unknown error";
}

// Number of significant bits of v > 0: floor(log2 v) + 1.
COMMCOMP_HD int bit_length(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return 64 - __clzll(static_cast<long long>(v));
#else
  return 64 - __builtin_clzll(v);
#endif
}

COMMCOMP_HD int count_leading_zeros64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __clzll(static_cast<long long>(v));
#else
  return v == 0 ? 64 : __builtin_clzll(v);
#endif
}

COMMCOMP_HD int count_trailing_zeros64(uint64_t v) {
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(v)) - 1;
#else
  return __builtin_ctzll(v);
#endif
}

// ---- Code lengths (v >= 1) -------------------------------------------------------------------

// gamma(v): floor(log2 v) zeros, then v in binary.
COMMCOMP_HD int gamma_length(uint64_t v) { return 2 * bit_length(v) - 1; }

// delta(v): gamma(bit_length(v)), then v without its leading 1.
COMMCOMP_HD int delta_length(uint64_t v) {
  const int n = bit_length(v);
  return n - 1 + gamma_length(static_cast<uint64_t>(n));
}

// omega(v): groups v, bit_length(v) - 1, ... down to a group of 2 or 3, written in reverse, then 0.
COMMCOMP_HD int omega_length(uint64_t v) {
  int length = 1;
  while (v > 1) {
    const int n = bit_length(v);
    length += n;
    v = static_cast<uint64_t>(n - 1);
  }
  return length;
}

COMMCOMP_HD int elias_length(uint64_t v, EliasCode code) {
  switch (code) {
    case EliasCode::Gamma: return gamma_length(v);
    case EliasCode::Delta: return delta_length(v);
    default: return omega_length(v);
  }
}

// ---- Bit writer: MSB-first into a buffer sized by elias_bucket_bits ------------------------------

struct BitWriter {
  uint8_t* out;
  uint64_t acc = 0;  // the low `fill` bits are pending output, oldest bit highest
  int fill = 0;      // < 32 between calls

  COMMCOMP_HD explicit BitWriter(uint8_t* dst) : out(dst) {}

  // Appends the low `length` bits of v (length <= 32, v < 2^length), most significant first.
  COMMCOMP_HD void put(uint64_t v, int length) {
    acc = (acc << length) | v;
    fill += length;
    if (fill >= 32) {
      fill -= 32;
      const uint32_t word = static_cast<uint32_t>(acc >> fill);
      out[0] = static_cast<uint8_t>(word >> 24);
      out[1] = static_cast<uint8_t>(word >> 16);
      out[2] = static_cast<uint8_t>(word >> 8);
      out[3] = static_cast<uint8_t>(word);
      out += 4;
    }
  }

  // Any length in [0, 64].
  COMMCOMP_HD void put_long(uint64_t v, int length) {
    if (length > 32) {
      put(v >> 32, length - 32);
      put(v & 0xFFFFFFFFull, 32);
    } else {
      put(v, length);
    }
  }

  // Zero-pads to a byte boundary and writes what is pending.
  COMMCOMP_HD void finish() {
    const int pad = (8 - fill % 8) % 8;
    acc <<= pad;
    fill += pad;
    while (fill > 0) {
      fill -= 8;
      *out++ = static_cast<uint8_t>(acc >> fill);
    }
  }
};

COMMCOMP_HD void write_gamma(BitWriter& w, uint64_t v) {
  // v has n significant bits; writing it in 2n-1 bits supplies the n-1 leading zeros for free.
  const int n = bit_length(v);
  if (n <= 32) {
    w.put_long(v, 2 * n - 1);
  } else {
    w.put_long(0, n - 1);
    w.put_long(v, n);
  }
}

COMMCOMP_HD void write_delta(BitWriter& w, uint64_t v) {
  const int n = bit_length(v);
  write_gamma(w, static_cast<uint64_t>(n));
  w.put_long(n > 1 ? v & ((~0ull) >> (65 - n)) : 0ull, n - 1);
}

COMMCOMP_HD void write_omega(BitWriter& w, uint64_t v) {
  uint64_t groups[8];  // at most 6 groups for a 64-bit value (64 -> 6 -> 2)
  int count = 0;
  while (v > 1) {
    groups[count++] = v;
    v = static_cast<uint64_t>(bit_length(v) - 1);
  }
  while (count > 0) {
    const uint64_t g = groups[--count];
    w.put_long(g, bit_length(g));
  }
  w.put(0, 1);
}

COMMCOMP_HD void write_elias(BitWriter& w, uint64_t v, EliasCode code) {
  switch (code) {
    case EliasCode::Gamma: write_gamma(w, v); break;
    case EliasCode::Delta: write_delta(w, v); break;
    default: write_omega(w, v); break;
  }
}

// The code of v as one integer of `length` bits (MSB-first): for v < 2^31, where every code
// fits in 64 bits. Used to tabulate codes of small values.
COMMCOMP_HD uint64_t elias_codeword(uint64_t v, EliasCode code, int& length) {
  const int n = bit_length(v);
  switch (code) {
    case EliasCode::Gamma:
      length = 2 * n - 1;
      return v;
    case EliasCode::Delta:
      length = gamma_length(static_cast<uint64_t>(n)) + n - 1;
      return (static_cast<uint64_t>(n) << (n - 1)) | (v & ((1ull << (n - 1)) - 1ull));
    default: {
      uint64_t word = 0;  // the final 0 bit
      length = 1;
      while (v > 1) {
        const int groups_bits = bit_length(v);
        word |= v << length;  // each earlier group goes above the later ones
        length += groups_bits;
        v = static_cast<uint64_t>(groups_bits - 1);
      }
      return word;
    }
  }
}

// Computes every code on the fly (what the CUDA kernels use).
struct DirectCoder {
  EliasCode code;
  COMMCOMP_HD int length(uint64_t v) const { return elias_length(v, code); }
  COMMCOMP_HD void write(BitWriter& w, uint64_t v) const { write_elias(w, v, code); }
  // One (zero run + 1, index, sign) group.
  COMMCOMP_HD int group_length(uint64_t run1, uint32_t index) const {
    return length(run1) + length(index) + 1;
  }
  COMMCOMP_HD void write_group(BitWriter& w, uint64_t run1, uint32_t index, uint32_t sign) const {
    write(w, run1);
    write(w, index);
    w.put(sign, 1);
  }
};

// Looks up the codes of small values (zero runs up to kRunCodes - 1 and every level index), and
// computes the rest: the CPU encoder's per-symbol cost is a few table loads and one shift.
struct TableCoder {
  static constexpr int kSmall = 256;  // > kMaxLevels: every index is tabulated
  EliasCode code;
  uint32_t word[kSmall];
  uint8_t bits[kSmall];

  COMMCOMP_HD explicit TableCoder(EliasCode c) : code(c) {
    word[0] = 0;
    bits[0] = 0;
    for (int v = 1; v < kSmall; ++v) {
      int length = 0;
      word[v] = static_cast<uint32_t>(elias_codeword(static_cast<uint64_t>(v), c, length));
      bits[v] = static_cast<uint8_t>(length);  // <= 17 for v < 256
    }
  }
  COMMCOMP_HD int length(uint64_t v) const {
    return v < kSmall ? bits[v] : elias_length(v, code);
  }
  COMMCOMP_HD void write(BitWriter& w, uint64_t v) const {
    if (v < kSmall) {
      w.put(word[v], bits[v]);
    } else {
      write_elias(w, v, code);
    }
  }
  COMMCOMP_HD int group_length(uint64_t run1, uint32_t index) const {
    return length(run1) + bits[index] + 1;
  }
  // A short run's group is at most 17 + 13 + 1 bits: one put.
  COMMCOMP_HD void write_group(BitWriter& w, uint64_t run1, uint32_t index, uint32_t sign) const {
    if (run1 < kSmall) {
      const int ib = bits[index];
      w.put((((static_cast<uint64_t>(word[run1]) << ib) | word[index]) << 1) | sign,
            bits[run1] + ib + 1);
    } else {
      write_elias(w, run1, code);
      w.put(word[index], bits[index]);
      w.put(sign, 1);
    }
  }
};

// ---- Bit reader: MSB-first, bounded to [data, data + size) ---------------------------------

struct BitReader {
  const uint8_t* data;
  int64_t size;      // bytes
  int64_t pos = 0;   // bits consumed

  COMMCOMP_HD BitReader(const uint8_t* bytes, int64_t nbytes) : data(bytes), size(nbytes) {}

  COMMCOMP_HD int64_t remaining() const { return size * 8 - pos; }

  // The next 57+ bits, MSB-aligned; bits past the end read as zero (and are never consumed:
  // callers check remaining() first).
  COMMCOMP_HD uint64_t peek() const {
    const int64_t byte = pos >> 3;
    uint64_t word = 0;
    if (byte + 8 <= size) {
#if defined(__CUDA_ARCH__)
      for (int k = 0; k < 8; ++k) word = (word << 8) | data[byte + k];
#else
      __builtin_memcpy(&word, data + byte, 8);  // one unaligned load; the host is little-endian
      word = __builtin_bswap64(word);
#endif
    } else {
      for (int k = 0; k < 8; ++k) word = (word << 8) | (byte + k < size ? data[byte + k] : 0u);
    }
    return word << (pos & 7);
  }

  // Reads `length` <= 57 bits.
  COMMCOMP_HD bool read(int length, uint64_t& v) {
    if (length > remaining()) return false;
    v = length == 0 ? 0 : peek() >> (64 - length);
    pos += length;
    return true;
  }

  // Reads `length` <= 64 bits.
  COMMCOMP_HD bool read_long(int length, uint64_t& v) {
    if (length <= 57) return read(length, v);
    uint64_t hi = 0, lo = 0;
    if (!read(length - 32, hi) || !read(32, lo)) return false;
    v = (hi << 32) | lo;
    return true;
  }

  // Consumes zero bits up to (not including) the next 1 bit; fails if more than `limit` zeros
  // come first (CodeTooLong) or the bucket ends before a 1 (Truncated).
  COMMCOMP_HD EliasStatus skip_zeros(int limit, int& zeros) {
    zeros = 0;
    for (;;) {
      const int64_t left = remaining();
      if (left <= 0) return EliasStatus::Truncated;
      const int window = left < 57 ? static_cast<int>(left) : 57;
      const int z = count_leading_zeros64(peek());
      if (z < window) {
        zeros += z;
        pos += z;
        return zeros > limit ? EliasStatus::CodeTooLong : EliasStatus::Ok;
      }
      zeros += window;
      pos += window;
      if (zeros > limit) return EliasStatus::CodeTooLong;
    }
  }
};

// Decoders return Ok with 1 <= v <= max_value, CodeTooLong for codes of values >= 2^64,
// RunPastEnd for values in (max_value, 2^64) (callers rename it), or Truncated.
COMMCOMP_HD EliasStatus read_gamma(BitReader& r, uint64_t max_value, uint64_t& v) {
  int zeros = 0;
  const EliasStatus s = r.skip_zeros(63, zeros);
  if (s != EliasStatus::Ok) return s;
  if (zeros >= bit_length(max_value)) return EliasStatus::RunPastEnd;  // v >= 2^zeros > max
  if (!r.read_long(zeros + 1, v)) return EliasStatus::Truncated;
  return v > max_value ? EliasStatus::RunPastEnd : EliasStatus::Ok;
}

COMMCOMP_HD EliasStatus read_delta(BitReader& r, uint64_t max_value, uint64_t& v) {
  uint64_t n = 0;
  EliasStatus s = read_gamma(r, 64, n);
  if (s == EliasStatus::RunPastEnd) return EliasStatus::CodeTooLong;  // more than 64 bits
  if (s != EliasStatus::Ok) return s;
  if (static_cast<int>(n) > bit_length(max_value)) return EliasStatus::RunPastEnd;
  uint64_t low = 0;
  if (!r.read_long(static_cast<int>(n) - 1, low)) return EliasStatus::Truncated;
  v = n == 1 ? 1ull : ((1ull << (n - 1)) | low);
  return v > max_value ? EliasStatus::RunPastEnd : EliasStatus::Ok;
}

COMMCOMP_HD EliasStatus read_omega(BitReader& r, uint64_t max_value, uint64_t& v) {
  // Each group is read with its leading 1 and is >= 2^(previous group); at most 6 groups fit in
  // 64 bits, so this loop ends after at most 7 iterations on any input.
  uint64_t n = 1;
  for (;;) {
    uint64_t bit = 0;
    if (!r.read(1, bit)) return EliasStatus::Truncated;
    if (bit == 0) {
      v = n;
      return v > max_value ? EliasStatus::RunPastEnd : EliasStatus::Ok;
    }
    if (n >= 64) return EliasStatus::CodeTooLong;  // the next group would have n + 1 > 64 bits
    if (static_cast<int>(n) >= bit_length(max_value)) return EliasStatus::RunPastEnd;
    uint64_t rest = 0;
    if (!r.read_long(static_cast<int>(n), rest)) return EliasStatus::Truncated;
    n = (1ull << n) | rest;
  }
}

COMMCOMP_HD EliasStatus read_elias(BitReader& r, EliasCode code, uint64_t max_value, uint64_t& v) {
  switch (code) {
    case EliasCode::Gamma: return read_gamma(r, max_value, v);
    case EliasCode::Delta: return read_delta(r, max_value, v);
    default: return read_omega(r, max_value, v);
  }
}

// ---- Symbols of a fixed-width packed stream ------------------------------------------------

// Calls visit(zeros_before, symbol) for every nonzero symbol of elements [begin, end) of a packed
// stream (bitpack.h layout) and returns the number of zeros after the last one. Reads only the
// bytes that hold those elements. Groups of eight symbols are scanned with count-trailing-zeros,
// so sparse streams cost little per zero.
template <typename Visit>
COMMCOMP_HD int64_t scan_symbols(const uint8_t* packed, int width, int64_t begin, int64_t end,
                                 Visit visit) {
  const uint64_t mask = (1ull << width) - 1ull;
  // floor(tz / width) for tz < 64 as a multiply-shift (exact: the rounding error is < 2^-10).
  const uint32_t reciprocal = (65536u + static_cast<uint32_t>(width) - 1u) / static_cast<uint32_t>(width);
  const int64_t readable = packed_bytes(end, width);  // bytes that certainly exist
  int64_t run = 0;
  int64_t i = begin;
  while (i < end) {
    const int64_t group = i / kPackGroup;
    const int first = static_cast<int>(i - group * kPackGroup);
    const int64_t group_end = group * kPackGroup + kPackGroup;
    const int stop = static_cast<int>((end < group_end ? end : group_end) - group * kPackGroup);
    uint64_t bits;
#if !defined(__CUDA_ARCH__)
    if (group * width + 8 <= readable) {
      __builtin_memcpy(&bits, packed + group * width, 8);  // little-endian host: bitpack order
    } else {
      bits = load_group(packed, group, stop, width);
    }
#else
    bits = load_group(packed, group, stop, width);
#endif
    // The last byte loaded may hold bits of elements past `end`: drop them.
    if (stop * width < 64) bits &= (1ull << (stop * width)) - 1ull;
    bits >>= first * width;
    int k = first;
    while (bits != 0) {
      if ((bits & mask) == 0) {  // dense streams rarely get here
        const int skip = static_cast<int>(
            (static_cast<uint32_t>(count_trailing_zeros64(bits)) * reciprocal) >> 16);
        run += skip;
        bits >>= skip * width;
        k += skip;
      }
      visit(run, static_cast<uint32_t>(bits & mask));
      run = 0;
      bits >>= width;  // width <= 8, so this never shifts by 64
      k += 1;
    }
    run += stop - k;
    i = group * kPackGroup + stop;
  }
  return run;
}

// A symbol the Elias coding can carry: index in [0, count), and index 0 only with sign 0.
COMMCOMP_HD bool codable_symbol(uint32_t symbol, int num_levels) {
  return symbol > 1u && (symbol >> 1) < static_cast<uint32_t>(num_levels);
}

// Exact bit length of the Elias coding of elements [begin, end), or -1 if a symbol is not codable.
template <typename Coder>
COMMCOMP_HD int64_t elias_bucket_bits(const uint8_t* packed, int width, int num_levels,
                                      int64_t begin, int64_t end, const Coder& coder) {
  int64_t bits = 0;
  bool ok = true;
  const int64_t tail = scan_symbols(packed, width, begin, end, [&](int64_t run, uint32_t symbol) {
    if (!codable_symbol(symbol, num_levels)) {
      ok = false;
      return;
    }
    bits += coder.group_length(static_cast<uint64_t>(run) + 1, symbol >> 1);
  });
  if (tail > 0) bits += coder.length(static_cast<uint64_t>(tail) + 1);
  return ok ? bits : -1;
}

COMMCOMP_HD int64_t elias_bucket_bits(const uint8_t* packed, int width, int num_levels,
                                      int64_t begin, int64_t end, EliasCode code) {
  return elias_bucket_bits(packed, width, num_levels, begin, end, DirectCoder{code});
}

// Writes the coding of elements [begin, end) (already checked by elias_bucket_bits) at `out`,
// (elias_bucket_bits + 7) / 8 bytes.
template <typename Coder>
COMMCOMP_HD void elias_encode_bucket(const uint8_t* packed, int width, int64_t begin,
                                     int64_t end, const Coder& coder, uint8_t* out) {
  BitWriter w(out);
  const int64_t tail = scan_symbols(packed, width, begin, end, [&](int64_t run, uint32_t symbol) {
    coder.write_group(w, static_cast<uint64_t>(run) + 1, symbol >> 1, symbol & 1u);
  });
  if (tail > 0) coder.write(w, static_cast<uint64_t>(tail) + 1);
  w.finish();
}

COMMCOMP_HD void elias_encode_bucket(const uint8_t* packed, int width, int64_t begin,
                                     int64_t end, EliasCode code, uint8_t* out) {
  elias_encode_bucket(packed, width, begin, end, DirectCoder{code}, out);
}

// Most bytes the coding of `count` elements takes, for encoders that write before they know the
// length: a group of r zeros and a symbol costs length(r + 1) + length(index) + 1 bits, at most 19
// per element (r = 0: 1 + 17 + 1; every code of v < 256 is <= 17 bits and of 2 <= 4 bits), and a
// final run at most 127 bits (a gamma code of a value < 2^64).
COMMCOMP_HD int64_t elias_bucket_bound_bytes(int64_t count) { return (19 * count + 127 + 7) / 8; }

// elias_encode_bucket in one pass with elias_bucket_bits's check: the bytes written at `out` (at
// most elias_bucket_bound_bytes(end - begin)), or -1 if a symbol is not codable (the bytes are
// then meaningless). The same bytes as the two-pass encoding.
template <typename Coder>
COMMCOMP_HD int64_t elias_encode_bucket_checked(const uint8_t* packed, int width, int num_levels,
                                                int64_t begin, int64_t end, const Coder& coder,
                                                uint8_t* out) {
  BitWriter w(out);
  bool ok = true;
  const int64_t tail = scan_symbols(packed, width, begin, end, [&](int64_t run, uint32_t symbol) {
    ok &= codable_symbol(symbol, num_levels);
    coder.write_group(w, static_cast<uint64_t>(run) + 1, symbol >> 1, symbol & 1u);
  });
  if (tail > 0) coder.write(w, static_cast<uint64_t>(tail) + 1);
  w.finish();
  return ok ? static_cast<int64_t>(w.out - out) : -1;
}

// ---- Packed writer: LSB-first symbols from a byte-aligned start ------------------------------

struct PackedWriter {
  uint8_t* out;
  uint64_t acc = 0;  // low `fill` bits pending, oldest lowest
  int fill = 0;      // < 32 between calls

  COMMCOMP_HD explicit PackedWriter(uint8_t* dst) : out(dst) {}

  COMMCOMP_HD void flush_word() {
    out[0] = static_cast<uint8_t>(acc);
    out[1] = static_cast<uint8_t>(acc >> 8);
    out[2] = static_cast<uint8_t>(acc >> 16);
    out[3] = static_cast<uint8_t>(acc >> 24);
    out += 4;
    acc >>= 32;
    fill -= 32;
  }

  COMMCOMP_HD void put(uint32_t symbol, int width) {
    acc |= static_cast<uint64_t>(symbol) << fill;
    fill += width;
    if (fill >= 32) flush_word();
  }

  COMMCOMP_HD void zeros(int64_t nbits) {
    while (nbits > 0) {
      if (fill == 0 && nbits >= 32) {  // whole zero words
        const int64_t words = nbits / 32;
        for (int64_t k = 0; k < 4 * words; ++k) out[k] = 0;
        out += 4 * words;
        nbits -= 32 * words;
        continue;
      }
      const int take = static_cast<int>(nbits < 32 - fill ? nbits : 32 - fill);
      fill += take;
      nbits -= take;
      if (fill >= 32) flush_word();
    }
  }

  COMMCOMP_HD void finish() {
    while (fill > 0) {
      *out++ = static_cast<uint8_t>(acc);
      acc >>= 8;
      fill = fill > 8 ? fill - 8 : 0;
    }
  }
};

// Whole (zero run, index, sign) groups that fit in the next kDecodeBits bits, looked up at once.
// Built by enumerating the codes (elias_codeword), so it decodes exactly what read_elias would;
// patterns that start no such group (long codes, out-of-range indices, malformed bits) have
// bits == 0 and go through the checked slow path.
struct DecodeTable {
  static constexpr int kDecodeBits = 12;
  struct Entry {
    uint16_t run;    // zeros before the symbol
    uint8_t symbol;  // (index << 1) | sign
    uint8_t bits;    // total code bits, 0 = not in the table
  };
  Entry entry[1 << kDecodeBits];

  COMMCOMP_HD DecodeTable(EliasCode code, int num_levels) {
    for (int p = 0; p < (1 << kDecodeBits); ++p) entry[p] = Entry{0, 0, 0};
    for (uint64_t run_code = 1; run_code < (1u << kDecodeBits); ++run_code) {
      int run_bits = 0;
      const uint64_t run_word = elias_codeword(run_code, code, run_bits);
      if (run_bits + 2 > kDecodeBits) break;  // lengths grow with the value
      for (int index = 1; index < num_levels; ++index) {
        int index_bits = 0;
        const uint64_t index_word = elias_codeword(static_cast<uint64_t>(index), code, index_bits);
        const int total = run_bits + index_bits + 1;
        if (total > kDecodeBits) break;
        for (uint64_t sign = 0; sign < 2; ++sign) {
          const uint64_t word = (((run_word << index_bits) | index_word) << 1) | sign;
          const int free_bits = kDecodeBits - total;
          const uint64_t first = word << free_bits;
          for (uint64_t tail = 0; tail < (1ull << free_bits); ++tail) {
            entry[first | tail] = Entry{static_cast<uint16_t>(run_code - 1),
                                        static_cast<uint8_t>((index << 1) | sign),
                                        static_cast<uint8_t>(total)};
          }
        }
      }
    }
  }
};

// Decodes one bucket of `count` elements from exactly `nbytes` bytes, appending its symbols to
// `sink`. Rejects anything the encoder would not have produced. `table` (optional, built for the
// same code and level count) only speeds up the common short codes.
COMMCOMP_HD EliasStatus elias_decode_bucket(const uint8_t* data, int64_t nbytes, int64_t count,
                                            int num_levels, int width, EliasCode code,
                                            PackedWriter& sink,
                                            const DecodeTable* table = nullptr) {
  BitReader r(data, nbytes);
  int64_t done = 0;
  while (done < count) {
    if (table != nullptr && r.remaining() >= DecodeTable::kDecodeBits) {
      const DecodeTable::Entry e = table->entry[r.peek() >> (64 - DecodeTable::kDecodeBits)];
      // A group whose symbol would land at or past the bucket end is a final run (or an
      // error): the slow path decides.
      if (e.bits != 0 && e.run < count - done) {
        if (e.run != 0) sink.zeros(static_cast<int64_t>(e.run) * width);
        sink.put(e.symbol, width);
        r.pos += e.bits;
        done += e.run + 1;
        continue;
      }
    }
    uint64_t v = 0;
    EliasStatus s = read_elias(r, code, static_cast<uint64_t>(count - done) + 1, v);
    if (s != EliasStatus::Ok) return s;
    const int64_t run = static_cast<int64_t>(v - 1);
    sink.zeros(run * width);
    done += run;
    if (done == count) break;
    uint64_t index = 0;
    s = read_elias(r, code, static_cast<uint64_t>(num_levels - 1), index);
    if (s == EliasStatus::RunPastEnd) return EliasStatus::BadIndex;
    if (s != EliasStatus::Ok) return s;
    uint64_t sign = 0;
    if (!r.read(1, sign)) return EliasStatus::Truncated;
    sink.put(static_cast<uint32_t>((index << 1) | sign), width);
    ++done;
  }
  // Canonical end: at most 7 zero padding bits, nothing after them.
  if (r.remaining() >= 8) return EliasStatus::TrailingBytes;
  uint64_t pad = 0;
  r.read(static_cast<int>(r.remaining()), pad);
  return pad == 0 ? EliasStatus::Ok : EliasStatus::BadPadding;
}

// Buckets per independently written run of the packed output: the fewest whole buckets whose
// packed bits fill whole bytes, so no two runs share a byte of output.
COMMCOMP_HD int64_t buckets_per_aligned_chunk(int64_t bucket_size, int width) {
  int64_t k = 1;
  while ((k * bucket_size * width) % 8 != 0) ++k;  // k <= 8
  return k;
}

}  // namespace commcomp
