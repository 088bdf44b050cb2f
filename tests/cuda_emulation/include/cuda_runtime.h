// CPU stand-in for <cuda_runtime.h> (tests/cuda_emulation): lets the host compiler build the very
// .cu sources nvcc builds, and run their kernels. See docs/cuda_emulation.md.
#pragma once

#include "commcomp_emu/device.h"
#include "commcomp_emu/launch.h"
#include "commcomp_emu/runtime.h"
