// Item CTAs of build_metadata when every warp has one page-table item at
// most: no shared memory, no barrier, no chunk walk.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/cuda/metadata/build_flashmla.cuh"
#include "nsa/cuda/metadata/build_inputs.cuh"
#include "nsa/cuda/metadata/build_page_items.cuh"
#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/cuda/metadata/launch_shape.cuh"

namespace nsa {
namespace kernels {

// Item CTAs of a one-pass launch: the launcher picks it when every item warp
// has one page-table item at most (batch * items_per_request <= item warps),
// the batch fits one chunk and the destinations fit a warp's lanes
// (kWarpTargets). Each warp then knows its item, its request and its rows
// from the kernel parameters alone, so it runs the two round trips (inputs
// and descriptors, then the item's columns) and stores, with no shared
// memory, no barrier and no chunk walk. A warp with no item and no FlashMLA
// element exits at once: at small sizes most warps have nothing to do, and
// their instructions would otherwise compete for issue slots with the warps
// on the critical path.
template <class Policy, bool kChecked>
__device__ __forceinline__ void build_items_one_pass(const BuildParams& p) {
  constexpr int64_t kCols = Policy::kColsPerItem;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int item_ctas = static_cast<int>(gridDim.x) - 1 - p.schedule_cta;  // CTA 0 and the schedule CTA hold no item
  const int block = static_cast<int>(blockIdx.x) - 1 - p.schedule_cta;     // item CTA number
  // Warp numbers interleave CTAs, as in the multi-pass path. The launcher
  // bounds the grid, so they and the item count fit 31 bits.
  const uint32_t my_warp = static_cast<uint32_t>((tid >> 5) * item_ctas + block);
  // Item my_warp belongs to request b; b >= batch means the warp has no item
  // (item < batch * ipr  <=>  item / ipr < batch).
  const uint32_t b = p.items_per_request_div.div(my_warp);
  const bool has_item = b < p.batch;  // warp-uniform
  const int64_t static_q = static_rows(p);

  if (has_item) {
    // ---- Round trip 1: the item's request and the descriptors. ----
    const RequestInputs r = load_request(p, b);
    const WarpTargets targets = WarpTargets::load(p.targets, p.num_targets, lane);
    // The item's first row: b * q, or in DRAFT_EXTEND the extend lengths
    // before request b, summed by the warp (b < kMetaThreads).
    const int64_t row0 = static_q > 0 ? static_cast<int64_t>(b) * static_q : extend_rows_before<kChecked>(p, b, lane);
    // ---- Round trip 2: the item's source columns, then its stores. ----
    const int64_t kv = static_cast<int32_t>(r.kv64);
    const int64_t c0 = static_cast<int64_t>(my_warp - b * static_cast<uint32_t>(p.items_per_request)) * kCols;
    // Columns are 32-bit from here on: 0 <= c0 < kv <= INT32_MAX.
    if (table_ok<kChecked>(p, r) && c0 < kv) {
      PageItem<Policy> it;
      load_page_item(it, p.req_to_token + r.rpi * p.req_to_token_ld, static_cast<uint32_t>(kv),
                     static_cast<uint32_t>(c0), lane);
      const int64_t q = static_q > 0 ? static_q : query_rows<kChecked>(p, r.q);
      store_page_item(p, targets, it, static_cast<uint32_t>(kv), static_cast<uint32_t>(c0), row0, q, lane);
    }
  }

  // FlashMLA elements: numbered from the last warp down, so the warps without
  // an item take them and the item warps' chain stays short (each thread
  // still gets every gthreads-th element; descriptors from the global table).
  // DRAFT_EXTEND's split counts are the scalars CTA's: R + 1 is only known
  // after the scan.
  const int64_t gthreads = static_cast<int64_t>(item_ctas) * kMetaThreads;
  const int64_t first = (static_cast<int64_t>(item_ctas) * kMetaWarps - 1 - my_warp) * 32 + lane;
  const int64_t known_rows = static_q > 0 ? p.batch * static_q : -1;  // R, if known before the scan
  if (p.flashmla_num_splits != nullptr) {
    for (int64_t e = first; e <= known_rows; e += gthreads)
      store_flashmla_split(p, p.targets, e, __ldg(p.flashmla_num_splits + e));
  }
  if (p.flashmla_metadata != nullptr) {
    for (int64_t e = first; e < p.flashmla_metadata_max; e += gthreads)
      store_flashmla_tile(p, p.targets, e, __ldg(p.flashmla_metadata + e));
  }
}

}  // namespace kernels
}  // namespace nsa
