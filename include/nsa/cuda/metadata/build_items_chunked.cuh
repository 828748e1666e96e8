// Item CTAs of build_metadata in the general case: the batch is walked in
// chunks of kMetaThreads requests, and each warp takes every grid_warps-th
// page-table item of the chunk (after its first item, loaded early).
//
// Two numberings. Before any length is known, a warp's first item is item
// my_warp of the static numbering (b * ipr + c, ipr from the host bound
// max_kv: the table width). The walk numbers a chunk's items by its widest
// live row instead (b * ipr_c + c, ipr_c = the row's items): with graph
// buffers far wider than the rows (SGLang allocates 163,844 columns for any
// context), the static numbering would make every warp step over hundreds of
// dead items per live one; with the chunk's own, at most the spread of the
// lengths is dead, and the cost is one warp max and, when ipr_c differs from
// ipr, one 64-bit division per chunk to make its divisor.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/cuda/metadata/build_flashmla.cuh"
#include "nsa/cuda/metadata/build_inputs.cuh"
#include "nsa/cuda/metadata/build_page_items.cuh"
#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/cuda/metadata/launch_shape.cuh"
#include "nsa/cuda/metadata/targets.cuh"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

// Every item CTA (blockIdx.x >= 1 + schedule_cta) runs this when the one-pass
// path does not apply. Round trip 1 loads the chunk's inputs, this warp's
// first item's request, the descriptors and one FlashMLA element per thread;
// round trip 2 the first item's columns. Without a walk (every item was a
// first item) they are stored at once; with one, inside chunk 0's walk, after
// the warp's first walk load is issued. The walk scans the rows
// (DRAFT_EXTEND), and each warp loads its next item before it stores the
// current one.
template <class Policy, bool kChecked>
__device__ __forceinline__ void build_items_chunked(const BuildParams& p, BuildShared& s) {
  const int64_t block = static_cast<int64_t>(blockIdx.x) - 1 - p.schedule_cta;  // item CTA number

  // ---- Item CTAs 1 + schedule_cta .. gridDim.x - 1: page tables and FlashMLA copies. ----
  constexpr int64_t kCols = Policy::kColsPerItem;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int item_ctas = static_cast<int>(gridDim.x) - 1 - p.schedule_cta;  // CTA 0 and the schedule CTA hold no item
  const int64_t grid_warps = static_cast<int64_t>(item_ctas) * kMetaWarps;
  const int64_t my_warp = static_cast<int64_t>(tid >> 5) * item_ctas + block;
  const int64_t gtid = block * kMetaThreads + tid;
  const int64_t gthreads = static_cast<int64_t>(item_ctas) * kMetaThreads;
  const int64_t ipr = p.items_per_request;
  // Item number -> request: one multiply-high while the numbers fit 31 bits.
  const bool fast_ipr = ipr <= INT32_MAX;
  auto request_of = [&](int64_t item) {
    return fast_ipr && item <= INT32_MAX
               ? static_cast<int64_t>(p.items_per_request_div.div(static_cast<uint32_t>(item)))
               : item / ipr;
  };
  const int64_t static_q = static_rows(p);
  const int64_t known_rows = static_q > 0 ? p.batch * static_q : -1;  // R, if known before the scan

  // ---- Round trip 1: every load that depends on no device data. ----------
  const int count0 = static_cast<int>(p.batch < kMetaThreads ? p.batch : int64_t{kMetaThreads});
  RequestInputs mine;  // this thread's request of the current chunk
  // Loaded even by CTAs that will not walk the chunk: skipping it measured
  // slower at small batches (probably because these coalesced loads bring in
  // the lines that the warps' first-item loads below read).
  if (tid < count0) mine = load_request(p, tid);
  // This warp's first item is item my_warp (chunk 0 holds items [0, count0 * ipr)).
  const bool has_first = my_warp < count0 * ipr;
  RequestInputs first;
  const int64_t first_b = has_first ? request_of(my_warp) : 0;
  if (has_first) first = load_request(p, first_b);
  // The first item's first row: b * q in DECODE / TARGET_VERIFY; in
  // DRAFT_EXTEND the extend lengths before request b, summed by the warp in
  // this round trip (b < kMetaThreads), so no mode waits for the scan.
  const int64_t first_row0 = static_q > 0 ? first_b * static_q
                             : has_first  ? extend_rows_before<kChecked>(p, first_b, lane)
                                          : 0;
  // Destination descriptors, into registers now and into shared memory below.
  constexpr int kWords = static_cast<int>(sizeof(MetadataBuffers) / sizeof(long long));
  constexpr int kDescRegs = (kMaxSharedTargets * kWords + kMetaThreads - 1) / kMetaThreads;
  const bool shared_targets = p.num_targets <= kMaxSharedTargets;
  long long desc[kDescRegs];
#pragma unroll
  for (int k = 0; k < kDescRegs; ++k) {
    const int64_t w = tid + k * kMetaThreads;
    if (shared_targets && w < p.num_targets * kWords)
      desc[k] = __ldg(reinterpret_cast<const long long*>(p.targets) + w);
  }
  // One element of each FlashMLA array per thread (DRAFT_EXTEND's split
  // counts are the scalars CTA's: R + 1 is only known after the scan).
  const bool split0 = p.flashmla_num_splits != nullptr && gtid < known_rows + 1;
  const bool tile0 = p.flashmla_metadata != nullptr && gtid < p.flashmla_metadata_max;
  const int32_t split0_v = split0 ? __ldg(p.flashmla_num_splits + gtid) : 0;
  const int32_t tile0_v = tile0 ? __ldg(p.flashmla_metadata + gtid) : 0;

  // ---- Round trip 2: the first item's source columns. ---------------------
  PageItem<Policy> cur;
  const int64_t first_kv = static_cast<int32_t>(first.kv64);
  const int64_t first_c0 = (my_warp - first_b * ipr) * kCols;
  // Columns are 32-bit from here on: 0 <= c0 < kv <= INT32_MAX.
  const bool first_loaded = has_first && table_ok<kChecked>(p, first) && first_c0 < first_kv;
  if (first_loaded)
    load_page_item(cur, p.req_to_token + first.rpi * p.req_to_token_ld, static_cast<uint32_t>(first_kv),
                   static_cast<uint32_t>(first_c0), lane);

    // Descriptors become visible at the barrier; the stores below need them.
#pragma unroll
  for (int k = 0; k < kDescRegs; ++k) {
    const int64_t w = tid + k * kMetaThreads;
    if (shared_targets && w < p.num_targets * kWords) s.target_words[w] = desc[k];
  }
  const MetadataBuffers* targets = shared_targets ? s.targets() : p.targets;
  __syncthreads();
  // Every item was some warp's first item: one chunk, and no static number
  // reaches grid_warps. The test is the same for every CTA: the walk's
  // numbering may give any warp an item that is not a first item.
  const bool items_done = p.batch <= kMetaThreads && grid_warps >= p.batch * ipr;
  const int64_t first_q = first_loaded && static_q == 0 ? query_rows<kChecked>(p, first.q) : static_q;
  auto store_first = [&](const PageItem<Policy>& it) {
    store_page_item(p, TableTargets{targets}, it, static_cast<uint32_t>(first_kv), static_cast<uint32_t>(first_c0),
                    first_row0, first_q, lane);
  };
  // Without a walk the first item is stored now. With one, it is stored in
  // chunk 0's walk, once the warp's first walk item is in flight: storing it
  // here would make the chunk's barrier wait for its columns, and a walk item
  // of the same CTA would start its load a round trip later.
  bool first_pending = first_loaded && !items_done;
  if (first_loaded && items_done) store_first(cur);
  if (split0) store_flashmla_split(p, targets, gtid, split0_v);
  if (tile0) store_flashmla_tile(p, targets, gtid, tile0_v);

  int64_t row_base = 0;      // first query row of the chunk
  int64_t items_before = 0;  // walk items of the chunks before this one
  for (int64_t chunk = 0; !items_done && chunk < p.batch; chunk += kMetaThreads) {
    const int count = static_cast<int>(p.batch - chunk < kMetaThreads ? p.batch - chunk : int64_t{kMetaThreads});
    if (chunk != 0) mine = tid < count ? load_request(p, chunk + tid) : RequestInputs{};
    int64_t kv = 0, q = 0;
    bool ok = false;
    if (tid < count) {
      kv = static_cast<int32_t>(mine.kv64);
      q = query_rows<kChecked>(p, mine.q);
      ok = table_ok<kChecked>(p, mine);
    }
    // Row starts: b * q, or in DRAFT_EXTEND a scan of the extend lengths.
    uint32_t rows_before = static_cast<uint32_t>(tid * static_q);
    uint32_t rows_total = static_cast<uint32_t>(count * static_q);
    if (static_q == 0) {
      BuildScan before, total;
      BuildBlockScan(s.scan).ExclusiveScan(BuildScan{static_cast<uint32_t>(q), 0, 0}, before, BuildScan{0, 0, 0},
                                           BuildScanSum(), total);
      rows_before = before.rows;
      rows_total = total.rows;
    }
    s.row_start[tid] = rows_before;
    s.src_offset[tid] = mine.rpi * p.req_to_token_ld;
    // kv <= max_kv is a precondition (checked mode enforces it); the clamp
    // keeps an unchecked violation within the table width and ipr_c <= ipr,
    // which the walk's test for first items relies on.
    const uint32_t cols = ok && q > 0 && kv > 0 ? static_cast<uint32_t>(kv < p.max_kv ? kv : p.max_kv) : 0u;
    s.cols[tid] = cols;
    s.q[tid] = q;
    const uint32_t warp_max = __reduce_max_sync(0xffffffffu, cols);
    if (lane == 0) s.warp_max_cols[tid >> 5] = warp_max;
    __syncthreads();  // the items below read them
    uint32_t max_cols = 0;
#pragma unroll
    for (int w = 0; w < kMetaWarps; ++w) max_cols = max_cols > s.warp_max_cols[w] ? max_cols : s.warp_max_cols[w];

    // Page-table items of this chunk: ipr_c per request (its widest live row
    // decides), every grid_warps-th one for this warp (the round robin
    // continues across chunks). Item math is chunk-relative and 32-bit when it
    // fits: a 64-bit division costs dozens of instructions on the critical path.
    const int64_t ipr_c = (static_cast<int64_t>(max_cols) + kCols - 1) / kCols;  // <= ipr
    const int64_t items = count * ipr_c;
    const bool narrow = items <= INT32_MAX && grid_warps <= INT32_MAX;
    const FastDivisor ipr_c_div =
        ipr_c == ipr ? p.items_per_request_div : FastDivisor::make(static_cast<uint32_t>(ipr_c > 0 ? ipr_c : 1));
    struct Item {
      int64_t rel, b, c0;  // chunk-relative number, request within the chunk, first column
    };
    // The warp's first item at or after `rel` that is still to be stored (rel
    // == items: none): it has columns to copy and, in chunk 0, was not a
    // warp's first item (static number < grid_warps: that warp stores it).
    auto live = [&](int64_t rel) {
      while (rel < items) {
        const int64_t b = narrow ? static_cast<int64_t>(ipr_c_div.div(static_cast<uint32_t>(rel))) : rel / ipr_c;
        const int64_t c = rel - b * ipr_c;
        if (c * kCols < s.cols[b]) {
          if (chunk != 0 || b * ipr + c >= grid_warps) return Item{rel, b, c * kCols};
          rel += grid_warps;
          continue;
        }
        const int64_t skip = (b + 1) * ipr_c - rel + grid_warps - 1;  // to its first item of request b + 1
        rel += (narrow ? static_cast<int64_t>(static_cast<uint32_t>(skip) / static_cast<uint32_t>(grid_warps))
                       : skip / grid_warps) *
               grid_warps;
      }
      return Item{items, 0, 0};
    };
    auto load_item = [&](PageItem<Policy>& it, const Item& x) {
      load_page_item(it, p.req_to_token + s.src_offset[x.b], s.cols[x.b], static_cast<uint32_t>(x.c0), lane);
    };
    int64_t rel0 = (my_warp - items_before) % grid_warps;  // my_warp in chunk 0
    if (rel0 < 0) rel0 += grid_warps;
    Item x = live(rel0);
    if (first_pending) {  // chunk 0 only
      PageItem<Policy> next;
      if (x.rel < items) load_item(next, x);
      store_first(cur);
      cur = next;
      first_pending = false;
    } else if (x.rel < items) {
      load_item(cur, x);
    }
    while (x.rel < items) {
      const Item n = live(x.rel + grid_warps);
      PageItem<Policy> next;
      if (n.rel < items) load_item(next, n);  // in flight while `cur` is stored
      store_page_item(p, TableTargets{targets}, cur, s.cols[x.b], static_cast<uint32_t>(x.c0),
                      row_base + s.row_start[x.b], s.q[x.b], lane);
      cur = next;
      x = n;
    }
    row_base += rows_total;
    items_before += items;
    if (chunk + kMetaThreads < p.batch) __syncthreads();  // the next chunk reuses the shared arrays and scan storage
  }

  // FlashMLA elements past the first gthreads (DRAFT_EXTEND's split counts
  // are the scalars CTA's).
  if (p.flashmla_num_splits != nullptr && known_rows >= 0) {
    for (int64_t e = gtid + gthreads; e <= known_rows; e += gthreads)
      store_flashmla_split(p, targets, e, __ldg(p.flashmla_num_splits + e));
  }
  if (p.flashmla_metadata != nullptr) {
    for (int64_t e = gtid + gthreads; e < p.flashmla_metadata_max; e += gthreads)
      store_flashmla_tile(p, targets, e, __ldg(p.flashmla_metadata + e));
  }
}

}  // namespace kernels
}  // namespace nsa
