// Argument checks of the quantization ops (quantize with given norms, dequantize_accumulate,
// pack_symbols, unpack_symbols), shared by the CPU and CUDA bindings.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

#include "common.h"

namespace commcomp {

// Caller-supplied scales (e.g. the max of all ranks' norms): one finite, non-negative float32 per
// bucket, at least the bucket's own norm (else coordinates would clip and rounding be biased).
inline at::Tensor given_norms(const at::Tensor& norms, const at::Tensor& own, int64_t bucket_size) {
  TORCH_CHECK_VALUE(norms.dim() == 1 && norms.scalar_type() == at::kFloat,
                    "norms must be a 1-D float32 tensor");
  TORCH_CHECK_VALUE(norms.numel() == own.numel(), "norms must hold one entry per bucket of ",
                    bucket_size, " elements: expected ", own.numel(), ", got ", norms.numel());
  TORCH_CHECK_VALUE(norms.device() == own.device(), "norms must be on x's device");
  if (norms.numel() == 0) return norms.contiguous().clone();
  // An inf scale would quantize its bucket to zeros, a NaN one would pass no comparison: both
  // are refused by name, before the comparison with the bucket's own norm.
  const at::Tensor bad = (~at::isfinite(norms)).nonzero();
  TORCH_CHECK_VALUE(bad.numel() == 0, "norms must be finite, got ",
                    bad.numel() ? norms[bad[0].item<int64_t>()].item<float>() : 0.0f,
                    " for bucket ", bad.numel() ? bad[0].item<int64_t>() : -1);
  TORCH_CHECK_VALUE((norms >= own).all().item<bool>(),
                    "norms must be >= each bucket's own norm (did every rank contribute?)");
  return norms.contiguous().clone();
}

// dequantize_accumulate's arguments: an fp32 accumulator and matching, decodable payloads.
inline void check_accumulate_args(const at::Tensor& out, at::TensorList norms,
                                  at::TensorList symbols, const LevelTable& table,
                                  int64_t bucket_size, double scale) {
  check_bucket_size(bucket_size);
  TORCH_CHECK_VALUE(std::isfinite(scale), "scale must be finite, got ", scale);
  check_flat(out, at::kFloat, "out");
  TORCH_CHECK_VALUE(norms.size() == symbols.size(), "norms and symbols must list the same number "
                    "of payloads, got ", norms.size(), " and ", symbols.size());
  for (size_t k = 0; k < norms.size(); ++k) {
    check_payload(norms[k], symbols[k], out.numel(), bucket_size, table.index_bits + 1,
                  "dequantize_accumulate");
    TORCH_CHECK_VALUE(norms[k].device() == out.device(), "payload ", k, " is on ",
                      norms[k].device(), " but out is on ", out.device());
    check_decodable_norms(norms[k]);
  }
}

// pack_symbols input: 1-D uint8 symbols that fit in `width` bits; returned contiguous.
inline at::Tensor checked_symbols_to_pack(const at::Tensor& symbols, int64_t width) {
  check_width(width);
  TORCH_CHECK_VALUE(symbols.dim() == 1 && symbols.scalar_type() == at::kByte,
                    "symbols must be a 1-D uint8 tensor");
  const at::Tensor s = symbols.contiguous();
  TORCH_CHECK_VALUE(s.numel() == 0 || s.max().item<uint8_t>() < (1u << width),
                    "symbols must fit in width=", width, " bits");
  return s;
}

// unpack_symbols input: exactly the bytes `numel` symbols of `width` bits occupy; returned contiguous.
inline at::Tensor checked_packed(const at::Tensor& packed, int64_t width, int64_t numel) {
  check_width(width);
  check_numel(numel);
  TORCH_CHECK_VALUE(packed.dim() == 1 && packed.scalar_type() == at::kByte,
                    "packed must be a 1-D uint8 tensor");
  check_packed_size(packed, numel, static_cast<int>(width));
  return packed.contiguous();
}

}  // namespace commcomp
