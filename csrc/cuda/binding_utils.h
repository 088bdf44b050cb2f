// What every CUDA binding (*_binding.cpp) needs between tensors and the torch-free launch API of
// launch.h. Host-compiler only: it includes torch headers, so no .cu file may include it.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include "launch.h"

namespace commcomp {
namespace cuda {

// The launch enum of a gradient's element type (the bindings check x with check_gradient first).
inline DType launch_dtype(at::ScalarType type) {
  switch (type) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK_VALUE(false, "x must be float32, float16 or bfloat16, got ", type);
  }
}

// Raises if a launch wrapper reported an error; `what` names the op.
inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, " kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace commcomp
