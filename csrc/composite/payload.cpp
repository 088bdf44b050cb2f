// The payload ops behind commcomp.codecs: read_payload_header and decode_payload, for payloads on
// any device. Validation is csrc/core/wire.h, run on the host over the bytes before the symbol
// stream (header, level table, norms, bucket lengths: a few bytes per bucket, copied once from a
// device); the stream stays where it is and goes to the backend's elias_decode (CPU or CUDA), or
// is checked and copied (fixed width). Registered as CompositeExplicitAutograd: one
// implementation for every backend, in CPU-only and CUDA builds alike.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../core/wire.h"

namespace commcomp {
namespace {

// Header fields in the order of the header tensor both ops return (codecs._HEADER_FIELDS).
constexpr int kHeaderFields = 10;

[[noreturn]] void malformed(const char* why) {
  TORCH_CHECK_VALUE(false, "malformed payload: ", why);
  __builtin_unreachable();
}

[[noreturn]] void malformed(const wire::Error& e) { malformed(e.message); }

// A 1-D uint8 tensor, made contiguous: a strided view of a payload is the same payload.
at::Tensor checked_payload(const at::Tensor& payload) {
  TORCH_CHECK_VALUE(payload.dim() == 1 && payload.scalar_type() == at::kByte,
                    "payload must be a 1-D uint8 tensor, got ", payload.scalar_type(),
                    " of shape ", payload.sizes());
  return payload.contiguous();
}

// The first `count` bytes of a contiguous payload, on the host (a view on the CPU).
at::Tensor host_prefix(const at::Tensor& p, int64_t count) {
  return p.narrow(0, 0, count).to(at::kCPU);
}

wire::Header checked_header(const at::Tensor& p) {
  const at::Tensor head = host_prefix(p, std::min<int64_t>(p.numel(), wire::kHeaderBytes));
  wire::Header h;
  wire::Error e;
  if (!wire::check_header(head.data_ptr<uint8_t>(), p.numel(), h, e)) malformed(e);
  return h;
}

at::Tensor header_tensor(const wire::Header& h) {
  at::Tensor t = at::empty({kHeaderFields}, at::TensorOptions().dtype(at::kLong));
  int64_t* f = t.data_ptr<int64_t>();
  f[0] = h.coding;
  f[1] = h.levels_kind;
  f[2] = h.num_levels;
  f[3] = h.bits;
  f[4] = h.dtype;
  f[5] = h.length_bytes;
  f[6] = h.bucket_size;
  f[7] = static_cast<int64_t>(h.numel);  // uint64 bits; codecs.py reads them back unsigned
  f[8] = static_cast<int64_t>(h.stream_bytes);
  f[9] = h.levels_crc;
  return t;
}

at::Tensor read_payload_header(const at::Tensor& payload) {
  return header_tensor(checked_header(checked_payload(payload)));
}

at::Tensor call_elias_decode(const at::Tensor& lengths, const at::Tensor& stream,
                             const wire::Header& h, int64_t numel) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("commcomp::elias_decode", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t,
                                               int64_t, int64_t, int64_t)>();
  try {
    return op.call(lengths, stream, h.num_levels, h.bucket_size, numel,
                   static_cast<int64_t>(wire::elias_code_of(h.coding)));
  } catch (const c10::ValueError& err) {
    malformed(err.msg().c_str());  // the op names the bucket and what is wrong with it
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> decode_payload(
    const at::Tensor& payload, int64_t max_numel, int64_t numel, int64_t bucket_size,
    const std::optional<at::Tensor>& levels) {
  TORCH_CHECK_VALUE(max_numel >= 0, "max_numel must be non-negative, got ", max_numel);
  TORCH_CHECK_VALUE(numel >= -1, "numel must be non-negative (or -1: any), got ", numel);
  TORCH_CHECK_VALUE(bucket_size >= -1, "bucket_size must be non-negative (or -1: any), got ",
                    bucket_size);
  wire::Expect x;
  x.max_numel = max_numel;
  x.numel = numel;
  x.bucket_size = bucket_size;
  at::Tensor expected_levels;
  if (levels.has_value()) {
    TORCH_CHECK_VALUE(levels->dim() == 1 && levels->scalar_type() == at::kFloat &&
                          levels->numel() <= kMaxLevels,
                      "levels must be a 1-D float32 tensor of at most ", kMaxLevels, " entries");
    expected_levels = levels->to(at::kCPU).contiguous();
    x.levels = expected_levels.data_ptr<float>();
    x.num_levels = static_cast<int>(expected_levels.numel());
  }

  const at::Tensor p = checked_payload(payload);
  const wire::Header h = checked_header(p);
  wire::Layout at;
  wire::Error e;
  if (!wire::check_layout(h, p.numel(), x, at, e)) malformed(e);
  const at::Tensor prefix = host_prefix(p, at.stream_at);
  const bool fixed = h.coding == wire::kFixed;
  std::vector<int64_t> lengths(fixed ? 0 : static_cast<size_t>(at.buckets));
  wire::LevelValues table;
  if (!wire::check_sections(prefix.data_ptr<uint8_t>(), h, at, x, table, lengths.data(), e)) {
    malformed(e);
  }

  at::Tensor level_values = at::empty({table.count}, at::TensorOptions().dtype(at::kFloat));
  std::copy_n(table.value, table.count, level_values.data_ptr<float>());
  const at::Tensor norms = p.narrow(0, at.norms_at, 4 * at.buckets).clone().view(at::kFloat);
  const int64_t stream_bytes = at.end - at.stream_at;
  const at::Tensor stream = p.narrow(0, at.stream_at, stream_bytes);
  if (!fixed) {
    const at::Tensor bucket_bytes =
        at::tensor(lengths, at::TensorOptions().dtype(at::kLong)).to(p.device());
    return {header_tensor(h), level_values, norms, call_elias_decode(bucket_bytes, stream, h, at.numel)};
  }
  if (stream_bytes > 0) {
    // The padding needs the last byte; the index check (tables of odd sizes only) every byte.
    const bool scan = wire::fixed_indices_need_check(h);
    const at::Tensor host = scan ? stream.to(at::kCPU) : stream.narrow(0, stream_bytes - 1, 1).to(at::kCPU);
    const uint8_t* bytes = host.data_ptr<uint8_t>();
    if (!wire::check_fixed_padding(bytes[host.numel() - 1], h, at, e)) malformed(e);
    if (scan && !wire::check_fixed_indices(bytes, h, at, e)) malformed(e);
  }
  return {header_tensor(h), level_values, norms, stream.clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CompositeExplicitAutograd, m) {
  m.impl("read_payload_header", &read_payload_header);
  m.impl("decode_payload", &decode_payload);
}

}  // namespace commcomp
