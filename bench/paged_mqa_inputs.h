// Inputs of the paged_mqa_logits benchmarks (paged_mqa_logits_bench and
// paged_mqa_logits_probe_bench): a random page pool and the op's arguments
// over device buffers.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "buffer.h"
#include "host_data.h"
#include "nsa/indexer.h"

namespace nsa {
namespace bench {

constexpr int64_t kH = kIndexerHeads, kD = kIndexerHeadDim, kP = 64;
constexpr int64_t kPageBytes = kP * (kD + 4);

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// A pool of `pages` pages filled from a random block of up to 64 MB (positive scales).
inline support::Buffer make_pool(std::mt19937_64& rng, int64_t pages) {
  const int64_t block_pages = std::min<int64_t>(pages, (int64_t{64} << 20) / kPageBytes);
  const auto host = nsa::support::random_index_pages(rng, block_pages);
  support::Buffer pool(nsa::Backend::kCuda, static_cast<size_t>(pages * kPageBytes));
  pool.upload(host);
  for (int64_t p = block_pages; p < pages; p += block_pages) {
    const int64_t n = std::min(block_pages, pages - p);
    cuda_check(cudaMemcpy(pool.as<uint8_t>() + p * kPageBytes, pool.data(), static_cast<size_t>(n * kPageBytes),
                          cudaMemcpyDeviceToDevice),
               "fill pool");
  }
  return pool;
}

// Pages for calls that each read their own copy of the cache: `copies` page
// tables of [batch, ctx / 64] columns, copy c naming the pages [c * per_call,
// (c + 1) * per_call) in a random order, so that the pool spans at least
// 256 MB (and two copies) and a graph replaying the calls in turn reads HBM,
// not the L2.
struct RotatingPages {
  support::Buffer pool;
  support::Buffer table;  // int32, copies x [batch, cols] dense
  int64_t cols = 0, per_call = 0, copies = 0;
  int64_t pages() const { return copies * per_call; }
  const int32_t* table_of(int64_t call) const { return table.as<int32_t>() + (call % copies) * per_call; }
};

inline RotatingPages make_rotating_pages(std::mt19937_64& rng, int64_t batch, int64_t ctx) {
  constexpr int64_t kRotationBytes = int64_t{256} << 20;
  RotatingPages r;
  r.cols = (ctx + kP - 1) / kP;
  r.per_call = batch * r.cols;
  const int64_t call_bytes = r.per_call * kPageBytes;
  r.copies = std::max<int64_t>(2, (kRotationBytes + call_bytes - 1) / call_bytes);
  r.pool = make_pool(rng, r.pages());
  std::vector<int32_t> table(static_cast<size_t>(r.pages()));
  for (int64_t c = 0; c < r.copies; ++c) {
    auto* row = table.data() + c * r.per_call;
    std::iota(row, row + r.per_call, static_cast<int32_t>(c * r.per_call));
    std::shuffle(row, row + r.per_call, rng);
  }
  r.table = support::to_backend(Backend::kCuda, table);
  return r;
}

// The decode shapes the indexer benchmarks time: f(batch, ctx, next_n) for
// B in {1, 8, 64, 256} x context in {4K, 32K, 128K} x N in {1, 2, 4}, or
// with `quick` B in {8, 64} x 32K only (the smallest and the main shape of
// the >= 80%-of-copy target).
template <class F>
void for_each_decode_shape(bool quick, F&& f) {
  std::vector<int64_t> batches = {1, 8, 64, 256}, ctxs = {4096, 32768, 131072};
  if (quick) {
    batches = {8, 64};
    ctxs = {32768};
  }
  for (int64_t b : batches)
    for (int64_t ctx : ctxs)
      for (int64_t n : {1, 2, 4}) f(b, ctx, n);
}

// The op's arguments over device buffers (int32 lengths and table, dense rows).
inline PagedMqaLogitsArgs device_args(const support::Buffer& q, const support::Buffer& w, int64_t batch, int64_t n,
                                      const support::Buffer& pool, int64_t pages, const support::Buffer& lens,
                                      const support::Buffer& table, int64_t cols, const support::Buffer& logits,
                                      int64_t width) {
  nsa::PagedMqaLogitsArgs a;
  a.q = q.as<uint8_t>();
  a.weights = w.as<float>();
  a.batch = batch;
  a.next_n = n;
  a.cache = nsa::ConstIndexCache(pool.as<uint8_t>(), pages);
  a.context_lens = nsa::Indices(lens.as<int32_t>());
  a.page_table = nsa::Indices(table.as<int32_t>());
  a.table_cols = cols;
  a.table_ld = cols;
  a.logits = logits.as<float>();
  a.width = width;
  a.logits_ld = width;
  return a;
}

}  // namespace bench
}  // namespace nsa
