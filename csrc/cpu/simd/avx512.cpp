// The vector kernels compiled for AVX-512 (F, BW, VL, DQ, VBMI; no FMA: multiplies and adds stay
// separate, as in the scalar core). Only path.cpp's run-time check lets this code run; nothing
// here runs at load time (the kernel table is constant-initialized).
#if defined(__x86_64__)

#include "kernels.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")
#endif

#define COMMCOMP_SIMD_CORE_NAMESPACE commcomp_core_avx512
#include "core_private.h"
#include "isa_avx512.h"
#include "kernels_impl.h"

namespace commcomp {
namespace simd {
namespace avx512 {
extern const Kernels kKernels;
const Kernels kKernels = make_kernels<Avx512>(Path::Avx512);
}  // namespace avx512
}  // namespace simd
}  // namespace commcomp

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // __x86_64__
