// The torch side of the vector kernels: which table an op uses now, and the input types they read.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdlib>
#include <string>

#include "kernels.h"

namespace commcomp {
namespace simd {

// "scalar, avx2, ..." for messages and the _cpu_paths op.
inline std::string supported_path_names() {
  std::string names;
  for (int p = 0; p < kPathCount; ++p) {
    if (!path_supported(static_cast<Path>(p))) continue;
    if (!names.empty()) names += ", ";
    names += path_name(static_cast<Path>(p));
  }
  return names;
}

// The vector kernels of the path ops run now, nullptr for the scalar core loops: the best path
// this CPU supports, or the one COMMCOMP_CPU_PATH names (read at every op call, so tests can force
// each path in turn).
inline const Kernels* cpu_kernels() {
  const char* requested = std::getenv("COMMCOMP_CPU_PATH");
  Path path = Path::Scalar;
  TORCH_CHECK_VALUE(resolve_path(requested, path), "COMMCOMP_CPU_PATH='", requested,
                    "' names no CPU kernel path this machine supports (supported: ",
                    supported_path_names(), "; unset it for the best one)");
  return vector_kernels(path);
}

// The element types the vector kernels read (others, e.g. float64, take the scalar loops).
template <typename T>
struct VectorInput {
  static constexpr bool supported = false;
  static constexpr InputType type = InputType::F32;
};
template <>
struct VectorInput<float> {
  static constexpr bool supported = true;
  static constexpr InputType type = InputType::F32;
};
template <>
struct VectorInput<c10::Half> {
  static constexpr bool supported = true;
  static constexpr InputType type = InputType::F16;
};
template <>
struct VectorInput<c10::BFloat16> {
  static constexpr bool supported = true;
  static constexpr InputType type = InputType::BF16;
};

// cpu_kernels() where `T` is read by the vector kernels, else nullptr.
template <typename T>
const Kernels* cpu_kernels_for() {
  const Kernels* k = cpu_kernels();
  return VectorInput<T>::supported ? k : nullptr;
}

}  // namespace simd
}  // namespace commcomp
