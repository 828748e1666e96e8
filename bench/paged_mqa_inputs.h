// Inputs of the paged_mqa_logits benchmarks (paged_mqa_logits_bench and
// paged_mqa_logits_probe_bench): a random page pool and the op's arguments
// over device buffers.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>

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
