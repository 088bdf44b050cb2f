// Includes csrc/core inside the private namespace COMMCOMP_SIMD_CORE_NAMESPACE, aliased
// commcomp::simd::core. A vector translation unit compiles every function it uses for its target
// ISA; the core's inline functions have external linkage, so an out-of-line copy compiled for
// AVX-512 could be the one the linker keeps for the whole library, and the baseline code would
// then run AVX-512 instructions. Renaming the namespace gives each vector unit copies of its own.
// Include once per translation unit, before anything else includes csrc/core.
#pragma once

#if !defined(COMMCOMP_SIMD_CORE_NAMESPACE)
#error "define COMMCOMP_SIMD_CORE_NAMESPACE before including core_private.h"
#endif

#include <stdint.h>

#define commcomp COMMCOMP_SIMD_CORE_NAMESPACE
#include "../../core/quantize.h"
#undef commcomp

namespace commcomp {
namespace simd {
namespace core = ::COMMCOMP_SIMD_CORE_NAMESPACE;
}  // namespace simd
}  // namespace commcomp
