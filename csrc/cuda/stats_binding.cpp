// CUDA binding of level_stats: validates tensors (checks/stats.h), then enqueues the torch-free
// kernels of stats.cu on the current stream. Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../checks/stats.h"
#include "binding_utils.h"
#include "launch.h"

namespace commcomp {
namespace {

at::Tensor level_stats_cuda(const at::Tensor& x, const at::Tensor& norms, int64_t bucket_size,
                            int64_t bins) {
  check_stats_args(x, norms, bucket_size, bins);
  const c10::cuda::CUDAGuard guard(x.device());
  if (norms.numel() == 0) return at::zeros({bins}, x.options().dtype(at::kDouble));
  const at::Tensor max_norm = max_finite_norm(norms);
  at::Tensor scratch = at::zeros({bins}, x.options().dtype(at::kLong));
  at::Tensor out = at::empty({bins}, x.options().dtype(at::kDouble));
  cuda::check_launch(
      cuda::launch_level_stats(
          x.data_ptr(), cuda::launch_dtype(x.scalar_type()), x.numel(), norms.data_ptr<float>(),
          bucket_size, max_norm.data_ptr<float>(), static_cast<int>(bins),
          reinterpret_cast<unsigned long long*>(scratch.data_ptr<int64_t>()),
          out.data_ptr<double>(), c10::cuda::getCurrentCUDAStream()),
      "level_stats");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CUDA, m) { m.impl("level_stats", &level_stats_cuda); }

}  // namespace commcomp
