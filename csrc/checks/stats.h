// Argument checks of level_stats, shared by the CPU and CUDA bindings so both reject bad input
// with the same message naming the argument.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "../core/stats.h"
#include "common.h"

namespace commcomp {

inline void check_stats_args(const at::Tensor& x, const at::Tensor& norms, int64_t bucket_size,
                             int64_t bins) {
  check_gradient(x);
  check_bucket_size(bucket_size);
  TORCH_CHECK_VALUE(bins >= 1 && bins <= kMaxStatBins, "bins must be in [1, ", kMaxStatBins,
                    "], got ", bins);
  TORCH_CHECK_VALUE(x.numel() <= kMaxStatElements, "x may have at most ", kMaxStatElements,
                    " elements per call (fixed-point bins would overflow), got ", x.numel());
  check_flat(norms, at::kFloat, "norms");
  TORCH_CHECK_VALUE(norms.numel() == bucket_count(x.numel(), bucket_size), "expected ",
                    bucket_count(x.numel(), bucket_size), " norms for ", x.numel(),
                    " elements in buckets of ", bucket_size, ", got ", norms.numel());
  TORCH_CHECK_VALUE(norms.device() == x.device(), "norms must be on x's device (", x.device(),
                    "), got ", norms.device());
}

// Largest finite norm as a 0-dim float32 tensor on norms' device (0 when none is finite). Max is
// order-free, so every backend and reduction tree agrees on it.
inline at::Tensor max_finite_norm(const at::Tensor& norms) {
  return at::where(at::isfinite(norms), norms, at::zeros_like(norms)).amax();
}

}  // namespace commcomp
