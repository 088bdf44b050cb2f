// Argument checks of the Elias codec ops, shared by the CPU and CUDA bindings so both reject bad
// input with the same ValueError naming the argument.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "../core/elias.h"
#include "../core/levels.h"
#include "common.h"

namespace commcomp {

struct EliasArgs {
  int num_levels;
  int width;
  int64_t bucket_size;
  int64_t numel;
  int64_t buckets;
  EliasCode code;
};

inline EliasArgs check_elias_args(int64_t num_levels, int64_t bucket_size, int64_t numel,
                                  int64_t code) {
  TORCH_CHECK_VALUE(num_levels >= 2 && num_levels <= kMaxLevels, "num_levels must be in [2, ",
                    kMaxLevels, "], got ", num_levels);
  check_bucket_size(bucket_size);
  // Bucket sizes past 2^40 would let run lengths overflow the decoder's 64-bit arithmetic on
  // hostile input; nobody quantizes buckets that large.
  TORCH_CHECK_VALUE(bucket_size <= (int64_t{1} << 40), "bucket_size must be <= 2^40, got ",
                    bucket_size);
  check_numel(numel);
  TORCH_CHECK_VALUE(valid_elias_code(code),
                    "code must be 0 (gamma), 1 (delta) or 2 (omega), got ", code);
  const int levels = static_cast<int>(num_levels);
  return {levels, symbol_width_for(levels), bucket_size, numel, bucket_count(numel, bucket_size),
          static_cast<EliasCode>(code)};
}

inline void check_packed_symbols(const at::Tensor& packed, const EliasArgs& a) {
  check_flat(packed, at::kByte, "packed");
  check_packed_size(packed, a.numel, a.width);
}

// Checks a decoder's inputs: one length per bucket, each within the stream, summing to it.
// Reads the lengths on their device with ATen reductions (a sync on CUDA).
inline void check_elias_stream(const at::Tensor& bucket_bytes, const at::Tensor& stream,
                               const EliasArgs& a) {
  check_flat(stream, at::kByte, "stream");
  check_flat(bucket_bytes, at::kLong, "bucket_bytes");
  TORCH_CHECK_VALUE(bucket_bytes.device() == stream.device(),
                    "bucket_bytes and stream must be on the same device");
  TORCH_CHECK_VALUE(bucket_bytes.numel() == a.buckets, "bucket_bytes must have one entry per "
                    "bucket: ", a.buckets, " for numel=", a.numel, " and bucket_size=",
                    a.bucket_size, ", got ", bucket_bytes.numel());
  if (a.buckets == 0) {
    TORCH_CHECK_VALUE(stream.numel() == 0, "stream must be empty for numel=0, got ",
                      stream.numel(), " bytes");
    return;
  }
  const auto extrema = at::aminmax(bucket_bytes);
  const int64_t lo = std::get<0>(extrema).item<int64_t>();
  const int64_t hi = std::get<1>(extrema).item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi <= stream.numel(), "bucket_bytes must lie in [0, ",
                    stream.numel(), "] (the stream's size), got values in [", lo, ", ", hi, "]");
  // Each entry <= stream size < 2^40 and buckets < 2^40 in practice: the sum cannot overflow.
  const int64_t total = bucket_bytes.sum().item<int64_t>();
  TORCH_CHECK_VALUE(total == stream.numel(), "bucket_bytes sum to ", total,
                    " but the stream holds ", stream.numel(), " bytes");
}

[[noreturn]] inline void throw_elias_error(int64_t bucket, EliasStatus status) {
  TORCH_CHECK_VALUE(false, "malformed Elias stream in bucket ", bucket, ": ",
                    elias_status_message(status));
  __builtin_unreachable();
}

}  // namespace commcomp
