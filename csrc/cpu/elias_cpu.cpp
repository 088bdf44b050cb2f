// CPU backend of the Elias codec ops: per-block codings into buffers of their own, a prefix sum of
// the bucket lengths, then one copy per block (encode); per-chunk decodes at offsets from the
// prefix sum of the bucket lengths.
// Buckets are independent, so both directions run under at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <vector>

#include "../checks/elias.h"
#include "../core/elias.h"

namespace commcomp {
namespace {

// Buckets per parallel task: enough coordinates (~64K) to amortize scheduling.
int64_t bucket_grain(int64_t bucket_size) { return std::max<int64_t>(1, 65536 / bucket_size); }

// A growable byte buffer that does not zero what it allocates (the encoder writes every byte it
// keeps).
struct ByteBuffer {
  std::unique_ptr<uint8_t[]> data;
  int64_t size = 0, capacity = 0;

  // Room for `bytes` more bytes after `size`.
  uint8_t* room(int64_t bytes) {
    if (size + bytes > capacity) {
      const int64_t grown = std::max(size + bytes, 2 * capacity);
      std::unique_ptr<uint8_t[]> bigger(new uint8_t[static_cast<size_t>(grown)]);
      if (size > 0) std::memcpy(bigger.get(), data.get(), static_cast<size_t>(size));
      data = std::move(bigger);
      capacity = grown;
    }
    return data.get() + size;
  }
};

// Lowest failing bucket over all tasks, so the error message does not depend on scheduling.
struct FirstError {
  std::mutex mutex;
  int64_t bucket = std::numeric_limits<int64_t>::max();
  EliasStatus status = EliasStatus::Ok;

  void record(int64_t b, EliasStatus s) {
    std::lock_guard<std::mutex> lock(mutex);
    if (b < bucket) {
      bucket = b;
      status = s;
    }
  }
};

std::tuple<at::Tensor, at::Tensor> elias_encode_cpu(const at::Tensor& packed, int64_t num_levels,
                                                    int64_t bucket_size, int64_t numel,
                                                    int64_t code) {
  const EliasArgs a = check_elias_args(num_levels, bucket_size, numel, code);
  check_packed_symbols(packed, a);
  const uint8_t* in = packed.data_ptr<uint8_t>();
  at::Tensor bucket_bytes = at::empty({a.buckets}, packed.options().dtype(at::kLong));
  int64_t* lengths = bucket_bytes.data_ptr<int64_t>();
  const TableCoder coder(a.code);
  FirstError error;
  // One pass: each block of buckets is coded into a buffer of its own (sized by the worst case,
  // never zero-filled), then copied to its offset once every length is known.
  const int64_t per_block = bucket_grain(bucket_size);
  const int64_t blocks = (a.buckets + per_block - 1) / per_block;
  std::vector<ByteBuffer> coded(static_cast<size_t>(blocks));
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      ByteBuffer& buffer = coded[static_cast<size_t>(block)];
      const int64_t last = std::min(a.buckets, (block + 1) * per_block);
      for (int64_t b = block * per_block; b < last; ++b) {
        const int64_t first = b * bucket_size;
        const int64_t stop = std::min(numel, first + bucket_size);
        uint8_t* at = buffer.room(elias_bucket_bound_bytes(stop - first));
        const int64_t bytes = elias_encode_bucket_checked(in, a.width, a.num_levels, first, stop,
                                                          coder, at);
        if (bytes < 0) {
          error.record(b, EliasStatus::BadSymbol);
          lengths[b] = 0;
        } else {
          lengths[b] = bytes;
          buffer.size += bytes;
        }
      }
    }
  });
  if (error.status != EliasStatus::Ok) {
    TORCH_CHECK_VALUE(false, "packed: symbol in bucket ", error.bucket,
                      " cannot be Elias coded: its level index is >= num_levels=", num_levels,
                      " or it is a zero with the sign bit set");
  }
  std::vector<int64_t> offsets(a.buckets + 1, 0);
  for (int64_t b = 0; b < a.buckets; ++b) offsets[b + 1] = offsets[b] + lengths[b];
  at::Tensor stream = at::empty({offsets[a.buckets]}, packed.options());
  uint8_t* out = stream.data_ptr<uint8_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const ByteBuffer& buffer = coded[static_cast<size_t>(block)];
      if (buffer.size > 0) std::memcpy(out + offsets[block * per_block], buffer.data.get(), buffer.size);
    }
  });
  return {bucket_bytes, stream};
}

at::Tensor elias_decode_cpu(const at::Tensor& bucket_bytes, const at::Tensor& stream,
                            int64_t num_levels, int64_t bucket_size, int64_t numel,
                            int64_t code) {
  const EliasArgs a = check_elias_args(num_levels, bucket_size, numel, code);
  check_elias_stream(bucket_bytes, stream, a);
  const int64_t* lengths = bucket_bytes.data_ptr<int64_t>();
  std::vector<int64_t> offsets(a.buckets + 1, 0);
  for (int64_t b = 0; b < a.buckets; ++b) offsets[b + 1] = offsets[b] + lengths[b];
  at::Tensor packed = at::empty({packed_bytes(numel, a.width)}, stream.options());
  const uint8_t* in = stream.data_ptr<uint8_t>();
  uint8_t* out = packed.data_ptr<uint8_t>();
  // Buckets are decoded in chunks whose packed output starts and ends on byte boundaries.
  const int64_t per_chunk = buckets_per_aligned_chunk(bucket_size, a.width);
  const int64_t chunks = (a.buckets + per_chunk - 1) / per_chunk;
  const int64_t grain = std::max<int64_t>(1, bucket_grain(bucket_size) / per_chunk);
  const auto table = std::make_unique<DecodeTable>(a.code, a.num_levels);
  FirstError error;
  at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first_bucket = c * per_chunk;
      PackedWriter sink(out + first_bucket * bucket_size * a.width / 8);
      const int64_t last_bucket = std::min(a.buckets, first_bucket + per_chunk);
      for (int64_t b = first_bucket; b < last_bucket; ++b) {
        const int64_t count = std::min(bucket_size, numel - b * bucket_size);
        const EliasStatus s = elias_decode_bucket(in + offsets[b], lengths[b], count,
                                                  a.num_levels, a.width, a.code, sink,
                                                  table.get());
        if (s != EliasStatus::Ok) {
          error.record(b, s);
          return;  // this task's remaining chunks are moot: the op fails
        }
      }
      sink.finish();
    }
  });
  if (error.status != EliasStatus::Ok) throw_elias_error(error.bucket, error.status);
  return packed;
}

}  // namespace

TORCH_LIBRARY_IMPL(commcomp, CPU, m) {
  m.impl("elias_encode", &elias_encode_cpu);
  m.impl("elias_decode", &elias_decode_cpu);
}

}  // namespace commcomp
