// commcomp::_cpu_paths: the CPU kernel paths this machine supports (for tests and bug reports).
#include <torch/library.h>

#include <string>
#include <vector>

#include "select.h"

namespace commcomp {
namespace {

std::vector<std::string> cpu_paths() {
  std::vector<std::string> names;
  for (int p = 0; p < simd::kPathCount; ++p) {
    const auto path = static_cast<simd::Path>(p);
    if (simd::path_supported(path)) names.emplace_back(simd::path_name(path));
  }
  return names;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CompositeExplicitAutograd, m) { m.impl("_cpu_paths", &cpu_paths); }

}  // namespace commcomp
