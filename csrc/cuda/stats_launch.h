// Launch wrapper of the level_stats CUDA kernels. Plain C++ with CUDA runtime types only (no torch
// headers), so csrc/cuda/stats.cu compiles with nvcc alone.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

namespace commcomp {
namespace cuda {

enum class StatsElement : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Weighted sqrt-spaced histogram of csrc/core/stats.h over the n elements of `x` (of `type`).
//   norms:     one float per bucket of `bucket_size` elements (device)
//   max_norm:  one float, the largest finite norm (device; read by the kernels, no host sync)
//   scratch:   `bins` uint64 counters, zeroed by the caller (device)
//   out:       `bins` doubles, the bin masses (device)
// Everything is enqueued on `stream`; returns the first launch error, cudaSuccess otherwise.
cudaError_t launch_level_stats(const void* x, StatsElement type, int64_t n, const float* norms,
                               int64_t bucket_size, const float* max_norm, int bins,
                               unsigned long long* scratch, double* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace commcomp
