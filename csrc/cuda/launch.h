// The launch API of every CUDA kernel (quantize.cu, elias.cu, stats.cu). Plain C++ types, raw
// pointers and a stream only: no torch headers, so nvcc compiles the kernels on machines without a
// CUDA build of PyTorch, and the bindings (*_binding.cpp) are the only files that see tensors.
// Every launch enqueues on `stream` and returns the first launch error, cudaSuccess otherwise.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../core/elias.h"
#include "../core/levels.h"
#include "../core/quantize.h"

// Every kernel launch in csrc/cuda is written COMMCOMP_LAUNCH(kernel, grid, block, smem, stream)
// (args...). nvcc sees kernel<<<grid, block, smem, stream>>>(args...); the CPU harness of
// tests/cuda_emulation compiles these same sources with the host compiler, defines
// COMMCOMP_CUDA_EMULATION and receives a call that runs the kernel's threads on the CPU.
#if defined(COMMCOMP_CUDA_EMULATION)
#define COMMCOMP_LAUNCH(kernel, grid, block, smem, stream) \
  ::commcomp_emu::launch(#kernel, kernel, grid, block, smem, stream)
#else
#define COMMCOMP_LAUNCH(kernel, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif

namespace commcomp {
namespace cuda {

// Element type of a gradient the kernels read (converted to float on load).
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Most blocks one launch asks for. Every kernel is a grid-stride loop, so a capped grid still
// covers all its work; the cap only drops blocks that could not be resident anyway. An H100/H200
// (132 SMs of 2048 threads) holds at most 2112 blocks of 128 threads (elias.cu) or 1056 of 256
// (quantize.cu, stats.cu) at once, and register use keeps most kernels below that. Extra blocks
// would only queue, each paying fixed costs: staging the level table in shared memory, and for
// level_stats zeroing and merging a per-block histogram (its global atomics grow with the grid).
constexpr int64_t kMaxBlocks = 2048;

// Grid size for `work` items at `per_block` items per block: ceil(work / per_block) clamped to
// [1, kMaxBlocks]. Launches with no work return before launching.
inline unsigned int blocks_for(int64_t work, int64_t per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// ---- Quantization (quantize.cu) -----------------------------------------------------------------

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
                            uint64_t offset, int64_t first_group, uint8_t* symbols,
                            cudaStream_t stream);

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

// ---- Elias codec (elias.cu) ---------------------------------------------------------------------

// Geometry of one coded tensor: `numel` symbols of symbol_width_for(num_levels) bits, cut into
// buckets of `bucket_size`.
struct EliasShape {
  int64_t numel;
  int64_t bucket_size;
  int64_t buckets;
  int num_levels;
  int width;
  EliasCode code;
};

// The error flags below are lowered with an unsigned atomicMin, so the caller initializes them
// to ~0ull (all ones: -1 as an int64 tensor), the identity of that min; a flag still all ones
// after the launch means no error.

// bucket_bytes[b] = bytes of bucket b's code. If some symbol cannot be coded, *first_bad becomes
// the lowest such bucket (and that bucket's length 0).
cudaError_t launch_elias_bucket_bytes(const uint8_t* packed, const EliasShape& shape,
                                      int64_t* bucket_bytes, unsigned long long* first_bad,
                                      cudaStream_t stream);

// Writes bucket b's code at stream_out + offsets[b] (offsets: exclusive prefix sum of the bytes).
cudaError_t launch_elias_write(const uint8_t* packed, const EliasShape& shape,
                               const int64_t* offsets, uint8_t* stream_out, cudaStream_t stream);

// Decodes every bucket (bucket b: bucket_bytes[b] bytes at coded + offsets[b]) into `packed`.
// On failure *first_error becomes (bucket << 8) | status of the lowest failing bucket; the output
// is then unspecified.
cudaError_t launch_elias_decode(const uint8_t* coded, const int64_t* offsets,
                                const int64_t* bucket_bytes, const EliasShape& shape,
                                uint8_t* packed, unsigned long long* first_error,
                                cudaStream_t stream);

// ---- level_stats (stats.cu) ---------------------------------------------------------------------

// Weighted sqrt-spaced histogram of csrc/core/stats.h over the n elements of `x` (of `dtype`).
//   norms:     one float per bucket of `bucket_size` elements (device)
//   max_norm:  one float, the largest finite norm (device; read by the kernels, no host sync)
//   scratch:   `bins` uint64 counters, zeroed by the caller (device)
//   out:       `bins` doubles, the bin masses (device)
cudaError_t launch_level_stats(const void* x, DType dtype, int64_t n, const float* norms,
                               int64_t bucket_size, const float* max_norm, int bins,
                               unsigned long long* scratch, double* out, cudaStream_t stream);

}  // namespace cuda
}  // namespace commcomp
