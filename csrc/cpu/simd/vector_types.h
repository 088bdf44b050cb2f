// Element tags of the vector kernels' inputs (torch-free: the bindings pass raw pointers). Plain
// structs without functions, so any translation unit may include them whatever its target ISA.
#pragma once

#include <stdint.h>

namespace commcomp {
namespace simd {

struct F16Bits {
  uint16_t bits;
};
struct BF16Bits {
  uint16_t bits;
};

}  // namespace simd
}  // namespace commcomp
