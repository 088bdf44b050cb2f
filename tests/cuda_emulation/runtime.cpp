// The execution model of the CUDA emulation (tests/cuda_emulation; docs/cuda_emulation.md).
//
// * A launch is a task on its stream; a stream is an in-order queue served by one host thread.
// * A launch's blocks are spread over `workers` host threads (block b on worker b % workers), so
//   distinct blocks really run concurrently.
// * Within a block, every CUDA thread is a fiber (ucontext) on that worker. A fiber runs until it
//   reaches a barrier or warp collective, or returns; the scheduler then resumes the next runnable
//   fiber (in forward, reverse or random order). A barrier releases when all threads of the block
//   have reached it, a warp collective when every lane of its mask has, so __syncthreads() and
//   __shfl_*_sync() are real synchronization points, and misuse (a thread that exits while others
//   wait, lanes that diverge, masks naming absent lanes) fails the launch with a message.
// * Shared memory is allocated per block (poisoned), at the same address for all its threads.
// * ThreadSanitizer: each fiber is a TSan fiber switched without implied synchronization; only
//   barriers (and __syncwarp) order memory between the threads of a block, as in CUDA's model. The
//   harness's own bookkeeping (fiber states, pending barriers and collectives) is excluded from
//   race detection; everything a kernel touches is checked.
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "commcomp_emu/device.h"
#include "commcomp_emu/launch.h"
#include "commcomp_emu/runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define COMMCOMP_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define COMMCOMP_EMU_TSAN 1
extern "C" void __tsan_ignore_thread_begin();
extern "C" void __tsan_ignore_thread_end();
#endif

namespace commcomp_emu {
namespace {

constexpr int kWarpSize = 32;
constexpr size_t kSharedBytesPerBlock = 48 * 1024;  // without cudaFuncSetAttribute opt-in
constexpr size_t kSharedAlign = 16;
#if defined(COMMCOMP_EMU_ASAN) || defined(COMMCOMP_EMU_TSAN)
constexpr size_t kFiberStackBytes = 512 * 1024;
#else
constexpr size_t kFiberStackBytes = 128 * 1024;
#endif

// Excludes the harness's own accesses (made on behalf of several CUDA threads at once) from race
// detection for its lifetime; synchronization (barriers, mutexes) is still recorded. `depth`
// counts a fiber's open exclusions, so that those of a fiber abandoned inside one can be closed.
void begin_bookkeeping(int* depth) {
#if defined(COMMCOMP_EMU_TSAN)
  __tsan_ignore_thread_begin();
  if (depth) ++*depth;
#else
  (void)depth;
#endif
}

void end_bookkeeping(int* depth) {
#if defined(COMMCOMP_EMU_TSAN)
  if (depth) --*depth;
  __tsan_ignore_thread_end();
#else
  (void)depth;
#endif
}

class Bookkeeping {
 public:
  explicit Bookkeeping(int* depth = nullptr) : depth_(depth) { begin_bookkeeping(depth_); }
  ~Bookkeeping() { end_bookkeeping(depth_); }
  Bookkeeping(const Bookkeeping&) = delete;
  Bookkeeping& operator=(const Bookkeeping&) = delete;

 private:
  int* depth_;
};

// ---- Device-wide state ---------------------------------------------------------------------

struct DeviceState {
  std::mutex mutex;
  Config config;
  cudaError_t sticky = cudaSuccess;
  std::string message;
  std::vector<std::string> launched;
  uint64_t launches = 0;
  std::set<CUstream_st*> streams;
};

DeviceState& device();
thread_local cudaError_t last_error = cudaSuccess;

void set_last_error(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
}

cudaError_t sticky_error() {
  std::lock_guard<std::mutex> lock(device().mutex);
  return device().sticky;
}

void record_failure(const std::string& message) {
  std::lock_guard<std::mutex> lock(device().mutex);
  if (device().sticky == cudaSuccess) {
    device().sticky = cudaErrorLaunchFailure;
    device().message = message;
  }
}

int env_int(const char* name, int fallback) {
  const char* v = getenv(name);
  return v && *v ? atoi(v) : fallback;
}

Config config_from_environment() {
  Config c;
  c.max_blocks = static_cast<unsigned>(env_int("COMMCOMP_EMU_MAX_BLOCKS", 0));
  c.max_threads = static_cast<unsigned>(env_int("COMMCOMP_EMU_MAX_THREADS", 0));
  c.workers = env_int("COMMCOMP_EMU_WORKERS", 2);
  c.seed = static_cast<uint64_t>(env_int("COMMCOMP_EMU_SEED", 0));
  const char* s = getenv("COMMCOMP_EMU_SCHEDULE");
  if (s && strcmp(s, "reverse") == 0) c.schedule = Schedule::Reverse;
  if (s && strcmp(s, "random") == 0) c.schedule = Schedule::Random;
  return c;
}

bool valid_config(const Config& c) {
  return c.workers >= 1 && c.workers <= 64 && c.max_threads % kWarpSize == 0 &&
         c.max_threads <= 1024 && c.poison >= 0 && c.poison <= 255;
}

std::string format(const char* fmt, va_list args) {
  char buffer[1024];
  vsnprintf(buffer, sizeof buffer, fmt, args);
  return buffer;
}

std::string base_name(const char* name) {
  std::string s(name);
  const size_t angle = s.find('<');
  return angle == std::string::npos ? s : s.substr(0, angle);
}

// ---- One launch ------------------------------------------------------------------------------

struct LaunchJob {
  KernelLaunch launch;
  dim3 grid;   // as executed (capped by Config::max_blocks)
  dim3 block;  // as executed (capped by Config::max_threads)
  Config config;
  uint64_t id = 0;
  std::atomic<bool> failed{false};
};

uint64_t total_blocks(dim3 g) { return static_cast<uint64_t>(g.x) * g.y * g.z; }

// ---- Fibers and the block scheduler --------------------------------------------------------

enum class FiberState { Runnable, AtBarrier, AtWarp, Done };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  ThreadState state;
  int linear = 0;
  int warp = 0;
  int lane = 0;
  FiberState status = FiberState::Runnable;
  uint64_t result = 0;
  bool entered = false;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
  int tsan_ignores = 0;  // open Bookkeeping scopes of this fiber
};

struct PendingWarpOp {
  WarpOp op;
  unsigned mask;
  unsigned arrived;
  int width;
  const char* what;
  uint64_t value[kWarpSize];
  uint32_t arg[kWarpSize];
};

struct SharedSite {
  const void* site;
  void* address;
  size_t bytes;
};

// Thrown-free failure: the fiber that finds a broken rule records it and never runs again.
class BlockRunner;
thread_local BlockRunner* current_runner = nullptr;

class BlockRunner {
 public:
  BlockRunner() {
    arena_ = static_cast<unsigned char*>(aligned_alloc(256, kSharedBytesPerBlock));
#if defined(COMMCOMP_EMU_TSAN)
    scheduler_tsan_ = __tsan_get_current_fiber();
#endif
  }
  ~BlockRunner() {
    for (Fiber& f : fibers_) {
      if (f.stack) munmap(f.stack, kFiberStackBytes);
#if defined(COMMCOMP_EMU_TSAN)
      if (f.tsan_fiber) __tsan_destroy_fiber(f.tsan_fiber);
#endif
    }
    free(arena_);
  }

  void run_block(LaunchJob& job, uint64_t linear_block) {
    const Bookkeeping scheduler;
    job_ = &job;
    const dim3 g = job.grid, b = job.block;
    block_idx_ = uint3{static_cast<unsigned>(linear_block % g.x),
                       static_cast<unsigned>(linear_block / g.x % g.y),
                       static_cast<unsigned>(linear_block / (static_cast<uint64_t>(g.x) * g.y))};
    threads_ = static_cast<int>(b.x * b.y * b.z);
    prepare_fibers();
    prepare_shared(job.launch.dynamic_shared_bytes, job.config.poison);
    arrived_ = 0;
    exited_ = 0;
    failed_ = false;
    warps_.assign((threads_ + kWarpSize - 1) / kWarpSize, {});
    exited_lanes_.assign(warps_.size(), 0u);
    std::mt19937_64 rng(job.config.seed * 0x9E3779B97F4A7C15ull + job.id * 1000003ull +
                        linear_block);
    std::vector<int> order(threads_);
    for (int t = 0; t < threads_; ++t) order[t] = t;
    if (job.config.schedule == Schedule::Reverse) std::reverse(order.begin(), order.end());
    current_runner = this;
    while (!failed_ && exited_ < threads_) {
      if (job.config.schedule == Schedule::Random) std::shuffle(order.begin(), order.end(), rng);
      bool ran = false;
      for (int t : order) {
        if (fibers_[t].status != FiberState::Runnable) continue;
        resume(fibers_[t]);
        ran = true;
        if (failed_) break;
      }
      if (!ran && !failed_) report_deadlock();
    }
    join_fibers();
    current_runner = nullptr;
    free(dynamic_);
    dynamic_ = nullptr;
  }

  // ---- Called from kernel code (on a fiber) ----

  const ThreadState& thread_state() const { return current_->state; }
  int* ignore_depth() { return &current_->tsan_ignores; }

  [[noreturn]] void fail(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    const std::string why = format(fmt, args);
    va_end(args);
    fail_with(where() + ": " + why);
  }

  int sync_block(BlockVote vote, int predicate, const char* what) {
    if (exited_ > 0) {
      fail("%s is reached while %d thread(s) of the block have already returned (all threads of a "
           "block must reach every __syncthreads)", what, exited_);
    }
    if (arrived_ == 0) {
      barrier_vote_ = vote;
      barrier_what_ = what;
      barrier_tally_ = 0;
    } else if (barrier_vote_ != vote) {
      fail("%s is reached while other threads of the block wait at %s", what, barrier_what_);
    }
    barrier_tally_ += predicate != 0;
#if defined(COMMCOMP_EMU_TSAN)
    __tsan_release(&barrier_tally_);
#endif
    if (++arrived_ < threads_) {
      current_->status = FiberState::AtBarrier;
      yield();
    } else {
      const int result = vote == BlockVote::Count ? barrier_tally_
                         : vote == BlockVote::And ? barrier_tally_ == threads_
                         : vote == BlockVote::Or  ? barrier_tally_ > 0
                                                  : 0;
      arrived_ = 0;
      for (int t = 0; t < threads_; ++t) {
        if (fibers_[t].status == FiberState::AtBarrier) {
          fibers_[t].status = FiberState::Runnable;
          fibers_[t].result = static_cast<uint64_t>(result);
        }
      }
      current_->result = static_cast<uint64_t>(result);
    }
#if defined(COMMCOMP_EMU_TSAN)
    __tsan_acquire(&barrier_tally_);
#endif
    return static_cast<int>(current_->result);
  }

  uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, uint32_t arg, int width,
                           const char* what) {
    Fiber& me = *current_;
    const unsigned bit = 1u << me.lane;
    if ((mask & bit) == 0) {
      fail("%s: the calling lane %d is not in mask 0x%08x", what, me.lane, mask);
    }
    const int lanes = std::min(kWarpSize, threads_ - me.warp * kWarpSize);
    const unsigned present = lanes == kWarpSize ? ~0u : (1u << lanes) - 1u;
    if (mask & ~present) {
      fail("%s: mask 0x%08x names lanes warp %d does not have (it has %d lanes)", what, mask,
           me.warp, lanes);
    }
    if (mask & exited_lanes_[me.warp]) {
      fail("%s: mask 0x%08x names lane %d, which has already returned", what, mask,
           __builtin_ctz(mask & exited_lanes_[me.warp]));
    }
    if (width < 1 || width > kWarpSize || (width & (width - 1)) != 0) {
      fail("%s: width %d is not a power of two in [1, 32]", what, width);
    }
    std::vector<PendingWarpOp>& pending = warps_[me.warp];
    PendingWarpOp* slot = nullptr;
    for (PendingWarpOp& p : pending) {
      if (p.mask == mask) {
        slot = &p;
      } else if (p.mask & mask) {
        fail("%s with mask 0x%08x while lanes 0x%08x wait at %s with mask 0x%08x", what, mask,
             p.arrived, p.what, p.mask);
      }
    }
    if (slot == nullptr) {
      pending.push_back(PendingWarpOp{op, mask, 0u, width, what, {}, {}});
      slot = &pending.back();
    } else if (slot->op != op || slot->width != width) {
      fail("lanes of warp %d diverged: lane %d is at %s (width %d) while lanes 0x%08x wait at %s "
           "(width %d)", me.warp, me.lane, what, width, slot->arrived, slot->what, slot->width);
    }
    slot->value[me.lane] = value;
    slot->arg[me.lane] = arg;
    slot->arrived |= bit;
#if defined(COMMCOMP_EMU_TSAN)
    if (op == WarpOp::Sync) __tsan_release(&warps_[me.warp]);
#endif
    if (slot->arrived != mask) {
      me.status = FiberState::AtWarp;
      yield();
    } else {
      complete(*slot, me.warp);
      pending.erase(pending.begin() + (slot - pending.data()));
    }
#if defined(COMMCOMP_EMU_TSAN)
    if (op == WarpOp::Sync) __tsan_acquire(&warps_[me.warp]);
#endif
    return me.result;
  }

  unsigned active_lanes() const {
    const int warp = current_->warp;
    const int lanes = std::min(kWarpSize, threads_ - warp * kWarpSize);
    const unsigned present = lanes == kWarpSize ? ~0u : (1u << lanes) - 1u;
    return present & ~exited_lanes_[warp];
  }

  void* static_shared(const void* site, size_t bytes, size_t align) {
    for (const SharedSite& s : sites_) {
      if (s.site == site) return s.address;
    }
    align = std::max(align, kSharedAlign);
    const size_t offset = (static_used_ + align - 1) / align * align;
    if (offset + bytes + job_->launch.dynamic_shared_bytes > kSharedBytesPerBlock) {
      fail("the block needs %zu bytes of static and %zu of dynamic shared memory, more than the "
           "%zu a block may use", offset + bytes, job_->launch.dynamic_shared_bytes,
           kSharedBytesPerBlock);
    }
    void* address = arena_ + offset;
#if defined(COMMCOMP_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(address, bytes);
#endif
    static_used_ = offset + bytes;
    sites_.push_back(SharedSite{site, address, bytes});
    return address;
  }

  void* dynamic_shared() const { return dynamic_; }

 private:
  std::string where() const {
    char buffer[256];
    const ThreadState& s = current_->state;
    snprintf(buffer, sizeof buffer,
             "%s<<<(%u,%u,%u), (%u,%u,%u)>>> block (%u,%u,%u) thread (%u,%u,%u)",
             job_->launch.name, job_->grid.x, job_->grid.y, job_->grid.z, job_->block.x,
             job_->block.y, job_->block.z, s.block_idx.x, s.block_idx.y, s.block_idx.z,
             s.thread_idx.x, s.thread_idx.y, s.thread_idx.z);
    return buffer;
  }

  [[noreturn]] void fail_with(const std::string& message) {
    failed_ = true;
    job_->failed = true;
    record_failure(message);
    // The fiber is abandoned: it never runs again, and its stack is reset with the next block.
    current_->status = FiberState::Done;
    yield();
    abort();  // unreachable: a failed block is never resumed
  }

  void report_deadlock() {
    int at_barrier = 0, at_warp = 0;
    std::string warps;
    for (int t = 0; t < threads_; ++t) {
      at_barrier += fibers_[t].status == FiberState::AtBarrier;
      at_warp += fibers_[t].status == FiberState::AtWarp;
    }
    for (size_t w = 0; w < warps_.size(); ++w) {
      for (const PendingWarpOp& p : warps_[w]) {
        char line[160];
        snprintf(line, sizeof line, "; warp %zu: lanes 0x%08x of mask 0x%08x wait at %s", w,
                 p.arrived, p.mask, p.what);
        warps += line;
      }
    }
    char buffer[512];
    snprintf(buffer, sizeof buffer,
             "%s<<<...>>> block (%u,%u,%u): deadlock: %d thread(s) wait at %s, %d at warp "
             "collectives, %d returned%s",
             job_->launch.name, block_idx_.x, block_idx_.y, block_idx_.z, at_barrier,
             at_barrier ? barrier_what_ : "a barrier", at_warp, exited_, warps.c_str());
    failed_ = true;
    job_->failed = true;
    record_failure(buffer);
  }

  // Orders everything the block's threads did before whatever follows the block (TSan only tracks
  // it; nothing runs). Until now no switch implied an order: threads of one block are ordered only
  // by their barriers, even when one ran to completion before the next started. Also closes the
  // exclusions of fibers abandoned by a failed launch inside the harness.
  void join_fibers() {
#if defined(COMMCOMP_EMU_TSAN)
    for (int t = 0; t < threads_; ++t) {
      Fiber& f = fibers_[t];
      if (!f.entered) continue;
      __tsan_switch_to_fiber(f.tsan_fiber, 0);
      for (; f.tsan_ignores > 0; --f.tsan_ignores) __tsan_ignore_thread_end();
      __tsan_switch_to_fiber(scheduler_tsan_, 0);
    }
#endif
  }

  void complete(const PendingWarpOp& p, int warp) {
    uint64_t result[kWarpSize] = {};
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if ((p.mask >> lane & 1u) == 0) continue;
      if (p.op == WarpOp::Ballot) {
        uint64_t ballot = 0;
        for (int l = 0; l < kWarpSize; ++l) {
          if ((p.mask >> l & 1u) && p.value[l]) ballot |= 1ull << l;
        }
        result[lane] = ballot;
        continue;
      }
      if (p.op == WarpOp::Sync) continue;
      // PTX shfl.sync: a segment of `width` lanes, [min_lane, max_lane]; out-of-segment sources
      // (up/down/xor) return the lane's own value, idx wraps within the segment.
      const int64_t segment = kWarpSize - p.width;  // c[12:8]: the bits naming the segment
      const int64_t min_lane = lane & segment;
      const int64_t max_lane = min_lane | (31 & ~segment);
      const int64_t a = p.arg[lane];
      int64_t src = lane;
      switch (p.op) {
        case WarpOp::ShflIdx: src = min_lane | (a & 31 & ~segment); break;
        case WarpOp::ShflUp: src = lane - a >= min_lane ? lane - a : lane; break;
        case WarpOp::ShflDown: src = lane + a <= max_lane ? lane + a : lane; break;
        case WarpOp::ShflXor: src = (lane ^ a) <= max_lane ? (lane ^ a) : lane; break;
        default: break;
      }
      if ((p.mask >> src & 1u) == 0) {
        fail("%s: lane %d reads lane %lld, which is not in mask 0x%08x (undefined in CUDA)",
             p.what, lane, static_cast<long long>(src), p.mask);
      }
      result[lane] = p.value[src];
    }
    for (int lane = 0; lane < kWarpSize; ++lane) {
      if ((p.mask >> lane & 1u) == 0) continue;
      Fiber& f = fibers_[warp * kWarpSize + lane];
      f.result = result[lane];
      if (&f != current_) f.status = FiberState::Runnable;
    }
  }

  void prepare_fibers() {
    const dim3 b = job_->block;
    if (fibers_.size() < static_cast<size_t>(threads_)) fibers_.resize(threads_);
    for (int t = 0; t < threads_; ++t) {
      Fiber& f = fibers_[t];
      if (f.stack == nullptr) {
        void* stack = mmap(nullptr, kFiberStackBytes, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (stack == MAP_FAILED) {
          fprintf(stderr, "commcomp_emu: cannot map a fiber stack\n");
          abort();
        }
        mprotect(stack, 4096, PROT_NONE);  // guard page: an overflow faults instead of corrupting
        f.stack = static_cast<char*>(stack);
#if defined(COMMCOMP_EMU_TSAN)
        f.tsan_fiber = __tsan_create_fiber(0);
#endif
      }
#if defined(COMMCOMP_EMU_ASAN)
      // A fiber abandoned mid-kernel (failed launch) or ended by a switch leaves poisoned frames.
      ASAN_UNPOISON_MEMORY_REGION(f.stack + 4096, kFiberStackBytes - 4096);
#endif
      f.linear = t;
      f.warp = t / kWarpSize;
      f.lane = t % kWarpSize;
      f.state = ThreadState{uint3{t % b.x, t / b.x % b.y, t / (b.x * b.y)}, block_idx_, b,
                            job_->grid};
      f.status = FiberState::Runnable;
      f.entered = false;
      f.result = 0;
      f.asan_fake_stack = nullptr;
      getcontext(&f.context);
      f.context.uc_stack.ss_sp = f.stack + 4096;
      f.context.uc_stack.ss_size = kFiberStackBytes - 4096;
      f.context.uc_link = nullptr;
      const uintptr_t self = reinterpret_cast<uintptr_t>(this);
      makecontext(&f.context, reinterpret_cast<void (*)()>(&BlockRunner::fiber_main), 2,
                  static_cast<unsigned>(self >> 32), static_cast<unsigned>(self));
    }
  }

  void prepare_shared(size_t dynamic_bytes, int poison) {
    static_used_ = 0;
    sites_.clear();
#if defined(COMMCOMP_EMU_ASAN)
    ASAN_UNPOISON_MEMORY_REGION(arena_, kSharedBytesPerBlock);
#endif
    memset(arena_, poison, kSharedBytesPerBlock);
#if defined(COMMCOMP_EMU_ASAN)
    ASAN_POISON_MEMORY_REGION(arena_, kSharedBytesPerBlock);  // unpoisoned per declaration
#endif
    // Its own allocation of exactly the launch's bytes, so ASan sees accesses past them.
    dynamic_ = static_cast<unsigned char*>(malloc(dynamic_bytes ? dynamic_bytes : 1));
    memset(dynamic_, poison, dynamic_bytes ? dynamic_bytes : 1);
  }

  static void fiber_main(unsigned high, unsigned low) {
    BlockRunner* self = reinterpret_cast<BlockRunner*>((static_cast<uintptr_t>(high) << 32) | low);
    self->after_switch_into_fiber();
    self->job_->launch.run_thread();
    self->exit_current();
  }

  void exit_current() {
    Fiber& me = *current_;
    begin_bookkeeping(&me.tsan_ignores);  // ended before the last switch
    me.status = FiberState::Done;
    ++exited_;
    exited_lanes_[me.warp] |= 1u << me.lane;
    if (arrived_ > 0) {
      fail("returns while %d thread(s) of the block wait at %s (all threads of a block must reach "
           "it)", arrived_, barrier_what_);
    }
    for (const PendingWarpOp& p : warps_[me.warp]) {
      if (p.mask >> me.lane & 1u) {
        fail("returns while lanes 0x%08x of its warp wait for it at %s", p.arrived, p.what);
      }
    }
    end_bookkeeping(&me.tsan_ignores);
    switch_to_scheduler(/*final=*/true);
  }

  void yield() { switch_to_scheduler(/*final=*/false); }

  void resume(Fiber& f) {
    current_ = &f;
#if defined(COMMCOMP_EMU_TSAN)
    // The first entry inherits the block's set-up; later switches imply nothing.
    __tsan_switch_to_fiber(f.tsan_fiber, f.entered ? __tsan_switch_to_fiber_no_sync : 0);
#endif
#if defined(COMMCOMP_EMU_ASAN)
    __sanitizer_start_switch_fiber(&scheduler_fake_stack_, f.stack + 4096, kFiberStackBytes - 4096);
#endif
    f.entered = true;
    swapcontext(&scheduler_, &f.context);
#if defined(COMMCOMP_EMU_ASAN)
    __sanitizer_finish_switch_fiber(scheduler_fake_stack_, nullptr, nullptr);
#endif
    current_ = nullptr;
  }

  void switch_to_scheduler(bool final) {
    Fiber& me = *current_;
    (void)final;  // used by the sanitizer annotations only
#if defined(COMMCOMP_EMU_TSAN)
    __tsan_switch_to_fiber(scheduler_tsan_, __tsan_switch_to_fiber_no_sync);  // see join_fibers
#endif
#if defined(COMMCOMP_EMU_ASAN)
    __sanitizer_start_switch_fiber(final ? nullptr : &me.asan_fake_stack, scheduler_stack_bottom_,
                                   scheduler_stack_size_);
#endif
    swapcontext(&me.context, &scheduler_);
    after_switch_into_fiber();
  }

  void after_switch_into_fiber() {
#if defined(COMMCOMP_EMU_ASAN)
    __sanitizer_finish_switch_fiber(current_->asan_fake_stack, &scheduler_stack_bottom_,
                                    &scheduler_stack_size_);
#endif
  }

  LaunchJob* job_ = nullptr;
  uint3 block_idx_{};
  int threads_ = 0;
  std::vector<Fiber> fibers_;
  Fiber* current_ = nullptr;
  ucontext_t scheduler_;
  bool failed_ = false;
  int exited_ = 0;
  std::vector<unsigned> exited_lanes_;
  int arrived_ = 0;
  BlockVote barrier_vote_ = BlockVote::None;
  const char* barrier_what_ = "__syncthreads";
  int barrier_tally_ = 0;
  std::vector<std::vector<PendingWarpOp>> warps_;
  unsigned char* arena_ = nullptr;
  unsigned char* dynamic_ = nullptr;
  size_t static_used_ = 0;
  std::vector<SharedSite> sites_;
  void* scheduler_fake_stack_ = nullptr;
  const void* scheduler_stack_bottom_ = nullptr;
  size_t scheduler_stack_size_ = 0;
  void* scheduler_tsan_ = nullptr;
};

BlockRunner& runner_or_fail(const char* what) {
  if (current_runner == nullptr) {
    fprintf(stderr, "commcomp_emu: %s used outside a kernel\n", what);
    abort();
  }
  return *current_runner;
}

// ---- Workers and streams ---------------------------------------------------------------------

// `workers` host threads, each with its own BlockRunner (fiber stacks and shared-memory arena).
class WorkerPool {
 public:
  explicit WorkerPool(int workers) {
    for (int w = 0; w < workers; ++w) threads_.emplace_back([this, w] { work(w); });
  }
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  int size() const { return static_cast<int>(threads_.size()); }

  void run(LaunchJob& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &job;
    active_ = static_cast<int>(std::min<uint64_t>(threads_.size(), total_blocks(job.grid)));
    remaining_ = active_;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [this] { return remaining_ == 0; });
    job_ = nullptr;
  }

 private:
  void work(int w) {
    BlockRunner runner;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (w >= active_) continue;
      LaunchJob* job = job_;
      const int stride = active_;
      lock.unlock();
      const uint64_t blocks = total_blocks(job->grid);
      for (uint64_t b = static_cast<uint64_t>(w); b < blocks && !job->failed; b += stride) {
        runner.run_block(*job, b);
      }
      lock.lock();
      if (--remaining_ == 0) done_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  LaunchJob* job_ = nullptr;
  int active_ = 0;
  int remaining_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace
}  // namespace commcomp_emu

// An in-order queue of tasks (launches, copies) served by one host thread.
struct CUstream_st {
  CUstream_st() : server([this] { serve(); }) {}
  ~CUstream_st() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    wake.notify_all();
    server.join();
  }

  void enqueue(std::function<void()> task) {
    std::lock_guard<std::mutex> lock(mutex);
    queue.push_back(std::move(task));
    wake.notify_all();
  }

  void drain() {
    std::unique_lock<std::mutex> lock(mutex);
    idle.wait(lock, [this] { return queue.empty() && !busy; });
  }

  // The worker pool, rebuilt when the configured worker count changes (between launches only).
  commcomp_emu::WorkerPool& pool_for(int workers) {
    if (!pool || pool->size() != workers) {
      pool = std::make_unique<commcomp_emu::WorkerPool>(workers);
    }
    return *pool;
  }

  void serve() {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      wake.wait(lock, [this] { return stop || !queue.empty(); });
      if (queue.empty() && stop) return;
      std::function<void()> task = std::move(queue.front());
      queue.pop_front();
      busy = true;
      lock.unlock();
      task();
      lock.lock();
      busy = false;
      if (queue.empty()) idle.notify_all();
    }
  }

  std::mutex mutex;
  std::condition_variable wake, idle;
  std::deque<std::function<void()>> queue;
  bool busy = false;
  bool stop = false;
  std::unique_ptr<commcomp_emu::WorkerPool> pool;
  std::thread server;  // last: starts once the members above exist
};

namespace commcomp_emu {
namespace {

DeviceState& device() {
  // Never destroyed: stream threads may still be parked at process exit.
  static DeviceState* state = [] {
    DeviceState* s = new DeviceState;
    s->config = config_from_environment();
    if (!valid_config(s->config)) {
      fprintf(stderr, "commcomp_emu: invalid COMMCOMP_EMU_* environment\n");
      abort();
    }
    return s;
  }();
  return *state;
}

CUstream_st* default_stream() {
  static CUstream_st* stream = [] {
    CUstream_st* s = new CUstream_st;
    std::lock_guard<std::mutex> lock(device().mutex);
    device().streams.insert(s);
    return s;
  }();
  return stream;
}

// The stream a handle names, or nullptr if it is not a live stream.
CUstream_st* resolve(cudaStream_t stream) {
  if (stream == nullptr) return default_stream();
  std::lock_guard<std::mutex> lock(device().mutex);
  return device().streams.count(stream) ? stream : nullptr;
}

void drain_all() {
  default_stream();
  std::vector<CUstream_st*> streams;
  {
    std::lock_guard<std::mutex> lock(device().mutex);
    streams.assign(device().streams.begin(), device().streams.end());
  }
  for (CUstream_st* s : streams) s->drain();
}

cudaError_t launch_config_error(const KernelLaunch& k) {
  const dim3 g = k.grid, b = k.block;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024) {
    return cudaErrorInvalidConfiguration;
  }
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7FFFFFFFu || g.y > 65535 || g.z > 65535) {
    return cudaErrorInvalidConfiguration;
  }
  if (k.dynamic_shared_bytes > kSharedBytesPerBlock) return cudaErrorInvalidValue;
  return cudaSuccess;
}

void run_launch(CUstream_st* stream, LaunchJob& job) {
  if (sticky_error() != cudaSuccess) return;  // a failed kernel leaves the device unusable
  stream->pool_for(job.config.workers).run(job);
}

}  // namespace

// ---- Entry points of the device side ----------------------------------------------------------

const ThreadState& this_thread() {
  BlockRunner& runner = runner_or_fail("threadIdx/blockIdx");
  const Bookkeeping guard(runner.ignore_depth());
  return runner.thread_state();
}

int sync_block(BlockVote vote, int predicate, const char* what) {
  BlockRunner& runner = runner_or_fail(what);
  const Bookkeeping guard(runner.ignore_depth());
  return runner.sync_block(vote, predicate, what);
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, uint32_t arg, int width,
                         const char* what) {
  BlockRunner& runner = runner_or_fail(what);
  const Bookkeeping guard(runner.ignore_depth());
  return runner.warp_collective(op, mask, value, arg, width, what);
}

unsigned active_lanes() {
  BlockRunner& runner = runner_or_fail("__activemask");
  const Bookkeeping guard(runner.ignore_depth());
  return runner.active_lanes();
}

void* static_shared(const void* site, size_t bytes, size_t align) {
  BlockRunner& runner = runner_or_fail("__shared__ memory");
  const Bookkeeping guard(runner.ignore_depth());
  return runner.static_shared(site, bytes, align);
}

void* dynamic_shared() {
  BlockRunner& runner = runner_or_fail("extern __shared__ memory");
  const Bookkeeping guard(runner.ignore_depth());
  return runner.dynamic_shared();
}

void kernel_trap(const char* what) {
  BlockRunner& runner = runner_or_fail(what);
  const Bookkeeping guard(runner.ignore_depth());
  runner.fail("%s", what);
}

void enqueue_launch(KernelLaunch launch) {
  const cudaError_t sticky = sticky_error();
  if (sticky != cudaSuccess) return set_last_error(sticky);
  const cudaError_t bad = launch_config_error(launch);
  if (bad != cudaSuccess) return set_last_error(bad);
  CUstream_st* stream = resolve(launch.stream);
  if (stream == nullptr) return set_last_error(cudaErrorInvalidResourceHandle);
  auto job = std::make_shared<LaunchJob>();
  {
    std::lock_guard<std::mutex> lock(device().mutex);
    job->config = device().config;
    job->id = device().launches++;
    device().launched.push_back(base_name(launch.name));
  }
  job->grid = launch.grid;
  job->block = launch.block;
  if (job->config.max_blocks) job->grid.x = std::min(job->grid.x, job->config.max_blocks);
  if (job->config.max_threads && job->block.y == 1 && job->block.z == 1) {
    job->block.x = std::min(job->block.x, job->config.max_threads);
  }
  job->launch = std::move(launch);
  stream->enqueue([stream, job] { run_launch(stream, *job); });
}

Config config() {
  std::lock_guard<std::mutex> lock(device().mutex);
  return device().config;
}

bool configure(const Config& c) {
  if (!valid_config(c)) return false;
  drain_all();
  std::lock_guard<std::mutex> lock(device().mutex);
  device().config = c;
  return true;
}

void reset() {
  drain_all();
  std::lock_guard<std::mutex> lock(device().mutex);
  device().sticky = cudaSuccess;
  device().message.clear();
  device().launched.clear();
  last_error = cudaSuccess;
}

std::string error_message() {
  std::lock_guard<std::mutex> lock(device().mutex);
  return device().message;
}

std::vector<std::string> launched_kernels() {
  std::lock_guard<std::mutex> lock(device().mutex);
  return device().launched;
}

}  // namespace commcomp_emu

// ---- The CUDA runtime API subset ----------------------------------------------------------

using commcomp_emu::device;
using commcomp_emu::drain_all;
using commcomp_emu::resolve;

cudaError_t cudaGetLastError() {
  const cudaError_t sticky = commcomp_emu::sticky_error();
  if (sticky != cudaSuccess) return sticky;
  const cudaError_t e = commcomp_emu::last_error;
  commcomp_emu::last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() {
  const cudaError_t sticky = commcomp_emu::sticky_error();
  return sticky != cudaSuccess ? sticky : commcomp_emu::last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (ptr == nullptr) return cudaErrorInvalidValue;
  *ptr = aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  if (*ptr == nullptr) return cudaErrorMemoryAllocation;
  memset(*ptr, commcomp_emu::config().poison, bytes);
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  drain_all();  // as cudaFree, which waits for the device
  free(ptr);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind,
                            cudaStream_t stream) {
  CUstream_st* s = resolve(stream);
  if (s == nullptr) return cudaErrorInvalidResourceHandle;
  s->enqueue([dst, src, bytes] { memmove(dst, src, bytes); });
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
  return e != cudaSuccess ? e : cudaDeviceSynchronize();
}

cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream) {
  CUstream_st* s = resolve(stream);
  if (s == nullptr) return cudaErrorInvalidResourceHandle;
  s->enqueue([ptr, value, bytes] { memset(ptr, value, bytes); });
  return cudaSuccess;
}

cudaError_t cudaMemset(void* ptr, int value, size_t bytes) {
  const cudaError_t e = cudaMemsetAsync(ptr, value, bytes, nullptr);
  return e != cudaSuccess ? e : cudaDeviceSynchronize();
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  if (stream == nullptr) return cudaErrorInvalidValue;
  commcomp_emu::default_stream();
  *stream = new CUstream_st;
  std::lock_guard<std::mutex> lock(device().mutex);
  device().streams.insert(*stream);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return cudaErrorInvalidResourceHandle;
  {
    std::lock_guard<std::mutex> lock(device().mutex);
    if (device().streams.erase(stream) == 0) return cudaErrorInvalidResourceHandle;
  }
  stream->drain();
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  CUstream_st* s = resolve(stream);
  if (s == nullptr) return cudaErrorInvalidResourceHandle;
  s->drain();
  return commcomp_emu::sticky_error();
}

cudaError_t cudaDeviceSynchronize() {
  drain_all();
  return commcomp_emu::sticky_error();
}
