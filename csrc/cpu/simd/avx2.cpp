// The vector kernels compiled for AVX2 and F16C (no FMA: multiplies and adds stay
// separate, as in the scalar core). Only path.cpp's run-time check lets this code run; nothing
// here runs at load time (the kernel table is constant-initialized).
#if defined(__x86_64__)

#include "kernels.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif

#define COMMCOMP_SIMD_CORE_NAMESPACE commcomp_core_avx2
#include "core_private.h"
#include "isa_avx2.h"
#include "kernels_impl.h"

namespace commcomp {
namespace simd {
namespace avx2 {
extern const Kernels kKernels;
const Kernels kKernels = make_kernels<Avx2>(Path::Avx2);
}  // namespace avx2
}  // namespace simd
}  // namespace commcomp

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // __x86_64__
