// Hopper (sm_90a) kernel of paged_mqa_logits: the same output contract as
// nsa/cuda/indexer.cuh (masking, width / row stride, unreadable pages,
// head-sum order), with the tensor-core step on wgmma instead of mma.sync,
// whose issue rate limits that kernel (issue #17). MqaLogitsKernel::kAuto
// (the default) runs it on compute 9.0 devices with an sm_90a build;
// kWgmma names it.
//
// Design. Same 1-D grid as the default kernel (one CTA per request and chunk
// of kIndexerCtaColumns columns), 256 threads = 2 warpgroups:
//   * the q of the request's N rows (N x 64 heads x 128 B) and the chunk's K
//     tiles (128 tokens x 128 B) go to shared memory with cp.async, stored in
//     the 128-byte-swizzle layout of wgmma (row r's 16-byte chunk c at
//     r * 128 + ((c ^ (r % 8)) * 16), tiles 1024-byte aligned), 4 stages: the
//     whole chunk in flight at once, as in the default kernel; tokens past
//     the last row's length and tokens of unreadable pages are never loaded;
//   * after the copies land: fence.proxy.async (cp.async writes are generic
//     proxy, wgmma reads through the async proxy), a CTA barrier, then
//     warpgroup u computes S = Q_j (64 heads x 128) * K^T (128 x tokens
//     [64u, 64u + 64)) for every row j: 4 x wgmma.mma_async m64n64k32 e4m3 x
//     e4m3 -> f32 per row, A and B both K-major from shared-memory
//     descriptors (SWIZZLE_128B, stride byte offset 1024 = 8 rows x 128 B,
//     k step 32 B = start address + 2), up to two rows per commit group
//     (kWgRowsPerPass: registers);
//   * the accumulator of warp w of a warpgroup holds heads 16w + g and
//     16w + g + 8 (g = lane / 4) for tokens 8i + 2 (lane % 4) + {0, 1}: the
//     layout of the default kernel's m16n8 fragments, so ReLU, the weight and
//     the head sum run in exactly the documented HEADSUM order (pair, 3-step
//     xor butterfly, the 4 groups through shared memory in a fixed tree,
//     times the scale); -inf where the row cannot see the token.
// No atomics, no inter-CTA communication, no allocation: bit-stable.
// The work item (wg_item), loads, wgmma step (wg_scores) and epilogue
// (wg_store_tile, wg_store_tail) are shared with the persistent schedule of
// nsa/cuda/indexer_wgmma_persistent.cuh, whose logits are this kernel's.
//
// Availability: compiled only for sm_90a (__CUDA_ARCH_FEAT_SM90_ALL); every
// other target compiles a body that traps. invoke_paged_mqa_logits_wgmma
// returns cudaErrorNotSupported unless the current device is compute 9.0 and
// the kernel's image was built from sm_90a code (binary and PTX version 90),
// so an sm_80 / sm_100a build or a JIT of the compute_80 PTX never runs it.
//
// Verified by the GPU check of 1c08695 (H100, and the tests on an H200 the
// same day): every case of tests/cpp/paged_mqa_logits_test.cpp on this
// kernel, memcheck and racecheck clean; 1.2-3.6x faster than mma.sync
// (docs/performance.md). kWgRowsPerPass and the stage count are untuned.
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

namespace nsa {
namespace kernels {

constexpr int kWgThreads = 256;     // 2 warpgroups, each 64 tokens of a tile
constexpr int kWgTileTokens = 128;  // tokens per pipeline stage
constexpr int kWgTokensPerGroup = 64;
constexpr int kWgRowBytes = 128;       // one swizzle atom row: no padding
constexpr int kWgStages = kMqaStages;  // a whole 512-column chunk in flight (mqa_cp_async_wait_stage)
constexpr int kWgAlign = 1024;         // SWIZZLE_128B atom: 8 rows x 128 B
static_assert(kWgStages * kWgTileTokens == detail::kIndexerCtaColumns, "chunk must be the stages' tiles");

constexpr int kWgQRowBytes = kIndexerHeads * kWgRowBytes;  // one query row: 64 heads x 128 B, swizzled

template <int N>
struct WgmmaShared {
  uint8_t k[kWgStages][kWgTileTokens * kWgRowBytes];  // swizzled, 1024-aligned
  uint8_t q[N][kWgQRowBytes];                         // swizzled, 1024-aligned
  float scale[kWgStages][kWgTileTokens];
  uint8_t ok[kWgStages][kWgTileTokens];  // the token's page is readable (and the token < L_b, width)
  float red[N][4][kWgTileTokens];        // per (row, head group, token) partial sums
};
static_assert(kWgTileTokens * kWgRowBytes % kWgAlign == 0, "K tiles stay 1024-aligned");
static_assert(kWgQRowBytes % kWgAlign == 0, "q tiles stay 1024-aligned");

// One work item of the grid: request b, columns [c0, c1) of its logits rows
// (one kIndexerCtaColumns chunk), its length L_b, the tokens worth loading
// (load_end: the last row sees the most) and its tiles with a visible token.
struct WgItem {
  int64_t b, c0, c1, L, load_end;
  int tiles;
};

// Work item `item` = b * ctas_per_request + chunk (reads L_b).
template <int N>
__device__ __forceinline__ WgItem wg_item(const PagedMqaLogitsArgs& a, int64_t item, int64_t ctas_per_request) {
  WgItem it;
  it.b = item / ctas_per_request;
  it.c0 = (item % ctas_per_request) * detail::kIndexerCtaColumns;
  it.c1 = it.c0 + detail::kIndexerCtaColumns < a.width ? it.c0 + detail::kIndexerCtaColumns : a.width;
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
#endif

// Issues the cp.async copies of the tile of tokens [t0, t0 + 128) of request
// b into stage s, swizzled (the default kernel's mqa_load_tile with wgmma's
// layout). Tokens >= load_end or on unreadable pages are not loaded (their
// `ok` is 0; their stale shared bytes only reach their own -inf columns).
// Shared: any layout with the members k, scale and ok of WgmmaShared.
template <class Shared>
__device__ __forceinline__ void wg_load_tile(Shared& sm, int s, const PagedMqaLogitsArgs& a, int64_t b, int64_t t0,
                                             int64_t load_end) {
  const int64_t page_bytes = a.page_size * (kIndexerHeadDim + 4);
  const int64_t table_row = b * a.table_ld;
#pragma unroll
  for (int it = 0; it < kWgTileTokens * 8 / kWgThreads; ++it) {
    const int idx = it * kWgThreads + static_cast<int>(threadIdx.x);
    const int tok = idx >> 3, chunk = idx & 7;
    const int64_t t = t0 + tok;
    const int64_t col = t / a.page_size;
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

// Issues the cp.async copies of the q of request b's N rows into q, swizzled.
template <int N>
__device__ __forceinline__ void wg_load_q(uint8_t (&q)[N][kWgQRowBytes], const PagedMqaLogitsArgs& a, int64_t b) {
#pragma unroll
  for (int it = 0; it < N * kIndexerHeads * 8 / kWgThreads; ++it) {
    const int idx = it * kWgThreads + static_cast<int>(threadIdx.x);
    const int j = idx / (kIndexerHeads * 8), h = (idx / 8) % kIndexerHeads, chunk = idx & 7;
    const uint8_t* src = a.q + ((b * N + j) * kIndexerHeads + h) * kIndexerHeadDim + chunk * 16;
    mqa_cp_async16(&q[j][wg_swizzle(h, chunk)], src);
  }
}

#if defined(NSA_MQA_WGMMA)
// Rows of one wgmma pass: R accumulators of 32 registers per thread. Two
// keep N = 3, 4 near 128 registers, so two CTAs share an SM at every N
// (all four rows in one pass took 254 registers: one CTA per SM).
constexpr int kWgRowsPerPass = 2;
static_assert(kIndexerMaxNextN <= 2 * kWgRowsPerPass, "wg_scores runs at most two passes");

// Rows [J0, J0 + R) of one stage: S = q (the request's rows) times the
// stage's K on warpgroup `wg`'s 64 tokens, then ReLU, the weight and the
// in-group head sum into sm.red (HEADSUM order).
template <int N, int J0, int R, class Shared>
__device__ __forceinline__ void wg_scores_pass(Shared& sm, const uint8_t (&q)[N][kWgQRowBytes], uint64_t db, int wg,
                                               int group, int lane, const float (&wv)[N][2]) {
  float acc[R][32] = {};  // overwritten (the first k step does not accumulate); zero for the compiler
  wg_fence();
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const uint64_t da = wg_desc(q[J0 + r]);
#pragma unroll
    for (int ks = 0; ks < kIndexerHeadDim / 32; ++ks)  // k step of 32 B: start address + 32 >> 4
      wg_mma_m64n64k32(acc[r], da + 2 * ks, db + 2 * ks, ks > 0 ? 1 : 0);
  }
  wg_commit();
  wg_wait_all();
#pragma unroll
  for (int r = 0; r < R; ++r) wg_fence_operands(acc[r]);

  const int g = lane >> 2, q4 = lane & 3;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = J0 + r;
#pragma unroll
    for (int i = 0; i < kWgTokensPerGroup / 8; ++i) {
      // acc[r][4i ..]: (head g, token 8i + 2 q4), (g, +1), (g + 8, 8i + 2 q4), (g + 8, +1).
      const float* c = &acc[r][4 * i];
      float p0 = __fadd_rn(__fmul_rn(wv[j][0], fmaxf(c[0], 0.f)), __fmul_rn(wv[j][1], fmaxf(c[2], 0.f)));
      float p1 = __fadd_rn(__fmul_rn(wv[j][0], fmaxf(c[1], 0.f)), __fmul_rn(wv[j][1], fmaxf(c[3], 0.f)));
#pragma unroll
      for (int m = 4; m <= 16; m <<= 1) {
        p0 = __fadd_rn(p0, __shfl_xor_sync(0xffffffffu, p0, m));
        p1 = __fadd_rn(p1, __shfl_xor_sync(0xffffffffu, p1, m));
      }
      const int tok = wg * kWgTokensPerGroup + 8 * i + 2 * q4;
      if (g == 0) *reinterpret_cast<float2*>(&sm.red[j][group][tok]) = make_float2(p0, p1);
    }
  }
}

// Stage s for every row, in passes of at most kWgRowsPerPass rows. Shared:
// any layout with the members k and red of WgmmaShared<N>.
template <int N, class Shared>
__device__ __forceinline__ void wg_scores(Shared& sm, int s, const uint8_t (&q)[N][kWgQRowBytes], int wg, int group,
                                          int lane, const float (&wv)[N][2]) {
  constexpr int kFirst = N < kWgRowsPerPass ? N : kWgRowsPerPass;
  const uint64_t db = wg_desc(&sm.k[s][wg * kWgTokensPerGroup * kWgRowBytes]);
  wg_scores_pass<N, 0, kFirst>(sm, q, db, wg, group, lane, wv);
  if constexpr (N > kFirst) wg_scores_pass<N, kFirst, N - kFirst>(sm, q, db, wg, group, lane, wv);
}
#endif

// Epilogue of the tile of item `it` at tokens [t0, t0 + 128) in stage s
// (after wg_scores and a CTA barrier): the head groups summed in a fixed
// tree, times the scale; -inf where the row cannot see the token. Shared:
// any layout with the members red, scale and ok of WgmmaShared<N>.
template <int N, class Shared>
__device__ __forceinline__ void wg_store_tile(const Shared& sm, int s, const PagedMqaLogitsArgs& a, const WgItem& it,
                                              int64_t t0) {
  const float ninf = -__int_as_float(0x7f800000);
  const int tok = static_cast<int>(threadIdx.x) & (kWgTileTokens - 1);
  const int64_t t = t0 + tok;
  if (t < it.c1) {
#pragma unroll
    for (int j = static_cast<int>(threadIdx.x) / kWgTileTokens; j < N; j += kWgThreads / kWgTileTokens) {
      const int64_t len = detail::indexer_row_len(it.L, N, j, a.width);
      float v = ninf;
      if (t < len && sm.ok[s][tok]) {
        const float sum =
            __fadd_rn(__fadd_rn(sm.red[j][0][tok], sm.red[j][1][tok]), __fadd_rn(sm.red[j][2][tok], sm.red[j][3][tok]));
        v = __fmul_rn(sum, sm.scale[s][tok]);
      }
      a.logits[(it.b * N + j) * a.logits_ld + t] = v;
    }
  }
}

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

template <int N>
// Two CTAs per SM at every N (<= 128 registers; shared memory 78-111 KB).
__global__ void __launch_bounds__(kWgThreads, 2)
    paged_mqa_logits_wgmma_kernel(const PagedMqaLogitsArgs a, int64_t ctas_per_request) {
#if defined(NSA_MQA_WGMMA)
  extern __shared__ __align__(16) uint8_t wg_smem[];
  WgmmaShared<N>& sm = wg_shared<WgmmaShared<N>>(wg_smem);
  const WgItem it = wg_item<N>(a, blockIdx.x, ctas_per_request);
  const int64_t b = it.b, c0 = it.c0;
  const int tiles = it.tiles;

  if (tiles > 0) {
    const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
    const int group = warp & 3, wg = warp >> 2;  // head group (warp in its warpgroup), warpgroup
    const int g = lane >> 2;

    // Prologue: q with tile 0 in the first group, then tiles 1 .. kWgStages - 2.
    wg_load_q(sm.q, a, b);
#pragma unroll
    for (int p = 0; p < kWgStages - 1; ++p) {
      if (p < tiles) wg_load_tile(sm, p, a, b, c0 + static_cast<int64_t>(p) * kWgTileTokens, it.load_end);
      mqa_cp_async_commit();
    }

    float wv[N][2];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int64_t r = b * N + j;
      wv[j][0] = __ldg(a.weights + r * kIndexerHeads + 16 * group + g);
      wv[j][1] = __ldg(a.weights + r * kIndexerHeads + 16 * group + g + 8);
    }

    for (int i = 0; i < tiles; ++i) {
      const int64_t t0 = c0 + static_cast<int64_t>(i) * kWgTileTokens;
      const int ahead = i + kWgStages - 1;
      if (ahead < tiles)
        wg_load_tile(sm, ahead % kWgStages, a, b, c0 + static_cast<int64_t>(ahead) * kWgTileTokens, it.load_end);
      mqa_cp_async_commit();
      mqa_cp_async_wait_stage();  // tile i (and q) have landed (this thread's copies)
      wg_fence_proxy_async();     // ... visible to wgmma's operand reads
      __syncthreads();            // ... everyone's
      const int s = i % kWgStages;
      wg_scores<N>(sm, s, sm.q, wg, group, lane, wv);
      __syncthreads();
      wg_store_tile<N>(sm, s, a, it, t0);
      __syncthreads();  // red is rewritten next iteration, this stage kWgStages - 1 tiles later
    }
  }

  // Columns no row of this request can see.
  wg_store_tail<N>(a, it);
#elif defined(__CUDA_ARCH__)
  // Not an sm_90a image: the host never launches it (mqa_wgmma_available).
  __trap();
#endif
}

template <int N>
constexpr size_t wg_shared_bytes() {
  return sizeof(WgmmaShared<N>) + kWgAlign;
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

template <int N>
inline cudaError_t wg_launch(const PagedMqaLogitsArgs& a, int64_t ctas_per_request, cudaStream_t stream) {
  const cudaError_t avail = mqa_wgmma_available<paged_mqa_logits_wgmma_kernel<N>>();  // the instance launched here
  if (avail != cudaSuccess) return avail;
  const cudaError_t e = allow_dynamic_shared_memory<paged_mqa_logits_wgmma_kernel<N>>(wg_shared_bytes<N>());
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(a.batch * ctas_per_request));
  paged_mqa_logits_wgmma_kernel<N><<<grid, kWgThreads, wg_shared_bytes<N>(), stream>>>(a, ctas_per_request);
  return cudaGetLastError();
}

// The wgmma launch on `stream` (arguments as invoke_paged_mqa_logits:
// validated by the public API). cudaErrorNotSupported, nothing launched,
// where mqa_wgmma_available() says so.
inline cudaError_t invoke_paged_mqa_logits_wgmma(const PagedMqaLogitsArgs& a, cudaStream_t stream) {
  const cudaError_t avail = mqa_wgmma_available();
  if (avail != cudaSuccess) return avail;
  if (a.batch <= 0 || a.width <= 0) return cudaSuccess;
  return mqa_for_next_n(a.next_n,
                        [&](auto n) { return wg_launch<decltype(n)::value>(a, mqa_ctas_per_request(a), stream); });
}

}  // namespace kernels
}  // namespace nsa
