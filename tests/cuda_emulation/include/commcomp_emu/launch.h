// Kernel launches of the CUDA emulation. csrc/cuda/launch.h's COMMCOMP_LAUNCH(kernel, grid, block,
// smem, stream)(args...) expands to launch(...)(args...) here and to kernel<<<...>>>(args...)
// under nvcc.
#pragma once

#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

#include "runtime.h"

namespace commcomp_emu {

// CUDA's classic limit on a kernel's parameter bytes (nvcc rejects more before CUDA 12.1).
constexpr size_t kMaxKernelParamBytes = 4096;

struct KernelLaunch {
  const char* name;
  dim3 grid;
  dim3 block;
  size_t dynamic_shared_bytes;
  cudaStream_t stream;
  std::function<void()> run_thread;  // the kernel body of one CUDA thread
};

// Validates the configuration (as cudaLaunchKernel does) and enqueues the launch on its stream.
// The error, if any, is what the next cudaGetLastError() returns.
void enqueue_launch(KernelLaunch launch);

template <class... P>
constexpr size_t param_bytes() {
  size_t offset = 0;
  ((offset = (offset + alignof(P) - 1) / alignof(P) * alignof(P) + sizeof(P)), ...);
  return offset;
}

template <class... P>
class Launcher {
 public:
  Launcher(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
           cudaStream_t stream)
      : name_(name), kernel_(kernel), grid_(grid), block_(block), smem_(smem), stream_(stream) {}

  template <class... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with a wrong argument count");
    static_assert((!std::is_reference<P>::value && ...), "kernel parameters are passed by value");
    static_assert((std::is_trivially_copyable<P>::value && ...),
                  "kernel parameters are copied bytewise: they must be trivially copyable");
    static_assert(param_bytes<P...>() <= kMaxKernelParamBytes,
                  "kernel parameters exceed CUDA's 4 KiB parameter space");
    // The arguments are converted and copied now, as cudaLaunchKernel copies them: the caller's
    // objects may be gone before the kernel runs. Every CUDA thread gets its own copy.
    auto params = std::make_shared<const std::tuple<P...>>(std::forward<A>(args)...);
    void (*kernel)(P...) = kernel_;
    enqueue_launch({name_, grid_, block_, smem_, stream_,
                    [kernel, params] { std::apply(kernel, *params); }});
  }

 private:
  const char* name_;
  void (*kernel_)(P...);
  dim3 grid_, block_;
  size_t smem_;
  cudaStream_t stream_;
};

template <class... P>
Launcher<P...> launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem,
                      cudaStream_t stream) {
  return Launcher<P...>(name, kernel, grid, block, smem, stream);
}

}  // namespace commcomp_emu
