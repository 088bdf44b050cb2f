// CPU backend of level_stats: the weighted sqrt-spaced histogram of csrc/core/stats.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks/stats.h"
#include "../core/stats.h"

namespace commcomp {
namespace {

// Buckets per parallel task: each task owns a private histogram, merged afterwards. Integer sums
// make the merge order irrelevant, so the split need not match the CUDA grid.
constexpr int64_t kStatElementsPerTask = 1 << 16;

template <typename scalar_t>
void level_stats_kernel(const scalar_t* x, int64_t n, const float* norms, int64_t bucket_size,
                        float w_max, int bins, uint64_t* total) {
  const int64_t buckets = bucket_count(n, bucket_size);
  const int64_t grain = std::max<int64_t>(1, kStatElementsPerTask / bucket_size);
  const int64_t tasks = (buckets + grain - 1) / grain;
  std::vector<uint64_t> partial(static_cast<size_t>(tasks * bins), 0ull);
  at::parallel_for(0, tasks, 1, [&](int64_t task_begin, int64_t task_end) {
    for (int64_t t = task_begin; t < task_end; ++t) {
      uint64_t* hist = partial.data() + t * bins;
      const int64_t b_end = std::min(buckets, (t + 1) * grain);
      for (int64_t b = t * grain; b < b_end; ++b) {
        const uint64_t w = stat_weight(norms[b], w_max);
        if (w == 0ull) continue;
        const int64_t stop = std::min(n, (b + 1) * bucket_size);
        for (int64_t i = b * bucket_size; i < stop; ++i) {
          const int k = stat_bin(stat_magnitude(static_cast<float>(x[i]), norms[b]), bins);
          if (k >= 0) hist[k] += w;
        }
      }
    }
  });
  for (int64_t t = 0; t < tasks; ++t)
    for (int k = 0; k < bins; ++k) total[k] += partial[static_cast<size_t>(t * bins + k)];
}

at::Tensor level_stats_cpu(const at::Tensor& x, const at::Tensor& norms, int64_t bucket_size,
                           int64_t bins) {
  check_stats_args(x, norms, bucket_size, bins);
  at::Tensor out = at::zeros({bins}, x.options().dtype(at::kDouble));
  if (norms.numel() == 0) return out;
  const float max_norm = max_finite_norm(norms).item<float>();
  const float w_max = stat_reference_weight(max_norm);
  std::vector<uint64_t> total(static_cast<size_t>(bins), 0ull);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "level_stats", [&] {
    level_stats_kernel(x.data_ptr<scalar_t>(), x.numel(), norms.data_ptr<float>(), bucket_size,
                       w_max, static_cast<int>(bins), total.data());
  });
  double* o = out.data_ptr<double>();
  for (int64_t k = 0; k < bins; ++k) o[k] = bin_mass(total[static_cast<size_t>(k)], w_max);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CPU, m) { m.impl("level_stats", &level_stats_cpu); }

}  // namespace commcomp
