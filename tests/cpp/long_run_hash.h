// The cheap per-replay check of long_run_test: an order-independent 64-bit
// hash of the defined region of what one replay wrote (metadata fields of
// destination 0, nsa_cu_seqlens_k of destination 1, page-table columns below
// each row's length, and the gathered rows below sum L). The same code runs on
// the device (long_run_test_kernels.cu, every replay) and on the host (the
// expected value of each pre-generated input set).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NSA_HD __host__ __device__
#else
#define NSA_HD
#endif

namespace nsa {
namespace test {

struct LongRunView {
  int64_t bs = 0, q = 1, rows = 0;  // requests, query rows per request, R = bs * q
  int64_t pt_cols = 0, pt_ld = 0, rt_ld = 0, page_size = 64;
  const int32_t *cache = nullptr, *cu = nullptr, *expanded = nullptr, *nsa = nullptr, *nsa_cu = nullptr;
  const int32_t *page_table = nullptr, *real = nullptr, *other_nsa_cu = nullptr;
  const uint32_t *out_k = nullptr, *out_s = nullptr;  // gathered rows as 32-bit words
};

// Sum of mix(key, value) over items: the order does not matter, so threads
// may add their parts in any order.
NSA_HD inline uint64_t long_run_mix(uint64_t field, uint64_t index, uint32_t value) {
  uint64_t x = ((field << 56) ^ (index << 20) ^ value) * 0x9E3779B97F4A7C15ull;
  x ^= x >> 31;
  return x * 0xBF58476D1CE4E5B9ull;
}

// Calls visit(field, index, value) for every item thread `tid` of `threads` owns.
template <class Visit>
NSA_HD void long_run_visit(const LongRunView& v, int64_t tid, int64_t threads, Visit&& visit) {
  for (int64_t i = tid; i < v.bs; i += threads) visit(1, i, static_cast<uint32_t>(v.cache[i]));
  for (int64_t i = tid; i <= v.bs; i += threads) visit(2, i, static_cast<uint32_t>(v.cu[i]));
  for (int64_t i = tid; i < v.rows; i += threads) {
    visit(3, i, static_cast<uint32_t>(v.expanded[i]));
    visit(4, i, static_cast<uint32_t>(v.nsa[i]));
  }
  for (int64_t i = tid; i <= v.rows; i += threads) {
    visit(5, i, static_cast<uint32_t>(v.nsa_cu[i]));
    visit(6, i, static_cast<uint32_t>(v.other_nsa_cu[i]));
  }
  for (int64_t i = tid; i < v.rows * v.pt_cols; i += threads) {  // columns below the row's length only
    const int64_t r = i / v.pt_cols, c = i % v.pt_cols, len = v.cache[r / v.q];
    if (c < len) visit(7, i, static_cast<uint32_t>(v.page_table[r * v.pt_ld + c]));
    if (c * v.page_size < len) visit(8, i, static_cast<uint32_t>(v.real[r * v.rt_ld + c]));
  }
  const int64_t total = v.cu[v.bs];  // gathered rows
  for (int64_t i = tid; i < total; i += threads) visit(9, i, v.out_s[i]);
  for (int64_t i = tid; i < total * 32; i += threads) visit(10, i, v.out_k[i]);
}

}  // namespace test
}  // namespace nsa
