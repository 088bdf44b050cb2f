// CUDA kernels of level_stats: the same csrc/core/stats.h math as the CPU backend. Each block
// builds a private histogram of 64-bit fixed-point counters in shared memory, then adds it to the
// global one. Integer atomics are exact, so the (racy) order of additions changes nothing and the
// result equals the CPU histogram bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../core/stats.h"
#include "launch.h"

namespace commcomp {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load_element(const float* x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load_element(const __half* x, int64_t i) {
  return __half2float(x[i]);
}
__device__ __forceinline__ float load_element(const __nv_bfloat16* x, int64_t i) {
  return __bfloat162float(x[i]);
}

template <typename T>
__global__ void level_stats_kernel(const T* __restrict__ x, int64_t n,
                                   const float* __restrict__ norms, int64_t bucket_size,
                                   const float* __restrict__ max_norm, int bins,
                                   unsigned long long* __restrict__ total) {
  extern __shared__ unsigned long long hist[];
  for (int k = threadIdx.x; k < bins; k += blockDim.x) hist[k] = 0ull;
  __syncthreads();
  const float w_max = stat_reference_weight(*max_norm);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float norm = norms[i / bucket_size];
    const uint64_t w = stat_weight(norm, w_max);
    if (w == 0ull) continue;
    const int k = stat_bin(stat_magnitude(load_element(x, i), norm), bins);
    if (k >= 0) atomicAdd(&hist[k], static_cast<unsigned long long>(w));
  }
  __syncthreads();
  for (int k = threadIdx.x; k < bins; k += blockDim.x) {
    if (hist[k] != 0ull) atomicAdd(&total[k], hist[k]);
  }
}

__global__ void bin_mass_kernel(const unsigned long long* __restrict__ total,
                                const float* __restrict__ max_norm, int bins,
                                double* __restrict__ out) {
  for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < bins; k += gridDim.x * blockDim.x) {
    out[k] = bin_mass(total[k], stat_reference_weight(*max_norm));
  }
}

template <typename T>
void launch_typed(const T* x, int64_t n, const float* norms, int64_t bucket_size,
                  const float* max_norm, int bins, unsigned long long* scratch,
                  cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(bins) * sizeof(unsigned long long);
  COMMCOMP_LAUNCH(level_stats_kernel<T>, blocks_for(n, kThreads), kThreads, shared, stream)(
      x, n, norms, bucket_size, max_norm, bins, scratch);
}

}  // namespace

cudaError_t launch_level_stats(const void* x, DType dtype, int64_t n, const float* norms,
                               int64_t bucket_size, const float* max_norm, int bins,
                               unsigned long long* scratch, double* out, cudaStream_t stream) {
  if (n > 0) {
    switch (dtype) {
      case DType::Float32:
        launch_typed(static_cast<const float*>(x), n, norms, bucket_size, max_norm, bins, scratch,
                     stream);
        break;
      case DType::Float16:
        launch_typed(static_cast<const __half*>(x), n, norms, bucket_size, max_norm, bins,
                     scratch, stream);
        break;
      case DType::BFloat16:
        launch_typed(static_cast<const __nv_bfloat16*>(x), n, norms, bucket_size, max_norm, bins,
                     scratch, stream);
        break;
      default:
        return cudaErrorInvalidValue;
    }
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  COMMCOMP_LAUNCH(bin_mass_kernel, blocks_for(bins, kThreads), kThreads, 0, stream)(
      scratch, max_norm, bins, out);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace commcomp
