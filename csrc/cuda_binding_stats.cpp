// CUDA binding of level_stats: validates tensors, then enqueues the torch-free kernels of
// csrc/cuda/stats.cu on the current stream. Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/stats_launch.h"
#include "stats_checks.h"

namespace commcomp {
namespace {

cuda::StatsElement stats_element(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return cuda::StatsElement::Float32;
    case at::kHalf:
      return cuda::StatsElement::Float16;
    case at::kBFloat16:
      return cuda::StatsElement::BFloat16;
    default:
      TORCH_CHECK_VALUE(false, "x must be float32, float16 or bfloat16, got ", type);
  }
}

at::Tensor level_stats_cuda(const at::Tensor& x, const at::Tensor& norms, int64_t bucket_size,
                            int64_t bins) {
  check_stats_args(x, norms, bucket_size, bins);
  const c10::cuda::CUDAGuard guard(x.device());
  if (norms.numel() == 0) return at::zeros({bins}, x.options().dtype(at::kDouble));
  const at::Tensor max_norm = max_finite_norm(norms);
  at::Tensor scratch = at::zeros({bins}, x.options().dtype(at::kLong));
  at::Tensor out = at::empty({bins}, x.options().dtype(at::kDouble));
  const cudaError_t err = cuda::launch_level_stats(
      x.data_ptr(), stats_element(x.scalar_type()), x.numel(), norms.data_ptr<float>(),
      bucket_size, max_norm.data_ptr<float>(), static_cast<int>(bins),
      reinterpret_cast<unsigned long long*>(scratch.data_ptr<int64_t>()),
      out.data_ptr<double>(), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "level_stats: CUDA launch failed: ", cudaGetErrorString(err));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CUDA, m) { m.impl("level_stats", &level_stats_cuda); }

}  // namespace commcomp
