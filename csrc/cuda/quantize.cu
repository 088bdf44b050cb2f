// CUDA kernels of the core quantization ops: __global__ loops over the same csrc/core functions
// the CPU backend calls, so both backends produce identical bits.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../core/bitpack.h"
#include "../core/philox.h"
#include "../core/quantize.h"
#include "launch.h"

namespace commcomp {
namespace cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// One warp per bucket; lane l reduces elements l, l+32, ... (coalesced), then shfl_down combines
// lanes in the halving order norm_combine_lanes uses on the CPU.
template <typename T>
__global__ void bucket_norms_kernel(const T* __restrict__ x, int64_t n, int64_t bucket_size,
                                    int64_t buckets, NormKind kind, float* __restrict__ norms) {
  const int lane = threadIdx.x % kNormLanes;
  const int64_t warps = (int64_t)gridDim.x * (blockDim.x / kNormLanes);
  for (int64_t b = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / kNormLanes; b < buckets;
       b += warps) {
    const int64_t start = b * bucket_size;
    const int64_t stop = min(n, start + bucket_size);
    float acc = 0.0f;
    for (int64_t i = start + lane; i < stop; i += kNormLanes) {
      acc = norm_lane_update(acc, to_float(x[i]), kind);
    }
    for (int stride = kNormLanes / 2; stride > 0; stride >>= 1) {
      acc = norm_lane_combine(acc, __shfl_down_sync(0xffffffffu, acc, stride), kind);
    }
    if (lane == 0) norms[b] = norm_finish(acc, kind);
  }
}

// Level tables are read with data-dependent indices: stage them in shared memory.
__device__ void stage_levels(const LevelTable& table, float* shared, float* shared_inv_width) {
  for (int j = threadIdx.x; j < table.count; j += blockDim.x) {
    shared[j] = table.value[j];
    if (shared_inv_width != nullptr) shared_inv_width[j] = table.inv_width[j];
  }
  __syncthreads();
}

// One thread per packing group of eight elements.
template <typename T>
__global__ void quantize_kernel(const T* __restrict__ x, int64_t n, int64_t bucket_size,
                                const float* __restrict__ norms, LevelTable table, uint64_t seed,
                                uint64_t offset, int64_t first_group,
                                uint8_t* __restrict__ symbols) {
  __shared__ float levels[kMaxLevels];
  __shared__ float inv_width[kMaxLevels];
  stage_levels(table, levels, inv_width);
  const int width = table.index_bits + 1;
  const int64_t groups = group_count(n);
  auto load = [x](int64_t i) { return to_float(x[i]); };
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += (int64_t)gridDim.x * blockDim.x) {
    const int size = group_size(g, n);
    float u[kPackGroup];
    group_uniforms(seed, offset, first_group + g, u);
    const uint64_t bits = quantize_group_with(load, g, size, norms, bucket_size, levels, inv_width,
                                              table.count, width, u);
    store_group(symbols, g, bits, size, width);
  }
}

__global__ void dequantize_accumulate_kernel(float* __restrict__ out, int64_t n,
                                             int64_t bucket_size, PayloadPointers payloads,
                                             LevelTable table, float scale, bool assign_first,
                                             int* invalid) {
  __shared__ float levels[kMaxLevels];
  stage_levels(table, levels, nullptr);
  const int width = table.index_bits + 1;
  const int64_t groups = group_count(n);
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
       g += (int64_t)gridDim.x * blockDim.x) {
    const int size = group_size(g, n);
    bool ok = true;
    for (int k = 0; k < payloads.count; ++k) {
      const uint64_t bits = load_group(payloads.symbols[k], g, size, width);
      const bool assign = assign_first && k == 0;
      ok &= dequantize_group(bits, g, size, payloads.norms[k], bucket_size, levels, table.count,
                             width, [&](int64_t i, float v) {
                               out[i] = assign ? v : fadd_rn(out[i], fmul_rn(scale, v));
                             });
    }
    if (!ok) atomicExch(invalid, 1);
  }
}

__global__ void pack_kernel(const uint8_t* __restrict__ in, int64_t n, int width,
                            uint8_t* __restrict__ out) {
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < group_count(n);
       g += (int64_t)gridDim.x * blockDim.x) {
    uint32_t group[kPackGroup] = {0, 0, 0, 0, 0, 0, 0, 0};
    const int size = group_size(g, n);
    for (int k = 0; k < size; ++k) group[k] = in[g * kPackGroup + k];
    store_group(out, g, pack_group(group, size, width), size, width);
  }
}

__global__ void unpack_kernel(const uint8_t* __restrict__ in, int64_t n, int width,
                              uint8_t* __restrict__ out) {
  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < group_count(n);
       g += (int64_t)gridDim.x * blockDim.x) {
    const int size = group_size(g, n);
    const uint64_t bits = load_group(in, g, size, width);
    for (int k = 0; k < size; ++k) out[g * kPackGroup + k] = (uint8_t)group_symbol(bits, k, width);
  }
}

template <typename T>
cudaError_t norms_typed(const void* x, int64_t n, int64_t bucket_size, NormKind kind,
                        float* norms, cudaStream_t stream) {
  const int64_t buckets = (n + bucket_size - 1) / bucket_size;
  if (buckets == 0) return cudaSuccess;
  COMMCOMP_LAUNCH(bucket_norms_kernel<T>, blocks_for(buckets, kThreads / kNormLanes), kThreads, 0,
                  stream)(static_cast<const T*>(x), n, bucket_size, buckets, kind, norms);
  return cudaGetLastError();
}

template <typename T>
cudaError_t quantize_typed(const void* x, int64_t n, int64_t bucket_size, const float* norms,
                           const LevelTable& table, uint64_t seed, uint64_t offset,
                           int64_t first_group, uint8_t* symbols, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  COMMCOMP_LAUNCH(quantize_kernel<T>, blocks_for(group_count(n), kThreads), kThreads, 0, stream)(
      static_cast<const T*>(x), n, bucket_size, norms, table, seed, offset, first_group, symbols);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bucket_norms(const void* x, DType dtype, int64_t n, int64_t bucket_size,
                                NormKind kind, float* norms, cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32: return norms_typed<float>(x, n, bucket_size, kind, norms, stream);
    case DType::Float16: return norms_typed<__half>(x, n, bucket_size, kind, norms, stream);
    case DType::BFloat16:
      return norms_typed<__nv_bfloat16>(x, n, bucket_size, kind, norms, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_quantize(const void* x, DType dtype, int64_t n, int64_t bucket_size,
                            const float* norms, const LevelTable& table, uint64_t seed,
                            uint64_t offset, int64_t first_group, uint8_t* symbols,
                            cudaStream_t stream) {
  switch (dtype) {
    case DType::Float32:
      return quantize_typed<float>(x, n, bucket_size, norms, table, seed, offset, first_group,
                                   symbols, stream);
    case DType::Float16:
      return quantize_typed<__half>(x, n, bucket_size, norms, table, seed, offset, first_group,
                                    symbols, stream);
    case DType::BFloat16:
      return quantize_typed<__nv_bfloat16>(x, n, bucket_size, norms, table, seed, offset,
                                           first_group, symbols, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_dequantize_accumulate(float* out, int64_t n, int64_t bucket_size,
                                         const PayloadPointers& payloads, const LevelTable& table,
                                         float scale, bool assign_first, int* invalid,
                                         cudaStream_t stream) {
  if (n == 0 || payloads.count == 0) return cudaSuccess;
  COMMCOMP_LAUNCH(dequantize_accumulate_kernel, blocks_for(group_count(n), kThreads), kThreads, 0,
                  stream)(out, n, bucket_size, payloads, table, scale, assign_first, invalid);
  return cudaGetLastError();
}

cudaError_t launch_pack(const uint8_t* symbols, int64_t n, int width, uint8_t* packed,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  COMMCOMP_LAUNCH(pack_kernel, blocks_for(group_count(n), kThreads), kThreads, 0, stream)(
      symbols, n, width, packed);
  return cudaGetLastError();
}

cudaError_t launch_unpack(const uint8_t* packed, int64_t n, int width, uint8_t* symbols,
                          cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  COMMCOMP_LAUNCH(unpack_kernel, blocks_for(group_count(n), kThreads), kThreads, 0, stream)(
      packed, n, width, symbols);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace commcomp
