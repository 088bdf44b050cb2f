// Which vector path this CPU runs, and the COMMCOMP_CPU_PATH override. Compiled for the baseline
// ISA: nothing here may execute an instruction the CPU lacks.
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define COMMCOMP_SIMD_X86 1
#endif

namespace commcomp {
namespace simd {
namespace {

#if defined(COMMCOMP_SIMD_X86)
// Register state the OS saves on context switches (XCR0); a feature is usable only with it.
uint64_t enabled_state() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

struct Features {
  bool avx2 = false;
  bool avx512 = false;
  Features() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    const bool osxsave = (c >> 27) & 1u, avx = (c >> 28) & 1u, f16c = (c >> 29) & 1u;
    if (!osxsave || !avx) return;
    const uint64_t xcr0 = enabled_state();
    const bool ymm_state = (xcr0 & 0x6u) == 0x6u;     // SSE + AVX registers
    const bool zmm_state = (xcr0 & 0xE6u) == 0xE6u;   // + opmask, upper ZMM, ZMM16-31
    if (__get_cpuid_max(0, nullptr) < 7) return;
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2_bit = (b >> 5) & 1u;
    const bool f = (b >> 16) & 1u, dq = (b >> 17) & 1u, bw = (b >> 30) & 1u, vl = (b >> 31) & 1u;
    const bool vbmi = (c >> 1) & 1u;
    avx2 = ymm_state && avx2_bit && f16c;
    avx512 = avx2 && zmm_state && f && dq && bw && vl && vbmi;
  }
};

const Features& features() {
  static const Features f;
  return f;
}
#endif

}  // namespace

bool path_supported(Path path) {
  switch (path) {
    case Path::Scalar: return true;
#if defined(COMMCOMP_SIMD_X86)
    case Path::Avx2: return features().avx2;
    case Path::Avx512: return features().avx512;
#endif
    default: return false;
  }
}

const Kernels* vector_kernels(Path path) {
  if (!path_supported(path)) return nullptr;
#if defined(COMMCOMP_SIMD_X86)
  if (path == Path::Avx2) return &avx2::kKernels;
  if (path == Path::Avx512) return &avx512::kKernels;
#endif
  return nullptr;
}

const char* path_name(Path path) {
  switch (path) {
    case Path::Scalar: return "scalar";
    case Path::Avx2: return "avx2";
    case Path::Avx512: return "avx512";
  }
  return "unknown";
}

bool resolve_path(const char* requested, Path& path) {
  if (requested == nullptr || requested[0] == '\0') {
    path = path_supported(Path::Avx512) ? Path::Avx512
           : path_supported(Path::Avx2) ? Path::Avx2
                                        : Path::Scalar;
    return true;
  }
  for (int p = 0; p < kPathCount; ++p) {
    if (strcmp(requested, path_name(static_cast<Path>(p))) == 0) {
      path = static_cast<Path>(p);
      return path_supported(path);
    }
  }
  return false;
}

}  // namespace simd
}  // namespace commcomp
