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
  check_bucket_size(bucket_size);  // <= 2^40: zero runs stay far inside 64-bit arithmetic
  check_numel(numel);              // <= 2^48: so do bit offsets of the packed output
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

// Checks a decoder's inputs: one length per bucket, each within the stream, summing to it
// (wire::check_bucket_lengths, the payload decoder's check). Reads the lengths on the host (one
// small copy, a sync on CUDA).
inline void check_elias_stream(const at::Tensor& bucket_bytes, const at::Tensor& stream,
                               const EliasArgs& a) {
  check_flat(stream, at::kByte, "stream");
  check_flat(bucket_bytes, at::kLong, "bucket_bytes");
  TORCH_CHECK_VALUE(bucket_bytes.device() == stream.device(),
                    "bucket_bytes and stream must be on the same device");
  TORCH_CHECK_VALUE(bucket_bytes.numel() == a.buckets, "bucket_bytes must have one entry per "
                    "bucket: ", a.buckets, " for numel=", a.numel, " and bucket_size=",
                    a.bucket_size, ", got ", bucket_bytes.numel());
  const at::Tensor lengths = bucket_bytes.to(at::kCPU);
  wire::Error error;
  TORCH_CHECK_VALUE(wire::check_bucket_lengths(lengths.data_ptr<int64_t>(), a.buckets,
                                               stream.numel(), error),
                    error.message);
}

[[noreturn]] inline void throw_elias_error(int64_t bucket, EliasStatus status) {
  TORCH_CHECK_VALUE(false, "malformed Elias stream in bucket ", bucket, ": ",
                    elias_status_message(status));
  __builtin_unreachable();
}

}  // namespace commcomp
