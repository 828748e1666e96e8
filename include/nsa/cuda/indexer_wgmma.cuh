// Hopper (sm_90a) kernel of paged_mqa_logits: the same output contract as
// nsa/cuda/indexer.cuh (masking, width / row stride, unreadable pages,
// head-sum order), with the tensor-core step on wgmma instead of mma.sync,
// whose issue rate limits that kernel (issue #17). MqaLogitsKernel::kAuto
// (the default) runs it on compute 9.0 devices with an sm_90a build;
// kWgmma names it.
//
// Design. A 1-D grid of one CTA per request and chunk of columns: by
// default 2 x or 1 x kIndexerCtaColumns (wg_default_chunk_columns, from the
// grid's size), or any multiple of kIndexerCtaColumns the caller asks for
// (PagedMqaLogitsArgs::wgmma_chunk_columns);
// 256 threads = 2 warpgroups:
//   * the q of the request's N rows (N x 64 heads x 128 B) and the chunk's K
//     tiles (128 tokens x 128 B) go to shared memory with cp.async, stored in
//     the 128-byte-swizzle layout of wgmma (row r's 16-byte chunk c at
//     r * 128 + ((c ^ (r % 8)) * 16), tiles 1024-byte aligned), a ring of
//     kWgStages = 4 stages, three tiles ahead of the one computed (a
//     512-column chunk is then in flight at once; a longer one refills each
//     stage after the wgmma that read it has completed, as the persistent
//     schedule does); tokens past the last row's length and
//     tokens of unreadable pages are never loaded;
//   * after the copies land: fence.proxy.async (cp.async writes are generic
//     proxy, wgmma reads through the async proxy), a CTA barrier, then
//     warpgroup u computes S^T = K (tokens [64u, 64u + 64) x 128) * Q_j^T
//     (128 x 64 heads) for every row j: tokens are wgmma's M and heads its
//     N, in passes of up to two rows (kWgRowsPerPass: registers): 4 x
//     wgmma.mma_async m64n128k32 e4m3 x e4m3 -> f32 for a pass of two rows
//     (both rows' q as one 128-head B, so K is read once per pair), 4 x
//     m64n64k32 for a pass of one, A and B both K-major from shared-memory
//     descriptors (SWIZZLE_128B, stride byte offset 1024 = 8 rows x 128 B,
//     k step 32 B = start address + 2), one commit group per pass;
//   * the accumulator of lane l of warp w holds tokens 16w + l / 4 and
//     16w + l / 4 + 8 and 16 columns; q's rows sit in shared memory in the
//     order wg_head_of_column, so the 16 columns of lane quad position c are
//     the heads of HEADSUM group c, paired as HEADSUM pairs them. ReLU, the
//     weight and the group sum are in-thread adds, the 4 groups meet in two
//     quad shuffles, in exactly the documented HEADSUM tree; times the
//     scale, -inf where the row cannot see the token, and stored from
//     registers: no shared-memory reduction and no barrier between the
//     wgmma and the store. (Heads as M, the first version, summed each
//     group over 8 lanes: 48 shuffles per thread per row and tile instead
//     of 4, and a shared-memory pass with two more barriers.)
// No atomics, no inter-CTA communication, no allocation: bit-stable.
// The loads (wg_load_tile, wg_load_q, wg_load_weights) and the wgmma step
// with its epilogue (wg_scores) are shared with the persistent schedule of
// nsa/cuda/indexer_wgmma_persistent.cuh, whose logits are this kernel's.
//
// Availability: compiled only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); every
// other target compiles a body that traps. invoke_paged_mqa_logits_wgmma
// returns cudaErrorNotSupported unless the current device is compute 9.0 and
// the kernel's image was built from sm_90a code (binary and PTX version 90),
// so an sm_80 / sm_100a build or a JIT of the compute_80 PTX never runs it.
//
// The heads-as-M version was verified by the GPU check of 1c08695 (H100):
// every case of tests/cpp/paged_mqa_logits_test.cpp, memcheck and racecheck
// clean; 1.2-3.6x faster than mma.sync (docs/performance.md). The
// tokens-as-M epilogue above is newer: see docs/gpu-report.md for the check
// that ran it. kWgRowsPerPass and the stage count are untuned.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "nsa/cuda/indexer.cuh"
#include "nsa/cuda/shared_memory.cuh"
#include "nsa/detail/indexer_math.h"
#include "nsa/indexer.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define NSA_MQA_WGMMA 1
#endif

// Hooks for bench/paged_mqa_logits_probe_bench.cu only (the library never
// defines them): NSA_MQA_PROBE_BEGIN() (the kernel's first statement: it may
// declare the probe's registers) and NSA_MQA_PROBE_MARK(slot), when thread 0
// of a CTA of paged_mqa_logits_wgmma_kernel reaches slot 1 (its end), 2 + 2i
// (tile i has landed, after the CTA barrier) or 3 + 2i (tile i's scores are
// stored, after the next barrier).
#ifndef NSA_MQA_PROBE_MARK
#define NSA_MQA_PROBE_BEGIN() ((void)0)
#define NSA_MQA_PROBE_MARK(slot) ((void)0)
#endif
// NSA_MQA_PROBE_DROP (probe builds only; 0, the library's, keeps everything):
// parts of paged_mqa_logits_wgmma_kernel the probe leaves out to find where
// a CTA's time goes, as a bit mask: 1 the scores (tiles are still loaded and
// waited for), 2 the q and weight loads, 4 the -inf tail stores, 8 the head
// sum (ReLU, weights, adds and shuffles: a row stores one accumulator value
// per token; the wgmma, masks and stores stay). Any bit makes the logits
// wrong; the probe then skips its bit-for-bit check.
#ifndef NSA_MQA_PROBE_DROP
#define NSA_MQA_PROBE_DROP 0
#endif
// NSA_MQA_PROBE_NARROW_MMA (the probe's _narrow build only; 0, the
// library's): 1 scores a pass of two rows with two m64n64k32 per k step, as
// the library did before wg_mma_m64n128k32, so one run times both.
#ifndef NSA_MQA_PROBE_NARROW_MMA
#define NSA_MQA_PROBE_NARROW_MMA 0
#endif
// NSA_MQA_PROBE_N1_CTAS (the probe bench only; 3 in its default build, 2
// in its _two build): which of the two N = 1 instances
// (paged_mqa_logits_wgmma_kernel<1, 2> or <1, 3>, see kWgLargeGridCtasPerSm)
// the probe times. The library picks one per launch (wg_launch).
#ifndef NSA_MQA_PROBE_N1_CTAS
#define NSA_MQA_PROBE_N1_CTAS 3
#endif

namespace nsa {
namespace kernels {

constexpr int kWgThreads = 256;     // 2 warpgroups, each 64 tokens of a tile
constexpr int kWgTileTokens = 128;  // tokens per pipeline stage
constexpr int kWgTokensPerGroup = 64;
constexpr int kWgRowBytes = 128;  // one swizzle atom row: no padding
// The ring (mqa_cp_async_wait_stage): 4 x 128 tiles, a whole 512-column
// chunk in flight at once. Deeper rings fit two CTAs per SM at N <= 2 (6 and
// 5 stages, 381b11d) but measured no faster: on an H100 at B = 8 x 32K,
// N = 1, 26.7 us with 6 stages and 27.2 with 4 (the 0a0395f tile load), 21.0
// with 4 and this tile load (docs/performance.md; bench binaries run outside
// the GPU check, to be confirmed by the next one).
constexpr int kWgStages = kMqaStages;
constexpr int kWgAlign = 1024;  // SWIZZLE_128B atom: 8 rows x 128 B
static_assert(kWgStages * kWgTileTokens == detail::kIndexerCtaColumns, "chunk must be the stages' tiles");

constexpr int kWgQRowBytes = kIndexerHeads * kWgRowBytes;  // one query row: 64 heads x 128 B, swizzled

template <int N>
struct WgmmaShared {
  uint8_t k[kWgStages][kWgTileTokens * kWgRowBytes];  // swizzled, 1024-aligned
  uint8_t q[N][kWgQRowBytes];                         // swizzled, 1024-aligned
  float scale[kWgStages][kWgTileTokens];
  uint8_t ok[kWgStages][kWgTileTokens];  // the token's page is readable (and the token < L_b, width)
  float w[N][kIndexerHeads];             // the rows' weights, in wg_weight_slot order
};
static_assert(kWgTileTokens * kWgRowBytes % kWgAlign == 0, "K tiles stay 1024-aligned");
static_assert(kWgQRowBytes % kWgAlign == 0, "q tiles stay 1024-aligned");

// One work item of the grid: request b, columns [c0, c1) of its logits rows
// (one chunk of `columns`: kIndexerCtaColumns unless the caller asks for
// more, see wg_chunk_columns), its length L_b, the tokens worth loading
// (load_end: the last row sees the most) and its tiles with a visible token.
struct WgItem {
  int64_t b, c0, c1, L, load_end;
  int tiles;
};

// Work item `item` = b * ctas_per_request + chunk, chunks of `columns` (a
// multiple of kWgTileTokens) columns (reads L_b).
template <int N>
__device__ __forceinline__ WgItem wg_item(const PagedMqaLogitsArgs& a, int64_t item, int64_t ctas_per_request,
                                          int64_t columns) {
  WgItem it;
  it.b = item / ctas_per_request;
  it.c0 = (item % ctas_per_request) * columns;
  it.c1 = it.c0 + columns < a.width ? it.c0 + columns : a.width;
  it.L = mqa_index(a.context_lens, it.b);
  // The last row sees the most tokens; nothing at or past it is loaded.
  it.load_end = detail::indexer_row_len(it.L, N, N - 1, a.width);
  const int64_t active_end = it.load_end < it.c1 ? it.load_end : it.c1;
  it.tiles = active_end > it.c0 ? static_cast<int>((active_end - it.c0 + kWgTileTokens - 1) / kWgTileTokens) : 0;
  return it;
}

// Byte offset of 16-byte chunk c of row r in a SWIZZLE_128B K-major tile.
__device__ __forceinline__ int wg_swizzle(int r, int c) { return r * kWgRowBytes + ((c ^ (r & 7)) << 4); }

#if defined(NSA_MQA_WGMMA)
// wgmma shared-memory descriptor of a K-major SWIZZLE_128B tile at `smem`
// (1024-aligned, or advanced inside an atom row by a k offset): start
// address >> 4 (bits 0-13), leading byte offset unused for swizzled K-major
// (0), stride byte offset 1024 >> 4 (bits 32-45), base offset 0, layout
// SWIZZLE_128B = 1 (bits 62-63).
__device__ __forceinline__ uint64_t wg_desc(const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return static_cast<uint64_t>((addr & 0x3ffffu) >> 4) | (static_cast<uint64_t>(kWgAlign >> 4) << 32) |
         (uint64_t{1} << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// The cp.async writes of this thread become visible to the async proxy (wgmma operand reads).
__device__ __forceinline__ void wg_fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps the compiler from moving accumulator accesses across wgmma issue / wait.
__device__ __forceinline__ void wg_fence_operands(float (&d)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// d (64 x 64 f32) = (accumulate ? d : 0) + A (64 x 32 e4m3) * B (32 x 64 e4m3)^T, both from descriptors.
__device__ __forceinline__ void wg_mma_m64n64k32(float (&d)[32], uint64_t da, uint64_t db, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(da), "l"(db), "r"(accumulate));
}

// The same for two rows at once: B is 128 x 32 (the rows' q, adjacent in
// shared memory: heads of row J0 as columns 0-63, of row J0 + 1 as 64-127),
// d0 and d1 their accumulators (m64n128's registers 0-31 hold columns 0-63
// in m64n64's layout, 32-63 columns 64-127). One instruction reads the K
// tile (A) once for both rows, where two m64n64k32 read it twice.
__device__ __forceinline__ void wg_mma_m64n128k32(float (&d0)[32], float (&d1)[32], uint64_t da, uint64_t db,
                                                  int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1;\n}\n"
      : "+f"(d0[0]), "+f"(d0[1]), "+f"(d0[2]), "+f"(d0[3]), "+f"(d0[4]), "+f"(d0[5]), "+f"(d0[6]), "+f"(d0[7]),
        "+f"(d0[8]), "+f"(d0[9]), "+f"(d0[10]), "+f"(d0[11]), "+f"(d0[12]), "+f"(d0[13]), "+f"(d0[14]), "+f"(d0[15]),
        "+f"(d0[16]), "+f"(d0[17]), "+f"(d0[18]), "+f"(d0[19]), "+f"(d0[20]), "+f"(d0[21]), "+f"(d0[22]), "+f"(d0[23]),
        "+f"(d0[24]), "+f"(d0[25]), "+f"(d0[26]), "+f"(d0[27]), "+f"(d0[28]), "+f"(d0[29]), "+f"(d0[30]), "+f"(d0[31]),
        "+f"(d1[0]), "+f"(d1[1]), "+f"(d1[2]), "+f"(d1[3]), "+f"(d1[4]), "+f"(d1[5]), "+f"(d1[6]), "+f"(d1[7]),
        "+f"(d1[8]), "+f"(d1[9]), "+f"(d1[10]), "+f"(d1[11]), "+f"(d1[12]), "+f"(d1[13]), "+f"(d1[14]), "+f"(d1[15]),
        "+f"(d1[16]), "+f"(d1[17]), "+f"(d1[18]), "+f"(d1[19]), "+f"(d1[20]), "+f"(d1[21]), "+f"(d1[22]), "+f"(d1[23]),
        "+f"(d1[24]), "+f"(d1[25]), "+f"(d1[26]), "+f"(d1[27]), "+f"(d1[28]), "+f"(d1[29]), "+f"(d1[30]), "+f"(d1[31])
      : "l"(da), "l"(db), "r"(accumulate));
}
#endif

// Issues the cp.async copies of the tile of tokens [t0, t0 + 128) of request
// b into stage s, swizzled (the default kernel's mqa_load_tile with wgmma's
// layout). Tokens >= load_end or on unreadable pages are not loaded (their
// `ok` is 0; their stale shared bytes only reach their own -inf columns).
// Shared: any layout with the members k, scale and ok of WgmmaShared.
// (Measured on an H100, the same machine, B = 8 x 32K, N = 1: this loop
// took 21.2 us per call; 0a0395f, which read a thread's four table entries
// before issuing any copy and tile 0's before L_b, took 24.9, and 2048
// columns per CTA 36.9 against 29.3. The table entries are L1 hits after
// the first warp, so reading them one token at a time costs little, and
// the reordered version was slower for reasons not yet isolated.)
// Threads: how many threads share the copies (thread `tid` of them): the
// CTA's 256 here, the producer warpgroup's 128 in the persistent schedule.
template <int Threads = kWgThreads, class Shared>
__device__ __forceinline__ void wg_load_tile(Shared& sm, int s, const PagedMqaLogitsArgs& a, int64_t b, int64_t t0,
                                             int64_t load_end, int tid = static_cast<int>(threadIdx.x)) {
  static_assert(kWgTileTokens * 8 % Threads == 0, "whole 16-byte copies per thread");
  const int64_t page_bytes = a.page_size * (kIndexerHeadDim + 4);
  const int64_t table_row = b * a.table_ld;
  const MqaPageColumn column_of(a.page_size);
#pragma unroll
  for (int it = 0; it < kWgTileTokens * 8 / Threads; ++it) {
    const int idx = it * Threads + tid;
    const int tok = idx >> 3, chunk = idx & 7;
    const int64_t t = t0 + tok;
    const int64_t col = column_of(t);
    if (t >= load_end || col >= a.table_cols) {
      if (chunk == 0) sm.ok[s][tok] = 0;
      continue;
    }
    const int64_t page = mqa_index(a.page_table, table_row + col);
    const bool ok = detail::indexer_page_ok(page, a.cache.num_pages);
    if (chunk == 0) sm.ok[s][tok] = ok ? 1 : 0;
    if (!ok) continue;
    const uint8_t* base = a.cache.data + page * page_bytes;
    const int64_t off = t - col * a.page_size;
    mqa_cp_async16(&sm.k[s][wg_swizzle(tok, chunk)], base + off * kIndexerHeadDim + chunk * 16);
    if (chunk == 1) mqa_cp_async4(&sm.scale[s][tok], base + a.page_size * kIndexerHeadDim + off * 4);
  }
}

// Head order of the wgmma B operand. The accumulator of m64n64 holds, in
// lane l of a warp, columns 8i + 2c + e (c = l % 4, i = 0..7, e = 0, 1);
// column n holds head wg_head_of_column(n) = 16c + i + 8e. So the four lanes
// of a quad own the four HEADSUM groups (lane c: group c), and a lane's
// column pair (i, 0), (i, 1) is the pair p_i of its group: heads 16c + i and
// 16c + i + 8. The head sum is then in-thread adds in the HEADSUM tree and
// two quad shuffles (xor 1: G0+G1 and G2+G3, xor 2: their sum; a + b and
// b + a are the same bits), with no shared-memory pass.
__device__ __forceinline__ int wg_head_of_column(int n) { return 16 * ((n >> 1) & 3) + (n >> 3) + 8 * (n & 1); }
// Shared-memory slot of head h's weight: lane c reads its 16 weights
// contiguously, slot 16c + 2i + e = the weight of its column (i, e).
__device__ __forceinline__ int wg_weight_slot(int h) { return (h & ~15) + 2 * (h & 7) + ((h >> 3) & 1); }

// Issues the cp.async copies of the q of request b's N rows into q, swizzled,
// shared-memory row n holding head wg_head_of_column(n).
// (Threads and tid as in wg_load_tile.)
template <int N, int Threads = kWgThreads>
__device__ __forceinline__ void wg_load_q(uint8_t (&q)[N][kWgQRowBytes], const PagedMqaLogitsArgs& a, int64_t b,
                                          int tid = static_cast<int>(threadIdx.x)) {
  static_assert(N * kIndexerHeads * 8 % Threads == 0, "whole 16-byte copies per thread");
#pragma unroll
  for (int it = 0; it < N * kIndexerHeads * 8 / Threads; ++it) {
    const int idx = it * Threads + tid;
    const int j = idx / (kIndexerHeads * 8), n = (idx / 8) % kIndexerHeads, chunk = idx & 7;
    const int h = wg_head_of_column(n);
    const uint8_t* src = a.q + ((b * N + j) * kIndexerHeads + h) * kIndexerHeadDim + chunk * 16;
    mqa_cp_async16(&q[j][wg_swizzle(n, chunk)], src);
  }
}

// Issues the cp.async copies of the weights of request b's N rows into w,
// head h at wg_weight_slot(h).
// (Threads and tid as in wg_load_tile.)
template <int N, int Threads = kWgThreads>
__device__ __forceinline__ void wg_load_weights(float (&w)[N][kIndexerHeads], const PagedMqaLogitsArgs& a, int64_t b,
                                                int tid = static_cast<int>(threadIdx.x)) {
  // 4-byte copies: the weights are only 4-byte aligned.
#pragma unroll
  for (int it = 0; it < (N * kIndexerHeads + Threads - 1) / Threads; ++it) {
    const int idx = it * Threads + tid;
    if (idx < N * kIndexerHeads)
      mqa_cp_async4(&w[idx / kIndexerHeads][wg_weight_slot(idx % kIndexerHeads)],
                    a.weights + b * N * kIndexerHeads + idx);
  }
}

// What one warp writes for a tile: its 16 tokens of item `it` at tile start
// t0 (stage s), tokens tok0 + g and tok0 + g + 8 of the tile for lane l
// (g = l / 4; lanes with l % 4 == 0 store the first, == 1 the second).
struct WgTileOut {
  const PagedMqaLogitsArgs* a;
  const WgItem* it;
  int64_t t0;
  int s;
  int tok0;  // wg * 64 + 16 * (warp in warpgroup)
};

#if defined(NSA_MQA_WGMMA)
// Rows of one wgmma pass: R accumulators of 32 registers per thread. Two
// keep N = 3, 4 near 128 registers, so two CTAs share an SM at N >= 2 (three at N = 1)
// (all four rows in one pass took 254 registers: one CTA per SM).
constexpr int kWgRowsPerPass = 2;
static_assert(kIndexerMaxNextN <= 2 * kWgRowsPerPass, "wg_scores runs at most two passes");

// Lane quad position `quad`'s 16 weights of one row, in wg_weight_slot order.
__device__ __forceinline__ void wg_row_weights(const float (&w)[kIndexerHeads], int quad, float (&wq)[16]) {
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const float4 x = *reinterpret_cast<const float4*>(&w[16 * quad + 4 * v]);
    wq[4 * v] = x.x, wq[4 * v + 1] = x.y, wq[4 * v + 2] = x.z, wq[4 * v + 3] = x.w;
  }
}

// The HEADSUM of one token from a lane's 16 accumulator values of it
// (c[4i + 0], c[4i + 1] for i = 0..7: heads 16q + i, 16q + i + 8 of the
// lane's quad position q) and its 16 weights in slot order, summed over the
// quad: the same value in the four lanes.
__device__ __forceinline__ float wg_head_sum(const float* c, const float (&wq)[16]) {
  float p[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    p[i] = __fadd_rn(__fmul_rn(wq[2 * i], fmaxf(c[4 * i], 0.f)), __fmul_rn(wq[2 * i + 1], fmaxf(c[4 * i + 1], 0.f)));
  float group = __fadd_rn(__fadd_rn(__fadd_rn(p[0], p[1]), __fadd_rn(p[2], p[3])),
                          __fadd_rn(__fadd_rn(p[4], p[5]), __fadd_rn(p[6], p[7])));
  group = __fadd_rn(group, __shfl_xor_sync(0xffffffffu, group, 1));  // G0+G1 | G2+G3
  return __fadd_rn(group, __shfl_xor_sync(0xffffffffu, group, 2));   // (G0+G1)+(G2+G3)
}

// Rows [J0, J0 + R) of one stage: S = K (warpgroup wg's 64 tokens of the
// stage) times q_j^T (64 heads), tokens as wgmma's M and heads as its N,
// then ReLU, the weight, the head sum (HEADSUM), the scale and the mask,
// stored straight from registers.
template <int N, int J0, int R, class Shared>
__device__ __forceinline__ void wg_scores_pass(const Shared& sm, const uint8_t (&q)[N][kWgQRowBytes],
                                               const float (&w)[N][kIndexerHeads], uint64_t dk, int lane,
                                               const WgTileOut& o) {
  float acc[R][32] = {};  // overwritten (the first k step does not accumulate); zero for the compiler
  wg_fence();
  if constexpr (R == 2 && !NSA_MQA_PROBE_NARROW_MMA) {
    const uint64_t dq = wg_desc(q[J0]);  // rows J0 and J0 + 1: 128 adjacent 128-byte rows
#pragma unroll
    for (int ks = 0; ks < kIndexerHeadDim / 32; ++ks)  // k step of 32 B: start address + 32 >> 4
      wg_mma_m64n128k32(acc[0], acc[1], dk + 2 * ks, dq + 2 * ks, ks > 0 ? 1 : 0);
  } else {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint64_t dq = wg_desc(q[J0 + r]);
#pragma unroll
      for (int ks = 0; ks < kIndexerHeadDim / 32; ++ks)
        wg_mma_m64n64k32(acc[r], dk + 2 * ks, dq + 2 * ks, ks > 0 ? 1 : 0);
    }
  }
  wg_commit();
  wg_wait_all();
#pragma unroll
  for (int r = 0; r < R; ++r) wg_fence_operands(acc[r]);

  const float ninf = -__int_as_float(0x7f800000);
  const int quad = lane & 3;
  // Lane quad 0 stores token g, quad 1 token g + 8 (acc offsets 0 and 2).
  const int tok = o.tok0 + (lane >> 2) + (quad == 1 ? 8 : 0);
  const int64_t t = o.t0 + tok;
  const bool writer = quad < 2 && t < o.it->c1;
  const bool ok = sm.ok[o.s][tok] != 0;
  const float scale = ok ? sm.scale[o.s][tok] : 0.f;  // an unloaded token's scale is stale
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = J0 + r;
    float wq[16];
    wg_row_weights(w[j], quad, wq);
    float lo = acc[r][0], hi = acc[r][2];  // the probe's NSA_MQA_PROBE_DROP & 8: no head sum
    if constexpr ((NSA_MQA_PROBE_DROP & 8) == 0) {
      lo = wg_head_sum(&acc[r][0], wq);  // token g
      hi = wg_head_sum(&acc[r][2], wq);  // token g + 8
    }
    if (writer) {
      const int64_t len = detail::indexer_row_len(o.it->L, N, j, o.a->width);
      const float sum = quad == 0 ? lo : hi;
      o.a->logits[(o.it->b * N + j) * o.a->logits_ld + t] = t < len && ok ? __fmul_rn(sum, scale) : ninf;
    }
  }
}

// Stage s for every row, in passes of at most kWgRowsPerPass rows, stored
// (after a CTA barrier that made the stage's copies visible). Shared: any
// layout with the members k, scale and ok of WgmmaShared<N>.
// tid: the thread's index among the 256 that score (two warpgroups).
template <int N, class Shared>
__device__ __forceinline__ void wg_scores(const Shared& sm, const uint8_t (&q)[N][kWgQRowBytes],
                                          const float (&w)[N][kIndexerHeads], const PagedMqaLogitsArgs& a,
                                          const WgItem& it, int64_t t0, int s,
                                          int tid = static_cast<int>(threadIdx.x)) {
  constexpr int kFirst = N < kWgRowsPerPass ? N : kWgRowsPerPass;
  const int warp = tid >> 5, lane = tid & 31;
  const int wg = warp >> 2;  // warpgroup: tokens [64 wg, 64 wg + 64) of the tile
  const WgTileOut o{&a, &it, t0, s, wg * kWgTokensPerGroup + 16 * (warp & 3)};
  const uint64_t dk = wg_desc(&sm.k[s][wg * kWgTokensPerGroup * kWgRowBytes]);
  wg_scores_pass<N, 0, kFirst>(sm, q, w, dk, lane, o);
  if constexpr (N > kFirst) wg_scores_pass<N, kFirst, N - kFirst>(sm, q, w, dk, lane, o);
}
#endif

// The columns of item `it` that no row of its request can see (past its
// tiles): -inf.
template <int N>
__device__ __forceinline__ void wg_store_tail(const PagedMqaLogitsArgs& a, const WgItem& it) {
  const float ninf = -__int_as_float(0x7f800000);
  const int64_t tail = it.c0 + static_cast<int64_t>(it.tiles) * kWgTileTokens;
  for (int j = 0; j < N; ++j) {
    float* row = a.logits + (it.b * N + j) * a.logits_ld;
    for (int64_t t = tail + threadIdx.x; t < it.c1; t += kWgThreads) row[t] = ninf;
  }
}

// The 1024-aligned start of a kernel's dynamic shared memory, as its layout
// Shared (the launch asks for kWgAlign bytes of slack).
template <class Shared>
__device__ __forceinline__ Shared& wg_shared(uint8_t* raw) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(raw));
  const uint32_t pad = (kWgAlign - (addr & (kWgAlign - 1))) & (kWgAlign - 1);
  return *reinterpret_cast<Shared*>(raw + pad);
}

// CTAs per SM a kernel instance is built for: 2 (<= 128 registers; shared
// memory 76-107 KB at N = 1..4), or, at N = 1 for large grids,
// kWgLargeGridCtasPerSm = 3. Three cap the N = 1 kernel at 85 registers (it
// needs 76) and fit 3 x 74.75 KB of shared memory in an SM's 228 KB only
// without the 1 KB alignment slack: the kernel declares its dynamic shared
// memory 1024-aligned and asks for none (it traps if the start is not
// aligned, which that declaration rules out). Measured with the probe (one
// H100, one command; docs/performance.md): a third CTA's loads run while the
// other two score, 130.0 us against 148.8 at B = 64 x 32K (4096 CTAs), but
// grids of under two rounds got slower (8 x 32K, 512 CTAs: 27.3 against
// 26.2; 1 x 128K, 256 CTAs: 16.8 against 14.9), so wg_launch runs it only
// from two rounds of three CTAs per SM up.
constexpr int kWgLargeGridCtasPerSm = 3;
// Without slack the dynamic shared memory must start 1024-aligned.
template <int CtasPerSm>
constexpr bool kWgSharedSlack = CtasPerSm <= 2;

template <int N, int CtasPerSm = 2>
__global__ void __launch_bounds__(kWgThreads, CtasPerSm)
    paged_mqa_logits_wgmma_kernel(const PagedMqaLogitsArgs a, int64_t ctas_per_request, int64_t columns) {
#if defined(NSA_MQA_WGMMA)
  NSA_MQA_PROBE_BEGIN();
  extern __shared__ __align__(1024) uint8_t wg_smem[];
  if constexpr (!kWgSharedSlack<CtasPerSm>) {
    if ((static_cast<uint32_t>(__cvta_generic_to_shared(wg_smem)) & (kWgAlign - 1)) != 0) __trap();
  }
  WgmmaShared<N>& sm = wg_shared<WgmmaShared<N>>(wg_smem);
  const WgItem it = wg_item<N>(a, blockIdx.x, ctas_per_request, columns);
  const int64_t b = it.b, c0 = it.c0;
  const int tiles = it.tiles;

  if (tiles > 0) {
    // Prologue: q and the weights with tile 0 in the first group, then tiles 1 .. kWgStages - 2.
    if constexpr ((NSA_MQA_PROBE_DROP & 2) == 0) {
      wg_load_q(sm.q, a, b);
      wg_load_weights(sm.w, a, b);
    }
#pragma unroll
    for (int p = 0; p < kWgStages - 1; ++p) {
      if (p < tiles) wg_load_tile(sm, p, a, b, c0 + static_cast<int64_t>(p) * kWgTileTokens, it.load_end);
      mqa_cp_async_commit();
    }

    for (int i = 0; i < tiles; ++i) {
      const int64_t t0 = c0 + static_cast<int64_t>(i) * kWgTileTokens;
      const int ahead = i + kWgStages - 1;
      if (ahead < tiles)
        wg_load_tile(sm, ahead % kWgStages, a, b, c0 + static_cast<int64_t>(ahead) * kWgTileTokens, it.load_end);
      mqa_cp_async_commit();
      mqa_cp_async_wait_stage();  // tile i (and q, the weights) have landed (this thread's copies)
      wg_fence_proxy_async();     // ... visible to wgmma's operand reads
      __syncthreads();            // ... everyone's
      NSA_MQA_PROBE_MARK(2 + 2 * i);
      if constexpr ((NSA_MQA_PROBE_DROP & 1) == 0) wg_scores<N>(sm, sm.q, sm.w, a, it, t0, i % kWgStages);
      __syncthreads();  // this stage is reloaded next iteration
      NSA_MQA_PROBE_MARK(3 + 2 * i);
    }
  }

  // Columns no row of this request can see.
  if constexpr ((NSA_MQA_PROBE_DROP & 4) == 0) wg_store_tail<N>(a, it);
  NSA_MQA_PROBE_MARK(1);
#elif defined(__CUDA_ARCH__)
  // Not an sm_90a image: the host never launches it (mqa_wgmma_available).
  __trap();
#endif
}

template <int N, int CtasPerSm = 2>
constexpr size_t wg_shared_bytes() {
  return sizeof(WgmmaShared<N>) + (kWgSharedSlack<CtasPerSm> ? kWgAlign : 0);
}

// Whether `device` runs the sm_90a image of `Kernel`: compute 9.0 and an
// image built from sm_90a code (a JIT of older PTX reports ptxVersion < 90).
template <auto Kernel>
inline cudaError_t mqa_wgmma_probe(int device, bool& ok) {
  ok = false;
  int major = 0, minor = 0;
  cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (e != cudaSuccess || major != 9 || minor != 0) return e;
  cudaFuncAttributes fa{};
  e = cudaFuncGetAttributes(&fa, Kernel);
  ok = e == cudaSuccess && fa.binaryVersion == 90 && fa.ptxVersion == 90;
  return e;
}

// cudaSuccess when the current device runs the sm_90a image of `Kernel`,
// cudaErrorNotSupported when it cannot (other architecture, or a build
// without sm_90a SASS); cached per device 0..63 and per kernel instance:
// each translation unit has its own instance, built with its own
// architectures, and the launch asks about the one it launches (see
// topk_cluster_capacity_of in nsa/cuda/topk.cuh). The first call may happen
// inside a stream capture: the probe runs with the capture mode relaxed.
template <auto Kernel = paged_mqa_logits_wgmma_kernel<1>>
inline cudaError_t mqa_wgmma_available() {
  static std::atomic<uint64_t> known{0}, usable{0};  // bit d: device d probed / usable
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (known.load(std::memory_order_acquire) & bit) != 0)
    return (usable.load(std::memory_order_relaxed) & bit) != 0 ? cudaSuccess : cudaErrorNotSupported;
  bool ok = false;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  e = mqa_wgmma_probe<Kernel>(device, ok);
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  if (e != cudaSuccess) return e;
  if (bit != 0) {
    if (ok) usable.fetch_or(bit, std::memory_order_relaxed);
    known.fetch_or(bit, std::memory_order_release);
  }
  return ok ? cudaSuccess : cudaErrorNotSupported;
}

// SMs x resident CTAs per SM of Kernel with `shared_bytes` of dynamic shared
// memory on the current device: the persistent grid's size cap, and the
// wave wg_default_chunk_columns measures a grid against. Asked once
// per kernel instance (the template argument: each instance has its own
// registers and shared memory, so a cache keyed by anything less would hand
// one instance another's answer) and device 0..63; others ask every call.
// The first call may happen inside a stream capture: the queries run with
// this thread's capture mode relaxed. A failed query's error is cleared and
// returned.
template <auto Kernel, int Threads = kWgThreads>
inline cudaError_t wg_resident_ctas(size_t shared_bytes, int64_t& ctas) {
  static std::atomic<int64_t> known[64];  // [device]: CTAs + 1, 0 = not asked yet
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const bool cacheable = device >= 0 && device < 64;
  if (cacheable) {
    const int64_t v = known[device].load(std::memory_order_acquire);
    if (v != 0) {
      ctas = v - 1;
      return cudaSuccess;
    }
  }
  int sms = 0, per_sm = 0;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, Threads, shared_bytes);
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return e;
  }
  // 0 per SM: the launch itself will say why it cannot run.
  ctas = static_cast<int64_t>(sms > 0 ? sms : 1) * (per_sm > 0 ? per_sm : 1);
  if (cacheable) known[device].store(ctas + 1, std::memory_order_release);
  return cudaSuccess;
}

// The library's chunk (wgmma_chunk_columns = 0): 1024 columns where that
// still makes at least half a wave of CTAs (batch x ceil(width / 1024) >=
// resident / 2), else 512. A longer chunk pays a CTA's start (q, weights and
// the first tile's latency) once for more tiles; a shorter one makes more
// CTAs for small grids. Measured on an H100 (docs/gpu-report-h100-25a9438.md,
// the bench's chunk sweep): 1024 beat 512 by 1-4% on every swept shape
// (8 x 32K: 24.3 against 25.0 us; 64 x 32K: 178.8 against 187.8; with the
// tile load of 430e05a, in a direct bench run: 20.3 against 20.9), 2048 lost
// up to 1.5x where it left SMs idle (8 x 32K: 37.4) and gained at most 1.3%
// elsewhere. Shape-based only: the same chunk for every replay of a graph.
inline int64_t wg_default_chunk_columns(const PagedMqaLogitsArgs& a, int64_t resident) {
  constexpr int64_t kLong = 2 * detail::kIndexerCtaColumns;
  return a.batch * ((a.width + kLong - 1) / kLong) * 2 >= resident ? kLong : detail::kIndexerCtaColumns;
}

// Readies one instance for a launch: whether the device runs its sm_90a
// image, and its dynamic shared-memory size allowed (both cached per
// device). Before any occupancy query of it: the query counts the allowed size.
template <int N, int CtasPerSm>
inline cudaError_t wg_prepare() {
  constexpr auto kKernel = paged_mqa_logits_wgmma_kernel<N, CtasPerSm>;
  const cudaError_t e = mqa_wgmma_available<kKernel>();  // the instance launched here
  return e == cudaSuccess ? allow_dynamic_shared_memory<kKernel>(wg_shared_bytes<N, CtasPerSm>()) : e;
}

// SMs x CTAs per SM of one instance (wg_resident_ctas, after wg_prepare).
template <int N, int CtasPerSm>
inline cudaError_t wg_instance_resident(int64_t& ctas) {
  const cudaError_t e = wg_prepare<N, CtasPerSm>();
  if (e != cudaSuccess) return e;
  return wg_resident_ctas<paged_mqa_logits_wgmma_kernel<N, CtasPerSm>>(wg_shared_bytes<N, CtasPerSm>(), ctas);
}

// One instance's launch.
template <int N, int CtasPerSm>
inline cudaError_t wg_launch_instance(const PagedMqaLogitsArgs& a, int64_t ctas_per_request, int64_t columns,
                                      cudaStream_t stream) {
  const cudaError_t e = wg_prepare<N, CtasPerSm>();
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(a.batch * ctas_per_request));
  paged_mqa_logits_wgmma_kernel<N, CtasPerSm>
      <<<grid, kWgThreads, wg_shared_bytes<N, CtasPerSm>(), stream>>>(a, ctas_per_request, columns);
  return cudaGetLastError();
}

// Whether an N = 1 grid of `ctas` CTAs runs the three-CTAs-per-SM instance:
// from two rounds of it up (`resident3`: the CTAs the device holds of it).
inline bool wg_large_grid(int64_t ctas, int64_t resident3) { return ctas >= 2 * resident3; }

template <int N>
inline cudaError_t wg_launch(const PagedMqaLogitsArgs& a, int64_t columns, cudaStream_t stream) {
  if (columns == 0) {
    int64_t resident = 0;
    const cudaError_t e = wg_instance_resident<N, 2>(resident);
    if (e != cudaSuccess) return e;
    columns = wg_default_chunk_columns(a, resident);
  }
  const int64_t ctas_per_request = (a.width + columns - 1) / columns;
  if constexpr (N == 1) {
    int64_t resident3 = 0;
    const cudaError_t e = wg_instance_resident<1, kWgLargeGridCtasPerSm>(resident3);
    if (e != cudaSuccess) return e;
    if (wg_large_grid(a.batch * ctas_per_request, resident3))
      return wg_launch_instance<1, kWgLargeGridCtasPerSm>(a, ctas_per_request, columns, stream);
  }
  return wg_launch_instance<N, 2>(a, ctas_per_request, columns, stream);
}

// Columns per CTA of the wgmma kernel: a.wgmma_chunk_columns, 0 for the
// library's choice (wg_default_chunk_columns, made at the launch), -1 for a
// value it cannot run (the public API names it; see nsa/indexer.h).
inline int64_t wg_chunk_columns(const PagedMqaLogitsArgs& a) {
  const int64_t c = a.wgmma_chunk_columns;
  if (c == 0) return 0;
  const bool ok = c > 0 && c <= kIndexerMaxChunkColumns && c % detail::kIndexerCtaColumns == 0;
  return ok ? c : -1;
}

// The wgmma launch on `stream` (arguments as invoke_paged_mqa_logits:
// validated by the public API). cudaErrorNotSupported, nothing launched,
// where mqa_wgmma_available() says so; cudaErrorInvalidValue for a
// wgmma_chunk_columns it cannot run.
inline cudaError_t invoke_paged_mqa_logits_wgmma(const PagedMqaLogitsArgs& a, cudaStream_t stream) {
  const cudaError_t avail = mqa_wgmma_available();
  if (avail != cudaSuccess) return avail;
  const int64_t columns = wg_chunk_columns(a);
  if (columns < 0) return cudaErrorInvalidValue;
  if (a.batch <= 0 || a.width <= 0) return cudaSuccess;
  return mqa_for_next_n(a.next_n, [&](auto n) { return wg_launch<decltype(n)::value>(a, columns, stream); });
}

}  // namespace kernels
}  // namespace nsa
