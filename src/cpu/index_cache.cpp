// CPU backend of the index-cache ops: memcpy-sized copies of whole page runs,
// split over threads. Quantization uses the same header-only math as the CUDA
// kernels (nsa/detail/quant.h), so both backends write the same bytes.
#include <algorithm>
#include <cstring>

#include "backends.h"
#include "common/dispatch.h"
#include "cpu/parallel.h"
#include "nsa/detail/quant.h"

namespace nsa {
namespace cpu {

using L = IndexCacheLayout;

void quantize_and_store_k(int threads, IndexCache cache, const uint16_t* k, int64_t n, int64_t k_ld,
                          const int64_t* slots, ScaleMode mode) {
  const bool ue8m0 = mode == ScaleMode::kUe8m0;
  parallel_for(n, threads, n * (256 + 132), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      const uint16_t* row = k + t * k_ld;
      float x[L::kHeadDim];
      float amax = 0.0f;
      for (int64_t d = 0; d < L::kHeadDim; ++d) {
        x[d] = detail::bf16_bits_to_float(row[d]);
        amax = std::max(amax, detail::finite_abs(x[d]));
      }
      const float s = detail::scale_from_amax(amax, ue8m0);
      const float inv = 1.0f / s;
      uint8_t* dst = cache.data + L::k_offset(slot);
      for (int64_t d = 0; d < L::kHeadDim; ++d) dst[d] = detail::quantize_e4m3(x[d], inv);
      std::memcpy(cache.data + L::scale_offset(slot), &s, sizeof s);
    }
  });
}

void store_k_and_s(int threads, IndexCache cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                   const int64_t* slots) {
  parallel_for(n, threads, n * 264, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t slot = slots[t];
      if (slot < 0) continue;
      std::memcpy(cache.data + L::k_offset(slot), k + t * k_ld, L::kHeadDim);
      std::memcpy(cache.data + L::scale_offset(slot), scale + t, sizeof(float));
    }
  });
}

namespace {

// Copies `tokens` (<= 64) consecutive tokens of `page` into rows starting at `row`.
inline void copy_page_run(ConstIndexCache cache, int64_t page, int64_t tokens, int64_t row, uint8_t* out_k,
                          float* out_s) {
  const uint8_t* src = cache.data + page * L::kBytesPerPage;
  if (out_k) std::memcpy(out_k + row * L::kHeadDim, src, static_cast<size_t>(tokens * L::kHeadDim));
  if (out_s) std::memcpy(out_s + row, src + L::kKBytesPerPage, static_cast<size_t>(tokens * L::kScaleBytes));
}

void gather_single(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k,
                   float* out_s) {
  const int64_t pages = (length + L::kPageSize - 1) / L::kPageSize;
  parallel_for(pages, threads, length * 264, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      copy_page_run(cache, page_ids.at(p), std::min(L::kPageSize, length - p * L::kPageSize), p * L::kPageSize,
                    out_k, out_s);
    }
  });
}

}  // namespace

void gather_k(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k) {
  gather_single(threads, cache, length, page_ids, out_k, nullptr);
}

void gather_s(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s) {
  gather_single(threads, cache, length, page_ids, nullptr, out_s);
}

void gather_k_and_s(int threads, ConstIndexCache cache, const PagedBatch& b, uint8_t* out_k, float* out_s) {
  const bool cu = static_cast<bool>(b.cu_seq_lens);
  auto length = [&](int64_t r) { return cu ? b.cu_seq_lens.at(r + 1) - b.cu_seq_lens.at(r) : b.seq_lens.at(r); };
  int64_t total_pages = 0, total_rows = 0;
  for (int64_t r = 0; r < b.batch_size; ++r) {
    total_rows += length(r);
    total_pages += (length(r) + L::kPageSize - 1) / L::kPageSize;
  }
  // Threads take contiguous ranges of the global page list; each walks the
  // requests once to find where its range starts (O(B), no scratch memory).
  parallel_for(total_pages, threads, total_rows * 264, [&](int64_t begin, int64_t end) {
    int64_t r = 0, page0 = 0, row0 = 0;  // first global page and row of request r
    for (;; ++r) {
      const int64_t pages = (length(r) + L::kPageSize - 1) / L::kPageSize;
      if (page0 + pages > begin) break;
      page0 += pages;
      row0 += length(r);
    }
    for (int64_t g = begin; g < end;) {
      const int64_t len = length(r);
      const int64_t pages = (len + L::kPageSize - 1) / L::kPageSize;
      for (int64_t p = g - page0; p < pages && g < end; ++p, ++g) {
        copy_page_run(cache, b.page_table.at(r * b.table_ld + p), std::min(L::kPageSize, len - p * L::kPageSize),
                      row0 + p * L::kPageSize, out_k, out_s);
      }
      page0 += pages;
      row0 += len;
      ++r;
    }
  });
}

}  // namespace cpu
}  // namespace nsa
