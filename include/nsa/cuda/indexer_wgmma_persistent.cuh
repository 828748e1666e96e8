// Persistent variant of the sm_90a wgmma kernel of paged_mqa_logits
// (MqaLogitsKernel::kWgmmaPersistent, opt-in; kAuto keeps the kernel of
// nsa/cuda/indexer_wgmma.cuh). Same output, bit for bit: the same work items,
// the same loads, the same wgmma instructions and epilogue (wg_scores,
// wg_store_tail); only the schedule differs.
//
// Why. The wgmma kernel runs one CTA per (request, 512-column chunk): a CTA
// issues its whole chunk's loads, then computes with no load outstanding and
// exits, so each SM alternates between a load burst and compute. Here the
// grid is one wave of resident CTAs (min(work items, SMs x CTAs per SM), the
// occupancy asked once per kernel instance and device) and each CTA walks
// items blockIdx.x, blockIdx.x + gridDim.x, ... (the wgmma kernel's order:
// item = b * chunks + chunk) through ONE cp.async pipeline: while tile i of
// the walk is computed, the following tiles (of this item or the next) are
// already in flight.
//
// Design, per CTA (256 threads, the wgmma kernel's roles):
//   * two walks over the CTA's items with tiles (WgWalk): the load walk
//     (tiles issued, kWgStages stages) and the compute walk (tiles
//     computed), the load walk at most kWgStages tiles and at most one item
//     ahead. Each walk reads L_b itself when it reaches an item (wg_item);
//     the load walk writes the -inf tail of every item it reaches (a chunk
//     with no visible token is all tail, and has no tile);
//   * each loaded tile is its own cp.async group, so "tile i has landed" is
//     "at most (tiles in flight - 1) groups pending": cp.async.wait_group
//     with that count (0 .. kWgStages - 1), 3 in the steady state as in the
//     wgmma kernel;
//   * q and weights: two buffers (q[2], w[2]), item u of the walk (counting
//     items with tiles only) uses buffer u % 2, loaded in the cp.async group
//     of the item's first tile. The load walk may start item u + 1 while
//     item u is computed, never item u + 2 (its buffer is item u's), so with
//     items of fewer than kWgStages tiles fewer tiles are in flight. Chosen
//     over a q slot per stage (4 x N x 8 KB: one CTA per SM from N = 2, and
//     q reloaded per tile) and over one q buffer (the pipeline drains at
//     every request change, which, with consecutive items gridDim.x apart,
//     is every item). Cost: N x 8 KB more shared memory, so N = 3, 4 fit one
//     CTA per SM instead of two (N = 1, 2 keep two);
//   * the weights go to shared memory with cp.async with q, as in the wgmma
//     kernel (the epilogue reads them from there), so no global load latency
//     sits at an item boundary.
// No atomics, no inter-CTA communication, no allocation, 1-D grid bounded by
// the device (never by a device length): bit-stable and capturable.
//
// Availability: that of the wgmma kernel (mqa_wgmma_available: compute 9.0
// and an sm_90a image of this translation unit; both kernels are compiled
// for the same targets), else cudaErrorNotSupported with nothing launched.
//
// Unverified: everything on a GPU (written without one): correctness on the
// device, speed, and whether the two-CTA / one-CTA occupancy is what the
// occupancy query reports. Untuned: the load walk reads the next item's L_b
// when it reaches it (a dependent global load in the top-up, once per item),
// and the stage count is the wgmma kernel's.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "nsa/cuda/indexer.cuh"
#include "nsa/cuda/indexer_wgmma.cuh"
#include "nsa/cuda/shared_memory.cuh"
#include "nsa/indexer.h"

namespace nsa {
namespace kernels {

// WgmmaShared with two q and weight buffers (item u of the walk uses u % 2).
template <int N>
struct WgmmaPersistentShared {
  uint8_t k[kWgStages][kWgTileTokens * kWgRowBytes];  // swizzled, 1024-aligned
  uint8_t q[2][N][kWgQRowBytes];                      // swizzled, 1024-aligned
  float scale[kWgStages][kWgTileTokens];
  uint8_t ok[kWgStages][kWgTileTokens];  // the token's page is readable (and the token < L_b, width)
  float w[2][N][kIndexerHeads];          // the weights of q[u % 2]'s rows (wg_weight_slot order)
};

template <int N>
constexpr size_t wg_persistent_shared_bytes() {
  return sizeof(WgmmaPersistentShared<N>) + kWgAlign;
}

// CTAs per SM that the shared memory allows on compute 9.0 (228 KB per SM,
// 1 KB of it reserved per CTA): 2 for N <= 2, 1 for N = 3, 4. The register
// bound follows (__launch_bounds__); the grid uses the occupancy query.
template <int N>
constexpr int wg_persistent_ctas_per_sm() {
  return 2 * (wg_persistent_shared_bytes<N>() + 1024) <= 228 * 1024 ? 2 : 1;
}

// Waits until at most `pending` (0 .. kWgStages - 1, the same in every
// thread) committed cp.async groups are in flight (the count is an
// immediate of the instruction).
__device__ __forceinline__ void wg_cp_async_wait_pending(int pending) {
  static_assert(kWgStages == 4, "one case per count 0 .. kWgStages - 1");
  switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
  }
}

// Where a walk over the CTA's work items (blockIdx.x, + gridDim.x, ...)
// stands: the item and its geometry, the item's next tile, and `live`, the
// item's ordinal among the walk's items that have a tile (its q and weight
// buffer is live % 2). item >= the item count: the walk is over.
struct WgWalk {
  int64_t item;
  WgItem it;
  int tile;
  int live;
};

// Moves w to the first item at or after w.item that has a tile. kWriteTails:
// writes the -inf tail of every item reached on the way, that one included
// (the load walk, which reaches each item once).
template <int N, bool kWriteTails>
__device__ __forceinline__ void wg_walk_to_tiles(WgWalk& w, const PagedMqaLogitsArgs& a, int64_t items,
                                                 int64_t ctas_per_request) {
  w.tile = 0;
  for (; w.item < items; w.item += gridDim.x) {
    w.it = wg_item<N>(a, w.item, ctas_per_request, detail::kIndexerCtaColumns);
    if constexpr (kWriteTails) wg_store_tail<N>(a, w.it);
    if (w.it.tiles > 0) return;
  }
}

// Moves w past the tile it stands on.
template <int N, bool kWriteTails>
__device__ __forceinline__ void wg_walk_next(WgWalk& w, const PagedMqaLogitsArgs& a, int64_t items,
                                             int64_t ctas_per_request) {
  if (++w.tile < w.it.tiles) return;
  w.item += gridDim.x;
  ++w.live;
  wg_walk_to_tiles<N, kWriteTails>(w, a, items, ctas_per_request);
}

template <int N>
__global__ void __launch_bounds__(kWgThreads, wg_persistent_ctas_per_sm<N>())
    paged_mqa_logits_wgmma_persistent_kernel(const PagedMqaLogitsArgs a, int64_t ctas_per_request) {
#if defined(NSA_MQA_WGMMA)
  extern __shared__ __align__(16) uint8_t wg_smem[];
  WgmmaPersistentShared<N>& sm = wg_shared<WgmmaPersistentShared<N>>(wg_smem);
  const int64_t items = a.batch * ctas_per_request;
  WgWalk load{blockIdx.x, {}, 0, 0};
  wg_walk_to_tiles<N, true>(load, a, items, ctas_per_request);
  WgWalk comp = load;
  int stage = 0;     // the compute walk's stage
  int inflight = 0;  // tiles loaded and not yet computed, one cp.async group each
  while (comp.item < items) {
    // Top up: a stage is free once its tile was computed (the last barrier
    // of that iteration); the next item's q buffer is free once the item
    // before the compute walk's is done.
    while (inflight < kWgStages && load.item < items && load.live <= comp.live + 1) {
      if (load.tile == 0) {
        wg_load_q(sm.q[load.live & 1], a, load.it.b);
        wg_load_weights(sm.w[load.live & 1], a, load.it.b);
      }
      const int s = stage + inflight < kWgStages ? stage + inflight : stage + inflight - kWgStages;
      wg_load_tile(sm, s, a, load.it.b, load.it.c0 + static_cast<int64_t>(load.tile) * kWgTileTokens, load.it.load_end);
      mqa_cp_async_commit();
      ++inflight;
      wg_walk_next<N, true>(load, a, items, ctas_per_request);
    }
    wg_cp_async_wait_pending(inflight - 1);  // the compute walk's tile (and its q, weights) have landed
    wg_fence_proxy_async();                  // ... visible to wgmma's operand reads
    __syncthreads();                         // ... everyone's
    const int buf = comp.live & 1;
    wg_scores<N>(sm, sm.q[buf], sm.w[buf], a, comp.it, comp.it.c0 + static_cast<int64_t>(comp.tile) * kWgTileTokens,
                 stage);
    __syncthreads();  // this stage and (after an item's last tile) its q and weight buffer are reused
    stage = stage + 1 < kWgStages ? stage + 1 : 0;
    --inflight;
    wg_walk_next<N, false>(comp, a, items, ctas_per_request);
  }
#elif defined(__CUDA_ARCH__)
  // Not an sm_90a image: the host never launches it (mqa_wgmma_available).
  __trap();
#endif
}

template <int N>
inline cudaError_t wg_persistent_launch(const PagedMqaLogitsArgs& a, int64_t ctas_per_request, cudaStream_t stream) {
  constexpr size_t bytes = wg_persistent_shared_bytes<N>();
  // The instance launched here must be an sm_90a image (mqa_wgmma_available).
  cudaError_t e = mqa_wgmma_available<paged_mqa_logits_wgmma_persistent_kernel<N>>();
  if (e != cudaSuccess) return e;
  e = allow_dynamic_shared_memory<paged_mqa_logits_wgmma_persistent_kernel<N>>(bytes);
  if (e != cudaSuccess) return e;
  int64_t resident = 0;
  e = wg_resident_ctas<paged_mqa_logits_wgmma_persistent_kernel<N>>(bytes, resident);
  if (e != cudaSuccess) return e;
  const int64_t items = a.batch * ctas_per_request;
  const dim3 grid(static_cast<unsigned>(items < resident ? items : resident));
  paged_mqa_logits_wgmma_persistent_kernel<N><<<grid, kWgThreads, bytes, stream>>>(a, ctas_per_request);
  return cudaGetLastError();
}

// The persistent wgmma launch on `stream` (arguments as
// invoke_paged_mqa_logits: validated by the public API).
// cudaErrorNotSupported, nothing launched, where mqa_wgmma_available() says so.
inline cudaError_t invoke_paged_mqa_logits_wgmma_persistent(const PagedMqaLogitsArgs& a, cudaStream_t stream) {
  const cudaError_t avail = mqa_wgmma_available();
  if (avail != cudaSuccess) return avail;
  if (a.batch <= 0 || a.width <= 0) return cudaSuccess;
  return mqa_for_next_n(a.next_n, [&](auto n) {
    return wg_persistent_launch<decltype(n)::value>(a, mqa_ctas_per_request(a), stream);
  });
}

}  // namespace kernels
}  // namespace nsa
