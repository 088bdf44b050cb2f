// Launch wrappers of the core CUDA kernels. Plain C++ types, raw pointers and a stream only: no
// torch headers, so nvcc compiles the kernels on machines without a CUDA build of PyTorch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../core/levels.h"
#include "../core/quantize.h"

namespace commcomp {
namespace cuda {

enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Up to this many payloads are decoded per dequantize_accumulate launch; more are chunked.
constexpr int kMaxPayloadsPerLaunch = 32;

struct PayloadPointers {
  const float* norms[kMaxPayloadsPerLaunch];
  const uint8_t* symbols[kMaxPayloadsPerLaunch];
  int count;
};

cudaError_t launch_bucket_norms(const void* x, DType dtype, int64_t n, int64_t bucket_size,
                                NormKind kind, float* norms, cudaStream_t stream);

cudaError_t launch_quantize(const void* x, DType dtype, int64_t n, int64_t bucket_size,
                            const float* norms, const LevelTable& table, uint64_t seed,
                            uint64_t offset, uint8_t* symbols, cudaStream_t stream);

// out[i] = (assign_first ? 0 : out[i]) + sum_k scale * decode_k(i), payloads in order. Sets
// *invalid to 1 if any symbol names a level the table lacks.
cudaError_t launch_dequantize_accumulate(float* out, int64_t n, int64_t bucket_size,
                                         const PayloadPointers& payloads, const LevelTable& table,
                                         float scale, bool assign_first, int* invalid,
                                         cudaStream_t stream);

cudaError_t launch_pack(const uint8_t* symbols, int64_t n, int width, uint8_t* packed,
                        cudaStream_t stream);

cudaError_t launch_unpack(const uint8_t* packed, int64_t n, int width, uint8_t* symbols,
                          cudaStream_t stream);

}  // namespace cuda
}  // namespace commcomp
