// CUDA kernels of the Elias codec: one thread per bucket (encode) or per byte-aligned chunk of
// buckets (decode), each running the same csrc/core/elias.h functions as the CPU loop, so both
// backends produce the same bytes and reject the same payloads. Grid-stride loops, since
// blocks_for caps the grid.
#include "launch.h"

namespace commcomp {
namespace cuda {
namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ int64_t grid_first() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t grid_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

__global__ void elias_bucket_bytes_kernel(const uint8_t* packed, EliasShape shape,
                                          int64_t* bucket_bytes, unsigned long long* first_bad) {
  for (int64_t b = grid_first(); b < shape.buckets; b += grid_stride()) {
    const int64_t first = b * shape.bucket_size;
    const int64_t end = min(shape.numel, first + shape.bucket_size);
    const int64_t bits = elias_bucket_bits(packed, shape.width, shape.num_levels, first, end,
                                           shape.code);
    if (bits < 0) {
      atomicMin(first_bad, static_cast<unsigned long long>(b));
      bucket_bytes[b] = 0;
    } else {
      bucket_bytes[b] = (bits + 7) / 8;
    }
  }
}

__global__ void elias_write_kernel(const uint8_t* packed, EliasShape shape, const int64_t* offsets,
                                   uint8_t* out) {
  for (int64_t b = grid_first(); b < shape.buckets; b += grid_stride()) {
    const int64_t first = b * shape.bucket_size;
    const int64_t end = min(shape.numel, first + shape.bucket_size);
    elias_encode_bucket(packed, shape.width, first, end, shape.code, out + offsets[b]);
  }
}

__global__ void elias_decode_kernel(const uint8_t* coded, const int64_t* offsets,
                                    const int64_t* bucket_bytes, EliasShape shape,
                                    int64_t per_chunk, int64_t chunks, uint8_t* packed,
                                    unsigned long long* first_error) {
  for (int64_t c = grid_first(); c < chunks; c += grid_stride()) {
    const int64_t first_bucket = c * per_chunk;
    const int64_t last_bucket = min(shape.buckets, first_bucket + per_chunk);
    PackedWriter sink(packed + first_bucket * shape.bucket_size * shape.width / 8);
    for (int64_t b = first_bucket; b < last_bucket; ++b) {
      const int64_t count = min(shape.bucket_size, shape.numel - b * shape.bucket_size);
      const EliasStatus s = elias_decode_bucket(coded + offsets[b], bucket_bytes[b], count,
                                                shape.num_levels, shape.width, shape.code, sink);
      if (s != EliasStatus::Ok) {
        atomicMin(first_error, (static_cast<unsigned long long>(b) << 8) |
                                   static_cast<unsigned long long>(s));
        // This thread's later chunks hold only higher buckets, which cannot lower the minimum,
        // and the output is unspecified after an error.
        return;
      }
    }
    sink.finish();
  }
}

}  // namespace

cudaError_t launch_elias_bucket_bytes(const uint8_t* packed, const EliasShape& shape,
                                      int64_t* bucket_bytes, unsigned long long* first_bad,
                                      cudaStream_t stream) {
  if (shape.buckets == 0) return cudaSuccess;
  COMMCOMP_LAUNCH(elias_bucket_bytes_kernel, blocks_for(shape.buckets, kThreads), kThreads, 0,
                  stream)(packed, shape, bucket_bytes, first_bad);
  return cudaGetLastError();
}

cudaError_t launch_elias_write(const uint8_t* packed, const EliasShape& shape,
                               const int64_t* offsets, uint8_t* stream_out, cudaStream_t stream) {
  if (shape.buckets == 0) return cudaSuccess;
  COMMCOMP_LAUNCH(elias_write_kernel, blocks_for(shape.buckets, kThreads), kThreads, 0, stream)(
      packed, shape, offsets, stream_out);
  return cudaGetLastError();
}

cudaError_t launch_elias_decode(const uint8_t* coded, const int64_t* offsets,
                                const int64_t* bucket_bytes, const EliasShape& shape,
                                uint8_t* packed, unsigned long long* first_error,
                                cudaStream_t stream) {
  if (shape.buckets == 0) return cudaSuccess;
  const int64_t per_chunk = buckets_per_aligned_chunk(shape.bucket_size, shape.width);
  const int64_t chunks = (shape.buckets + per_chunk - 1) / per_chunk;
  COMMCOMP_LAUNCH(elias_decode_kernel, blocks_for(chunks, kThreads), kThreads, 0, stream)(
      coded, offsets, bucket_bytes, shape, per_chunk, chunks, packed, first_error);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace commcomp
