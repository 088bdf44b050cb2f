// The vector kernels, written once over an ISA class V (isa_avx2.h, isa_avx512.h) and instantiated
// by avx2.cpp and avx512.cpp. Each reproduces a loop of csrc/cpu/*.cpp over csrc/core bit for bit;
// the comments name the core function a step mirrors.
//
// Included by a vector translation unit after:
//   * its target pragma and its ISA header,
//   * the csrc/core headers under that unit's private namespace, aliased here as `core`
//     (see core_private.h: out-of-line copies of core inline functions compiled for AVX-512 must
//     not be shared with the baseline code).
// Everything here has internal linkage.
#pragma once

#include <stdint.h>

#include "kernels.h"
#include "vector_types.h"

// Quantize's loops over the four vectors of a chunk are unrolled, so their vectors stay in
// registers: as a stack array, a 64-byte aligned input (torch's) hit 4K-aliasing stalls against it
// (measured). The decode loops are not: unrolled, AVX2 runs out of registers there.
#if defined(__clang__)
#define COMMCOMP_UNROLL4 _Pragma("clang loop unroll(full)")
#else
#define COMMCOMP_UNROLL4 _Pragma("GCC unroll 4")
#endif

namespace commcomp {
namespace simd {
namespace {

// A chunk: 4 vectors of elements, one Philox evaluation per lane (4 uniforms per counter), and
// whole packing groups of symbols (4W elements = W/2 groups, 4W * width / 8 bytes).
template <class V>
constexpr int kChunk = 4 * V::W;
template <class V>
constexpr int kChunkGroups = kChunk<V> / core::kPackGroup;

// ---- norms -----------------------------------------------------------------------------------

// core::norm_lane_update, per lane.
template <class V>
COMMCOMP_SIMD_INLINE typename V::F abs_hd(typename V::F x) {
  // fabs_hd keeps the sign of -0 and NaN (a < 0 is false for both); so does this.
  return V::select(V::lt(x, V::set1(0.0f)), V::flip_sign(x), x);
}

template <class V>
COMMCOMP_SIMD_INLINE typename V::F max_nan(typename V::F a, typename V::F b) {
  // fmax_nan(a, b) = (a is NaN or a > b) ? a : b, and V::max(a, b) = a > b ? a : b.
  return V::select(V::is_nan(a), a, V::max(a, b));
}

template <class V, bool kL2>
COMMCOMP_SIMD_INLINE typename V::F norm_update(typename V::F acc, typename V::F x) {
  if (kL2) return V::add(acc, V::mul(x, x));
  return max_nan<V>(acc, abs_hd<V>(x));
}

// Bucket b's 32 lanes as 32 / W vectors: lane l sums elements l, l + 32, ... of the bucket.
template <class V, bool kL2, class T>
void bucket_norms_typed(const T* x, int64_t n, int64_t bucket_size, int64_t begin, int64_t end,
                        float* norms) {
  using F = typename V::F;
  constexpr int kLanes = core::kNormLanes;
  constexpr int kVectors = kLanes / V::W;
  const core::NormKind kind = kL2 ? core::NormKind::L2 : core::NormKind::LInf;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t start = b * bucket_size;
    const int64_t len = (n - start < bucket_size ? n - start : bucket_size);
    F acc[kVectors];
    for (int k = 0; k < kVectors; ++k) acc[k] = V::set1(0.0f);
    const T* row = x + start;
    int64_t left = len;
    for (; left >= kLanes; left -= kLanes, row += kLanes) {
      for (int k = 0; k < kVectors; ++k) acc[k] = norm_update<V, kL2>(acc[k], V::load(row + k * V::W));
    }
    if (left > 0) {  // a partial row: only its first `left` lanes see an element
      T tail[kLanes];
      for (int k = 0; k < kLanes; ++k) tail[k] = k < left ? row[k] : T{};
      for (int k = 0; k < kVectors; ++k) {
        const F updated = norm_update<V, kL2>(acc[k], V::load(tail + k * V::W));
        acc[k] = V::select(V::lanes_below(left - k * V::W), updated, acc[k]);
      }
    }
    alignas(64) float lanes[kLanes];
    for (int k = 0; k < kVectors; ++k) V::store(lanes + k * V::W, acc[k]);
    norms[b] = core::norm_combine_lanes(lanes, kind);
  }
}

template <class V, class T>
void bucket_norms_kind(const T* x, int64_t n, int64_t bucket_size, int kind, int64_t begin,
                       int64_t end, float* norms) {
  if (kind == static_cast<int>(core::NormKind::L2)) {
    bucket_norms_typed<V, true>(x, n, bucket_size, begin, end, norms);
  } else {
    bucket_norms_typed<V, false>(x, n, bucket_size, begin, end, norms);
  }
}

template <class V>
void bucket_norms(const void* x, InputType type, int64_t n, int64_t bucket_size, int kind,
                  int64_t begin, int64_t end, float* norms) {
  switch (type) {
    case InputType::F32:
      return bucket_norms_kind<V>(static_cast<const float*>(x), n, bucket_size, kind, begin, end, norms);
    case InputType::F16:
      return bucket_norms_kind<V>(static_cast<const F16Bits*>(x), n, bucket_size, kind, begin, end, norms);
    case InputType::BF16:
      return bucket_norms_kind<V>(static_cast<const BF16Bits*>(x), n, bucket_size, kind, begin, end, norms);
  }
}

// ---- per-lane bucket norms -------------------------------------------------------------------

// Which bucket each lane of the vector at element i is in (core::BucketCursor, W lanes at a
// time): one bucket, two (a boundary inside the vector), or, for buckets shorter than a vector,
// one per lane.
template <class V>
struct LaneBuckets {
  int64_t bucket_size, buckets;
  int64_t bucket, next_start;  // the bucket of the last element seen and where the next starts
  // Of the current vector:
  int split;                   // 0: one bucket; 1: `bucket` then `bucket + 1` from lane `below`
                               // on; 2: per lane
  typename V::M first;         // lanes in `bucket`
  int64_t lane_bucket[V::W];

  LaneBuckets(int64_t first_element, int64_t size, int64_t count)
      : bucket_size(size), buckets(count), bucket(first_element / size),
        next_start((first_element / size + 1) * size), split(0) {}

  // To the bucket of element i (i never decreases).
  COMMCOMP_SIMD_INLINE void advance(int64_t i) {
    while (i >= next_start) {
      ++bucket;
      next_start += bucket_size;
    }
  }

  // To element i, and the buckets of its vector's lanes.
  COMMCOMP_SIMD_INLINE void seek(int64_t i) {
    advance(i);
    if (i + V::W <= next_start) {
      split = 0;
    } else if (bucket_size >= V::W) {
      split = 1;
      first = V::lanes_below(next_start - i);
    } else {
      split = 2;
      int64_t b = bucket, stop = next_start;
      for (int k = 0; k < V::W; ++k) {
        while (i + k >= stop) {
          ++b;
          stop += bucket_size;
        }
        lane_bucket[k] = b;
      }
    }
  }

  COMMCOMP_SIMD_INLINE float norm_of(const float* norms, int64_t b) const {
    return b < buckets ? norms[b] : 0.0f;
  }

  COMMCOMP_SIMD_INLINE typename V::F norms(const float* norms) const {
    if (split == 0) return V::set1(norms[bucket]);
    if (split == 1) return V::select(first, V::set1(norms[bucket]), V::set1(norm_of(norms, bucket + 1)));
    alignas(64) float lane[V::W];
    for (int k = 0; k < V::W; ++k) lane[k] = norm_of(norms, lane_bucket[k]);
    return V::load(lane);
  }
};

// ---- Philox-4x32-10, one counter per lane ----------------------------------------------------

struct PhiloxKeys {
  uint32_t k0[10], k1[10];  // the round keys of core::philox4x32_10
  uint32_t offset_lo, offset_hi;
  // Rounds 0 and 1 for counters whose high word is `head_hi` (all but those near a 2^32 carry):
  // half of their state is the same in every lane, so those products and XORs are done once.
  uint32_t head_hi;
  uint32_t r0_n0, r0_n1, r0_x2;  // round 0: n0, n1 (uniform), n2 = hi(c0 * M0) ^ r0_x2
  uint32_t r1_x0, r1_x2, r1_n3;  // round 1: n0 = hi(c2 * M1) ^ r1_x0, n2 = n3(round 0) ^ r1_x2
  uint32_t r2_x2;                // round 2: n2 = hi(c0 * M0) ^ r2_x2

  void set_head(uint32_t hi) {
    using core::philox_detail::kMul0;
    using core::philox_detail::kMul1;
    uint32_t h, l;
    head_hi = hi;
    core::philox_detail::mulhilo(kMul1, offset_lo, h, l);  // round 0, c2 = offset_lo
    r0_n0 = h ^ hi ^ k0[0];
    r0_n1 = l;
    r0_x2 = offset_hi ^ k1[0];
    core::philox_detail::mulhilo(kMul0, r0_n0, h, l);  // round 1, c0 = r0_n0
    r1_x0 = r0_n1 ^ k0[1];
    r1_x2 = h ^ k1[1];
    r1_n3 = l;
    r2_x2 = r1_n3 ^ k1[2];
  }
};

inline PhiloxKeys philox_keys(uint64_t seed, uint64_t offset) {
  PhiloxKeys keys;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    keys.k0[round] = k0;
    keys.k1[round] = k1;
    k0 += core::philox_detail::kWeyl0;
    k1 += core::philox_detail::kWeyl1;
  }
  keys.offset_lo = static_cast<uint32_t>(offset);
  keys.offset_hi = static_cast<uint32_t>(offset >> 32);
  keys.set_head(0);
  return keys;
}

// One round of core::philox4x32_10 on W counters. V::mulhilo_swapped returns its products with
// lanes 1 and 2 of every 128-bit block swapped (S), so words 0 and 1 of the state are kept in lane
// order and words 2 and 3 in S order: a product of word 0 lands in S order and is combined with
// word 3, one of word 2 lands in lane order (S twice) and is combined with word 1. The lanes
// of every XOR agree, and transpose4 undoes S at the end. (Lane-uniform words fit any order.)
template <class V>
COMMCOMP_SIMD_INLINE void philox_round(typename V::I c[4], uint32_t key0, uint32_t key1) {
  using I = typename V::I;
  I hi0, lo0, hi1, lo1;
  V::mulhilo_swapped(c[0], V::set1_i(core::philox_detail::kMul0), hi0, lo0);
  V::mulhilo_swapped(c[2], V::set1_i(core::philox_detail::kMul1), hi1, lo1);
  c[0] = V::xor_i(V::xor_i(hi1, c[1]), V::set1_i(key0));
  c[1] = lo1;
  c[2] = V::xor_i(V::xor_i(hi0, c[3]), V::set1_i(key1));
  c[3] = lo0;
}

// The uniforms of elements 4 * counter .. 4 * counter + 4W - 1 in element order (u[q] holds
// elements 4 * counter + q*W ..): core::uniforms4 of counters counter .. counter + W - 1.
template <class V>
COMMCOMP_SIMD_INLINE void chunk_uniforms(PhiloxKeys& keys, uint64_t counter, typename V::F u[4]) {
  using I = typename V::I;
  const uint32_t counter_lo = static_cast<uint32_t>(counter);
  const uint32_t counter_hi = static_cast<uint32_t>(counter >> 32);
  const I lo = V::add_i(V::set1_i(counter_lo), V::iota());
  I c[4];
  if (counter_lo <= 0xFFFFFFFFu - (V::W - 1)) {  // one high word in every lane
    if (counter_hi != keys.head_hi) keys.set_head(counter_hi);
    using core::philox_detail::kMul0;
    using core::philox_detail::kMul1;
    I hi, low;
    V::mulhilo_swapped(lo, V::set1_i(kMul0), hi, low);  // round 0
    const I n2 = V::xor_i(hi, V::set1_i(keys.r0_x2)), n3 = low;
    V::mulhilo_swapped(n2, V::set1_i(kMul1), hi, low);  // round 1: c0 uniform, c2 = n2
    c[0] = V::xor_i(hi, V::set1_i(keys.r1_x0));
    c[1] = low;
    c[2] = V::xor_i(n3, V::set1_i(keys.r1_x2));
    I hi0, lo0, hi1, lo1;  // round 2: c3 = keys.r1_n3, uniform
    V::mulhilo_swapped(c[0], V::set1_i(kMul0), hi0, lo0);
    V::mulhilo_swapped(c[2], V::set1_i(kMul1), hi1, lo1);
    c[0] = V::xor_i(V::xor_i(hi1, c[1]), V::set1_i(keys.k0[2]));
    c[1] = lo1;
    c[2] = V::xor_i(hi0, V::set1_i(keys.r2_x2));
    c[3] = lo0;
    for (int round = 3; round < 10; ++round) philox_round<V>(c, keys.k0[round], keys.k1[round]);
  } else {  // the low word wraps inside this vector: the carry goes into word 1
    const I base = V::set1_i(counter_lo);
    c[0] = lo;
    c[1] = V::add_i(V::set1_i(counter_hi), V::carry(lo, base));
    c[2] = V::set1_i(keys.offset_lo);
    c[3] = V::set1_i(keys.offset_hi);
    for (int round = 0; round < 10; ++round) philox_round<V>(c, keys.k0[round], keys.k1[round]);
  }
  V::transpose4(c);
  // core::uint_to_unit_float
  const typename V::F scale = V::set1(1.0f / 16777216.0f);
  COMMCOMP_UNROLL4
  for (int q = 0; q < 4; ++q) u[q] = V::mul(V::to_float(V::template shr<8>(c[q])), scale);
}

// ---- quantize ----------------------------------------------------------------------------------

// core::find_interval: the largest j <= count - 2 with levels[j] <= r (0 for NaN). For a strictly
// increasing table any exact search finds the same j; this one walks a balanced binary tree over
// the P = 2^steps >= count - 1 intervals, level s of it held in one small table, so each step is one
// permute (level 0: one value) instead of a search over the whole table. Intervals past count - 2
// hold +inf: never taken.
template <class V>
struct IntervalSearch {
  int steps;
  float root;                       // level 0
  typename V::Table level[7];       // level s: 2^s entries (level[0] unused)
  typename V::Table low, inv_width;  // levels[j], 1 / (levels[j+1] - levels[j]) by interval j
  bool small;                        // every table fits V::kSmallTable

  IntervalSearch(const float* levels, const float* inv, int count) {
    const int intervals = count - 1;
    steps = 0;
    while ((1 << steps) < intervals) ++steps;
    const int size = 1 << steps;
    float padded[128];
    for (int j = 0; j < size; ++j) padded[j] = j < intervals ? levels[j] : __builtin_inff();
    float entries[64];
    for (int s = 0; s < steps; ++s) {
      const int half = size >> (s + 1);
      for (int k = 0; k < (1 << s); ++k) entries[k] = padded[(2 * k + 1) * half];
      if (s == 0) root = entries[0];
      level[s] = V::make_table(entries, 1 << s);
    }
    low = V::make_table(levels, intervals);
    inv_width = V::make_table(inv, intervals);
    small = intervals <= V::kSmallTable;
  }

  // The interval j of r, and levels[j] in `low`: looked up at the end from small tables, tracked
  // through the walk otherwise (the last node taken is levels[j]; none taken: j = 0, levels[0] = 0).
  template <bool kSmall>
  COMMCOMP_SIMD_INLINE typename V::I find(typename V::F r, typename V::F& low_value) const {
    using F = typename V::F;
    using I = typename V::I;
    if (steps == 0) {
      low_value = V::set1(0.0f);
      return V::set1_i(0);
    }
    // k: the node of the current level; k' = 2k + (node value <= r); after the last level, j.
    const F top = V::set1(root);
    auto take = V::le(top, r);
    I k = V::increment(V::set1_i(0), take);
    F tracked = V::select(take, top, V::set1(0.0f));
    for (int s = 1; s < steps; ++s) {
      const F node = V::template lookup<kSmall>(level[s], k);
      take = V::le(node, r);
      k = V::increment(V::add_i(k, k), take);
      if (!kSmall) tracked = V::select(take, node, tracked);
    }
    low_value = kSmall ? V::template lookup<true>(low, k) : tracked;
    return k;
  }
};

// core::quantize_one on W lanes, for lanes whose norm is usable (> 0 and finite).
template <class V, bool kSmall>
COMMCOMP_SIMD_INLINE typename V::I quantize_lanes(typename V::F x, typename V::F norm,
                                                  typename V::F u,
                                                  const IntervalSearch<V>& search) {
  using F = typename V::F;
  using I = typename V::I;
  // |x| with +0 for -0: both give r = 0, interval 0 and p = 0 (up never), as fabs_hd's -0 does.
  const F r = V::min(V::div(V::clear_sign(x), norm), V::set1(1.0f));
  F low;
  const I j = search.template find<kSmall>(r, low);
  const F p = V::mul(V::sub(r, low), V::template lookup<kSmall>(search.inv_width, j));
  const I index = V::increment(j, V::lt(u, p));
  // Sign bit: x < 0 and index != 0.
  const I sign = V::and_i(V::min_u(index, V::set1_i(1)), V::mask_to_int(V::lt(x, V::set1(0.0f))));
  return V::or_i(V::template shl<1>(index), sign);
}

template <class V>
COMMCOMP_SIMD_INLINE auto usable_norm(typename V::F norm) {
  return V::both(V::gt(norm, V::set1(0.0f)), V::le(norm, V::set1(core::kFloatMax)));
}

COMMCOMP_SIMD_INLINE bool usable_norm(float norm) { return norm > 0.0f && norm <= core::kFloatMax; }

// The input lines 2 KiB ahead of a chunk: the rounding is slow enough per byte that the hardware
// prefetcher alone leaves loads waiting on DRAM (measured: 15-25% of the time at 16M elements).
COMMCOMP_SIMD_INLINE void prefetch_ahead(const void* chunk, int bytes) {
  const char* p = static_cast<const char*>(chunk) + 2048;
  for (int line = 0; line < bytes; line += 64) __builtin_prefetch(p + line);
}

template <class V, bool kSmall, class T>
int64_t quantize_chunks(const QuantizeArgs& a, const T* x, int64_t begin, int64_t chunks,
                        const IntervalSearch<V>& search) {
  using F = typename V::F;
  using I = typename V::I;
  const typename V::Packer packer = V::make_packer(a.width);
  PhiloxKeys keys = philox_keys(a.seed, a.offset);
  const int64_t buckets = (a.n + a.bucket_size - 1) / a.bucket_size;
  LaneBuckets<V> lanes(begin * core::kPackGroup, a.bucket_size, buckets);
  const I zero = V::set1_i(0);
  // This call's bytes end here: other tasks own what follows.
  const uint8_t* limit = a.out + (begin + chunks * kChunkGroups<V>) * a.width;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t group = begin + c * kChunkGroups<V>;
    const int64_t first = group * core::kPackGroup;
    I symbols[4];
    prefetch_ahead(x + first, kChunk<V> * sizeof(T));
    lanes.advance(first);
    if (first + kChunk<V> <= lanes.next_start) {  // the whole chunk is in one bucket
      const float norm = a.norms[lanes.bucket];
      if (usable_norm(norm)) {
        F u[4];
        chunk_uniforms<V>(keys, static_cast<uint64_t>(first / 4 + 2 * a.first_group), u);
        const F norms = V::set1(norm);
        COMMCOMP_UNROLL4
        for (int q = 0; q < 4; ++q) {
          symbols[q] = quantize_lanes<V, kSmall>(V::load(x + first + q * V::W), norms, u[q], search);
        }
      } else {  // zero or non-finite bucket: symbol 0
        for (int q = 0; q < 4; ++q) symbols[q] = zero;
      }
    } else {
      F u[4];
      chunk_uniforms<V>(keys, static_cast<uint64_t>(first / 4 + 2 * a.first_group), u);
      COMMCOMP_UNROLL4
      for (int q = 0; q < 4; ++q) {
        const int64_t i = first + q * V::W;
        lanes.seek(i);
        const F norms = lanes.norms(a.norms);
        symbols[q] = V::select(usable_norm<V>(norms),
                               quantize_lanes<V, kSmall>(V::load(x + i), norms, u[q], search), zero);
      }
    }
    V::pack_store(packer, V::to_bytes(symbols), a.out + group * a.width, limit);
  }
  return begin + chunks * kChunkGroups<V>;
}

// Whole chunks of packing groups [begin, end) within the n elements.
template <class V>
COMMCOMP_SIMD_INLINE int64_t whole_chunks(int64_t n, int64_t begin, int64_t end) {
  const int64_t full_groups = n / core::kPackGroup;
  const int64_t stop = end < full_groups ? end : full_groups;
  return stop > begin ? (stop - begin) / kChunkGroups<V> : 0;
}

template <class V, class T>
int64_t quantize_typed(const QuantizeArgs& a, const T* x, int64_t begin, int64_t end) {
  const int64_t chunks = whole_chunks<V>(a.n, begin, end);
  if (chunks == 0) return begin;
  const IntervalSearch<V> search(a.levels, a.inv_width, a.count);
  return search.small ? quantize_chunks<V, true>(a, x, begin, chunks, search)
                      : quantize_chunks<V, false>(a, x, begin, chunks, search);
}

template <class V>
int64_t quantize(const QuantizeArgs& a, int64_t begin, int64_t end) {
  switch (a.type) {
    case InputType::F32: return quantize_typed<V>(a, static_cast<const float*>(a.x), begin, end);
    case InputType::F16: return quantize_typed<V>(a, static_cast<const F16Bits*>(a.x), begin, end);
    case InputType::BF16: return quantize_typed<V>(a, static_cast<const BF16Bits*>(a.x), begin, end);
  }
  return begin;
}

// ---- dequantize and accumulate -----------------------------------------------------------------

template <class V, bool kSmall>
int64_t accumulate_chunks(const AccumulateArgs& a, int64_t begin, int64_t chunks, bool* ok) {
  using F = typename V::F;
  using I = typename V::I;
  const typename V::Table values = V::make_table(a.levels, a.count);
  const typename V::Packer packer = V::make_packer(a.width);
  const int64_t buckets = (a.n + a.bucket_size - 1) / a.bucket_size;
  const I count = V::set1_i(static_cast<uint32_t>(a.count));
  const I one = V::set1_i(1), zero = V::set1_i(0);
  const F scale = V::set1(a.scale);
  LaneBuckets<V> lanes(begin * core::kPackGroup, a.bucket_size, buckets);
  LaneBuckets<V> lane_split[4] = {lanes, lanes, lanes, lanes};
  auto bad = V::lt(V::set1(1.0f), V::set1(0.0f));  // no lane
  const int64_t end_byte = (begin + chunks * kChunkGroups<V>) * a.width;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t group = begin + c * kChunkGroups<V>;
    const int64_t first = group * core::kPackGroup;
    lanes.advance(first);
    const bool one_bucket = first + kChunk<V> <= lanes.next_start;
    if (!one_bucket) {
      for (int q = 0; q < 4; ++q) lane_split[q].seek(first + q * V::W);
    }
    F out[4];
    if (!a.overwrite_first) {
      for (int q = 0; q < 4; ++q) out[q] = V::load(a.out + first + q * V::W);
    }
    for (int k = 0; k < a.payloads; ++k) {
      I symbols[4];
      V::from_bytes(V::load_unpack(packer, a.symbols[k] + group * a.width, a.symbols[k] + end_byte), symbols);
      const F bucket_norm = V::set1(a.norms[k][lanes.bucket]);
      for (int q = 0; q < 4; ++q) {
        // core::dequantize_group: a symbol naming a missing level decodes as symbol 0.
        const auto missing = V::ge_u(V::template shr<1>(symbols[q]), count);
        bad = V::either(bad, missing);
        const I symbol = V::select(missing, zero, symbols[q]);
        const F norm = one_bucket ? bucket_norm : lane_split[q].norms(a.norms[k]);
        // core::dequantize_one; its product with -1 only flips the sign bit.
        const F magnitude = V::mul(norm, V::template lookup<kSmall>(values, V::template shr<1>(symbol)));
        const F v = V::xor_bits(magnitude, V::template shl<31>(V::and_i(symbol, one)));
        out[q] = (k == 0 && a.overwrite_first) ? v : V::add(out[q], V::mul(scale, v));
      }
    }
    for (int q = 0; q < 4; ++q) V::store(a.out + first + q * V::W, out[q]);
  }
  if (V::any(bad)) *ok = false;
  return begin + chunks * kChunkGroups<V>;
}

template <class V>
int64_t accumulate(const AccumulateArgs& a, int64_t begin, int64_t end, bool* ok) {
  const int64_t chunks = whole_chunks<V>(a.n, begin, end);
  if (chunks == 0 || a.payloads == 0) return begin;
  return a.count <= V::kSmallTable ? accumulate_chunks<V, true>(a, begin, chunks, ok)
                                   : accumulate_chunks<V, false>(a, begin, chunks, ok);
}

// ---- pack / unpack symbols -----------------------------------------------------------------

template <class V>
int64_t pack(const uint8_t* symbols, int64_t n, int width, int64_t begin, int64_t end,
             uint8_t* out) {
  const int64_t chunks = whole_chunks<V>(n, begin, end);
  if (chunks == 0) return begin;
  const typename V::Packer packer = V::make_packer(width);
  const uint8_t* limit = out + (begin + chunks * kChunkGroups<V>) * width;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t group = begin + c * kChunkGroups<V>;
    V::pack_store(packer, V::load_bytes(symbols + group * core::kPackGroup), out + group * width, limit);
  }
  return begin + chunks * kChunkGroups<V>;
}

template <class V>
int64_t unpack(const uint8_t* packed, int64_t n, int width, int64_t begin, int64_t end,
               uint8_t* out) {
  const int64_t chunks = whole_chunks<V>(n, begin, end);
  if (chunks == 0) return begin;
  const typename V::Packer packer = V::make_packer(width);
  const uint8_t* limit = packed + (begin + chunks * kChunkGroups<V>) * width;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t group = begin + c * kChunkGroups<V>;
    V::store_bytes(out + group * core::kPackGroup, V::load_unpack(packer, packed + group * width, limit));
  }
  return begin + chunks * kChunkGroups<V>;
}

template <class V>
constexpr Kernels make_kernels(Path path) {
  return Kernels{path, &bucket_norms<V>, &quantize<V>, &accumulate<V>, &pack<V>, &unpack<V>};
}

}  // namespace
}  // namespace simd
}  // namespace commcomp
