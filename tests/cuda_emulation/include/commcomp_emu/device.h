// The device side of the CUDA emulation: function qualifiers, the built-in index variables,
// barriers, warp collectives, atomics and the intrinsics the sources use, with CUDA's semantics.
// Kernels run as fibers (one per CUDA thread) on a host thread per block; see
// docs/cuda_emulation.md for the execution model.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "runtime.h"

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// tests/cuda_emulation/harness_build.py rewrites every declaration carrying this marker into a
// reference to memory of the running block; see rewrite_shared there.
#define __shared__ __commcomp_emu_shared__

namespace commcomp_emu {

struct ThreadState {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// The running CUDA thread (fails the launch when called outside a kernel).
const ThreadState& this_thread();

enum class BlockVote : int { None = 0, Count = 1, And = 2, Or = 3 };
int sync_block(BlockVote vote, int predicate, const char* what);

enum class WarpOp : int { ShflIdx, ShflUp, ShflDown, ShflXor, Ballot, Sync };
// One lane's part of a warp collective: blocks until every lane of `mask` has arrived.
uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, uint32_t arg, int width,
                         const char* what);
unsigned active_lanes();

// Shared memory of the running block: the same address for every thread of the block.
void* static_shared(const void* site, size_t bytes, size_t align);
void* dynamic_shared();

[[noreturn]] void kernel_trap(const char* what);

// One per __shared__ declaration: Site is the type of a lambda written at the declaration.
template <class T, size_t Align = alignof(T), class Site>
T& static_shared_variable(Site) {
  static const char site = 0;
  return *static_cast<T*>(static_shared(&site, sizeof(T), Align > alignof(T) ? Align : alignof(T)));
}

template <class T>
T* dynamic_shared_array() {
  return static_cast<T*>(dynamic_shared());
}

template <class T>
uint64_t lane_bits(T v) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp shuffles move types of at most 8 bytes");
  uint64_t bits = 0;
  memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <class T>
T from_lane_bits(uint64_t bits) {
  T v;
  memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace commcomp_emu

#define threadIdx (::commcomp_emu::this_thread().thread_idx)
#define blockIdx (::commcomp_emu::this_thread().block_idx)
#define blockDim (::commcomp_emu::this_thread().block_dim)
#define gridDim (::commcomp_emu::this_thread().grid_dim)
constexpr int warpSize = 32;

// ---- Synchronization ----------------------------------------------------------------------------

inline void __syncthreads() {
  ::commcomp_emu::sync_block(::commcomp_emu::BlockVote::None, 0, "__syncthreads");
}
inline int __syncthreads_count(int p) {
  return ::commcomp_emu::sync_block(::commcomp_emu::BlockVote::Count, p, "__syncthreads_count");
}
inline int __syncthreads_and(int p) {
  return ::commcomp_emu::sync_block(::commcomp_emu::BlockVote::And, p, "__syncthreads_and");
}
inline int __syncthreads_or(int p) {
  return ::commcomp_emu::sync_block(::commcomp_emu::BlockVote::Or, p, "__syncthreads_or");
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::commcomp_emu::warp_collective(::commcomp_emu::WarpOp::Sync, mask, 0, 0, 32, "__syncwarp");
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __trap() { ::commcomp_emu::kernel_trap("__trap()"); }

// ---- Warp collectives (CUDA 9+ *_sync forms; 32 lanes; width a power of two <= 32) -------------

template <class T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  return ::commcomp_emu::from_lane_bits<T>(::commcomp_emu::warp_collective(
      ::commcomp_emu::WarpOp::ShflIdx, mask, ::commcomp_emu::lane_bits(var),
      static_cast<uint32_t>(src_lane), width, "__shfl_sync"));
}
template <class T>
T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
  return ::commcomp_emu::from_lane_bits<T>(::commcomp_emu::warp_collective(
      ::commcomp_emu::WarpOp::ShflUp, mask, ::commcomp_emu::lane_bits(var), delta, width,
      "__shfl_up_sync"));
}
template <class T>
T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize) {
  return ::commcomp_emu::from_lane_bits<T>(::commcomp_emu::warp_collective(
      ::commcomp_emu::WarpOp::ShflDown, mask, ::commcomp_emu::lane_bits(var), delta, width,
      "__shfl_down_sync"));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  return ::commcomp_emu::from_lane_bits<T>(::commcomp_emu::warp_collective(
      ::commcomp_emu::WarpOp::ShflXor, mask, ::commcomp_emu::lane_bits(var),
      static_cast<uint32_t>(lane_mask), width, "__shfl_xor_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return static_cast<unsigned>(::commcomp_emu::warp_collective(
      ::commcomp_emu::WarpOp::Ballot, mask, predicate != 0, 0, 32, "__ballot_sync"));
}
inline int __any_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) != 0u;
}
inline int __all_sync(unsigned mask, int predicate) {
  return __ballot_sync(mask, predicate) == mask;
}
inline unsigned __activemask() { return ::commcomp_emu::active_lanes(); }

// ---- Atomics (relaxed, as CUDA's; they return the old value) -----------------------------------

#define COMMCOMP_EMU_ATOMIC(name, T, builtin) \
  inline T name(T* address, T val) { return builtin(address, val, __ATOMIC_RELAXED); }
COMMCOMP_EMU_ATOMIC(atomicAdd, int, __atomic_fetch_add)
COMMCOMP_EMU_ATOMIC(atomicAdd, unsigned int, __atomic_fetch_add)
COMMCOMP_EMU_ATOMIC(atomicAdd, unsigned long long, __atomic_fetch_add)
COMMCOMP_EMU_ATOMIC(atomicSub, int, __atomic_fetch_sub)
COMMCOMP_EMU_ATOMIC(atomicSub, unsigned int, __atomic_fetch_sub)
COMMCOMP_EMU_ATOMIC(atomicExch, int, __atomic_exchange_n)
COMMCOMP_EMU_ATOMIC(atomicExch, unsigned int, __atomic_exchange_n)
COMMCOMP_EMU_ATOMIC(atomicExch, unsigned long long, __atomic_exchange_n)
COMMCOMP_EMU_ATOMIC(atomicAnd, int, __atomic_fetch_and)
COMMCOMP_EMU_ATOMIC(atomicAnd, unsigned int, __atomic_fetch_and)
COMMCOMP_EMU_ATOMIC(atomicAnd, unsigned long long, __atomic_fetch_and)
COMMCOMP_EMU_ATOMIC(atomicOr, int, __atomic_fetch_or)
COMMCOMP_EMU_ATOMIC(atomicOr, unsigned int, __atomic_fetch_or)
COMMCOMP_EMU_ATOMIC(atomicOr, unsigned long long, __atomic_fetch_or)
COMMCOMP_EMU_ATOMIC(atomicXor, int, __atomic_fetch_xor)
COMMCOMP_EMU_ATOMIC(atomicXor, unsigned int, __atomic_fetch_xor)
COMMCOMP_EMU_ATOMIC(atomicXor, unsigned long long, __atomic_fetch_xor)
#undef COMMCOMP_EMU_ATOMIC

namespace commcomp_emu {
// Read-modify-write through compare-and-swap: the old value, as every CUDA atomic returns.
template <class T, class F>
T atomic_update(T* address, F update) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (!__atomic_compare_exchange_n(address, &old, update(old), true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
  return old;
}
template <class F>
float atomic_update_float(float* address, F update) {
  uint32_t* bits = reinterpret_cast<uint32_t*>(address);
  return __builtin_bit_cast(float, atomic_update(bits, [&](uint32_t old) {
    return __builtin_bit_cast(uint32_t, update(__builtin_bit_cast(float, old)));
  }));
}
template <class F>
double atomic_update_double(double* address, F update) {
  uint64_t* bits = reinterpret_cast<uint64_t*>(address);
  return __builtin_bit_cast(double, atomic_update(bits, [&](uint64_t old) {
    return __builtin_bit_cast(uint64_t, update(__builtin_bit_cast(double, old)));
  }));
}
}  // namespace commcomp_emu

inline float atomicAdd(float* a, float v) {
  return ::commcomp_emu::atomic_update_float(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
  return ::commcomp_emu::atomic_update_double(a, [v](double old) { return old + v; });
}
inline float atomicExch(float* a, float v) {
  return __builtin_bit_cast(float, atomicExch(reinterpret_cast<unsigned int*>(a),
                                              __builtin_bit_cast(unsigned int, v)));
}
#define COMMCOMP_EMU_ATOMIC_MINMAX(T)                                                     \
  inline T atomicMin(T* a, T v) {                                                         \
    return ::commcomp_emu::atomic_update(a, [v](T old) { return v < old ? v : old; });    \
  }                                                                                       \
  inline T atomicMax(T* a, T v) {                                                         \
    return ::commcomp_emu::atomic_update(a, [v](T old) { return v > old ? v : old; });    \
  }
COMMCOMP_EMU_ATOMIC_MINMAX(int)
COMMCOMP_EMU_ATOMIC_MINMAX(unsigned int)
COMMCOMP_EMU_ATOMIC_MINMAX(long long)
COMMCOMP_EMU_ATOMIC_MINMAX(unsigned long long)
#undef COMMCOMP_EMU_ATOMIC_MINMAX
#define COMMCOMP_EMU_ATOMIC_CAS(T)                                                          \
  inline T atomicCAS(T* a, T compare, T val) {                                              \
    __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED); \
    return compare;                                                                         \
  }
COMMCOMP_EMU_ATOMIC_CAS(int)
COMMCOMP_EMU_ATOMIC_CAS(unsigned int)
COMMCOMP_EMU_ATOMIC_CAS(unsigned long long)
COMMCOMP_EMU_ATOMIC_CAS(unsigned short)
#undef COMMCOMP_EMU_ATOMIC_CAS
inline unsigned int atomicInc(unsigned int* a, unsigned int limit) {
  return ::commcomp_emu::atomic_update(a, [limit](unsigned int old) {
    return old >= limit ? 0u : old + 1u;
  });
}
inline unsigned int atomicDec(unsigned int* a, unsigned int limit) {
  return ::commcomp_emu::atomic_update(a, [limit](unsigned int old) {
    return (old == 0u || old > limit) ? limit : old - 1u;
  });
}

// ---- Integer and float intrinsics ---------------------------------------------------------------

#define COMMCOMP_EMU_MINMAX(T)                      \
  inline T min(T a, T b) { return a < b ? a : b; } \
  inline T max(T a, T b) { return a > b ? a : b; }
COMMCOMP_EMU_MINMAX(int)
COMMCOMP_EMU_MINMAX(unsigned int)
COMMCOMP_EMU_MINMAX(long)
COMMCOMP_EMU_MINMAX(unsigned long)
COMMCOMP_EMU_MINMAX(long long)
COMMCOMP_EMU_MINMAX(unsigned long long)
#undef COMMCOMP_EMU_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline unsigned int __brev(unsigned int x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  return __builtin_bswap32(x);
}
inline unsigned int __umulhi(unsigned int a, unsigned int b) {
  return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}

// IEEE-754 single operations rounded to nearest even. The harness is built with
// -ffp-contract=off (no FMA contraction) and SSE arithmetic, so each is one correctly rounded op.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return __builtin_sqrtf(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline int __float_as_int(float x) { return __builtin_bit_cast(int, x); }
inline unsigned int __float_as_uint(float x) { return __builtin_bit_cast(unsigned int, x); }
inline float __int_as_float(int x) { return __builtin_bit_cast(float, x); }
inline float __uint_as_float(unsigned int x) { return __builtin_bit_cast(float, x); }
inline long long __double_as_longlong(double x) { return __builtin_bit_cast(long long, x); }
inline double __longlong_as_double(long long x) { return __builtin_bit_cast(double, x); }

template <class T>
T __ldg(const T* p) {
  return *p;
}
