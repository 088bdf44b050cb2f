// The host side of the CUDA emulation: runtime types (dim3, streams, errors), the subset of the
// CUDA runtime API the sources use, and the harness's own controls. See docs/cuda_emulation.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
      : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// The values are CUDA's, so messages and tests read the same on both sides.
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

struct CUstream_st;
typedef struct CUstream_st* cudaStream_t;

cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t error);
const char* cudaGetErrorName(cudaError_t error);
cudaError_t cudaMalloc(void** ptr, size_t bytes);
cudaError_t cudaFree(void* ptr);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize();

namespace commcomp_emu {

// In which order a block's runnable threads are resumed after each synchronization point.
enum class Schedule : int { Forward = 0, Reverse = 1, Random = 2 };

struct Config {
  // Execute at most this many blocks per launch (0: as launched). gridDim.x shrinks with it, so
  // grid-stride loops run more iterations; the launched configuration is still validated.
  unsigned int max_blocks = 0;
  // Execute at most this many threads per block (0: as launched; else a multiple of 32).
  unsigned int max_threads = 0;
  // Host threads executing one launch's blocks concurrently; block b runs on worker b % workers,
  // so up to `workers` blocks really run at once (and ThreadSanitizer sees them do so).
  int workers = 2;
  Schedule schedule = Schedule::Forward;
  uint64_t seed = 0;  // of Schedule::Random
  // Byte written over fresh shared memory and cudaMalloc'ed memory: reads of memory no thread
  // wrote give 0xFF.. (NaN as float, -1 as int), not a lucky zero.
  int poison = 0xFF;
};

// The configuration in force: defaults, overridden by the environment variables
// COMMCOMP_EMU_MAX_BLOCKS, _MAX_THREADS, _WORKERS, _SCHEDULE (forward|reverse|random), _SEED.
Config config();
// Waits for every stream to drain, then applies `c` to later launches. Returns false (and changes
// nothing) if `c` is invalid.
bool configure(const Config& c);
// Waits for all streams, then clears the sticky error, its message and the launch log.
void reset();
// Why the sticky error was raised (empty if none): the kernel, block, thread and rule broken.
std::string error_message();
// Names of the kernels launched since the last reset, in launch order (template arguments cut).
std::vector<std::string> launched_kernels();

}  // namespace commcomp_emu
