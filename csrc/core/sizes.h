// Overflow-safe size arithmetic, in one place. Element counts, bucket sizes, widths and byte
// lengths reach the ops from users and from other ranks' payloads; every size derived from them
// goes through these helpers, which are exact for every non-negative input (no intermediate can
// wrap) or report that the result does not fit. Torch-free and host-device: the argument checks
// (csrc/checks), the wire decoder (wire.h) and the kernels' size computations all use them.
#pragma once

#include "macros.h"

namespace commcomp {

constexpr int64_t kInt64Max = 0x7fffffffffffffffLL;

// Largest element count an op accepts: 2^48 (256 Ti elements) is more than any device holds, and
// keeps every size derived from a count -- bits at up to 64 per element, bytes, bucket offsets --
// far inside int64.
constexpr int64_t kMaxNumel = int64_t{1} << 48;
// Largest bucket size an op accepts: with it, zero runs of a bucket (and their Elias codes, of
// values <= 2^40 + 1) stay well inside 64-bit arithmetic, and numel + bucket_size cannot wrap.
constexpr int64_t kMaxBucketSize = int64_t{1} << 40;

// a + b for a, b >= 0; false if the sum exceeds int64.
COMMCOMP_HD bool checked_add(int64_t a, int64_t b, int64_t& out) {
  if (a > kInt64Max - b) return false;
  out = a + b;
  return true;
}

// a * b for a, b >= 0; false if the product exceeds int64.
COMMCOMP_HD bool checked_mul(int64_t a, int64_t b, int64_t& out) {
  if (a != 0 && b > kInt64Max / a) return false;
  out = a * b;
  return true;
}

// ceil(n / d) for n >= 0, d > 0, without forming n + d - 1 (which wraps for d near 2^63).
COMMCOMP_HD int64_t ceil_div(int64_t n, int64_t d) { return n / d + (n % d != 0 ? 1 : 0); }

// Buckets of `bucket_size` (> 0) covering `numel` (>= 0) elements; the last may be partial.
COMMCOMP_HD int64_t bucket_count(int64_t numel, int64_t bucket_size) {
  return ceil_div(numel, bucket_size);
}

// ceil(n * width / 8): bytes of n >= 0 symbols of width in [1, 8] bits, computed as
// (n / 8) * width + ceil((n % 8) * width / 8), so it is exact for every n up to 2^63 - 1 (the
// result is at most n and never wraps).
COMMCOMP_HD int64_t packed_bytes(int64_t n, int width) {
  return (n / 8) * width + ((n % 8) * width + 7) / 8;
}

// The same for an unsigned count (a payload header's element count is a uint64): exact for every
// n < 2^64, since the result is at most n.
COMMCOMP_HD uint64_t packed_bytes_u64(uint64_t n, int width) {
  return (n / 8) * static_cast<uint64_t>(width) + ((n % 8) * static_cast<uint64_t>(width) + 7) / 8;
}

}  // namespace commcomp
