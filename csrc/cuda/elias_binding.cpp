// CUDA implementations of the Elias codec ops: the shared checks (checks/elias.h), the current
// stream, and the torch-free launch wrappers of launch.h. The prefix sum of bucket lengths is
// ATen's cumsum. Both ops synchronize once: the encoded size and any decode error are needed on
// the host. Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks/elias.h"
#include "binding_utils.h"
#include "launch.h"

namespace commcomp {
namespace {

cuda::EliasShape shape_of(const EliasArgs& a) {
  return {a.numel, a.bucket_size, a.buckets, a.num_levels, a.width, a.code};
}

// A one-element int64 error flag holding -1 (all ones: ~0ull, the identity of the kernels'
// unsigned atomicMin); still -1 after the launch means no error.
at::Tensor error_flag(const at::Tensor& like) {
  return at::full({1}, -1, like.options().dtype(at::kLong));
}

unsigned long long* flag_ptr(at::Tensor& flag) {
  return reinterpret_cast<unsigned long long*>(flag.data_ptr<int64_t>());
}

std::tuple<at::Tensor, at::Tensor> elias_encode_cuda(const at::Tensor& packed, int64_t num_levels,
                                                     int64_t bucket_size, int64_t numel,
                                                     int64_t code) {
  const EliasArgs a = check_elias_args(num_levels, bucket_size, numel, code);
  check_packed_symbols(packed, a);
  const c10::cuda::CUDAGuard guard(packed.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const cuda::EliasShape shape = shape_of(a);
  at::Tensor bucket_bytes = at::empty({a.buckets}, packed.options().dtype(at::kLong));
  at::Tensor first_bad = error_flag(packed);
  cuda::check_launch(cuda::launch_elias_bucket_bytes(packed.data_ptr<uint8_t>(), shape,
                                                     bucket_bytes.data_ptr<int64_t>(),
                                                     flag_ptr(first_bad), stream),
                     "elias_bucket_bytes");
  const int64_t bad = first_bad.item<int64_t>();
  TORCH_CHECK_VALUE(bad == -1, "packed: symbol in bucket ", bad,
                    " cannot be Elias coded: its level index is >= num_levels=", num_levels,
                    " or it is a zero with the sign bit set");
  const at::Tensor ends = at::cumsum(bucket_bytes, 0);
  const int64_t total = a.buckets ? ends[a.buckets - 1].item<int64_t>() : 0;
  const at::Tensor offsets = ends - bucket_bytes;
  at::Tensor out = at::empty({total}, packed.options());
  cuda::check_launch(cuda::launch_elias_write(packed.data_ptr<uint8_t>(), shape,
                                              offsets.data_ptr<int64_t>(),
                                              out.data_ptr<uint8_t>(), stream),
                     "elias_write");
  return {bucket_bytes, out};
}

at::Tensor elias_decode_cuda(const at::Tensor& bucket_bytes, const at::Tensor& coded,
                             int64_t num_levels, int64_t bucket_size, int64_t numel,
                             int64_t code) {
  const EliasArgs a = check_elias_args(num_levels, bucket_size, numel, code);
  check_elias_stream(bucket_bytes, coded, a);  // synchronizes; lengths are then safe to use
  const c10::cuda::CUDAGuard guard(coded.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor offsets = at::cumsum(bucket_bytes, 0) - bucket_bytes;
  at::Tensor packed = at::empty({packed_bytes(numel, a.width)}, coded.options());
  at::Tensor first_error = error_flag(coded);
  cuda::check_launch(cuda::launch_elias_decode(coded.data_ptr<uint8_t>(),
                                               offsets.data_ptr<int64_t>(),
                                               bucket_bytes.data_ptr<int64_t>(), shape_of(a),
                                               packed.data_ptr<uint8_t>(),
                                               flag_ptr(first_error), stream),
                     "elias_decode");
  const auto err = static_cast<unsigned long long>(first_error.item<int64_t>());
  if (err != ~0ull) {
    throw_elias_error(static_cast<int64_t>(err >> 8), static_cast<EliasStatus>(err & 0xFF));
  }
  return packed;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CUDA, m) {
  m.impl("elias_encode", &elias_encode_cuda);
  m.impl("elias_decode", &elias_decode_cuda);
}

}  // namespace commcomp
