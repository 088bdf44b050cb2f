// C entry points of the emulated CUDA backend for the Python tests (tests/cuda_emulation/_emu.py,
// through ctypes): the launch API of csrc/cuda/launch.h with plain C arguments, plus the harness
// controls. Memory is host memory (torch CPU tensors); launches are asynchronous as on a GPU, so
// callers synchronize before reading results.
#include <string.h>

#include <string>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/launch.h"

namespace {

using commcomp::EliasCode;
using commcomp::LevelTable;
using commcomp::NormKind;
namespace cc = commcomp::cuda;

// The table csrc/checks/common.h level_table_from builds, from already validated values.
LevelTable table_from(const float* levels, int count) {
  LevelTable table{};
  for (int j = 0; j < count; ++j) table.value[j] = levels[j];
  table.count = count;
  table.index_bits = commcomp::index_bits_for(count);
  commcomp::fill_inverse_widths(table);
  return table;
}

cc::EliasShape shape_of(int64_t numel, int64_t bucket_size, int num_levels, int code) {
  return {numel, bucket_size, (numel + bucket_size - 1) / bucket_size, num_levels,
          commcomp::symbol_width_for(num_levels), static_cast<EliasCode>(code)};
}

cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

void copy_out(const std::string& s, char* buffer, size_t size) {
  if (size == 0) return;
  strncpy(buffer, s.c_str(), size - 1);
  buffer[size - 1] = '\0';
}

}  // namespace

extern "C" {

// ---- Harness controls ----

int emu_configure(unsigned max_blocks, unsigned max_threads, int workers, int schedule,
                  unsigned long long seed) {
  commcomp_emu::Config c = commcomp_emu::config();
  c.max_blocks = max_blocks;
  c.max_threads = max_threads;
  c.workers = workers;
  c.schedule = static_cast<commcomp_emu::Schedule>(schedule);
  c.seed = seed;
  return commcomp_emu::configure(c) ? 0 : -1;
}

void emu_reset() { commcomp_emu::reset(); }

void emu_error_message(char* buffer, size_t size) {
  copy_out(commcomp_emu::error_message(), buffer, size);
}

// Launched kernel names since the last reset, one per line.
void emu_launched_kernels(char* buffer, size_t size) {
  std::string all;
  for (const std::string& name : commcomp_emu::launched_kernels()) all += name + "\n";
  copy_out(all, buffer, size);
}

const char* emu_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

const char* emu_elias_status_message(int status) {
  return commcomp::elias_status_message(static_cast<commcomp::EliasStatus>(status));
}

void* emu_stream_create() {
  cudaStream_t s = nullptr;
  return cudaStreamCreate(&s) == cudaSuccess ? s : nullptr;
}

int emu_stream_destroy(void* stream) { return cudaStreamDestroy(as_stream(stream)); }

int emu_stream_synchronize(void* stream) { return cudaStreamSynchronize(as_stream(stream)); }

int emu_device_synchronize() { return cudaDeviceSynchronize(); }

int emu_get_last_error() { return cudaGetLastError(); }

// The harness's float -> half and bfloat16 conversions (checked against torch's).
void emu_float_to_half_and_bfloat16(const float* x, int64_t n, uint16_t* half, uint16_t* bf16) {
  for (int64_t i = 0; i < n; ++i) {
    half[i] = __half_as_ushort(__float2half_rn(x[i]));
    bf16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x[i]));
  }
}

// ---- csrc/cuda/launch.h ----

int emu_bucket_norms(const void* x, int dtype, int64_t n, int64_t bucket_size, int kind,
                     float* norms, void* stream) {
  return cc::launch_bucket_norms(x, static_cast<cc::DType>(dtype), n, bucket_size,
                                 static_cast<NormKind>(kind), norms, as_stream(stream));
}

int emu_quantize(const void* x, int dtype, int64_t n, int64_t bucket_size, const float* norms,
                 const float* levels, int level_count, uint64_t seed, uint64_t offset,
                 int64_t first_group, uint8_t* symbols, void* stream) {
  return cc::launch_quantize(x, static_cast<cc::DType>(dtype), n, bucket_size, norms,
                             table_from(levels, level_count), seed, offset, first_group, symbols,
                             as_stream(stream));
}

int emu_dequantize_accumulate(float* out, int64_t n, int64_t bucket_size, int payload_count,
                              const float* const* norms, const uint8_t* const* symbols,
                              const float* levels, int level_count, float scale, int assign_first,
                              int* invalid, void* stream) {
  if (payload_count < 0 || payload_count > cc::kMaxPayloadsPerLaunch) return cudaErrorInvalidValue;
  cc::PayloadPointers payloads{};
  payloads.count = payload_count;
  for (int k = 0; k < payload_count; ++k) {
    payloads.norms[k] = norms[k];
    payloads.symbols[k] = symbols[k];
  }
  return cc::launch_dequantize_accumulate(out, n, bucket_size, payloads,
                                          table_from(levels, level_count), scale, assign_first != 0,
                                          invalid, as_stream(stream));
}

int emu_pack(const uint8_t* symbols, int64_t n, int width, uint8_t* packed, void* stream) {
  return cc::launch_pack(symbols, n, width, packed, as_stream(stream));
}

int emu_unpack(const uint8_t* packed, int64_t n, int width, uint8_t* symbols, void* stream) {
  return cc::launch_unpack(packed, n, width, symbols, as_stream(stream));
}

int emu_elias_bucket_bytes(const uint8_t* packed, int64_t numel, int64_t bucket_size,
                           int num_levels, int code, int64_t* bucket_bytes,
                           unsigned long long* first_bad, void* stream) {
  return cc::launch_elias_bucket_bytes(packed, shape_of(numel, bucket_size, num_levels, code),
                                       bucket_bytes, first_bad, as_stream(stream));
}

int emu_elias_write(const uint8_t* packed, int64_t numel, int64_t bucket_size, int num_levels,
                    int code, const int64_t* offsets, uint8_t* out, void* stream) {
  return cc::launch_elias_write(packed, shape_of(numel, bucket_size, num_levels, code), offsets,
                                out, as_stream(stream));
}

int emu_elias_decode(const uint8_t* coded, const int64_t* offsets, const int64_t* bucket_bytes,
                     int64_t numel, int64_t bucket_size, int num_levels, int code, uint8_t* packed,
                     unsigned long long* first_error, void* stream) {
  return cc::launch_elias_decode(coded, offsets, bucket_bytes,
                                 shape_of(numel, bucket_size, num_levels, code), packed,
                                 first_error, as_stream(stream));
}

int emu_level_stats(const void* x, int dtype, int64_t n, const float* norms, int64_t bucket_size,
                    const float* max_norm, int bins, unsigned long long* scratch, double* out,
                    void* stream) {
  return cc::launch_level_stats(x, static_cast<cc::DType>(dtype), n, norms, bucket_size, max_norm,
                                bins, scratch, out, as_stream(stream));
}

}  // extern "C"
