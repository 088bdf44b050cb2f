// CUDA implementations of the core ops: validate tensors (shared checks), take the current stream,
// call the torch-free launch wrappers in cuda/launch.h. Compiled only in CUDA builds.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "checks.h"
#include "cuda/launch.h"

namespace commcomp {
namespace {

cuda::DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return cuda::DType::Float32;
    case at::kHalf: return cuda::DType::Float16;
    case at::kBFloat16: return cuda::DType::BFloat16;
    default: TORCH_CHECK_VALUE(false, "x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " kernel launch failed: ", cudaGetErrorString(err));
}

at::Tensor bucket_norms_cuda(const at::Tensor& x, int64_t bucket_size, const std::string& norm) {
  check_gradient(x);
  check_bucket_size(bucket_size);
  const NormKind kind = parse_norm(norm);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor norms = at::empty({bucket_count(x.numel(), bucket_size)}, x.options().dtype(at::kFloat));
  check_launch(cuda::launch_bucket_norms(x.data_ptr(), dtype_of(x), x.numel(), bucket_size, kind,
                                         norms.data_ptr<float>(),
                                         c10::cuda::getCurrentCUDAStream()),
               "bucket_norms");
  return norms;
}

std::tuple<at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, const at::Tensor& levels,
                                                 int64_t bucket_size, const std::string& norm,
                                                 int64_t seed, int64_t offset,
                                                 const std::optional<at::Tensor>& given) {
  check_seed(seed, offset);
  const LevelTable table = level_table_from(levels);
  at::Tensor norms = bucket_norms_cuda(x, bucket_size, norm);
  check_finite_norms(norms);  // synchronizes: non-finite buckets must not be silently encoded
  if (given.has_value()) norms = given_norms(*given, norms, bucket_size);
  const int width = table.index_bits + 1;
  at::Tensor symbols = at::empty({packed_bytes(x.numel(), width)}, x.options().dtype(at::kByte));
  check_launch(cuda::launch_quantize(x.data_ptr(), dtype_of(x), x.numel(), bucket_size,
                                     norms.data_ptr<float>(), table, static_cast<uint64_t>(seed),
                                     static_cast<uint64_t>(offset), symbols.data_ptr<uint8_t>(),
                                     c10::cuda::getCurrentCUDAStream()),
               "quantize");
  return {norms, symbols};
}

void accumulate_cuda(at::Tensor& out, at::TensorList norms, at::TensorList symbols,
                     const LevelTable& table, int64_t bucket_size, float scale, bool assign_first) {
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
    check_launch(cuda::launch_dequantize_accumulate(out.data_ptr<float>(), out.numel(),
                                                    bucket_size, ptrs, table, scale,
                                                    assign_first && first == 0,
                                                    invalid.data_ptr<int>(), stream),
                 "dequantize_accumulate");
  }
  TORCH_CHECK_VALUE(invalid.item<int>() == 0, "symbols name a level index >= the ", table.count,
                    " levels given: corrupt payload or mismatched levels");
}

void check_decodable_norms(const at::Tensor& norms) {
  check_finite_norms(norms);
  TORCH_CHECK_VALUE(norms.numel() == 0 || norms.min().item<float>() >= 0.0f,
                    "norms must be non-negative");
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
  check_bucket_size(bucket_size);
  const LevelTable table = level_table_from(levels);
  TORCH_CHECK_VALUE(out.dim() == 1 && out.scalar_type() == at::kFloat && out.is_contiguous(),
                    "out must be a contiguous 1-D float32 tensor");
  TORCH_CHECK_VALUE(norms.size() == symbols.size(), "norms and symbols must list the same number "
                    "of payloads, got ", norms.size(), " and ", symbols.size());
  for (size_t k = 0; k < norms.size(); ++k) {
    check_payload(norms[k], symbols[k], out.numel(), bucket_size, table.index_bits + 1,
                  "dequantize_accumulate");
    TORCH_CHECK_VALUE(norms[k].device() == out.device(), "payload ", k, " is on ",
                      norms[k].device(), " but out is on ", out.device());
    check_decodable_norms(norms[k]);
  }
  const c10::cuda::CUDAGuard guard(out.device());
  accumulate_cuda(out, norms, symbols, table, bucket_size, static_cast<float>(scale), false);
}

at::Tensor pack_symbols_cuda(const at::Tensor& symbols, int64_t width) {
  check_width(width);
  TORCH_CHECK_VALUE(symbols.dim() == 1 && symbols.scalar_type() == at::kByte,
                    "symbols must be a 1-D uint8 tensor");
  const at::Tensor s = symbols.contiguous();
  TORCH_CHECK_VALUE(s.numel() == 0 || s.max().item<uint8_t>() < (1u << width),
                    "symbols must fit in width=", width, " bits");
  const c10::cuda::CUDAGuard guard(s.device());
  at::Tensor packed = at::empty({packed_bytes(s.numel(), static_cast<int>(width))}, s.options());
  check_launch(cuda::launch_pack(s.data_ptr<uint8_t>(), s.numel(), static_cast<int>(width),
                                 packed.data_ptr<uint8_t>(), c10::cuda::getCurrentCUDAStream()),
               "pack_symbols");
  return packed;
}

at::Tensor unpack_symbols_cuda(const at::Tensor& packed, int64_t width, int64_t numel) {
  check_width(width);
  check_numel(numel);
  TORCH_CHECK_VALUE(packed.dim() == 1 && packed.scalar_type() == at::kByte,
                    "packed must be a 1-D uint8 tensor");
  TORCH_CHECK_VALUE(packed.numel() == packed_bytes(numel, static_cast<int>(width)), "packed must hold ",
                    packed_bytes(numel, static_cast<int>(width)), " bytes for numel=", numel,
                    " at width=", width, ", got ", packed.numel());
  const at::Tensor p = packed.contiguous();
  const c10::cuda::CUDAGuard guard(p.device());
  at::Tensor symbols = at::empty({numel}, p.options());
  check_launch(cuda::launch_unpack(p.data_ptr<uint8_t>(), numel, static_cast<int>(width),
                                   symbols.data_ptr<uint8_t>(), c10::cuda::getCurrentCUDAStream()),
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
