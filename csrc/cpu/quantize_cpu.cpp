// CPU backend of the core quantization ops: at::parallel_for loops over the csrc/core math.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <optional>
#include <vector>

#include "../checks/quantize.h"
#include "../core/bitpack.h"
#include "../core/quantize.h"
#include "simd/select.h"

namespace commcomp {
namespace {

// Packing groups per parallel task: ~64K elements, enough work to amortize scheduling.
constexpr int64_t kGroupsPerTask = 8192;
// The vector kernels do the same work in a fraction of the time, so their tasks take more elements
// (each about 50 us of one core): a tensor too small to pay for a second thread runs inline, and a
// large one (a DDP bucket of a few MB) still splits over every core.
constexpr int64_t kVectorNormElementsPerTask = 1 << 19;
constexpr int64_t kVectorDecodeGroupsPerTask = 1 << 15;  // per payload decoded
constexpr int64_t kVectorPackGroupsPerTask = 1 << 16;
// Packing groups whose uniforms are drawn together (a 2 KiB stack buffer).
constexpr int64_t kUniformBlockGroups = 64;
// Elements whose norms the fused vector quantize computes just before rounding them, while they
// are still in cache (64 KiB of fp32).
constexpr int64_t kFusedBlockElements = 1 << 14;

template <typename scalar_t>
void bucket_norms_kernel(const scalar_t* x, int64_t n, int64_t bucket_size, NormKind kind,
                         float* norms) {
  const int64_t buckets = bucket_count(n, bucket_size);
  const simd::Kernels* vec = simd::cpu_kernels_for<scalar_t>();
  const int64_t grain =
      std::max<int64_t>(1, (vec != nullptr ? kVectorNormElementsPerTask : 65536) / bucket_size);
  at::parallel_for(0, buckets, grain, [&](int64_t begin, int64_t end) {
    if (vec != nullptr) {
      vec->bucket_norms(x, simd::VectorInput<scalar_t>::type, n, bucket_size,
                        static_cast<int>(kind), begin, end, norms);
      return;
    }
    for (int64_t b = begin; b < end; ++b) {
      float lanes[kNormLanes] = {0.0f};
      const int64_t start = b * bucket_size;
      const int64_t stop = std::min(n, start + bucket_size);
      for (int64_t i = start; i < stop; ++i) {
        float& lane = lanes[(i - start) % kNormLanes];
        lane = norm_lane_update(lane, static_cast<float>(x[i]), kind);
      }
      norms[b] = norm_combine_lanes(lanes, kind);
    }
  });
}

at::Tensor bucket_norms_cpu(const at::Tensor& x, int64_t bucket_size, const std::string& norm) {
  check_gradient(x);
  check_bucket_size(bucket_size);
  const NormKind kind = parse_norm(norm);
  at::Tensor norms = at::empty({bucket_count(x.numel(), bucket_size)}, x.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bucket_norms", [&] {
    bucket_norms_kernel(x.data_ptr<scalar_t>(), x.numel(), bucket_size, kind,
                        norms.data_ptr<float>());
  });
  return norms;
}

// Quantizes packing groups [begin, end) with the scalar core: the scalar path, and the tails the
// vector kernels leave.
template <typename Load>
void quantize_groups_scalar(Load load, const simd::QuantizeArgs& args, int64_t begin, int64_t end) {
  // A copy: bytes stored through args.out may alias the fields of a reference, which would then be
  // reloaded for every group.
  const simd::QuantizeArgs a = args;
  // Draw a block's uniforms in a loop of its own: independent Philox evaluations the
  // compiler vectorizes, which it cannot do when they are interleaved with the rounding.
  float u[kUniformBlockGroups * kPackGroup];
  for (int64_t block = begin; block < end; block += kUniformBlockGroups) {
    const int64_t stop = std::min(end, block + kUniformBlockGroups);
    for (int64_t g = block; g < stop; ++g) {
      group_uniforms(a.seed, a.offset, a.first_group + g, u + (g - block) * kPackGroup);
    }
    for (int64_t g = block; g < stop; ++g) {
      const int size = group_size(g, a.n);
      const uint64_t bits = quantize_group_with(load, g, size, a.norms, a.bucket_size, a.levels,
                                                a.inv_width, a.count, a.width,
                                                u + (g - block) * kPackGroup);
      store_group(a.out, g, bits, size, a.width);
    }
  }
}

// Norms and symbols in one pass over x where a vector path runs: blocks of whole buckets, each
// block's norms computed just before its elements are rounded, so x is read from memory once.
// Bit-identical to the two passes (same norms, same rounding); nullopt on the scalar path.
std::optional<std::tuple<at::Tensor, at::Tensor>> quantize_fused_cpu(
    const at::Tensor& x, const LevelTable& table, int64_t bucket_size, const std::string& norm,
    int64_t seed, int64_t offset, int64_t first_group) {
  check_gradient(x);
  check_bucket_size(bucket_size);
  const NormKind kind = parse_norm(norm);
  std::optional<std::tuple<at::Tensor, at::Tensor>> result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize", [&] {
    const simd::Kernels* vec = simd::cpu_kernels_for<scalar_t>();
    if (vec == nullptr) return;
    const int64_t n = x.numel();
    const int64_t buckets = bucket_count(n, bucket_size);
    const int width = table.index_bits + 1;
    at::Tensor norms = at::empty({buckets}, x.options().dtype(at::kFloat));
    at::Tensor symbols = at::empty({packed_bytes(n, width)}, x.options().dtype(at::kByte));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    float* norm_ptr = norms.data_ptr<float>();
    const simd::QuantizeArgs args{xp, simd::VectorInput<scalar_t>::type, n, norm_ptr, bucket_size,
                                  table.value, table.inv_width, table.count, width,
                                  static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                  symbols.data_ptr<uint8_t>(), first_group};
    auto load = [xp](int64_t i) { return static_cast<float>(xp[i]); };
    // A block is a multiple of the fewest buckets that end on a packing-group boundary, so blocks
    // share no output byte.
    int64_t aligned = 1;
    while ((aligned * bucket_size) % kPackGroup != 0) ++aligned;
    const int64_t per_block = std::max<int64_t>(1, kFusedBlockElements / (aligned * bucket_size)) * aligned;
    const int64_t blocks = (buckets + per_block - 1) / per_block;
    const int64_t grain = std::max<int64_t>(1, kGroupsPerTask * kPackGroup / (per_block * bucket_size));
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      for (int64_t block = begin; block < end; ++block) {
        const int64_t first = block * per_block, last = std::min(buckets, first + per_block);
        vec->bucket_norms(xp, simd::VectorInput<scalar_t>::type, n, bucket_size,
                          static_cast<int>(kind), first, last, norm_ptr);
        const int64_t group_end = last == buckets ? group_count(n) : last * bucket_size / kPackGroup;
        const int64_t done = vec->quantize(args, first * bucket_size / kPackGroup, group_end);
        quantize_groups_scalar(load, args, done, group_end);
      }
    });
    result.emplace(norms, symbols);
  });
  return result;
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, const at::Tensor& levels,
                                                int64_t bucket_size, const std::string& norm,
                                                int64_t seed, int64_t offset,
                                                const std::optional<at::Tensor>& given,
                                                bool allow_nonfinite, int64_t stream_index) {
  check_seed(seed, offset);
  const int64_t first_group = first_group_of(stream_index);
  const LevelTable table = level_table_from(levels);
  if (!given.has_value()) {
    if (auto fused = quantize_fused_cpu(x, table, bucket_size, norm, seed, offset, first_group)) {
      // A non-finite bucket is an error unless the caller reads it from the returned norms (its
      // symbols are then all zero).
      if (!allow_nonfinite) check_finite_norms(std::get<0>(*fused));
      return *fused;
    }
  }
  at::Tensor norms = bucket_norms_cpu(x, bucket_size, norm);
  // Shared scales must cover finite buckets; otherwise a non-finite bucket is an error unless the
  // caller reads it from the returned norms (its symbols are then all zero).
  if (given.has_value() || !allow_nonfinite) check_finite_norms(norms);
  if (given.has_value()) norms = given_norms(*given, norms, bucket_size);
  const int64_t n = x.numel();
  const int width = table.index_bits + 1;
  at::Tensor symbols = at::empty({packed_bytes(n, width)}, x.options().dtype(at::kByte));
  const float* norm_ptr = norms.data_ptr<float>();
  uint8_t* out = symbols.data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    auto load = [xp](int64_t i) { return static_cast<float>(xp[i]); };
    const simd::Kernels* vec = simd::cpu_kernels_for<scalar_t>();
    const simd::QuantizeArgs args{xp, simd::VectorInput<scalar_t>::type, n, norm_ptr, bucket_size,
                                  table.value, table.inv_width, table.count, width,
                                  static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), out,
                                  first_group};
    at::parallel_for(0, group_count(n), kGroupsPerTask, [&](int64_t begin, int64_t end) {
      // The vector kernels do whole chunks; the scalar loop does what they leave.
      if (vec != nullptr) begin = vec->quantize(args, begin, end);
      quantize_groups_scalar(load, args, begin, end);
    });
  });
  return {norms, symbols};
}

// Adds scale * decode(payload k) for every payload into `out`, in payload order.
void accumulate_cpu(float* out, int64_t n, const std::vector<const float*>& norms,
                    const std::vector<const uint8_t*>& symbols, const LevelTable& table,
                    int64_t bucket_size, float scale, bool overwrite_first) {
  const int width = table.index_bits + 1;
  std::atomic<bool> valid{true};
  const simd::Kernels* vec = simd::cpu_kernels();
  const simd::AccumulateArgs args{out, n, norms.data(), symbols.data(), static_cast<int>(norms.size()),
                                  bucket_size, table.value, table.count, width, scale,
                                  overwrite_first};
  const int64_t grain =
      vec != nullptr
          ? std::max<int64_t>(kGroupsPerTask, kVectorDecodeGroupsPerTask / std::max<int64_t>(1, norms.size()))
          : kGroupsPerTask;
  at::parallel_for(0, group_count(n), grain, [&](int64_t begin, int64_t end) {
    bool ok = true;
    if (vec != nullptr) begin = vec->accumulate(args, begin, end, &ok);
    for (int64_t g = begin; g < end; ++g) {
      const int size = group_size(g, n);
      for (size_t k = 0; k < norms.size(); ++k) {
        const uint64_t bits = load_group(symbols[k], g, size, width);
        const bool assign = overwrite_first && k == 0;
        ok &= dequantize_group(bits, g, size, norms[k], bucket_size, table.value, table.count,
                               width, [&](int64_t i, float v) {
                                 out[i] = assign ? v : fadd_rn(out[i], fmul_rn(scale, v));
                               });
      }
    }
    if (!ok) valid = false;
  });
  TORCH_CHECK_VALUE(valid.load(), "symbols name a level index >= the ", table.count,
                    " levels given: corrupt payload or mismatched levels");
}

at::Tensor dequantize_cpu(const at::Tensor& norms, const at::Tensor& symbols,
                          const at::Tensor& levels, int64_t bucket_size, int64_t numel) {
  check_bucket_size(bucket_size);
  check_numel(numel);
  const LevelTable table = level_table_from(levels);
  check_payload(norms, symbols, numel, bucket_size, table.index_bits + 1, "dequantize");
  check_decodable_norms(norms);
  at::Tensor out = at::empty({numel}, norms.options());
  accumulate_cpu(out.data_ptr<float>(), numel, {norms.data_ptr<float>()},
                 {symbols.data_ptr<uint8_t>()}, table, bucket_size, 1.0f, true);
  return out;
}

void dequantize_accumulate_cpu(at::Tensor& out, at::TensorList norms, at::TensorList symbols,
                               const at::Tensor& levels, int64_t bucket_size, double scale) {
  const LevelTable table = level_table_from(levels);
  check_accumulate_args(out, norms, symbols, table, bucket_size, scale);
  std::vector<const float*> norm_ptrs;
  std::vector<const uint8_t*> symbol_ptrs;
  for (size_t k = 0; k < norms.size(); ++k) {
    norm_ptrs.push_back(norms[k].data_ptr<float>());
    symbol_ptrs.push_back(symbols[k].data_ptr<uint8_t>());
  }
  accumulate_cpu(out.data_ptr<float>(), out.numel(), norm_ptrs, symbol_ptrs, table, bucket_size,
                 static_cast<float>(scale), false);
}

at::Tensor pack_symbols_cpu(const at::Tensor& symbols, int64_t width) {
  const at::Tensor s = checked_symbols_to_pack(symbols, width);
  const int64_t n = s.numel();
  at::Tensor packed = at::empty({packed_bytes(n, static_cast<int>(width))}, s.options());
  const uint8_t* in = s.data_ptr<uint8_t>();
  uint8_t* out = packed.data_ptr<uint8_t>();
  const simd::Kernels* vec = simd::cpu_kernels();
  const int64_t grain = vec != nullptr ? kVectorPackGroupsPerTask : kGroupsPerTask;
  at::parallel_for(0, group_count(n), grain, [&](int64_t begin, int64_t end) {
    if (vec != nullptr) begin = vec->pack(in, n, static_cast<int>(width), begin, end, out);
    for (int64_t g = begin; g < end; ++g) {
      uint32_t group[kPackGroup] = {0, 0, 0, 0, 0, 0, 0, 0};
      const int size = group_size(g, n);
      for (int k = 0; k < size; ++k) group[k] = in[g * kPackGroup + k];
      store_group(out, g, pack_group(group, size, static_cast<int>(width)), size,
                  static_cast<int>(width));
    }
  });
  return packed;
}

at::Tensor unpack_symbols_cpu(const at::Tensor& packed, int64_t width, int64_t numel) {
  const at::Tensor p = checked_packed(packed, width, numel);
  at::Tensor symbols = at::empty({numel}, p.options());
  const uint8_t* in = p.data_ptr<uint8_t>();
  uint8_t* out = symbols.data_ptr<uint8_t>();
  const simd::Kernels* vec = simd::cpu_kernels();
  const int64_t grain = vec != nullptr ? kVectorPackGroupsPerTask : kGroupsPerTask;
  at::parallel_for(0, group_count(numel), grain, [&](int64_t begin, int64_t end) {
    if (vec != nullptr) begin = vec->unpack(in, numel, static_cast<int>(width), begin, end, out);
    for (int64_t g = begin; g < end; ++g) {
      const int size = group_size(g, numel);
      const uint64_t bits = load_group(in, g, size, static_cast<int>(width));
      for (int k = 0; k < size; ++k)
        out[g * kPackGroup + k] = static_cast<uint8_t>(group_symbol(bits, k, static_cast<int>(width)));
    }
  });
  return symbols;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CPU, m) {
  m.impl("bucket_norms", &bucket_norms_cpu);
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("dequantize_accumulate", &dequantize_accumulate_cpu);
  m.impl("pack_symbols", &pack_symbols_cpu);
  m.impl("unpack_symbols", &unpack_symbols_cpu);
}

}  // namespace commcomp
