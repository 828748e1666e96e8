// CUDA kernel and launcher of paged_mqa_logits (nsa/indexer.h). Header-only
// so an engine can call invoke_paged_mqa_logits on raw pointers; the
// library's public API validates arguments and then calls the launcher.
//
// Grid: 1-D, one CTA per (request, chunk of kIndexerCtaColumns columns), so
// it grows with the width (x only), never with a device length. A CTA reads
// L_b, and:
//   * loads the q of all N rows of its request into registers once (tensor-
//     core A fragments: warp w owns the 16 heads of group w % 4);
//   * streams its chunk's visible tokens in tiles of 128 through a 4-stage
//     cp.async pipeline (the whole chunk in flight at once) (one K row of 128 B per token, padded to 144 B in
//     shared memory so the fragment loads are conflict-free, plus the scale):
//     each K page is read once for all N rows and 64 heads; tokens past
//     min(L_b, width) and pages that cannot be read are never loaded;
//   * S = Q (16 heads x 128) * K^T (128 x 8 tokens) per warp and n-tile on
//     the tensor cores: mma.sync m16n8k32 e4m3 (sm_89+) or, on sm_80, the same
//     fragments converted to f16 and m16n8k16;
//   * ReLU, the weight, and the head sum in the order of nsa/indexer.h: the
//     two heads of a lane (products rounded, no FMA), a 3-step xor butterfly
//     over the 8 lanes of a group, the 4 groups through shared memory in a
//     fixed tree, times the token's scale; -inf where the row cannot see the
//     token; coalesced fp32 stores.
// The K dimension inside a fragment is permuted (lane quarter t owns bytes
// [32t, 32t+32) of every row, two 16-byte loads) identically for q and K, so
// the dot products are unchanged.
// No atomics, no inter-CTA communication, no allocation: bit-stable.
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "nsa/cuda/shared_memory.cuh"
#include "nsa/detail/indexer_math.h"
#include "nsa/indexer.h"

namespace nsa {
namespace kernels {

constexpr int kMqaThreads = 256;     // 8 warps: 4 head groups x 2 token halves
constexpr int kMqaTileTokens = 128;  // tokens per pipeline stage
constexpr int kMqaRowBytes = 144;    // 128 K bytes + 16 padding (bank-conflict free)
constexpr int kMqaTilesPerCta = static_cast<int>(detail::kIndexerCtaColumns) / kMqaTileTokens;
static_assert(kMqaTilesPerCta * kMqaTileTokens == detail::kIndexerCtaColumns, "chunk must be whole tiles");
// cp.async stages: a CTA's whole chunk (4 tiles, ~67 KB of K) is in flight
// before the first tile is used, so one CTA per SM already keeps enough bytes
// moving to cover the memory latency.
constexpr int kMqaStages = 4;

struct MqaStage {
  uint8_t k[kMqaTileTokens * kMqaRowBytes];
  float scale[kMqaTileTokens];
  uint8_t ok[kMqaTileTokens];  // the token's page is readable (and the token < L_b, width)
};

template <class T>
__device__ __forceinline__ int64_t mqa_index(const T* p, int64_t i) {
  return static_cast<int64_t>(__ldg(p + i));
}
__device__ __forceinline__ int64_t mqa_index(Indices v, int64_t i) {
  return v.type == IndexType::kInt32 ? mqa_index(static_cast<const int32_t*>(v.data), i)
                                     : mqa_index(static_cast<const int64_t*>(v.data), i);
}

__device__ __forceinline__ void mqa_cp_async16(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void mqa_cp_async4(void* smem, const void* gmem) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void mqa_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kMqaStages - 1 committed groups are still in flight.
__device__ __forceinline__ void mqa_cp_async_wait_stage() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kMqaStages - 1) : "memory");
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 890
// Two fp8 e4m3 (low 16 bits of w when hi == false) as an f16x2 register, exact.
__device__ __forceinline__ uint32_t mqa_fp8x2_to_f16x2(uint32_t w, bool hi) {
  const __nv_fp8x2_storage_t pair = static_cast<__nv_fp8x2_storage_t>(hi ? (w >> 16) : (w & 0xffffu));
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

// sm_80 half of an fp8 k32 step: fp8 words of rows g (ar) and g+8 (ar8) and
// of the token (br), 4 k values each, as one f16 m16n8k16. The k index is
// permuted identically for A and B (bytes 0,1 -> k 2t,2t+1; bytes 2,3 ->
// k 2t+8, 2t+9), which leaves the dot products unchanged.
__device__ __forceinline__ void mqa_mma_f16(float (&c)[4], uint32_t ar, uint32_t ar8, uint32_t br) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(mqa_fp8x2_to_f16x2(ar, false)), "r"(mqa_fp8x2_to_f16x2(ar8, false)), "r"(mqa_fp8x2_to_f16x2(ar, true)),
        "r"(mqa_fp8x2_to_f16x2(ar8, true)), "r"(mqa_fp8x2_to_f16x2(br, false)), "r"(mqa_fp8x2_to_f16x2(br, true)));
}
#endif

// c += A (16 x 32 fp8, fragments a[4]) * B (32 x 8 fp8, fragments b0 b1), fp32 accumulate.
__device__ __forceinline__ void mqa_mma_fp8(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(__CUDA_ARCH__)
  // sm_80: no fp8 tensor cores; two f16 steps over the same fragments.
  mqa_mma_f16(c, a[0], a[1], b0);
  mqa_mma_f16(c, a[2], a[3], b1);
#endif
}

// The page-table column of token t: a shift when page_size is a power of
// two (every size the cache ops take; set up once per tile load), a 64-bit
// division otherwise. The division is a call of about a hundred
// instructions, and a tile load needs one per token and thread.
struct MqaPageColumn {
  int64_t page_size;
  int shift;  // log2(page_size), or -1
  __device__ __forceinline__ explicit MqaPageColumn(int64_t p) : page_size(p), shift(-1) {
#if defined(__CUDA_ARCH__)
    if ((p & (p - 1)) == 0) shift = __ffsll(p) - 1;
#endif
  }
  __device__ __forceinline__ int64_t operator()(int64_t t) const { return shift >= 0 ? t >> shift : t / page_size; }
};

// Issues the cp.async copies of tile `tile` (tokens [t0, t0 + 128) of request
// b) into `st`. Tokens >= load_end or on unreadable pages are not loaded.
__device__ __forceinline__ void mqa_load_tile(MqaStage& st, const PagedMqaLogitsArgs& a, int64_t b, int64_t t0,
                                              int64_t load_end) {
  const int64_t page_bytes = a.page_size * (kIndexerHeadDim + 4);
  const int64_t table_row = b * a.table_ld;
  const MqaPageColumn column_of(a.page_size);
#pragma unroll
  for (int it = 0; it < kMqaTileTokens * 8 / kMqaThreads; ++it) {
    const int idx = it * kMqaThreads + static_cast<int>(threadIdx.x);
    const int tok = idx >> 3, chunk = idx & 7;
    const int64_t t = t0 + tok;
    const int64_t col = column_of(t);
    if (t >= load_end || col >= a.table_cols) {
      if (chunk == 0) st.ok[tok] = 0;
      continue;
    }
    const int64_t page = mqa_index(a.page_table, table_row + col);
    const bool ok = detail::indexer_page_ok(page, a.cache.num_pages);
    if (chunk == 0) st.ok[tok] = ok ? 1 : 0;
    if (!ok) continue;
    const uint8_t* base = a.cache.data + page * page_bytes;
    const int64_t off = t - col * a.page_size;
    mqa_cp_async16(&st.k[tok * kMqaRowBytes + chunk * 16], base + off * kIndexerHeadDim + chunk * 16);
    if (chunk == 1) mqa_cp_async4(&st.scale[tok], base + a.page_size * kIndexerHeadDim + off * 4);
  }
}

// Dynamic shared memory of the kernel for N rows: the stages, then the
// per-(row, head group, token) partial sums.
template <int N>
struct MqaShared {
  MqaStage stages[kMqaStages];
  float red[N][4][kMqaTileTokens];
};

template <int N>
__global__ void __launch_bounds__(kMqaThreads)
    paged_mqa_logits_kernel(const PagedMqaLogitsArgs a, int64_t ctas_per_request) {
  extern __shared__ __align__(16) uint8_t mqa_smem[];
  MqaShared<N>& sm = *reinterpret_cast<MqaShared<N>*>(mqa_smem);
  MqaStage* stages = sm.stages;
  auto& red = sm.red;

  const int64_t b = blockIdx.x / ctas_per_request;
  const int64_t c0 = (blockIdx.x % ctas_per_request) * detail::kIndexerCtaColumns;
  const int64_t c1 = c0 + detail::kIndexerCtaColumns < a.width ? c0 + detail::kIndexerCtaColumns : a.width;
  const int64_t L = mqa_index(a.context_lens, b);
  // The last row sees the most tokens; nothing at or past it is loaded.
  const int64_t load_end = detail::indexer_row_len(L, N, N - 1, a.width);
  const int64_t active_end = load_end < c1 ? load_end : c1;
  const int tiles = active_end > c0 ? static_cast<int>((active_end - c0 + kMqaTileTokens - 1) / kMqaTileTokens) : 0;
  const float ninf = -__int_as_float(0x7f800000);

  if (tiles > 0) {
    const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
    const int group = warp & 3, half = warp >> 2;  // head group, token half of a tile
    const int g = lane >> 2, q4 = lane & 3;        // mma groupID, threadID_in_group

    // Prologue: tiles 0 .. kMqaStages - 2 (one group each, empty past the last tile).
#pragma unroll
    for (int p = 0; p < kMqaStages - 1; ++p) {
      if (p < tiles) mqa_load_tile(stages[p], a, b, c0 + static_cast<int64_t>(p) * kMqaTileTokens, load_end);
      mqa_cp_async_commit();
    }

    // q fragments of the two heads (16*group + g, + 8) of every row, bytes [32*q4, +32).
    uint32_t qa[N][4][4];
    float wv[N][2];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const int64_t r = b * N + j;
      const uint8_t* qh = a.q + (r * kIndexerHeads + 16 * group + g) * kIndexerHeadDim + 32 * q4;
      const uint4 lo0 = __ldg(reinterpret_cast<const uint4*>(qh));
      const uint4 hi0 = __ldg(reinterpret_cast<const uint4*>(qh + 16));
      const uint4 lo8 = __ldg(reinterpret_cast<const uint4*>(qh + 8 * kIndexerHeadDim));
      const uint4 hi8 = __ldg(reinterpret_cast<const uint4*>(qh + 8 * kIndexerHeadDim + 16));
      const uint32_t w0[8] = {lo0.x, lo0.y, lo0.z, lo0.w, hi0.x, hi0.y, hi0.z, hi0.w};
      const uint32_t w8[8] = {lo8.x, lo8.y, lo8.z, lo8.w, hi8.x, hi8.y, hi8.z, hi8.w};
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        qa[j][s][0] = w0[2 * s];
        qa[j][s][1] = w8[2 * s];
        qa[j][s][2] = w0[2 * s + 1];
        qa[j][s][3] = w8[2 * s + 1];
      }
      wv[j][0] = __ldg(a.weights + r * kIndexerHeads + 16 * group + g);
      wv[j][1] = __ldg(a.weights + r * kIndexerHeads + 16 * group + g + 8);
    }

    for (int i = 0; i < tiles; ++i) {
      const int64_t t0 = c0 + static_cast<int64_t>(i) * kMqaTileTokens;
      const int ahead = i + kMqaStages - 1;
      if (ahead < tiles)
        mqa_load_tile(stages[ahead % kMqaStages], a, b, c0 + static_cast<int64_t>(ahead) * kMqaTileTokens, load_end);
      mqa_cp_async_commit();
      mqa_cp_async_wait_stage();  // tile i has landed (this thread's copies)
      __syncthreads();            // ... and everyone's
      const MqaStage& st = stages[i % kMqaStages];

      // Tensor cores: 8 n-tiles of 8 tokens per warp, N rows each.
#pragma unroll 1
      for (int nt = 0; nt < 8; ++nt) {
        const int tok0 = half * 64 + nt * 8;
        const uint8_t* krow = &st.k[(tok0 + g) * kMqaRowBytes + 32 * q4];
        const uint4 klo = *reinterpret_cast<const uint4*>(krow);
        const uint4 khi = *reinterpret_cast<const uint4*>(krow + 16);
        const uint32_t kb[8] = {klo.x, klo.y, klo.z, klo.w, khi.x, khi.y, khi.z, khi.w};
#pragma unroll
        for (int j = 0; j < N; ++j) {
          float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int s = 0; s < 4; ++s) mqa_mma_fp8(acc, qa[j][s], kb[2 * s], kb[2 * s + 1]);
          // acc: (head g, token 2*q4), (g, 2*q4+1), (g+8, 2*q4), (g+8, 2*q4+1).
          float p0 = __fadd_rn(__fmul_rn(wv[j][0], fmaxf(acc[0], 0.f)), __fmul_rn(wv[j][1], fmaxf(acc[2], 0.f)));
          float p1 = __fadd_rn(__fmul_rn(wv[j][0], fmaxf(acc[1], 0.f)), __fmul_rn(wv[j][1], fmaxf(acc[3], 0.f)));
#pragma unroll
          for (int m = 4; m <= 16; m <<= 1) {
            p0 = __fadd_rn(p0, __shfl_xor_sync(0xffffffffu, p0, m));
            p1 = __fadd_rn(p1, __shfl_xor_sync(0xffffffffu, p1, m));
          }
          if (g == 0) *reinterpret_cast<float2*>(&red[j][group][tok0 + 2 * q4]) = make_float2(p0, p1);
        }
      }
      __syncthreads();

      // Epilogue: groups summed in a fixed tree, times the scale; -inf where hidden.
      const int tok = static_cast<int>(threadIdx.x) & (kMqaTileTokens - 1);
      const int64_t t = t0 + tok;
      if (t < c1) {
#pragma unroll
        for (int j = static_cast<int>(threadIdx.x) / kMqaTileTokens; j < N; j += kMqaThreads / kMqaTileTokens) {
          const int64_t len = detail::indexer_row_len(L, N, j, a.width);
          float v = ninf;
          if (t < len && st.ok[tok]) {
            const float sum =
                __fadd_rn(__fadd_rn(red[j][0][tok], red[j][1][tok]), __fadd_rn(red[j][2][tok], red[j][3][tok]));
            v = __fmul_rn(sum, st.scale[tok]);
          }
          a.logits[(b * N + j) * a.logits_ld + t] = v;
        }
      }
      __syncthreads();  // red is rewritten next iteration, this stage kMqaStages - 1 tiles later
    }
  }

  // Columns no row of this request can see.
  const int64_t tail = c0 + static_cast<int64_t>(tiles) * kMqaTileTokens;
  for (int j = 0; j < N; ++j) {
    float* row = a.logits + (b * N + j) * a.logits_ld;
    for (int64_t t = tail + threadIdx.x; t < c1; t += kMqaThreads) row[t] = ninf;
  }
}

template <int N>
inline cudaError_t mqa_launch(const PagedMqaLogitsArgs& a, int64_t ctas_per_request, cudaStream_t stream) {
  const cudaError_t e = allow_dynamic_shared_memory<paged_mqa_logits_kernel<N>>(sizeof(MqaShared<N>));
  if (e != cudaSuccess) return e;
  const dim3 grid(static_cast<unsigned>(a.batch * ctas_per_request));
  paged_mqa_logits_kernel<N><<<grid, kMqaThreads, sizeof(MqaShared<N>), stream>>>(a, ctas_per_request);
  return cudaGetLastError();
}

// The rows per request as a template constant: launch(std::integral_constant<int, N>{})
// for next_n = N in 1..4 (both kernels are instantiated per N).
template <class Launch>
inline cudaError_t mqa_for_next_n(int64_t next_n, Launch&& launch) {
  switch (next_n) {
    case 1: return launch(std::integral_constant<int, 1>{});
    case 2: return launch(std::integral_constant<int, 2>{});
    case 3: return launch(std::integral_constant<int, 3>{});
    case 4: return launch(std::integral_constant<int, 4>{});
    default: return cudaErrorInvalidValue;
  }
}

// CTAs per request: one per kIndexerCtaColumns columns of the width.
inline int64_t mqa_ctas_per_request(const PagedMqaLogitsArgs& a) {
  return (a.width + detail::kIndexerCtaColumns - 1) / detail::kIndexerCtaColumns;
}

// One launch on `stream`; arguments must have passed the public API's
// validation (src/indexer.cpp). Returns the launch status.
inline cudaError_t invoke_paged_mqa_logits(const PagedMqaLogitsArgs& a, cudaStream_t stream) {
  if (a.batch <= 0 || a.width <= 0) return cudaSuccess;
  return mqa_for_next_n(a.next_n,
                        [&](auto n) { return mqa_launch<decltype(n)::value>(a, mqa_ctas_per_request(a), stream); });
}

}  // namespace kernels
}  // namespace nsa
