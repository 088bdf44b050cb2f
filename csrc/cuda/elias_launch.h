// Launch wrappers of the Elias codec kernels (cuda/elias.cu). Plain C++ types, raw pointers and a
// stream only: no torch headers, so nvcc compiles the kernels without a CUDA build of PyTorch.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include "../core/elias.h"

namespace commcomp {
namespace cuda {

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

// bucket_bytes[b] = bytes of bucket b's code. If some symbol cannot be coded, *first_bad (which
// the caller initializes to INT64_MAX) becomes the lowest such bucket.
cudaError_t launch_elias_bucket_bytes(const uint8_t* packed, const EliasShape& shape,
                                      int64_t* bucket_bytes, unsigned long long* first_bad,
                                      cudaStream_t stream);

// Writes bucket b's code at stream_out + offsets[b] (offsets: exclusive prefix sum of the bytes).
cudaError_t launch_elias_write(const uint8_t* packed, const EliasShape& shape,
                               const int64_t* offsets, uint8_t* stream_out, cudaStream_t stream);

// Decodes every bucket (bucket b: bucket_bytes[b] bytes at coded + offsets[b]) into `packed`.
// On failure *first_error (initialized by the caller to ~0ull) becomes (bucket << 8) | status of
// the lowest failing bucket; the output is then unspecified.
cudaError_t launch_elias_decode(const uint8_t* coded, const int64_t* offsets,
                                const int64_t* bucket_bytes, const EliasShape& shape,
                                uint8_t* packed, unsigned long long* first_error,
                                cudaStream_t stream);

}  // namespace cuda
}  // namespace commcomp
