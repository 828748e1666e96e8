// CPU backend of the index-cache ops: memcpy-sized copies of whole page runs,
// split over threads. Quantization uses the same header-only math as the CUDA
// kernels (nsa/detail/quant.h), so both backends write the same bytes.
//
// Device-resident values (slots, page ids, lengths) are always validated here,
// in a pre-pass over the index arrays before the first write: one int compare
// per token or per page, next to 132 bytes moved per token.
#include <algorithm>
#include <cstring>
#include <string>

#include "backends.h"
#include "common/check.h"
#include "cpu/parallel.h"
#include "nsa/detail/quant.h"

namespace nsa {
namespace cpu {

using L = IndexCacheLayout;
using detail::ArgChecker;

namespace {

std::string range(int64_t lo, int64_t hi) { return "[" + std::to_string(lo) + ", " + std::to_string(hi) + ")"; }

// Slots at or past the pool's end (negative slots are padding, not errors).
void check_slots(const ArgChecker& c, const int64_t* slots, int64_t n, IndexCache cache) {
  const int64_t end = cache.num_pages * cache.page_size;
  for (int64_t t = 0; t < n; ++t) {
    if (slots[t] >= end)
      c.fail("slots", "slots < num_pages * page_size = " + std::to_string(end) + " (negative slots are skipped)",
             std::to_string(slots[t]) + " at token " + std::to_string(t));
  }
}

int64_t pages_of(int64_t length, int64_t page_size) { return (length + page_size - 1) / page_size; }

// The page ids a request of `length` tokens reads: ids[0, ceil(length/P)).
// Entries past them are never read and never checked (they may be stale).
// Returns the first out-of-range position, or -1.
int64_t find_bad_page(Indices ids, int64_t offset, int64_t length, ConstIndexCache cache) {
  const int64_t pages = pages_of(length, cache.page_size), num_pages = cache.num_pages;
  if (ids.type == IndexType::kInt32) {
    const int32_t* p = static_cast<const int32_t*>(ids.data) + offset;
    for (int64_t i = 0; i < pages; ++i)
      if (p[i] < 0 || p[i] >= num_pages) return i;
  } else {
    const int64_t* p = static_cast<const int64_t*>(ids.data) + offset;
    for (int64_t i = 0; i < pages; ++i)
      if (p[i] < 0 || p[i] >= num_pages) return i;
  }
  return -1;
}

void check_page_list(const ArgChecker& c, ConstIndexCache cache, int64_t length, Indices page_ids) {
  const int64_t bad = find_bad_page(page_ids, 0, length, cache);
  if (bad >= 0)
    c.fail("page_ids", "page ids in " + range(0, cache.num_pages),
           std::to_string(page_ids.at(bad)) + " at position " + std::to_string(bad));
}

// gather_k_and_s: lengths, their sum against the capacity, then the page ids
// each request reads, in that order (the lengths say which ids are read).
void check_batch(const ArgChecker& c, ConstIndexCache cache, const PagedBatch& b, int64_t out_capacity) {
  const int64_t max_len = cache.page_size * b.table_cols;
  const std::string allowed = "[0, page_size * table_cols] = [0, " + std::to_string(max_len) + "]";
  int64_t sum = 0;
  if (b.cu_seq_lens) {
    const Indices cu = b.cu_seq_lens;
    if (cu.at(0) != 0)
      c.fail("batch.cu_seq_lens", "cu_seq_lens[0] == 0", "cu_seq_lens[0] = " + std::to_string(cu.at(0)));
    for (int64_t r = 0; r < b.batch_size; ++r) {
      const int64_t lo = cu.at(r), hi = cu.at(r + 1);
      if (hi - lo < 0 || hi - lo > max_len)
        c.fail("batch.cu_seq_lens", "non-decreasing cumulative lengths with steps in " + allowed,
               "cu_seq_lens[" + std::to_string(r + 1) + "] - cu_seq_lens[" + std::to_string(r) +
                   "] = " + std::to_string(hi) + " - " + std::to_string(lo) + " at request " + std::to_string(r));
    }
    sum = cu.at(b.batch_size);
  } else {
    for (int64_t r = 0; r < b.batch_size; ++r) {
      const int64_t len = b.seq_lens.at(r);
      if (len < 0 || len > max_len)
        c.fail("batch.seq_lens", "lengths in " + allowed, std::to_string(len) + " at request " + std::to_string(r));
      sum += len;  // each term <= 64 * table_cols: no overflow for any table that fits in memory
    }
  }
  if (sum > out_capacity)
    c.fail("out_capacity", ">= the sum of the lengths = " + std::to_string(sum), std::to_string(out_capacity));
  for (int64_t r = 0; r < b.batch_size; ++r) {
    const int64_t len = b.cu_seq_lens ? b.cu_seq_lens.at(r + 1) - b.cu_seq_lens.at(r) : b.seq_lens.at(r);
    const int64_t bad = find_bad_page(b.page_table, r * b.table_ld, len, cache);
    if (bad >= 0)
      c.fail("batch.page_table", "page ids in " + range(0, cache.num_pages),
             std::to_string(b.page_table.at(r * b.table_ld + bad)) + " at request " + std::to_string(r) + ", column " +
                 std::to_string(bad));
  }
}

}  // namespace

namespace {

// Row t of K as fp32 (exact for every input type).
template <KDtype kDtype>
inline void load_row(const void* k, int64_t t, int64_t k_ld, float (&x)[L::kHeadDim]) {
  if constexpr (kDtype == KDtype::kFp32) {
    std::memcpy(x, static_cast<const float*>(k) + t * k_ld, sizeof x);
  } else {
    const uint16_t* row = static_cast<const uint16_t*>(k) + t * k_ld;
    for (int64_t d = 0; d < L::kHeadDim; ++d)
      x[d] = kDtype == KDtype::kBf16 ? detail::bf16_bits_to_float(row[d]) : detail::fp16_bits_to_float(row[d]);
  }
}

template <KDtype kDtype>
void quantize_rows(int threads, IndexCache cache, const void* k, int64_t n, int64_t k_ld, const int64_t* slots,
                   ScaleMode mode) {
  const bool ue8m0 = mode == ScaleMode::kUe8m0, divide = mode == ScaleMode::kFp32Divide;
  parallel_for(n, threads, n * (256 + 132), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      float x[L::kHeadDim];
      load_row<kDtype>(k, t, k_ld, x);
      float amax = 0.0f;
      for (float v : x) amax = std::max(amax, detail::finite_abs(v));
      const float s = detail::scale_from_amax(amax, ue8m0);
      const float inv = 1.0f / s;
      uint8_t* dst = cache.data + L::k_offset(slot, cache.page_size);
      if (divide) {
        for (int64_t d = 0; d < L::kHeadDim; ++d) dst[d] = detail::quantize_e4m3_divide(x[d], s);
      } else {
        for (int64_t d = 0; d < L::kHeadDim; ++d) dst[d] = detail::quantize_e4m3(x[d], inv);
      }
      std::memcpy(cache.data + L::scale_offset(slot, cache.page_size), &s, sizeof s);
    }
  });
}

}  // namespace

void quantize_and_store_k(int threads, IndexCache cache, const void* k, int64_t n, int64_t k_ld, const int64_t* slots,
                          ScaleMode mode, KDtype k_dtype) {
  check_slots(ArgChecker("quantize_and_store_k"), slots, n, cache);
  switch (k_dtype) {
    case KDtype::kBf16: return quantize_rows<KDtype::kBf16>(threads, cache, k, n, k_ld, slots, mode);
    case KDtype::kFp16: return quantize_rows<KDtype::kFp16>(threads, cache, k, n, k_ld, slots, mode);
    case KDtype::kFp32: return quantize_rows<KDtype::kFp32>(threads, cache, k, n, k_ld, slots, mode);
  }
}

void store_k_and_s(int threads, IndexCache cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                   const int64_t* slots) {
  check_slots(ArgChecker("store_k_and_s"), slots, n, cache);
  parallel_for(n, threads, n * 264, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      std::memcpy(cache.data + L::k_offset(slot, cache.page_size), k + t * k_ld, L::kHeadDim);
      std::memcpy(cache.data + L::scale_offset(slot, cache.page_size), scale + t, sizeof(float));
    }
  });
}

namespace {

// Copies `tokens` (<= page_size) consecutive tokens of `page` into rows starting at `row`.
inline void copy_page_run(ConstIndexCache cache, int64_t page, int64_t tokens, int64_t row, uint8_t* out_k,
                          float* out_s) {
  const uint8_t* src = cache.data + page * L::bytes_per_page(cache.page_size);
  if (out_k) std::memcpy(out_k + row * L::kHeadDim, src, static_cast<size_t>(tokens * L::kHeadDim));
  if (out_s)
    std::memcpy(out_s + row, src + L::k_bytes_per_page(cache.page_size), static_cast<size_t>(tokens * L::kScaleBytes));
}

void gather_single(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k, float* out_s) {
  const int64_t P = cache.page_size, pages = pages_of(length, P);
  parallel_for(pages, threads, length * 264, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      copy_page_run(cache, page_ids.at(p), std::min(P, length - p * P), p * P, out_k, out_s);
    }
  });
}

}  // namespace

void gather_k(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k) {
  check_page_list(ArgChecker("gather_k"), cache, length, page_ids);
  gather_single(threads, cache, length, page_ids, out_k, nullptr);
}

void gather_s(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s) {
  check_page_list(ArgChecker("gather_s"), cache, length, page_ids);
  gather_single(threads, cache, length, page_ids, nullptr, out_s);
}

void gather_k_and_s(int threads, ConstIndexCache cache, const PagedBatch& b, uint8_t* out_k, float* out_s,
                    int64_t out_capacity) {
  check_batch(ArgChecker("gather_k_and_s"), cache, b, out_capacity);
  const bool cu = static_cast<bool>(b.cu_seq_lens);
  auto length = [&](int64_t r) { return cu ? b.cu_seq_lens.at(r + 1) - b.cu_seq_lens.at(r) : b.seq_lens.at(r); };
  int64_t total_pages = 0, total_rows = 0;
  for (int64_t r = 0; r < b.batch_size; ++r) {
    total_rows += length(r);
    total_pages += pages_of(length(r), cache.page_size);
  }
  // Threads take contiguous ranges of the global page list; each walks the
  // requests once to find where its range starts (O(B), no scratch memory).
  parallel_for(total_pages, threads, total_rows * 264, [&](int64_t begin, int64_t end) {
    int64_t r = 0, page0 = 0, row0 = 0;  // first global page and row of request r
    for (;; ++r) {
      const int64_t pages = pages_of(length(r), cache.page_size);
      if (page0 + pages > begin) break;
      page0 += pages;
      row0 += length(r);
    }
    for (int64_t g = begin; g < end;) {
      const int64_t len = length(r);
      const int64_t P = cache.page_size, pages = pages_of(len, P);
      for (int64_t p = g - page0; p < pages && g < end; ++p, ++g) {
        copy_page_run(cache, b.page_table.at(r * b.table_ld + p), std::min(P, len - p * P), row0 + p * P, out_k, out_s);
      }
      page0 += pages;
      row0 += len;
      ++r;
    }
  });
}

}  // namespace cpu
}  // namespace nsa
