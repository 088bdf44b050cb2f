// Checks of the argument kinds several op families share (norm names, bucket sizes, gradients,
// seeds, level tables, packed payloads, norms), used by the CPU and CUDA bindings alike so both
// reject bad input with the same ValueError naming the argument. Per-family checks live beside
// this file (quantize.h, elias.h, stats.h).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

#include "../core/bitpack.h"
#include "../core/levels.h"
#include "../core/quantize.h"
#include "../core/sizes.h"
#include "../core/wire.h"

namespace commcomp {

inline const char* flat_type_name(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return "float32";
    case at::kByte: return "uint8";
    case at::kLong: return "int64";
    default: return c10::toString(type);
  }
}

// `t` must be a contiguous 1-D tensor of `type`; `name...` (one or more message parts) names it.
template <typename... Name>
inline void check_flat(const at::Tensor& t, at::ScalarType type, const Name&... name) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.scalar_type() == type && t.is_contiguous(), name...,
                    " must be a contiguous 1-D ", flat_type_name(type), " tensor");
}

inline NormKind parse_norm(const std::string& norm) {
  if (norm == "l2") return NormKind::L2;
  if (norm == "linf") return NormKind::LInf;
  TORCH_CHECK_VALUE(false, "norm must be 'l2' or 'linf', got '", norm, "'");
}

inline void check_bucket_size(int64_t bucket_size) {
  TORCH_CHECK_VALUE(bucket_size > 0 && bucket_size <= kMaxBucketSize,
                    "bucket_size must be positive and at most 2^40 (", kMaxBucketSize, "), got ",
                    bucket_size);
}

inline void check_gradient(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() == 1, "x must be a flat (1-D) tensor, got shape ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kHalf ||
                        x.scalar_type() == at::kBFloat16,
                    "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.is_contiguous(), "x must be contiguous");
  TORCH_CHECK_VALUE(x.numel() <= kMaxNumel, "x may have at most 2^48 (", kMaxNumel,
                    ") elements, got ", x.numel());
}

inline void check_seed(int64_t seed, int64_t offset) {
  TORCH_CHECK_VALUE(seed >= 0, "seed must be non-negative, got ", seed);
  TORCH_CHECK_VALUE(offset >= 0, "offset must be non-negative, got ", offset);
}

// Philox element index of x[0]: whole packing groups, so a slice quantized on its own draws what
// the whole tensor draws for the same elements.
inline int64_t first_group_of(int64_t stream_index) {
  TORCH_CHECK_VALUE(stream_index >= 0 && stream_index % 8 == 0,
                    "stream_index must be a non-negative multiple of 8, got ", stream_index);
  return stream_index / 8;
}

inline void check_width(int64_t width) {
  TORCH_CHECK_VALUE(width >= 1 && width <= 8, "width must be in [1, 8] bits, got ", width);
}

// An element count given by the caller, before any size is derived from it (sizes.h).
inline void check_numel(int64_t numel) {
  TORCH_CHECK_VALUE(numel >= 0, "numel must be non-negative, got ", numel);
  TORCH_CHECK_VALUE(numel <= kMaxNumel, "numel must be at most 2^48 (", kMaxNumel, "), got ",
                    numel);
}

// Validates `levels` (1-D float32, 2..kMaxLevels entries, no NaN, strictly increasing from 0 to
// 1: core/levels.h) and copies it into the by-value table kernels take. Reads the (tiny) tensor
// on the host.
inline LevelTable level_table_from(const at::Tensor& levels) {
  TORCH_CHECK_VALUE(levels.dim() == 1, "levels must be 1-D, got shape ", levels.sizes());
  TORCH_CHECK_VALUE(levels.scalar_type() == at::kFloat, "levels must be float32, got ",
                    levels.scalar_type());
  const int64_t count = levels.numel();
  TORCH_CHECK_VALUE(count >= 2 && count <= kMaxLevels, "levels must have 2..", kMaxLevels,
                    " entries, got ", count);
  const at::Tensor host = levels.to(at::kCPU).contiguous();
  LevelTable table{};
  std::copy_n(host.data_ptr<float>(), count, table.value);
  int at = 0;
  const LevelsStatus status = level_values_status(table.value, count, at);
  if (status != LevelsStatus::Ok) {
    char why[200];
    wire::describe_levels_error(status, table.value, count, at, why, sizeof why);
    TORCH_CHECK_VALUE(false, why);
  }
  table.count = static_cast<int>(count);
  table.index_bits = index_bits_for(table.count);
  fill_inverse_widths(table);
  return table;
}

// `packed` holds exactly the bytes `numel` symbols of `width` bits occupy.
inline void check_packed_size(const at::Tensor& packed, int64_t numel, int width) {
  const int64_t expected = packed_bytes(numel, width);
  TORCH_CHECK_VALUE(packed.numel() == expected, "packed must hold ", expected, " bytes for numel=",
                    numel, " at width=", width, ", got ", packed.numel());
}

// Shapes and devices of an encoded payload, checked before any kernel reads it.
inline void check_payload(const at::Tensor& norms, const at::Tensor& symbols, int64_t numel,
                          int64_t bucket_size, int width, const char* what) {
  check_flat(norms, at::kFloat, what, ": norms");
  check_flat(symbols, at::kByte, what, ": symbols");
  TORCH_CHECK_VALUE(norms.numel() == bucket_count(numel, bucket_size), what, ": expected ",
                    bucket_count(numel, bucket_size), " norms for ", numel,
                    " elements in buckets of ", bucket_size, ", got ", norms.numel());
  TORCH_CHECK_VALUE(symbols.numel() == packed_bytes(numel, width), what, ": expected ",
                    packed_bytes(numel, width), " symbol bytes for ", numel, " elements of ",
                    width, " bits, got ", symbols.numel());
  TORCH_CHECK_VALUE(norms.device() == symbols.device(), what,
                    ": norms and symbols must be on the same device");
}

inline void check_finite_norms(const at::Tensor& norms) {
  if (norms.numel() == 0) return;
  const at::Tensor bad = (~at::isfinite(norms)).nonzero();
  TORCH_CHECK_VALUE(bad.numel() == 0, "x has non-finite values (or its norm overflows float32) in "
                    "bucket ", bad.numel() ? bad[0].item<int64_t>() : -1,
                    "; send such buckets uncompressed");
}

// Norms of a payload about to be decoded: finite and non-negative.
inline void check_decodable_norms(const at::Tensor& norms) {
  check_finite_norms(norms);
  TORCH_CHECK_VALUE(norms.numel() == 0 || norms.min().item<float>() >= 0.0f,
                    "norms must be non-negative");
}

}  // namespace commcomp
