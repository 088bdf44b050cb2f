// Portability macros shared by the CPU and CUDA backends. Torch-free on purpose: nvcc compiles
// the kernels that include this without any PyTorch headers.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define COMMCOMP_HD __host__ __device__ __forceinline__
#define COMMCOMP_UNROLL _Pragma("unroll")
#else
#define COMMCOMP_HD inline
#define COMMCOMP_UNROLL
#endif

namespace commcomp {

// Rounded-to-nearest float arithmetic that the compiler may not contract into FMA. CPU and GPU
// outputs must agree bit for bit, and an FMA on one side only would change the last bit.
COMMCOMP_HD float fmul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

COMMCOMP_HD float fadd_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

COMMCOMP_HD float fsub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

COMMCOMP_HD float fdiv_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

COMMCOMP_HD float fsqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return __builtin_sqrtf(a);
#endif
}

COMMCOMP_HD float fabs_hd(float a) { return a < 0.0f ? -a : a; }
COMMCOMP_HD float fmax_hd(float a, float b) { return a > b ? a : b; }
// max that returns NaN if either argument is NaN (fmax_hd returns b when a is NaN, a when b is).
COMMCOMP_HD float fmax_nan(float a, float b) { return (a != a || a > b) ? a : b; }
constexpr float kFloatMax = 3.40282347e38f;  // FLT_MAX, without <cfloat> in device code
COMMCOMP_HD float fmin_hd(float a, float b) { return a < b ? a : b; }

}  // namespace commcomp
