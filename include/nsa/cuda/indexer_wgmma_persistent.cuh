// Persistent, warp-specialized variant of the sm_90a wgmma kernel of
// paged_mqa_logits (MqaLogitsKernel::kWgmmaPersistent, opt-in; kAuto keeps
// the kernel of nsa/cuda/indexer_wgmma.cuh). Same output, bit for bit: every
// token is loaded, scored (wg_scores: the same wgmma instructions and
// epilogue) and stored as there; only the schedule differs.
//
// Why. The wgmma kernel runs one CTA per (request, chunk): a CTA issues its
// chunk's loads, waits for the first tile, scores with no load of its own
// outstanding, and exits. Its probe (docs/performance.md) found a CTA's
// life to be mostly that first wait, and the two CTAs of an SM start and
// end together, so an SM alternates between waiting and scoring: the
// kernel reached about half the bandwidth of a gather of the same bytes.
// Here one warpgroup of each CTA only loads and two only score, through a
// ring of shared-memory stages with mbarriers, so loads stay in flight
// while tiles are scored, and a CTA's walk never restarts.
//
// Design, per CTA (one per SM): the consumers first (warpgroup-aligned,
// wgmma needs it), the producer after them.
//   * the work: the tiles (128 tokens) of every request with a visible
//     token, request-major (request b has ceil(load_end_b / 128) tiles,
//     load_end_b = what its last row sees); CTA c takes the contiguous range
//     [T c / G, T (c + 1) / G) of the T tiles (G CTAs), so every CTA has the
//     same number of tiles whatever the lengths, and a request's tiles are
//     consecutive in a CTA's walk (q is loaded once per request and CTA).
//     The range is found at the start: every thread sums the tiles of a
//     span of requests (their lengths, read once), one block scan;
//   * the producer: per tile, waits until its stage is free (`empty`),
//     writes the tile's descriptor and issues its loads and, at a request's
//     first tile, the request's q and weights into one of two buffers
//     (waiting until the request before the one before has been scored:
//     `qempty`). Two kinds, picked at the launch:
//       - TMA (ws_tma_supported: page sizes 8 .. 256, powers of two; see
//         nsa/cuda/indexer_tma.cuh): one warp, a tensor copy per page
//         segment of the tile and a bulk copy of its scales, per-token
//         copies where a segment ends past the visible length; lane 0 arms
//         `full` with the bytes, every lane arrives (release: its `ok` flags,
//         scales and weights). With one team of consumers the producer is a
//         warpgroup whose other three warps write the -inf tails at the start;
//       - cp.async (every other page size): two warpgroups at N <= 2, one at
//         N = 3, 4 (kWsProducerThreads), 16 bytes per copy (wg_load_tile);
//         each thread arms `full` twice: cp.async.mbarrier.arrive.noinc
//         (when its copies have landed) and a plain arrive (release); after
//         its last tile it writes the -inf columns past the tiles of
//         requests c, c + G, ...;
//   * the consumers, one team of two warpgroups (two teams with TMA in a
//     build with NSA_MQA_WS_TEAMS=2, scoring alternate tiles: kWsTeams):
//     per tile, wait on `full` (two teams: and on `qfull` for the
//     request's q), take the tile's descriptor (request, first token,
//     length, q buffer), score their 64 tokens (wg_scores) and release the
//     stage (one arrive per warp), and the q buffer when the descriptor says
//     so (WsTile::release). The warpgroups never wait for each other.
//   * the ring is as deep as shared memory allows (ws_stages: 12 tiles at
//     N = 1, 11, 10, 9 at N = 2, 3, 4; about 200 KB of K in flight per SM;
//     with two teams rounded down to even: kWsRing).
// No atomics, no inter-CTA communication, no allocation, a 1-D grid of
// one CTA per SM (never sized by a device length): bit-stable and capturable.
//
// Availability: that of the wgmma kernel (mqa_wgmma_available: compute 9.0
// and an sm_90a image of this translation unit; both kernels are compiled
// for the same targets), else cudaErrorNotSupported with nothing launched.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/cuda/indexer.cuh"
#include "nsa/cuda/indexer_tma.cuh"
#include "nsa/cuda/indexer_wgmma.cuh"
#include "nsa/cuda/shared_memory.cuh"
#include "nsa/indexer.h"

namespace nsa {
namespace kernels {

// Loading threads: two warpgroups where the registers allow it (N <= 2:
// 512 threads of at most 128 registers), else one. (One warpgroup at every
// N was 1.8x slower than kWgmma on an H100, about 1.9 us per tile whatever N:
// four warps could not keep a deep ring's copies in flight.)
// With TMA (Tma = true) one warp issues every copy: with one team of
// consumers the producer is one warpgroup, whose other three warps write the
// -inf tails at the start; with two, it is that warp alone.
// Teams of consumers (two warpgroups each, kWgThreads threads): one, or
// with TMA two when built with NSA_MQA_WS_TEAMS=2 (a build option for
// timing). Two teams score alternate tiles, so one team's tensor-core work
// overlaps the other's epilogue; measured on one H100 (docs/performance.md;
// bench graph replays, 64 x 32K) 214.1 us at N = 4 against 239.1 with one,
// 159.5 against 152.4 at N = 2, 143.5 against 142.0 at N = 1. That build had
// two races, found by review after the run and fixed since (an even ring, so
// that a stage's tiles all go to one team; q's bytes on a barrier of their
// own, qfull, that both teams wait for): the fixed build has not run on a
// GPU yet, so the library keeps one team. With -DNSA_EXPERIMENT_BUILDS=ON
// (scripts/build-for-gpu.sh sets it) paged_mqa_logits_teams2_test and
// paged_mqa_logits_teams2_bench run the op with two teams in the GPU check.
#ifndef NSA_MQA_WS_TEAMS
#define NSA_MQA_WS_TEAMS 1
#endif
static_assert(NSA_MQA_WS_TEAMS == 1 || NSA_MQA_WS_TEAMS == 2, "one or two teams of consumers");
template <int N, bool Tma>
constexpr int kWsTeams = Tma ? NSA_MQA_WS_TEAMS : 1;
template <int N, bool Tma = false>
constexpr int kWsProducerThreads = Tma      ? (kWsTeams<N, Tma> == 1 ? 128 : 32)
                                   : N <= 2 ? 256
                                            : 128;
template <int N, bool Tma = false>
constexpr int kWsConsumerThreads = kWsTeams<N, Tma>* kWgThreads;  // the first threads: warpgroup-aligned
template <int N, bool Tma = false>
constexpr int kWsThreads = kWsConsumerThreads<N, Tma> + kWsProducerThreads<N, Tma>;
constexpr int kWsConsumerWarps = kWgThreads / 32;  // arrivals (one team's warps) that free a stage
constexpr int kWsMaxWarps = 32;
constexpr size_t kWsSharedLimit = 227 * 1024;  // dynamic shared memory a compute 9.0 CTA may have

// What the consumers need of a tile besides its bytes.
struct WsTile {
  int64_t b, t0, L;  // request, first token, L_b
  int qbuf;          // q and weight buffer of the request
  int qphase;        // with two teams: the parity of qfull[qbuf]'s phase that loads this request's q
  // Arrivals on qempty[qbuf] per warp of the team that scores it: with one
  // team 1 at the request's last tile in this CTA's walk; with two, 1 at its
  // last and 1 at the one before (the other team's), 2 at a request's only
  // tile; else 0. A team scores its tiles in order, so its arrival says it
  // is done with the q buffer.
  int release;
};

template <int N, int S>
struct WsShared {
  uint8_t k[S][kWgTileTokens * kWgRowBytes];  // swizzled, 1024-aligned
  uint8_t q[2][N][kWgQRowBytes];              // swizzled, 1024-aligned
  float scale[S][kWgTileTokens];
  uint8_t ok[S][kWgTileTokens];  // the token's page is readable (and the token < L_b, width)
  float w[2][N][kIndexerHeads];  // the weights of q[u]'s rows, in wg_weight_slot order
  WsTile tile[S];
  uint64_t full[S], empty[S], qempty[2];
  uint64_t qfull[2];          // with two teams: q[u]'s bytes have landed (one team's full[] does not cover the other's)
  int64_t scan[kWsMaxWarps];  // the block scan's warp totals
  int64_t start_b, start_tile;  // where this CTA's walk starts
};

template <int N, int S>
constexpr size_t ws_shared_bytes_of() {
  return sizeof(WsShared<N, S>) + kWgAlign;
}

// The deepest ring that fits: 12 / 11 / 10 / 9 stages at N = 1 / 2 / 3 / 4.
template <int N, int S = 16>
constexpr int ws_stages() {
  if constexpr (S <= 2 || ws_shared_bytes_of<N, S>() <= kWsSharedLimit) return S;
  else return ws_stages<N, S - 1>();
}
template <int N>
constexpr int kWsStages = ws_stages<N>();  // (a variable: device code reads it)
static_assert(ws_stages<4>() >= 8, "the ring must stay deep at N = 4");
// The ring of an instance: with two teams an even number of stages, so that
// every tile of a stage goes to the same team (with an odd ring, tile k and
// tile k - S of one stage belong to different teams, and a team could wait
// for tile k's phase of `full` before tile k - S's had completed, which
// mbarrier parity waits cannot tell apart).
template <int N, bool Tma>
constexpr int kWsRing = kWsTeams<N, Tma> == 2 ? (kWsStages<N> & ~1) : kWsStages<N>;
template <int N, bool Tma>
constexpr size_t ws_shared_bytes() {
  return ws_shared_bytes_of<N, kWsRing<N, Tma>>();
}

// Tiles of request b: those up to what its last row sees.
template <int N>
__device__ __forceinline__ int64_t ws_request_tiles(const PagedMqaLogitsArgs& a, int64_t b, int64_t& L) {
  L = mqa_index(a.context_lens, b);
  const int64_t load_end = detail::indexer_row_len(L, N, N - 1, a.width);
  return (load_end + kWgTileTokens - 1) / kWgTileTokens;
}

#if defined(NSA_MQA_WGMMA)
__device__ __forceinline__ uint32_t ws_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ws_init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(ws_addr(bar)), "r"(count) : "memory");
}
// A plain arrive: release, so this thread's earlier shared-memory writes are
// seen by whoever waits for the phase.
__device__ __forceinline__ void ws_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(ws_addr(bar)) : "memory");
}
// An arrive that happens when every cp.async this thread issued so far has landed.
__device__ __forceinline__ void ws_arrive_on_copies(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(ws_addr(bar)) : "memory");
}
// Waits until the phase of parity `parity` of bar has completed (acquire).
__device__ __forceinline__ void ws_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = ws_addr(bar);
  uint32_t done = 0;
  do {
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(addr), "r"(parity)
                 : "memory");
  } while (done == 0);
}

// Exclusive prefix of v over the CTA's Warps warps (total in `total`).
template <int Warps>
__device__ __forceinline__ int64_t ws_block_scan(int64_t v, int64_t (&warp_totals)[kWsMaxWarps], int64_t& total) {
  static_assert(Warps <= kWsMaxWarps, "one total per warp");
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  int64_t incl = v;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int64_t x = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += x;
  }
  if (lane == 31) warp_totals[warp] = incl;
  __syncthreads();
  int64_t before = 0;
  total = 0;
#pragma unroll
  for (int i = 0; i < Warps; ++i) {
    before += i < warp ? warp_totals[i] : 0;
    total += warp_totals[i];
  }
  return before + incl - v;
}

// The TMA producer's window of page-table entries: lane l holds the entry of
// page column col0 + l of request b (-1 past table_cols), and the next 32
// columns' in `next`, loaded a window ahead, so a tile's entries are
// shuffles, not a global round trip per tile (one tile at a time, the
// producer would wait for each). Tiles are 128-token aligned and a window
// 32 columns, so a tile's columns never straddle two windows.
struct WsTableWindow {
  int64_t b = -1, col0 = 0;
  int64_t cur = -1, next = -1;
};

#if defined(NSA_MQA_WGMMA)
__device__ __forceinline__ int64_t ws_table_entry(const PagedMqaLogitsArgs& a, int64_t b, int64_t col) {
  return col < a.table_cols ? mqa_index(a.page_table, b * a.table_ld + col) : -1;
}

// The window holding page column `col` of request b.
__device__ __forceinline__ void ws_window_move(WsTableWindow& w, const PagedMqaLogitsArgs& a, int64_t b, int64_t col,
                                               int lane) {
  const int64_t col0 = col & ~int64_t{31};
  if (w.b == b && w.col0 == col0) return;
  if (w.b == b && w.col0 + 32 == col0) {
    w.cur = w.next;
  } else {
    w.b = b;
    w.cur = ws_table_entry(a, b, col0 + lane);
  }
  w.col0 = col0;
  w.next = ws_table_entry(a, b, col0 + 32 + lane);
}
#endif

// The TMA producer's load of one tile (tokens [t0, t0 + 128) of request b)
// into stage s, and at a request's first tile in the walk (load_q) its q and
// weights into buffer qbuf (q's bytes complete on qbar: full[s] with one
// team, qfull[qbuf] with two): one warp, lane `lane`. Lane g < segments reads
// the page of the tile's segment g (min(P, 128) tokens); a segment whose
// tokens are all visible is one k_page copy and one bulk copy of its scales,
// a partial one a k_token copy and a plain scale load per visible token;
// tokens past load_end, past table_cols or on unreadable pages are not read
// (their `ok` is 0). Every lane writes its flags, scales and weights, then
// lane 0 arrives on full[s] with the transaction bytes of every copy, the
// copies are issued, and the other lanes arrive (release: full[s] counts 32).
template <int N, int S>
__device__ __forceinline__ void ws_tma_load_tile(WsShared<N, S>& sm, int s, const PagedMqaLogitsArgs& a,
                                                 const WsTmaMaps& maps, WsTableWindow& window, int64_t b, int64_t t0,
                                                 int64_t load_end, bool load_q, int qbuf, uint64_t* qbar, int lane) {
  constexpr unsigned kAll = 0xffffffffu;
  const int segment_shift = maps.segment_shift, segment = 1 << segment_shift;
  const int segments = kWgTileTokens >> segment_shift;  // 1 .. 16
  const int64_t page_bytes = a.page_size * (kIndexerHeadDim + 4);
  const bool q_on_full = qbar == &sm.full[s];  // one team: q's bytes count on the tile's barrier
  const int64_t seg0 = t0 + (static_cast<int64_t>(lane) << segment_shift);
  int64_t page = -1;  // a readable page with `visible` > 0 tokens of the segment, else -1
  int visible = 0;
  ws_window_move(window, a, b, t0 >> maps.page_shift, lane);
  const int64_t col = seg0 >> maps.page_shift;
  const int64_t entry = __shfl_sync(kAll, window.cur, static_cast<int>(col - window.col0) & 31);
  if (lane < segments && seg0 < load_end && col < a.table_cols && detail::indexer_page_ok(entry, a.cache.num_pages)) {
    page = entry;
    visible = load_end - seg0 < segment ? static_cast<int>(load_end - seg0) : segment;
  }
  const bool whole = visible == segment;
  uint32_t bytes = whole ? static_cast<uint32_t>(segment) * (kIndexerHeadDim + 4) : 0;
  int64_t token_page[4];  // the page of token lane + 32 i when it is one k_token copy, else -1
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int tok = lane + 32 * i, g = tok >> segment_shift;
    const int64_t pg = __shfl_sync(kAll, page, g);
    const int vis = __shfl_sync(kAll, visible, g);
    const bool ok = pg >= 0 && (tok & (segment - 1)) < vis;
    sm.ok[s][tok] = ok ? 1 : 0;
    token_page[i] = -1;
    if (ok && vis < segment) {
      const int64_t off = (t0 + tok) & (a.page_size - 1);
      const float* scales =
          reinterpret_cast<const float*>(a.cache.data + pg * page_bytes + a.page_size * kIndexerHeadDim);
      sm.scale[s][tok] = __ldg(scales + off);
      token_page[i] = pg;
      bytes += kWgRowBytes;
    }
  }
  if (load_q) {
    for (int idx = lane; idx < N * kIndexerHeads; idx += 32)
      sm.w[qbuf][idx / kIndexerHeads][wg_weight_slot(idx % kIndexerHeads)] =
          __ldg(a.weights + b * N * kIndexerHeads + idx);
    if (lane == 0 && q_on_full) bytes += N * kWgQRowBytes;
  }
  bytes = __reduce_add_sync(kAll, bytes);
  if (lane == 0) {
    if (load_q && !q_on_full) tma_arrive_expect(qbar, N * kWgQRowBytes);
    tma_arrive_expect(&sm.full[s], bytes);
  }
  // This lane's generic writes of the stage's scales (a partial segment's,
  // S tiles ago) before the bulk copies into the same slots (async proxy).
  wg_fence_proxy_async();
  __syncwarp();
  if (whole) {
    const int y = static_cast<int>(seg0 & (a.page_size - 1));
    tma_load_3d(&sm.k[s][(lane << segment_shift) * kWgRowBytes], &maps.k_page, 0, y, static_cast<int>(page),
                &sm.full[s]);
    tma_load_bulk(&sm.scale[s][lane << segment_shift],
                  a.cache.data + page * page_bytes + a.page_size * kIndexerHeadDim + y * 4,
                  static_cast<uint32_t>(segment) * 4, &sm.full[s]);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (token_page[i] < 0) continue;
    const int tok = lane + 32 * i;
    const int y = static_cast<int>((t0 + tok) & (a.page_size - 1));
    tma_load_3d(&sm.k[s][tok * kWgRowBytes], &maps.k_token, 0, y, static_cast<int>(token_page[i]), &sm.full[s]);
  }
  if (load_q) {
    for (int r = lane; r < N * kIndexerHeads; r += 32) {
      const int j = r / kIndexerHeads, n = r % kIndexerHeads;
      const int64_t row = (b * N + j) * kIndexerHeads + wg_head_of_column(n);
      tma_load_2d(&sm.q[qbuf][j][n * kWgRowBytes], &maps.q, 0, static_cast<int>(row), qbar);
    }
  }
  if (lane != 0) ws_arrive(&sm.full[s]);
}
#endif

// The columns past the tiles of requests blockIdx.x, + gridDim.x, ...:
// -inf (wg_store_tail's rows), by `threads` threads (this one: `t`).
template <int N>
__device__ __forceinline__ void ws_store_tails(const PagedMqaLogitsArgs& a, int t, int threads) {
  const float ninf = -__int_as_float(0x7f800000);
  int64_t L = 0;
  for (int64_t b = blockIdx.x; b < a.batch; b += gridDim.x) {
    const int64_t tail = ws_request_tiles<N>(a, b, L) * kWgTileTokens;
    for (int j = 0; j < N; ++j) {
      float* row = a.logits + (b * N + j) * a.logits_ld;
      for (int64_t c = tail + t; c < a.width; c += threads) row[c] = ninf;
    }
  }
}

// Tma: the TMA producer (ws_tma_load_tile, `maps`); else cp.async
// (wg_load_tile; `maps` unused).
template <int N, bool Tma>
__global__ void __launch_bounds__(kWsThreads<N, Tma>, 1)
    paged_mqa_logits_wgmma_persistent_kernel(const PagedMqaLogitsArgs a, const __grid_constant__ WsTmaMaps maps) {
#if defined(NSA_MQA_WGMMA)
  constexpr int S = kWsRing<N, Tma>;
  constexpr int P = kWsProducerThreads<N, Tma>, C = kWsConsumerThreads<N, Tma>, Threads = kWsThreads<N, Tma>;
  constexpr int Teams = kWsTeams<N, Tma>;
  extern __shared__ __align__(1024) uint8_t wg_smem[];  // (the wgmma kernel's declaration: one symbol)
  WsShared<N, S>& sm = wg_shared<WsShared<N, S>>(wg_smem);
  const int tid = static_cast<int>(threadIdx.x);

  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      // cp.async: a copies arrive and a plain one per producer thread; TMA: one per lane.
      ws_init(&sm.full[s], Tma ? 32 : 2 * P);
      ws_init(&sm.empty[s], kWsConsumerWarps);
    }
    ws_init(&sm.qempty[0], kWsConsumerWarps * Teams);
    ws_init(&sm.qempty[1], kWsConsumerWarps * Teams);
    if constexpr (Teams == 2) {
      ws_init(&sm.qfull[0], 1);  // the producer's lane 0, with q's bytes
      ws_init(&sm.qfull[1], 1);
    }
    if constexpr (Tma) {
      // The initialized barriers, seen by the async proxy (the copies' complete_tx).
      asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
      tma_prefetch_map(&maps.k_page);
      tma_prefetch_map(&maps.k_token);
      tma_prefetch_map(&maps.q);
    }
  }

  // This CTA's tiles: [T c / G, T (c + 1) / G) of the T tiles of all requests.
  const int64_t span = (a.batch + Threads - 1) / Threads;
  const int64_t lo = tid * span < a.batch ? tid * span : a.batch;
  const int64_t hi = lo + span < a.batch ? lo + span : a.batch;
  int64_t mine = 0, L = 0;
#pragma unroll 4
  for (int64_t b = lo; b < hi; ++b) mine += ws_request_tiles<N>(a, b, L);
  int64_t total = 0;
  const int64_t before = ws_block_scan<Threads / 32>(mine, sm.scan, total);
  const int64_t first = total * blockIdx.x / gridDim.x, end = total * (blockIdx.x + 1) / gridDim.x;
  if (first < end && before <= first && first < before + mine) {  // this thread's span holds the first tile
    int64_t at = before;
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t t = ws_request_tiles<N>(a, b, L);
      if (first < at + t) {
        sm.start_b = b;
        sm.start_tile = first - at;
        break;
      }
      at += t;
    }
  }
  __syncthreads();  // the barriers' init and the start are seen by all
  const int64_t count = end - first;

  if (tid >= C) {
    // The producer (with TMA: its first warp; with one team, warps 1-3 write the tails).
    const int ptid = tid - C;
    if (Tma && Teams == 1 && ptid >= 32) {
      ws_store_tails<N>(a, ptid - 32, P - 32);
      return;
    }
    if (count > 0) {
      int64_t b = sm.start_b, i = sm.start_tile;
      int64_t tiles = ws_request_tiles<N>(a, b, L);
      int seg = 0;  // requests started in this walk
      int s = 0;
      uint32_t phase = 0;
      bool first_tile = true;  // the request's first tile in this walk: its q and weights
      WsTableWindow window;    // (TMA)
      for (int64_t k = 0; k < count; ++k) {
        if (k >= S) ws_wait(&sm.empty[s], phase ^ 1);  // the tile S before this one has been scored
        const int qbuf = seg & 1;
        if (first_tile && seg >= 2) ws_wait(&sm.qempty[qbuf], ((seg >> 1) - 1) & 1);
        const int64_t t0 = i * kWgTileTokens;
        const bool last = i + 1 == tiles || k + 1 == count;
        const bool next_last = !last && (i + 2 == tiles || k + 2 == count);
        const int release = Teams == 1 ? (last ? 1 : 0) : last ? (first_tile ? 2 : 1) : next_last ? 1 : 0;
        if (ptid == 0) sm.tile[s] = WsTile{b, t0, L, qbuf, (seg >> 1) & 1, release};
        const int64_t load_end = detail::indexer_row_len(L, N, N - 1, a.width);
        if constexpr (Tma) {
          ws_tma_load_tile(sm, s, a, maps, window, b, t0, load_end, first_tile, qbuf,
                           Teams == 2 ? &sm.qfull[qbuf] : &sm.full[s], ptid);
        } else {
          if (first_tile) {
            wg_load_q<N, P>(sm.q[qbuf], a, b, ptid);
            wg_load_weights<N, P>(sm.w[qbuf], a, b, ptid);
          }
          wg_load_tile<P>(sm, s, a, b, t0, load_end, ptid);
          ws_arrive_on_copies(&sm.full[s]);
          ws_arrive(&sm.full[s]);
        }
        if (++s == S) s = 0, phase ^= 1;
        first_tile = last;
        if (last) {
          ++seg;
          i = 0;
          if (k + 1 < count) {
            do tiles = ws_request_tiles<N>(a, ++b, L);
            while (tiles == 0);
          }
        } else {
          ++i;
        }
      }
    }
    if (Tma && Teams == 1) return;
    if constexpr (!Tma) asm volatile("cp.async.wait_all;\n" ::: "memory");
    ws_store_tails<N>(a, ptid, P);
  } else {
    // The consumers: team `team` scores tiles team, team + Teams, ...
    const int team = tid / kWgThreads, ttid = tid % kWgThreads, lane = tid & 31;
    int s = team;
    uint32_t phase = 0;
    for (int64_t k = team; k < count; k += Teams) {
      ws_wait(&sm.full[s], phase);
      // cp.async: the landed copies, seen by this thread, to wgmma's operand
      // reads (TMA writes through the async proxy already).
      if constexpr (!Tma) wg_fence_proxy_async();
      const WsTile tile = sm.tile[s];
      // Two teams: the request's q may have come with the other team's tile.
      if constexpr (Teams == 2) ws_wait(&sm.qfull[tile.qbuf], static_cast<uint32_t>(tile.qphase));
      WgItem it;
      it.b = tile.b;
      it.c0 = tile.t0;
      it.c1 = tile.t0 + kWgTileTokens < a.width ? tile.t0 + kWgTileTokens : a.width;
      it.L = tile.L;
      it.load_end = 0;  // not read by wg_scores
      it.tiles = 1;
      wg_scores<N>(sm, sm.q[tile.qbuf], sm.w[tile.qbuf], a, it, tile.t0, s, ttid);
      __syncwarp();
      if (lane == 0) {
        ws_arrive(&sm.empty[s]);
        for (int r = 0; r < tile.release; ++r) ws_arrive(&sm.qempty[tile.qbuf]);
      }
      s += Teams;
      if (s >= S) s -= S, phase ^= 1;
    }
  }
#elif defined(__CUDA_ARCH__)
  // Not an sm_90a image: the host never launches it (mqa_wgmma_available).
  __trap();
#endif
}

template <int N, bool Tma>
inline cudaError_t wg_persistent_launch_instance(const PagedMqaLogitsArgs& a, const WsTmaMaps& maps,
                                                 cudaStream_t stream) {
  constexpr auto kKernel = paged_mqa_logits_wgmma_persistent_kernel<N, Tma>;
  constexpr size_t bytes = ws_shared_bytes<N, Tma>();
  // The instance launched here must be an sm_90a image (mqa_wgmma_available).
  cudaError_t e = mqa_wgmma_available<kKernel>();
  if (e != cudaSuccess) return e;
  e = allow_dynamic_shared_memory<kKernel>(bytes);
  if (e != cudaSuccess) return e;
  int64_t resident = 0;
  e = wg_resident_ctas<kKernel, kWsThreads<N, Tma>>(bytes, resident);
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(resident));
  kKernel<<<grid, kWsThreads<N, Tma>, bytes, stream>>>(a, maps);
  return cudaGetLastError();
}

// The TMA producer where ws_tma_supported(a) and the driver has the map
// encoder, else cp.async (the same logits either way).
template <int N>
inline cudaError_t wg_persistent_launch(const PagedMqaLogitsArgs& a, cudaStream_t stream) {
  WsTmaMaps maps{};
  if (!ws_tma_supported(a)) return wg_persistent_launch_instance<N, false>(a, maps, stream);
  const cudaError_t e = ws_make_tma_maps(a, maps);
  if (e == cudaErrorNotSupported) return wg_persistent_launch_instance<N, false>(a, WsTmaMaps{}, stream);
  return e == cudaSuccess ? wg_persistent_launch_instance<N, true>(a, maps, stream) : e;
}

// The persistent wgmma launch on `stream` (arguments as
// invoke_paged_mqa_logits: validated by the public API).
// cudaErrorNotSupported, nothing launched, where mqa_wgmma_available() says so.
inline cudaError_t invoke_paged_mqa_logits_wgmma_persistent(const PagedMqaLogitsArgs& a, cudaStream_t stream) {
  const cudaError_t avail = mqa_wgmma_available();
  if (avail != cudaSuccess) return avail;
  if (a.batch <= 0 || a.width <= 0) return cudaSuccess;
  return mqa_for_next_n(a.next_n, [&](auto n) { return wg_persistent_launch<decltype(n)::value>(a, stream); });
}

}  // namespace kernels
}  // namespace nsa
