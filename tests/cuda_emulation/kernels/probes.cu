// Kernels that pin down the CUDA semantics of the emulation harness (test_emu_harness.py). Plain
// CUDA, launched through COMMCOMP_LAUNCH like csrc/cuda: the build compiles it into the emulation
// library, and tools/gpu_check.sh compiles the "semantic" probes with nvcc so the same expected
// values are checked on a real GPU. The "misuse" probes break a CUDA rule on purpose; only the
// harness runs them (it must reject each with a message).
//
// Every probe_* function enqueues on the default stream and returns the launch error.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/launch.h"

namespace {

// ---- Semantic probes ------------------------------------------------------------------------

// out[t] = the op's shuffle of 100 + t (every thread of the block runs the same op).
__global__ void shuffle_kernel(int op, int arg, int width, int* out) {
  const int t = threadIdx.x;
  const int v = 100 + t;
  int r;
  switch (op) {
    case 0: r = __shfl_sync(0xffffffffu, v, arg, width); break;
    case 1: r = __shfl_up_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
    case 2: r = __shfl_down_sync(0xffffffffu, v, static_cast<unsigned>(arg), width); break;
    default: r = __shfl_xor_sync(0xffffffffu, v, arg, width); break;
  }
  out[t] = r;
}

// 64-bit values keep all their bits through a shuffle.
__global__ void shuffle64_kernel(double* out_double, long long* out_ll) {
  const int t = threadIdx.x;
  out_double[t] = __shfl_down_sync(0xffffffffu, 1.0 + t / 1024.0, 1);
  out_ll[t] = __shfl_xor_sync(0xffffffffu, (1ll << 40) + t, 3);
}

// Votes: out[4 t .. 4 t + 3] = ballot, any, all of (lane % 3 == 0), and __syncthreads_count.
__global__ void vote_kernel(int* out) {
  const int t = threadIdx.x;
  const int lane = t % 32;
  const int pred = lane % 3 == 0;
  out[4 * t] = static_cast<int>(__ballot_sync(0xffffffffu, pred));
  out[4 * t + 1] = __any_sync(0xffffffffu, lane == 31);
  out[4 * t + 2] = __all_sync(0xffffffffu, pred);
  out[4 * t + 3] = __syncthreads_count(t % 5 == 0);
}

// Lane-subset collectives: the low half-warp shuffles among itself with mask 0x0000ffff while the
// high half does with 0xffff0000.
__global__ void half_warp_kernel(int* out) {
  const int t = threadIdx.x;
  const unsigned mask = t % 32 < 16 ? 0x0000ffffu : 0xffff0000u;
  out[t] = __shfl_down_sync(mask, t, 4, 16) + 1000 * __popc(__ballot_sync(mask, t % 2));
}

// Built-in index variables of a 3-D launch: out[global linear thread] = its coordinates.
__global__ void index_kernel(int* out) {
  const int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int threads = blockDim.x * blockDim.y * blockDim.z;
  int* o = out + 6 * (block * threads + thread);
  o[0] = blockIdx.x;
  o[1] = blockIdx.y;
  o[2] = blockIdx.z;
  o[3] = threadIdx.x;
  o[4] = threadIdx.y;
  o[5] = threadIdx.z;
}

// Each block's static shared memory is its own: thread t reads what thread t + 1 wrote.
__global__ void shared_kernel(int* out) {
  __shared__ int tile[256];
  __shared__ float scale;
  const int t = threadIdx.x;
  tile[t] = 1000 * blockIdx.x + t;
  if (t == 0) scale = 0.5f;
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = tile[(t + 1) % blockDim.x] + static_cast<int>(scale * 4.0f);
}

// Dynamic shared memory of `count` uint64 per block, zeroed and summed by every thread.
__global__ void dynamic_shared_kernel(int count, unsigned long long* out) {
  extern __shared__ unsigned long long cells[];
  for (int k = threadIdx.x; k < count; k += blockDim.x) cells[k] = 0;
  __syncthreads();
  for (int k = 0; k < count; ++k) {
    atomicAdd(&cells[k], static_cast<unsigned long long>(k + threadIdx.x));
  }
  __syncthreads();
  for (int k = threadIdx.x; k < count; k += blockDim.x) out[blockIdx.x * count + k] = cells[k];
}

// Atomics from every thread of the grid: out holds the final values.
__global__ void atomic_kernel(int* i, unsigned* u, unsigned long long* ull, float* f, double* d) {
  const int g = blockIdx.x * blockDim.x + threadIdx.x;
  atomicAdd(&i[0], 1);
  atomicSub(&i[1], 2);
  atomicMax(&i[2], g);
  atomicMin(&i[3], -g);
  atomicOr(&u[0], 1u << (g % 32));
  atomicAnd(&u[1], ~(1u << (g % 17)));
  atomicXor(&u[2], 1u << (g % 8));
  atomicInc(&u[3], 9u);
  atomicAdd(&ull[0], static_cast<unsigned long long>(g));
  atomicMin(&ull[1], static_cast<unsigned long long>(g + 5));
  atomicMax(&ull[2], static_cast<unsigned long long>(g) << 33);
  unsigned old = atomicCAS(&u[4], 0u, static_cast<unsigned>(g + 1));  // exactly one thread wins
  if (old == 0u) atomicExch(&u[5], static_cast<unsigned>(g + 1));
  atomicAdd(&f[0], 1.0f);  // small integers: exact in any order
  atomicAdd(&d[0], 0.5);
}

// x[i] = 10 x[i] + v over a grid-stride loop: two launches on one stream must apply in order.
__global__ void ordered_kernel(int* x, int n, int v) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    x[i] = 10 * x[i] + v;
  }
}

struct Wide {
  int values[64];
};

// The arguments are copied at launch: the caller changes its struct right after.
__global__ void copy_args_kernel(Wide w, int* out) { out[threadIdx.x] = w.values[threadIdx.x]; }

// half and bfloat16 to float.
__global__ void convert_kernel(const __half* h, const __nv_bfloat16* b, int n, float* fh,
                               float* fb) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    fh[i] = __half2float(h[i]);
    fb[i] = __bfloat162float(b[i]);
  }
}

// ---- Misuse probes (harness only: each breaks a CUDA rule) ------------------------------------

__global__ void misuse_kernel(int which, int* out) {
  const int t = threadIdx.x;
  switch (which) {
    case 0:  // a thread returns before a barrier the others reach
      if (t == 0) return;
      __syncthreads();
      break;
    case 1:  // a barrier inside a branch only some threads take
      if (t < 16) __syncthreads();
      break;
    case 2:  // the full mask names lanes a 40-thread block's second warp lacks
      out[t] = __shfl_down_sync(0xffffffffu, t, 1);
      break;
    case 3:  // lanes of one warp at different collectives with the same mask
      out[t] = t % 32 < 16 ? __shfl_down_sync(0xffffffffu, t, 1)
                           : __shfl_xor_sync(0xffffffffu, t, 1);
      break;
    case 4:  // the calling lane is missing from the mask
      out[t] = __shfl_sync(0x1u, t, 0);
      break;
    case 5:  // lanes 8..15 read lanes 16..23, outside the mask
      if (t < 16) out[t] = __shfl_down_sync(0x0000ffffu, t, 8);
      break;
    case 6:  // deadlock: thread 0 waits for lane 1 at __syncwarp, lane 1 for it at a barrier
      if (t == 0) {
        __syncwarp(0x3u);
      } else {
        __syncthreads();
      }
      break;
    case 7:
      __trap();
      break;
    case 8:  // a shuffle width that is not a power of two
      out[t] = __shfl_sync(0xffffffffu, t, 0, 12);
      break;
  }
}

// 40000 bytes of static shared memory: too much next to 16 KiB of dynamic shared memory.
__global__ void big_shared_kernel(int* out) {
  __shared__ char big[40000];
  big[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = big[(threadIdx.x + 1) % blockDim.x];
}

// A barrier forgotten between the writes and the reads of shared memory.
__global__ void missing_barrier_kernel(int* out) {
  __shared__ int tile[64];
  const int t = threadIdx.x;
  tile[t] = t;
  out[t] = tile[(t + 1) % blockDim.x];
}

// One element past the launch's dynamic shared memory (only AddressSanitizer can see this).
__global__ void past_dynamic_shared_kernel(int count, unsigned long long* out) {
  extern __shared__ unsigned long long cells[];
  cells[count] = 1;
  out[threadIdx.x] = cells[0];
}

}  // namespace

extern "C" {

int probe_shuffle(int op, int arg, int width, int threads, int* out) {
  COMMCOMP_LAUNCH(shuffle_kernel, 1, threads, 0, nullptr)(op, arg, width, out);
  return cudaGetLastError();
}

int probe_shuffle64(double* out_double, long long* out_ll) {
  COMMCOMP_LAUNCH(shuffle64_kernel, 1, 64, 0, nullptr)(out_double, out_ll);
  return cudaGetLastError();
}

int probe_vote(int threads, int* out) {
  COMMCOMP_LAUNCH(vote_kernel, 1, threads, 0, nullptr)(out);
  return cudaGetLastError();
}

int probe_half_warp(int* out) {
  COMMCOMP_LAUNCH(half_warp_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}

int probe_index(int gx, int gy, int gz, int bx, int by, int bz, int* out) {
  COMMCOMP_LAUNCH(index_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0, nullptr)(out);
  return cudaGetLastError();
}

int probe_shared(int blocks, int threads, int* out) {
  COMMCOMP_LAUNCH(shared_kernel, blocks, threads, 0, nullptr)(out);
  return cudaGetLastError();
}

int probe_dynamic_shared(int blocks, int threads, int count, unsigned long long* out) {
  COMMCOMP_LAUNCH(dynamic_shared_kernel, blocks, threads, count * sizeof(unsigned long long),
                  nullptr)(count, out);
  return cudaGetLastError();
}

int probe_atomics(int blocks, int threads, int* i, unsigned* u, unsigned long long* ull, float* f,
                  double* d) {
  COMMCOMP_LAUNCH(atomic_kernel, blocks, threads, 0, nullptr)(i, u, ull, f, d);
  return cudaGetLastError();
}

int probe_ordered(int* x, int n) {
  COMMCOMP_LAUNCH(ordered_kernel, 2, 32, 0, nullptr)(x, n, 1);
  COMMCOMP_LAUNCH(ordered_kernel, 3, 64, 0, nullptr)(x, n, 2);
  return cudaGetLastError();
}

int probe_copy_args(int* out) {
  Wide w;
  for (int k = 0; k < 64; ++k) w.values[k] = 7 * k;
  COMMCOMP_LAUNCH(copy_args_kernel, 1, 64, 0, nullptr)(w, out);
  for (int k = 0; k < 64; ++k) w.values[k] = -1;  // too late: the launch holds its own copy
  return cudaGetLastError();
}

int probe_convert(const void* h, const void* b, int n, float* fh, float* fb) {
  COMMCOMP_LAUNCH(convert_kernel, 3, 64, 0, nullptr)(static_cast<const __half*>(h),
                                                   static_cast<const __nv_bfloat16*>(b), n, fh, fb);
  return cudaGetLastError();
}

int probe_misuse(int which, int threads, int* out) {
  COMMCOMP_LAUNCH(misuse_kernel, 1, threads, 0, nullptr)(which, out);
  return cudaGetLastError();
}

int probe_big_shared(int* out) {
  COMMCOMP_LAUNCH(big_shared_kernel, 1, 32, 16384, nullptr)(out);
  return cudaGetLastError();
}

int probe_past_dynamic_shared(unsigned long long* out) {
  COMMCOMP_LAUNCH(past_dynamic_shared_kernel, 1, 32, 10 * sizeof(unsigned long long),
                  nullptr)(10, out);
  return cudaGetLastError();
}

int probe_missing_barrier(int* out) {
  COMMCOMP_LAUNCH(missing_barrier_kernel, 1, 64, 0, nullptr)(out);
  return cudaGetLastError();
}

// A launch configuration CUDA rejects: 0 = 1025 threads, 1 = an empty grid, 2 = 64 KiB of dynamic
// shared memory (more than a block may use without opting in).
int probe_bad_config(int which, int* out) {
  if (which == 0) COMMCOMP_LAUNCH(ordered_kernel, 1, 1025, 0, nullptr)(out, 1, 0);
  if (which == 1) COMMCOMP_LAUNCH(ordered_kernel, 0, 32, 0, nullptr)(out, 1, 0);
  if (which == 2) COMMCOMP_LAUNCH(ordered_kernel, 1, 32, 65536, nullptr)(out, 1, 0);
  return cudaGetLastError();
}

}  // extern "C"
