// Vectorized CPU kernels (AVX2, AVX-512) behind one function table, chosen at run time. Torch-free:
// raw pointers in, raw pointers out, so tests/cpp can check every path against csrc/core without
// Python.
//
// Every kernel reproduces the scalar core (csrc/core) bit for bit: Philox by element index, the
// same float operations in the same order (separate multiplies and adds, true divisions), the
// same 32-lane order for norms. The bulk kernels (quantize, accumulate, pack, unpack) handle whole
// chunks only and return where they stopped; the caller finishes the range with the scalar core
// loop, so every path shares one definition of the tails.
#pragma once

#include <stdint.h>

namespace commcomp {
namespace simd {

enum class Path : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };
constexpr int kPathCount = 3;

enum class InputType : int { F32 = 0, F16 = 1, BF16 = 2 };

struct QuantizeArgs {
  const void* x;
  InputType type;
  int64_t n;             // elements of x
  const float* norms;    // one per bucket
  int64_t bucket_size;
  const float* levels;   // count values, strictly increasing from 0 to 1
  const float* inv_width;
  int count;
  int width;             // bits per symbol: index bits + 1
  uint64_t seed, offset;
  uint8_t* out;          // packed symbols
  int64_t first_group = 0;  // Philox packing group of x[0] (ops.quantize's stream_index / 8)
};

struct AccumulateArgs {
  float* out;
  int64_t n;
  const float* const* norms;       // per payload
  const uint8_t* const* symbols;   // per payload
  int payloads;
  int64_t bucket_size;
  const float* levels;
  int count;
  int width;
  float scale;
  bool overwrite_first;  // payload 0 assigns instead of accumulating (dequantize)
};

struct Kernels {
  Path path;
  // Norms of buckets [begin, end) of x (all of them: every bucket, its tail included).
  void (*bucket_norms)(const void* x, InputType type, int64_t n, int64_t bucket_size, int kind,
                       int64_t begin, int64_t end, float* norms);
  // Packing groups [begin, end) as far as whole chunks go; returns the first group not done.
  int64_t (*quantize)(const QuantizeArgs& a, int64_t begin, int64_t end);
  // Like quantize; clears *ok if a symbol names a level the table lacks (decoded as 0).
  int64_t (*accumulate)(const AccumulateArgs& a, int64_t begin, int64_t end, bool* ok);
  int64_t (*pack)(const uint8_t* symbols, int64_t n, int width, int64_t begin, int64_t end,
                  uint8_t* out);
  int64_t (*unpack)(const uint8_t* packed, int64_t n, int width, int64_t begin, int64_t end,
                    uint8_t* out);
};

// The vector kernels of `path`; nullptr for Path::Scalar (the caller's core loops are that path)
// and for paths not built (non-x86) or not supported by this CPU.
const Kernels* vector_kernels(Path path);
bool path_supported(Path path);
const char* path_name(Path path);

// How `requested` (the value of COMMCOMP_CPU_PATH; nullptr or "" for the best supported path)
// resolves: true and `path` set, or false where it names no path or one this machine lacks.
bool resolve_path(const char* requested, Path& path);

namespace avx2 {
extern const Kernels kKernels;
}
namespace avx512 {
extern const Kernels kKernels;
}

}  // namespace simd
}  // namespace commcomp
