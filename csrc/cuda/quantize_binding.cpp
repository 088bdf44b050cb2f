// CUDA implementations of the quantization ops: validate tensors (the shared checks of
// checks/quantize.h), take the current stream, call the torch-free launch wrappers of launch.h.
// Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../checks/quantize.h"
#include "binding_utils.h"
#include "launch.h"

namespace commcomp {
namespace {

at::Tensor bucket_norms_cuda(const at::Tensor& x, int64_t bucket_size, const std::string& norm) {
  check_gradient(x);
  check_bucket_size(bucket_size);
  const NormKind kind = parse_norm(norm);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor norms = at::empty({bucket_count(x.numel(), bucket_size)}, x.options().dtype(at::kFloat));
  cuda::check_launch(cuda::launch_bucket_norms(x.data_ptr(), cuda::launch_dtype(x.scalar_type()),
                                               x.numel(), bucket_size, kind,
                                               norms.data_ptr<float>(),
                                               c10::cuda::getCurrentCUDAStream()),
                     "bucket_norms");
  return norms;
}

std::tuple<at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, const at::Tensor& levels,
                                                 int64_t bucket_size, const std::string& norm,
                                                 int64_t seed, int64_t offset,
                                                 const std::optional<at::Tensor>& given,
                                                 bool allow_nonfinite, int64_t stream_index) {
  check_seed(seed, offset);
  const int64_t first_group = first_group_of(stream_index);
  const LevelTable table = level_table_from(levels);
  const c10::cuda::CUDAGuard guard(x.device());  // the stream below is x's device's
  at::Tensor norms = bucket_norms_cuda(x, bucket_size, norm);
  // Synchronizes, unless the caller detects non-finite buckets from the returned norms itself.
  if (given.has_value() || !allow_nonfinite) check_finite_norms(norms);
  if (given.has_value()) norms = given_norms(*given, norms, bucket_size);
  const int width = table.index_bits + 1;
  at::Tensor symbols = at::empty({packed_bytes(x.numel(), width)}, x.options().dtype(at::kByte));
  cuda::check_launch(cuda::launch_quantize(x.data_ptr(), cuda::launch_dtype(x.scalar_type()),
                                           x.numel(), bucket_size, norms.data_ptr<float>(), table,
                                           static_cast<uint64_t>(seed),
                                           static_cast<uint64_t>(offset), first_group,
                                           symbols.data_ptr<uint8_t>(),
                                           c10::cuda::getCurrentCUDAStream()),
                     "quantize");
  return {norms, symbols};
}

void accumulate_cuda(at::Tensor& out, at::TensorList norms, at::TensorList symbols,
                     const LevelTable& table, int64_t bucket_size, float scale, bool assign_first) {
  const c10::cuda::CUDAGuard guard(out.device());
  at::Tensor invalid = at::zeros({1}, out.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  for (size_t first = 0; first < norms.size(); first += cuda::kMaxPayloadsPerLaunch) {
    cuda::PayloadPointers ptrs{};
    ptrs.count = static_cast<int>(
        std::min<size_t>(cuda::kMaxPayloadsPerLaunch, norms.size() - first));
    for (int k = 0; k < ptrs.count; ++k) {
      ptrs.norms[k] = norms[first + k].data_ptr<float>();
      ptrs.symbols[k] = symbols[first + k].data_ptr<uint8_t>();
    }
    cuda::check_launch(cuda::launch_dequantize_accumulate(out.data_ptr<float>(), out.numel(),
                                                          bucket_size, ptrs, table, scale,
                                                          assign_first && first == 0,
                                                          invalid.data_ptr<int>(), stream),
                       "dequantize_accumulate");
  }
  TORCH_CHECK_VALUE(invalid.item<int>() == 0, "symbols name a level index >= the ", table.count,
                    " levels given: corrupt payload or mismatched levels");
}

at::Tensor dequantize_cuda(const at::Tensor& norms, const at::Tensor& symbols,
                           const at::Tensor& levels, int64_t bucket_size, int64_t numel) {
  check_bucket_size(bucket_size);
  check_numel(numel);
  const LevelTable table = level_table_from(levels);
  check_payload(norms, symbols, numel, bucket_size, table.index_bits + 1, "dequantize");
  check_decodable_norms(norms);
  const c10::cuda::CUDAGuard guard(norms.device());
  at::Tensor out = at::empty({numel}, norms.options());
  accumulate_cuda(out, {norms}, {symbols}, table, bucket_size, 1.0f, true);
  return out;
}

void dequantize_accumulate_cuda(at::Tensor& out, at::TensorList norms, at::TensorList symbols,
                                const at::Tensor& levels, int64_t bucket_size, double scale) {
  const LevelTable table = level_table_from(levels);
  check_accumulate_args(out, norms, symbols, table, bucket_size, scale);
  const c10::cuda::CUDAGuard guard(out.device());
  accumulate_cuda(out, norms, symbols, table, bucket_size, static_cast<float>(scale), false);
}

at::Tensor pack_symbols_cuda(const at::Tensor& symbols, int64_t width) {
  const at::Tensor s = checked_symbols_to_pack(symbols, width);
  const c10::cuda::CUDAGuard guard(s.device());
  at::Tensor packed = at::empty({packed_bytes(s.numel(), static_cast<int>(width))}, s.options());
  cuda::check_launch(cuda::launch_pack(s.data_ptr<uint8_t>(), s.numel(), static_cast<int>(width),
                                       packed.data_ptr<uint8_t>(),
                                       c10::cuda::getCurrentCUDAStream()),
                     "pack_symbols");
  return packed;
}

at::Tensor unpack_symbols_cuda(const at::Tensor& packed, int64_t width, int64_t numel) {
  const at::Tensor p = checked_packed(packed, width, numel);
  const c10::cuda::CUDAGuard guard(p.device());
  at::Tensor symbols = at::empty({numel}, p.options());
  cuda::check_launch(cuda::launch_unpack(p.data_ptr<uint8_t>(), numel, static_cast<int>(width),
                                         symbols.data_ptr<uint8_t>(),
                                         c10::cuda::getCurrentCUDAStream()),
                     "unpack_symbols");
  return symbols;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CUDA, m) {
  m.impl("bucket_norms", &bucket_norms_cuda);
  m.impl("quantize", &quantize_cuda);
  m.impl("dequantize", &dequantize_cuda);
  m.impl("dequantize_accumulate", &dequantize_accumulate_cuda);
  m.impl("pack_symbols", &pack_symbols_cuda);
  m.impl("unpack_symbols", &unpack_symbols_cuda);
}

}  // namespace commcomp
