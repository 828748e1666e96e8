// Which page-table items of a chunk each warp of build_items_chunked stores.
//
// Items are numbered densely per chunk: item r is columns [c * cols_per_item,
// (c + 1) * cols_per_item) of request b = r / per_request, c = r % per_request,
// where per_request = ceil(the chunk's longest row / cols_per_item) comes from
// the lengths themselves, not from the host bound max_kv. (With max_kv from
// the buffer widths, e.g. SGLang's 163,844-column graph tables, most numbers
// of a static numbering are past every row's end.)
//
// Each item CTA takes a contiguous range of the numbers, and its warps take
// every kMetaWarps-th item of that range: the warps of one SM then work on
// the same few rows (source and destination pages), not on rows far apart.
//
// Host and device code: tests enumerate the items on the host.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nsa {
namespace kernels {

struct ChunkItem {
  int64_t rel;  // item number within the chunk (== end: none)
  int64_t b;    // request within the chunk
  int64_t c0;   // first column
};

// kStep: warps per CTA.
template <int kStep>
struct ChunkItems {
  int64_t per_request = 0;  // items per request
  int64_t end = 0;          // one past the CTA's last item
  int64_t first = 0;        // the warp's first item
  int64_t cols_per_item = 0;
  // Chunk 0 only: item (b, c) with b * early_per_request + c < early_items
  // was stored before the walk (each warp's first item, numbered statically).
  int64_t early_per_request = 0, early_items = 0;

  // longest: the chunk's longest row (columns to copy); count: its requests.
  __host__ __device__ static ChunkItems make(uint32_t longest, int count, int64_t cols_per_item, int64_t ctas,
                                             int64_t cta, int warp) {
    ChunkItems it;
    it.cols_per_item = cols_per_item;
    it.per_request = (static_cast<int64_t>(longest) + cols_per_item - 1) / cols_per_item;
    const int64_t items = count * it.per_request;
    const int64_t per_cta = (items + ctas - 1) / ctas;
    const int64_t begin = cta * per_cta;
    it.end = begin + per_cta < items ? begin + per_cta : items;
    it.first = begin + warp;
    return it;
  }

  // The first item at or after `rel` (in steps of kStep) that has columns
  // to copy and was not stored early; cols[b] is request b's row length.
  template <class Cols>
  __host__ __device__ __forceinline__ ChunkItem live(int64_t rel, const Cols& cols) const {
    while (rel < end) {
      // 32-bit division while the numbers fit (a 64-bit one is a call of dozens of instructions).
      const int64_t b = end <= INT32_MAX
                            ? static_cast<int64_t>(static_cast<uint32_t>(rel) / static_cast<uint32_t>(per_request))
                            : rel / per_request;
      const int64_t c = rel - b * per_request;
      const int64_t c0 = c * cols_per_item;
      if (c0 >= static_cast<int64_t>(cols[b])) {
        // Past the row's end: on to this warp's first item of request b + 1.
        rel += ((b + 1) * per_request - rel + kStep - 1) / kStep * kStep;
        continue;
      }
      if (b * early_per_request + c < early_items) {
        rel += kStep;
        continue;
      }
      return ChunkItem{rel, b, c0};
    }
    return ChunkItem{end, 0, 0};
  }
};

}  // namespace kernels
}  // namespace nsa
