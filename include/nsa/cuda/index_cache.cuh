// CUDA kernels and launchers of the paged FP8 indexer-K cache. Header-only so
// an engine can fuse them into its own kernels; the library's public API in
// nsa/index_cache.h validates arguments and then calls the launchers below.
//
// Launchers take raw pointers, sizes and a stream, enqueue exactly one kernel
// and return the launch status (cudaGetLastError). They never allocate and
// never synchronise. Every byte offset is 64-bit; every grid is 1-D.
#pragma once

#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

#include <cstdint>
#include <type_traits>

#include "nsa/cuda/checked.cuh"
#include "nsa/detail/quant.h"
#include "nsa/index_cache.h"

namespace nsa {
namespace kernels {

constexpr int64_t kPageSize = 64;  // the default page (8448 bytes); see PageGeometry for the others
constexpr int64_t kHeadDim = 128;
constexpr int64_t kPageBytes = 8448;
constexpr int64_t kKBytesPerPage = 8192;

// Byte geometry of a page of kPage tokens (spec §2): kPage x 128 K bytes, then
// kPage fp32 scales. The page size is a template constant so slot -> page is
// a shift; NSA_DISPATCH_PAGE_SIZE (src/common/dispatch.h) picks it.
template <int kPage>
struct PageGeometry {
  static_assert(kPage >= 16 && kPage <= 256 && (kPage & (kPage - 1)) == 0, "page size: a power of two in [16, 256]");
  static constexpr int64_t kTokens = kPage;
  static constexpr int64_t kKBytes = kPage * kHeadDim;
  static constexpr int64_t kBytes = kPage * (kHeadDim + 4);
  // slot >= 0: the unsigned division is a shift.
  static __device__ __forceinline__ int64_t k_offset(int64_t slot) {
    const uint64_t u = static_cast<uint64_t>(slot);
    return static_cast<int64_t>((u / kPage) * kBytes + (u % kPage) * kHeadDim);
  }
  static __device__ __forceinline__ int64_t scale_offset(int64_t slot) {
    const uint64_t u = static_cast<uint64_t>(slot);
    return static_cast<int64_t>((u / kPage) * kBytes + kKBytes + (u % kPage) * 4);
  }
};

__device__ __forceinline__ int64_t k_byte_offset(int64_t slot) { return PageGeometry<64>::k_offset(slot); }
__device__ __forceinline__ int64_t scale_byte_offset(int64_t slot) { return PageGeometry<64>::scale_offset(slot); }

// ---------------------------------------------------------------------------
// Stores: a lane group of 8 or 16 lanes per token (StoreShape below), each
// lane taking a contiguous run of its elements (one K store per lane). All
// loads of a lane group's tokens (slots, K rows, scales) are issued before the
// first reduction, so a store costs one memory round trip per iteration. A CTA
// iteration covers consecutive tokens (coalesced K reads per warp); the grid
// is one wave of resident CTAs at most, strided over longer inputs.
// Every lane runs the shuffles (full mask); only lanes with a real token and a
// slot >= 0 write.
// ---------------------------------------------------------------------------
constexpr int kStoreThreads = 256;

// Launch shape of a store: kLanes lanes share a token (each takes 128 / kLanes
// of its elements) and a lane group carries kUnroll tokens per iteration of
// the grid-stride walk. In the iteration at `base`, lane group g carries
// tokens base + g + u * kGroups (u < kUnroll); the loop bound is uniform over
// the CTA, so every lane runs every iteration (the shuffles need it).
// kNanFastPath (quantize_and_store_k only): a lane whose elements are all
// finite skips the per-element NaN fix-up (see quantize_lane); false runs it
// on every element, kept so bench/index_cache_bench --store-sweep can measure
// what the fast path saves.
template <int kLanesT, int kUnrollT, int kThreadsT = kStoreThreads, bool kNanFastPathT = true>
struct StoreShape {
  static constexpr int kLanes = kLanesT;
  static constexpr int kUnroll = kUnrollT;
  static constexpr int kThreads = kThreadsT;
  static constexpr bool kNanFastPath = kNanFastPathT;
  static constexpr int kElems = 128 / kLanes;                        // elements (K bytes) per lane
  static constexpr int kGroups = kThreads / kLanes;                  // lane groups per CTA
  static constexpr int64_t kCtaTokens = int64_t{kGroups} * kUnroll;  // tokens per CTA iteration
  static_assert(kLanes >= 8 && kLanes <= 16 && kThreads % 32 == 0, "a token's lanes stay within a warp");
};
// Many tokens (more than one wave of resident CTAs can hold as NarrowStore):
// two tokens of 16 elements per lane in flight hide the memory latency.
using WideStore = StoreShape<8, 2>;
// Up to one wave: one token of 8 elements per lane, so every token is in
// flight at once and each lane's chain (load, amax, quantize, store) is short.
using NarrowStore = StoreShape<16, 1>;

// Grid of a store launch: at most one wave of resident CTAs divided by
// wave_divisor (1: a full wave; 2: half a wave, each CTA walking twice as many
// iterations; ...), and never more CTAs than CTA iterations of work.
struct StoreGrid {
  int wave_divisor = 1;
};

// Checked mode of the stores (kChecked kernels only): a slot at or past the
// pool's end is recorded and its token is not written; negative slots stay
// padding (skipped, not an error).
struct StoreChecks {
  DeviceError* error = nullptr;  // device memory; nullptr launches the unchecked kernels
  int64_t num_slots = 0;         // num_pages * page size
};

// kChecked: turns an out-of-range slot into "skip" after recording it.
template <bool kChecked>
__device__ __forceinline__ int64_t checked_slot(int64_t slot, int64_t t, bool reporter, const StoreChecks& checks,
                                                OpId op) {
  if constexpr (kChecked) {
    if (slot >= checks.num_slots) {
      if (reporter) record_error(checks.error, op, ArgId::kSlots, t, slot);
      return -1;
    }
  }
  return slot;
}

// Two already-scaled elements as e4m3 (low byte = a), NaN handling aside (see
// keep_nan_signs). On sm_89+ one cvt.rn.satfinite instruction does both; it
// rounds exactly like detail::float_to_e4m3_satfinite (tests compare every
// backend with the reference).
__device__ __forceinline__ uint32_t e4m3x2_satfinite(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  const __nv_fp8x2_storage_t pair = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  return pair;
#else
  return detail::float_to_e4m3_satfinite(a) | (static_cast<uint32_t>(detail::float_to_e4m3_satfinite(b)) << 8);
#endif
}

// The pair q of e4m3x2_satfinite with a NaN input's byte set to 0x7F and that
// input's sign, as detail::quantize_e4m3 promises (the hardware would return
// 0x7F for -NaN; scaling loses the sign). `xa`, `xb` are the unscaled inputs.
// Leaves q unchanged when neither input is NaN.
__device__ __forceinline__ uint32_t keep_nan_signs(uint32_t q, float xa, float xb) {
  const uint32_t ab = __float_as_uint(xa), bb = __float_as_uint(xb);
  if ((ab & 0x7fffffffu) > 0x7f800000u) q = (q & 0xff00u) | ((ab >> 24) & 0x80u) | 0x7fu;
  if ((bb & 0x7fffffffu) > 0x7f800000u) q = (q & 0x00ffu) | ((((bb >> 24) & 0x80u) | 0x7fu) << 8);
  return q;
}

// Element type of K: bytes per element and conversion of a raw word to fp32.
template <KDtype kDtype>
struct KElem {
  static constexpr int kBytes = kDtype == KDtype::kFp32 ? 4 : 2;
  // Element i of the lane's elements from their raw 32-bit words.
  static __device__ __forceinline__ float get(const uint32_t* w, int i) {
    if constexpr (kDtype == KDtype::kFp32) {
      return __uint_as_float(w[i]);
    } else {
      const uint16_t h = static_cast<uint16_t>(i & 1 ? w[i / 2] >> 16 : w[i / 2] & 0xffffu);
      return kDtype == KDtype::kBf16 ? detail::bf16_bits_to_float(h) : detail::fp16_bits_to_float(h);
    }
  }
};

// The lane's kElems elements of a row, as raw words: 16-byte loads when the
// row is 16-byte aligned, else element loads.
template <KDtype kDtype, bool kVector, int kElems>
__device__ __forceinline__ void load_k_words(const uint8_t* p, uint32_t (&w)[kElems * KElem<kDtype>::kBytes / 4]) {
  constexpr int kWords = kElems * KElem<kDtype>::kBytes / 4;
  if constexpr (kVector) {
#pragma unroll
    for (int v = 0; v < kWords / 4; ++v) {
      const uint4 q = __ldg(reinterpret_cast<const uint4*>(p) + v);
      w[4 * v] = q.x;
      w[4 * v + 1] = q.y;
      w[4 * v + 2] = q.z;
      w[4 * v + 3] = q.w;
    }
  } else if constexpr (KElem<kDtype>::kBytes == 4) {
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = __ldg(reinterpret_cast<const uint32_t*>(p) + i);
  } else {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = __ldg(h + 2 * i) | (static_cast<uint32_t>(__ldg(h + 2 * i + 1)) << 16);
  }
}

// The lane's kWords quantized words (4 e4m3 bytes each) as one store.
template <int kWords>
__device__ __forceinline__ void store_words(uint8_t* p, const uint32_t (&q)[kWords]) {
  if constexpr (kWords == 4) *reinterpret_cast<uint4*>(p) = make_uint4(q[0], q[1], q[2], q[3]);
  else *reinterpret_cast<uint2*>(p) = make_uint2(q[0], q[1]);
}

// The lane's max |x| over its finite elements (NaN and Inf never count, spec
// §3), element by element with detail::finite_abs.
template <class E, int kElems, int kWords>
__device__ __forceinline__ float lane_finite_amax(const uint32_t (&w)[kWords]) {
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < kElems; ++i) amax = fmaxf(amax, detail::finite_abs(E::get(w, i)));
  return amax;
}

// The same max, and whether every element of the lane is finite, from one
// integer max of the magnitude bits: for non-negative floats the bit order is
// the value order, so when that max is below the Inf pattern it IS the finite
// amax (bit for bit what lane_finite_amax returns). A lane holding an Inf or
// a NaN falls back to lane_finite_amax.
template <class E, int kElems, int kWords>
__device__ __forceinline__ float lane_amax_checking_finite(const uint32_t (&w)[kWords], bool& all_finite) {
  uint32_t top = 0;
#pragma unroll
  for (int i = 0; i < kElems; ++i) top = max(top, __float_as_uint(E::get(w, i)) & 0x7fffffffu);
  all_finite = top < 0x7f800000u;
  return all_finite ? __uint_as_float(top) : lane_finite_amax<E, kElems>(w);
}

// The lane's elements as e4m3 bytes at scale s (x * (1/s), or x / s when
// `divide`), packed 4 per word. kFixNaN runs keep_nan_signs on every pair: a
// lane without a NaN input may skip it, as the fix-up changes nothing there.
template <bool kFixNaN, class E, int kElems, int kWords>
__device__ __forceinline__ void quantize_lane(const uint32_t (&w)[kWords], float s, bool divide,
                                              uint32_t (&q)[kElems / 4]) {
  const float inv = 1.0f / s;
#pragma unroll
  for (int i = 0; i < kElems / 4; ++i) q[i] = 0;
#pragma unroll
  for (int i = 0; i < kElems; i += 2) {
    const float xa = E::get(w, i), xb = E::get(w, i + 1);
    uint32_t pair =
        divide ? e4m3x2_satfinite(__fdiv_rn(xa, s), __fdiv_rn(xb, s)) : e4m3x2_satfinite(xa * inv, xb * inv);
    if constexpr (kFixNaN) pair = keep_nan_signs(pair, xa, xb);
    q[i / 4] |= pair << (8 * (i % 4));
  }
}

template <int kPage, KDtype kDtype, bool kVectorLoad, class Shape = WideStore, bool kChecked = false>
__global__ void __launch_bounds__(Shape::kThreads)
    quantize_and_store_k_kernel(uint8_t* __restrict__ cache, const uint8_t* __restrict__ k, int64_t n, int64_t k_ld,
                                const int64_t* __restrict__ slots, ScaleMode mode, StoreChecks checks) {
  using Page = PageGeometry<kPage>;
  using E = KElem<kDtype>;
  constexpr int kElems = Shape::kElems, kUnroll = Shape::kUnroll;
  constexpr int kWords = kElems * E::kBytes / 4;
  const int lane = threadIdx.x % Shape::kLanes;  // elements [kElems * lane, kElems * (lane + 1))
  const int group = threadIdx.x / Shape::kLanes;
  const bool ue8m0 = mode == ScaleMode::kUe8m0, divide = mode == ScaleMode::kFp32Divide;
  const int64_t row_bytes = k_ld * E::kBytes;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * Shape::kCtaTokens; base < n;
       base += static_cast<int64_t>(gridDim.x) * Shape::kCtaTokens) {
    int64_t slot[kUnroll];
    uint32_t w[kUnroll][kWords];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t t = base + group + u * Shape::kGroups;
      slot[u] = -1;
#pragma unroll
      for (int i = 0; i < kWords; ++i) w[u][i] = 0;
      if (t < n) {
        slot[u] = checked_slot<kChecked>(__ldg(slots + t), t, lane == 0, checks, OpId::kQuantizeAndStoreK);
        load_k_words<kDtype, kVectorLoad, kElems>(k + t * row_bytes + lane * kElems * E::kBytes, w[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      bool all_finite = false;  // stays false without the fast path: the fix-up always runs
      float amax = Shape::kNanFastPath ? lane_amax_checking_finite<E, kElems>(w[u], all_finite)
                                       : lane_finite_amax<E, kElems>(w[u]);
#pragma unroll
      for (int offset = Shape::kLanes / 2; offset > 0; offset >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
      if (slot[u] < 0) continue;  // padding row, past the end, or past n
      const float s = detail::scale_from_amax(amax, ue8m0);
      uint32_t q[kElems / 4];
      if (all_finite) quantize_lane<false, E, kElems>(w[u], s, divide, q);
      else quantize_lane<true, E, kElems>(w[u], s, divide, q);
      store_words(cache + Page::k_offset(slot[u]) + lane * kElems, q);
      if (lane == 0) *reinterpret_cast<float*>(cache + Page::scale_offset(slot[u])) = s;
    }
  }
}

// kWords raw bytes of fp8 K as words: one 8- or 16-byte load when the row is
// 16-byte aligned, else byte loads.
template <bool kVector, int kWords>
__device__ __forceinline__ void load_byte_words(const uint8_t* src, uint32_t (&w)[kWords]) {
  static_assert(kWords == 2 || kWords == 4, "8 or 16 bytes per lane");
  if constexpr (kVector && kWords == 4) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(src));
    w[0] = v.x;
    w[1] = v.y;
    w[2] = v.z;
    w[3] = v.w;
  } else if constexpr (kVector) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
    w[0] = v.x;
    w[1] = v.y;
  } else {
#pragma unroll
    for (int i = 0; i < kWords; ++i)
      w[i] =
          src[4 * i] | (src[4 * i + 1] << 8) | (src[4 * i + 2] << 16) | (static_cast<uint32_t>(src[4 * i + 3]) << 24);
  }
}

// store_k_and_s: the quantizing walk without arithmetic; 128 / kLanes bytes per lane.
template <int kPage, bool kVectorCopy, class Shape = WideStore, bool kChecked = false>
__global__ void __launch_bounds__(Shape::kThreads)
    store_k_and_s_kernel(uint8_t* __restrict__ cache, const uint8_t* __restrict__ k, int64_t n, int64_t k_ld,
                         const float* __restrict__ scale, const int64_t* __restrict__ slots, StoreChecks checks) {
  using Page = PageGeometry<kPage>;
  constexpr int kUnroll = Shape::kUnroll, kBytes = Shape::kElems, kWords = kBytes / 4;
  const int lane = threadIdx.x % Shape::kLanes;
  const int group = threadIdx.x / Shape::kLanes;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * Shape::kCtaTokens; base < n;
       base += static_cast<int64_t>(gridDim.x) * Shape::kCtaTokens) {
    int64_t slot[kUnroll];
    uint32_t w[kUnroll][kWords];
    float sc[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t t = base + group + u * Shape::kGroups;
      slot[u] = -1;
      sc[u] = 0.0f;
      if (t < n) {
        slot[u] = checked_slot<kChecked>(__ldg(slots + t), t, lane == 0, checks, OpId::kStoreKAndS);
        load_byte_words<kVectorCopy>(k + t * k_ld + lane * kBytes, w[u]);
        if (lane == 0) sc[u] = __ldg(scale + t);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (slot[u] < 0) continue;
      store_words(cache + Page::k_offset(slot[u]) + lane * kBytes, w[u]);
      if (lane == 0) *reinterpret_cast<float*>(cache + Page::scale_offset(slot[u])) = sc[u];
    }
  }
}

// ---------------------------------------------------------------------------
// Paged gather. Work is page-granular: item (b, p) = page p of request b, i.e.
// up to 8192 contiguous K bytes and 256 contiguous scale bytes that land in
// consecutive output rows. Items are numbered b * table_cols + p, so a CTA
// knows its request and page without a search; items past a request's last
// page are skipped. A persistent 1-D grid walks the requests in chunks of
// Policy::kThreads: each CTA scans the chunk's lengths in shared memory (the
// first output row of each request) and takes every gridDim-th item.
// The page id of a CTA's first item is loaded before the scan, so for small
// batches the chain is: {lengths, page id} -> K bytes -> store.
// ---------------------------------------------------------------------------
// Launch shape of the gather: threads per CTA, tokens per work item (64 = one
// default page; 32 = half a page, twice the items for small batches) and the
// page size. Pages larger than 64 tokens are cut into 64-token items, smaller
// ones are one item each.
template <int kThreadsT, int kItemTokensT, int kPageT = 64>
struct GatherPolicy {
  static constexpr int kThreads = kThreadsT;
  static constexpr int kItemTokens = kItemTokensT;
  static constexpr int kPage = kPageT;
  static constexpr int64_t kPageBytes = PageGeometry<kPage>::kBytes;
  static constexpr int64_t kKBytesPerPage = PageGeometry<kPage>::kKBytes;
  static constexpr int kItemsPerPage = kPage / kItemTokens;
  static constexpr int kVecPerThread =
      kItemTokens * static_cast<int>(kHeadDim / 16) / kThreads;  // 16 B loads in flight
  static_assert(kVecPerThread >= 1 && kThreads >= kItemTokens && kPage % kItemTokens == 0, "bad gather policy");
};
template <int kPage = 64>
using DefaultGatherPolicy = GatherPolicy<128, (kPage < 64 ? kPage : 64), kPage>;

enum class LengthForm { kHost, kSeqLens, kCuSeqLens };

template <class TableT, class LenT>
struct GatherParams {
  const uint8_t* cache;
  const TableT* table;  // [batch, table_ld]; page ids of each request
  int64_t table_cols;   // pages per row that may be used (L_b <= page size * table_cols)
  int64_t table_ld;
  const LenT* lens;     // kSeqLens: [batch]; kCuSeqLens: [batch + 1]; kHost: unused
  int64_t host_length;  // kHost: the single request's length
  int64_t batch;
  uint8_t* out_k;  // [rows, 128] or nullptr when K is not wanted
  float* out_s;    // [rows] or nullptr when scales are not wanted
  // Checked mode only (error != nullptr); the unchecked kernels never read these.
  int64_t out_capacity = 0;      // rows [0, out_capacity) may be written
  int64_t num_pages = 0;         // valid page ids are [0, num_pages)
  DeviceError* error = nullptr;  // device memory: where the first violation is recorded
};

// Checked mode: a length that cannot be gathered (L_b < 0, L_b > page size * table_cols).
// Rows are reported as indices into the length array: seq_lens[b], or the
// cu_seq_lens[b + 1] that makes the step from cu_seq_lens[b] invalid.
template <LengthForm kForm, class LenT>
__device__ __forceinline__ void record_length_error(DeviceError* error, const LenT* lens, int64_t b, int64_t len) {
  if constexpr (kForm == LengthForm::kSeqLens) {
    record_error(error, OpId::kGatherKAndS, ArgId::kSeqLens, b, len);
  } else if constexpr (kForm == LengthForm::kCuSeqLens) {
    record_error(error, OpId::kGatherKAndS, ArgId::kCuSeqLens, b + 1, static_cast<int64_t>(lens[b + 1]));
  }
}

// Checked mode: a page id outside the pool. gather_k / gather_s report the
// position in page_ids; gather_k_and_s reports the request.
template <LengthForm kForm, bool kWriteK>
__device__ __forceinline__ void record_page_error(DeviceError* error, int64_t request, int64_t col, int64_t page) {
  if constexpr (kForm == LengthForm::kHost) {
    record_error(error, kWriteK ? OpId::kGatherK : OpId::kGatherS, ArgId::kPageIds, col, page);
  } else {
    record_error(error, OpId::kGatherKAndS, ArgId::kPageTable, request, page);
  }
}

template <LengthForm kForm, class LenT>
__device__ __forceinline__ int64_t request_length(const LenT* lens, int64_t host_length, int64_t b) {
  if constexpr (kForm == LengthForm::kHost) return host_length;
  else if constexpr (kForm == LengthForm::kSeqLens) return static_cast<int64_t>(lens[b]);
  else return static_cast<int64_t>(lens[b + 1]) - static_cast<int64_t>(lens[b]);
}

// One work item's bytes in registers: a thread's K vectors and its scale.
template <class Policy>
struct ItemRegs {
  uint4 k[Policy::kVecPerThread];
  float scale;
};

// Loads `tokens` consecutive tokens starting at `k_src` / `s_src`. Every load
// is issued before any store (the scale load must not queue behind K stores).
template <class Policy, bool kWriteK, bool kWriteS>
__device__ __forceinline__ void load_tokens(ItemRegs<Policy>& r, const uint8_t* __restrict__ k_src,
                                            const float* __restrict__ s_src, int64_t tokens) {
  const int tid = threadIdx.x;
  if constexpr (kWriteS) {
    if (tid < tokens) r.scale = __ldg(s_src + tid);
  }
  if constexpr (kWriteK) {
    const uint4* src = reinterpret_cast<const uint4*>(k_src);
    const int vectors = static_cast<int>(tokens * (kHeadDim / 16));
#pragma unroll
    for (int j = 0; j < Policy::kVecPerThread; ++j) {
      const int e = tid + j * Policy::kThreads;
      if (e < vectors) r.k[j] = __ldg(src + e);
    }
  }
}

// Stores what load_tokens loaded to output rows [row, row + tokens).
template <class Policy, bool kWriteK, bool kWriteS>
__device__ __forceinline__ void store_tokens(const ItemRegs<Policy>& r, int64_t tokens, int64_t row,
                                             uint8_t* __restrict__ out_k, float* __restrict__ out_s) {
  const int tid = threadIdx.x;
  if constexpr (kWriteK) {
    uint4* dst = reinterpret_cast<uint4*>(out_k + row * kHeadDim);
    const int vectors = static_cast<int>(tokens * (kHeadDim / 16));
#pragma unroll
    for (int j = 0; j < Policy::kVecPerThread; ++j) {
      const int e = tid + j * Policy::kThreads;
      if (e < vectors) dst[e] = r.k[j];
    }
  }
  if constexpr (kWriteS) {
    if (tid < tokens) out_s[row + tid] = r.scale;
  }
}

// Rows before request b (the exclusive scan of the lengths at b), computed by
// each warp on its own, so a CTA that owns a single item needs no block scan
// and no barrier. Two steps, so the caller can issue its data loads between
// them: this lane's share (seq_lens summed lane-strided; every load issued at
// once), then the warp-wide sum (shuffles: the lanes of a warp call it together).
template <LengthForm kForm, class LenT>
__device__ __forceinline__ int64_t rows_before_share(const LenT* lens, int64_t b) {
  if constexpr (kForm == LengthForm::kHost) {
    return 0;
  } else if constexpr (kForm == LengthForm::kCuSeqLens) {
    return (threadIdx.x & 31) == 0 ? static_cast<int64_t>(lens[b]) - static_cast<int64_t>(lens[0]) : 0;
  } else {
    int64_t sum = 0;
    for (int64_t j = threadIdx.x & 31; j < b; j += 32) sum += static_cast<int64_t>(lens[j]);
    return sum;
  }
}
template <LengthForm kForm>
__device__ __forceinline__ int64_t warp_total(int64_t share) {
  if constexpr (kForm != LengthForm::kHost) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) share += __shfl_xor_sync(0xffffffffu, share, offset);
  }
  return share;
}

// The whole job of a CTA that owns exactly one item (unchecked kernels, one
// chunk): {page id, length, lengths before} -> the item's bytes -> store; the
// shuffles of the row start run while the bytes are in flight.
template <class Policy, LengthForm kForm, bool kWriteK, bool kWriteS, class TableT, class LenT>
__device__ __forceinline__ void gather_single_item(const GatherParams<TableT, LenT>& p, int64_t item, int64_t parts) {
  const int64_t b = static_cast<int64_t>(static_cast<uint32_t>(item) / static_cast<uint32_t>(parts));
  const int64_t part = item - b * parts;
  const int64_t col = part / Policy::kItemsPerPage;
  const int64_t page = static_cast<int64_t>(__ldg(p.table + b * p.table_ld + col));
  const int64_t len = request_length<kForm>(p.lens, p.host_length, b);
  const int64_t share = rows_before_share<kForm>(p.lens, b);
  const int64_t token0 = part * Policy::kItemTokens;  // first token of the item within its request
  const int64_t left = len - token0;
  if (left <= 0) return;  // uniform over the CTA
  const int64_t tokens = left < Policy::kItemTokens ? left : Policy::kItemTokens;
  const int64_t in_page = token0 - col * Policy::kPage;
  const uint8_t* page_base = p.cache + page * Policy::kPageBytes;
  ItemRegs<Policy> regs;
  load_tokens<Policy, kWriteK, kWriteS>(regs, page_base + in_page * kHeadDim,
                                        reinterpret_cast<const float*>(page_base + Policy::kKBytesPerPage) + in_page,
                                        tokens);
  const int64_t row0 = warp_total<kForm>(share);
  store_tokens<Policy, kWriteK, kWriteS>(regs, tokens, row0 + token0, p.out_k, p.out_s);
}

// kChecked (see nsa/common.h): an invalid length writes none of its request's
// rows but still counts in the row offsets of the requests after it (offsets
// are the exclusive scan of the claimed lengths, as the caller computed them);
// an invalid page id writes none of its item's rows; no row outside
// [0, out_capacity) is written. cu_seq_lens[0] != 0 writes nothing at all
// (the rows would be ambiguous: relative to cu[0], or absolute as in vLLM).
template <class Policy, LengthForm kForm, bool kWriteK, bool kWriteS, class TableT, class LenT, bool kChecked = false>
__global__ void __launch_bounds__(Policy::kThreads) paged_gather_kernel(GatherParams<TableT, LenT> p) {
  constexpr int kThreads = Policy::kThreads;
  // Warp scans: fewer steps on the critical path than the default raking scan.
  using Scan = cub::BlockScan<int64_t, kThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t s_row_start[kThreads];
  __shared__ int64_t s_len[kThreads];

  const int tid = threadIdx.x;
  const int64_t grid = gridDim.x;
  const int64_t parts = p.table_cols * Policy::kItemsPerPage;  // items per request
  [[maybe_unused]] const int64_t max_len = p.table_cols * Policy::kPage;
  [[maybe_unused]] __shared__ int64_t s_first_overflow;  // first request whose rows pass out_capacity
  if constexpr (kChecked) {
    if constexpr (kForm == LengthForm::kCuSeqLens) {
      const int64_t cu0 = static_cast<int64_t>(p.lens[0]);
      if (cu0 != 0) {  // uniform over the grid: every CTA leaves before its first barrier
        if (blockIdx.x == 0 && tid == 0) record_error(p.error, OpId::kGatherKAndS, ArgId::kCuSeqLens, 0, cu0);
        return;
      }
    }
    if (tid == 0) s_first_overflow = -1;
    __syncthreads();  // before any thread may set it (checked launches only)
  }
  if constexpr (!kChecked) {
    // A CTA whose only item is item blockIdx.x (the grid covers every item of
    // a one-chunk batch) skips the scan. batch <= kThreads bounds the loads
    // of rows_before to kThreads / 32 per lane.
    const int64_t all_items = p.batch * parts;
    if (p.batch <= kThreads && all_items <= INT32_MAX && blockIdx.x + grid >= all_items) {
      if (blockIdx.x < all_items) gather_single_item<Policy, kForm, kWriteK, kWriteS>(p, blockIdx.x, parts);
      return;
    }
  }
  int64_t row_base = 0, item_base = 0;
  for (int64_t chunk = 0; chunk < p.batch; chunk += kThreads) {
    const int count = static_cast<int>(p.batch - chunk < kThreads ? p.batch - chunk : kThreads);
    const int64_t items = count * parts;
    // Items are numbered globally (item_base + i) so the round-robin over CTAs
    // continues across chunks. (64-bit modulo only from the second chunk on.)
    int64_t first = blockIdx.x;
    if (item_base != 0) {
      first = (first - item_base) % grid;
      if (first < 0) first += grid;
    }
    // The first item's request and page follow from its number, so its page
    // id (an in-bounds table entry) and its request's length are loaded with
    // the scan's inputs, and (unchecked) its bytes are loaded before the scan:
    // the scan and barrier then overlap the data round trip.
    const bool narrow = items <= INT32_MAX;  // 32-bit division is several times cheaper
    auto request_of = [&](int64_t i) {
      return narrow ? static_cast<int64_t>(static_cast<uint32_t>(i) / static_cast<uint32_t>(parts)) : i / parts;
    };
    int64_t first_page = 0;
    ItemRegs<Policy> first_regs;
    bool first_loaded = false;
    if (first < items) {
      const int64_t b = request_of(first);
      const int64_t part = first - b * parts;
      first_page = static_cast<int64_t>(__ldg(p.table + (chunk + b) * p.table_ld + part / Policy::kItemsPerPage));
      if constexpr (!kChecked) {
        const int64_t token0 = part * Policy::kItemTokens;
        const int64_t left = request_length<kForm>(p.lens, p.host_length, chunk + b) - token0;
        if (left > 0) {
          const int64_t in_page = token0 - (part / Policy::kItemsPerPage) * Policy::kPage;
          const uint8_t* page_base = p.cache + first_page * Policy::kPageBytes;
          load_tokens<Policy, kWriteK, kWriteS>(first_regs, page_base + in_page * kHeadDim,
                                                reinterpret_cast<const float*>(page_base + Policy::kKBytesPerPage) +
                                                    in_page,
                                                left < Policy::kItemTokens ? left : Policy::kItemTokens);
          first_loaded = true;
        }
      }
    }

    const int64_t len = tid < count ? request_length<kForm>(p.lens, p.host_length, chunk + tid) : 0;
    int64_t before = 0, total = 0;
    Scan(scan_storage).ExclusiveSum(len, before, total);
    int64_t gathered = len;  // tokens of this request actually copied
    if constexpr (kChecked && kForm != LengthForm::kHost) {
      if (len < 0 || len > max_len) {
        gathered = 0;
        if (blockIdx.x == 0) record_length_error<kForm>(p.error, p.lens, chunk + tid, len);
      }
      const int64_t start = row_base + before;
      if (blockIdx.x == 0 && start <= p.out_capacity && start + len > p.out_capacity) s_first_overflow = chunk + tid;
    }
    s_len[tid] = gathered;
    s_row_start[tid] = row_base + before;
    __syncthreads();

    // Page ids are software-pipelined: the next item's id is loaded while this
    // item's bytes move, so a CTA pays one dependent round trip per item, not two.
    int64_t page = first_page, next_page = 0;
    for (int64_t i = first; i < items; i += grid, page = next_page) {
      const int64_t b = request_of(i);
      const int64_t part = i - b * parts;
      const int64_t col = part / Policy::kItemsPerPage;
      if (i + grid < items) {
        const int64_t nb = request_of(i + grid);
        next_page = static_cast<int64_t>(
            __ldg(p.table + (chunk + nb) * p.table_ld + (i + grid - nb * parts) / Policy::kItemsPerPage));
      }
      const int64_t token0 = part * Policy::kItemTokens;  // first token of the item within its request
      const int64_t left = s_len[b] - token0;
      if (left <= 0) continue;  // past this request's last token
      if (i == first && first_loaded) {
        store_tokens<Policy, kWriteK, kWriteS>(first_regs, left < Policy::kItemTokens ? left : Policy::kItemTokens,
                                               s_row_start[b] + token0, p.out_k, p.out_s);
        continue;
      }
      int64_t in_page = token0 - col * Policy::kPage;
      int64_t tokens = left < Policy::kItemTokens ? left : Policy::kItemTokens;
      int64_t row = s_row_start[b] + token0;
      if constexpr (kChecked) {  // every condition is uniform over the CTA
        if (page < 0 || page >= p.num_pages) {
          if (tid == 0) record_page_error<kForm, kWriteK>(p.error, chunk + b, col, page);
          continue;
        }
        // Invalid lengths before this request (or a sum past the capacity) can
        // move its rows out of [0, out_capacity): copy only the part inside.
        if (row < 0) {
          if (-row >= tokens) continue;
          in_page -= row;
          tokens += row;
          row = 0;
        }
        if (row >= p.out_capacity) continue;
        if (row + tokens > p.out_capacity) tokens = p.out_capacity - row;
      }
      const uint8_t* page_base = p.cache + page * Policy::kPageBytes;
      ItemRegs<Policy> regs;
      load_tokens<Policy, kWriteK, kWriteS>(regs, page_base + in_page * kHeadDim,
                                            reinterpret_cast<const float*>(page_base + Policy::kKBytesPerPage) +
                                                in_page,
                                            tokens);
      store_tokens<Policy, kWriteK, kWriteS>(regs, tokens, row, p.out_k, p.out_s);
    }
    row_base += total;
    item_base += items;
    __syncthreads();  // shared arrays are rewritten by the next chunk
  }
  if constexpr (kChecked && kForm != LengthForm::kHost) {
    // row_base is now the sum of the claimed lengths.
    if (blockIdx.x == 0 && tid == 0 && row_base > p.out_capacity) {
      record_error(p.error, OpId::kGatherKAndS, ArgId::kOutCapacity, s_first_overflow, row_base);
    }
  }
}

// ---------------------------------------------------------------------------
// Launchers.
// ---------------------------------------------------------------------------
// Persistent grid: exactly one wave of resident CTAs (enough to keep every
// SM's memory pipe busy; a second wave would start late and finish late),
// never more than there are work items. Residency per SM comes from the
// occupancy calculator once per kernel instantiation (no per-call query).
// (Templated on the kernel itself, so each instantiation has its own cache;
// a device with another SM architecture in the same process would share it.)
template <auto kKernel>
inline int resident_ctas_per_sm(int threads) {
  static const int per_sm = [threads] {
    // The first launch may happen inside a stream capture: relax this
    // thread's capture mode for the (non-stream) occupancy query.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    (void)cudaThreadExchangeStreamCaptureMode(&mode);
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, threads, 0) != cudaSuccess || n < 1) {
      (void)cudaGetLastError();  // not sticky; fall back to one CTA per SM
      n = 1;
    }
    (void)cudaThreadExchangeStreamCaptureMode(&mode);
    return n;
  }();
  return per_sm;
}

// Stores: at most one wave of resident CTAs (each CTA strides over the rest),
// or the fraction of a wave that `grid` asks for.
template <auto kKernel, class Shape>
inline int64_t store_wave_ctas(int num_sms) {
  return static_cast<int64_t>(num_sms) * resident_ctas_per_sm<kKernel>(Shape::kThreads);
}
template <auto kKernel, class Shape>
inline int store_grid(int64_t n, int num_sms, StoreGrid grid) {
  const int64_t blocks = (n + Shape::kCtaTokens - 1) / Shape::kCtaTokens;
  const int64_t wave = store_wave_ctas<kKernel, Shape>(num_sms) / grid.wave_divisor;
  const int64_t cap = wave > 0 ? wave : 1;
  return static_cast<int>(blocks < cap ? blocks : cap);
}

// The launcher of one quantize_and_store_k kernel family (page size, K dtype,
// 16-byte loads or not, checked or not): launch(Shape{}, grid) enqueues its
// kernel of any StoreShape with any StoreGrid. The library launches through
// choose_store_launch below; bench/index_cache_bench --store-sweep calls the
// same operator with the candidate shapes and grids.
template <int kPage, KDtype kDtype, bool kVector, bool kChecked>
struct QuantizeStoreLaunch {
  static constexpr bool kQuantizes = true;
  uint8_t* cache;
  const uint8_t* k;
  int64_t n;
  int64_t k_ld;
  const int64_t* slots;
  ScaleMode mode;
  int num_sms;
  cudaStream_t stream;
  StoreChecks checks;

  // Tokens that one wave of Shape's CTAs carries per iteration.
  template <class Shape>
  int64_t wave_tokens() const {
    constexpr auto kernel = quantize_and_store_k_kernel<kPage, kDtype, kVector, Shape, kChecked>;
    return store_wave_ctas<kernel, Shape>(num_sms) * Shape::kCtaTokens;
  }
  // CTAs of the launch of Shape with `grid`.
  template <class Shape>
  int ctas(StoreGrid grid) const {
    constexpr auto kernel = quantize_and_store_k_kernel<kPage, kDtype, kVector, Shape, kChecked>;
    return store_grid<kernel, Shape>(n, num_sms, grid);
  }
  template <class Shape>
  void operator()(Shape, StoreGrid grid) const {
    constexpr auto kernel = quantize_and_store_k_kernel<kPage, kDtype, kVector, Shape, kChecked>;
    kernel<<<ctas<Shape>(grid), Shape::kThreads, 0, stream>>>(cache, k, n, k_ld, slots, mode, checks);
  }
};

// The same for store_k_and_s (its kernel ignores Shape::kNanFastPath).
template <int kPage, bool kVector, bool kChecked>
struct StoreKAndSLaunch {
  static constexpr bool kQuantizes = false;
  uint8_t* cache;
  const uint8_t* k;
  int64_t n;
  int64_t k_ld;
  const float* scale;
  const int64_t* slots;
  int num_sms;
  cudaStream_t stream;
  StoreChecks checks;

  template <class Shape>
  int64_t wave_tokens() const {
    constexpr auto kernel = store_k_and_s_kernel<kPage, kVector, Shape, kChecked>;
    return store_wave_ctas<kernel, Shape>(num_sms) * Shape::kCtaTokens;
  }
  template <class Shape>
  int ctas(StoreGrid grid) const {
    constexpr auto kernel = store_k_and_s_kernel<kPage, kVector, Shape, kChecked>;
    return store_grid<kernel, Shape>(n, num_sms, grid);
  }
  template <class Shape>
  void operator()(Shape, StoreGrid grid) const {
    constexpr auto kernel = store_k_and_s_kernel<kPage, kVector, Shape, kChecked>;
    kernel<<<ctas<Shape>(grid), Shape::kThreads, 0, stream>>>(cache, k, n, k_ld, scale, slots, checks);
  }
};

// THE launch shape and grid of both stores: the one place that picks them
// (issue 14), so changing the pick is a one-line change here; the --store-sweep
// mode of bench/index_cache_bench times the candidates through the same
// launchers. `launch` is a QuantizeStoreLaunch or a StoreKAndSLaunch.
//   quantize_and_store_k: NarrowStore while the n tokens fit one wave of it
//     (every token in flight at once, short per-lane chains), WideStore beyond.
//   store_k_and_s: WideStore at every n.
// Every pick is a full wave at most (StoreGrid{}).
template <class Launch>
inline void choose_store_launch(const Launch& launch) {
  if constexpr (Launch::kQuantizes) {
    if (launch.n <= launch.template wave_tokens<NarrowStore>()) return launch(NarrowStore{}, StoreGrid{});
  }
  launch(WideStore{}, StoreGrid{});
}

// f(vector, checked) with the two runtime flags as std::bool_constant, so a
// launcher's kernel family is picked at compile time.
template <class F>
inline void with_store_flags(bool vector, bool checked, const F& f) {
  if (checked) {
    if (vector) f(std::true_type{}, std::true_type{});
    else f(std::false_type{}, std::true_type{});
  } else {
    if (vector) f(std::true_type{}, std::false_type{});
    else f(std::false_type{}, std::false_type{});
  }
}

// Calls body(launch) with the QuantizeStoreLaunch for k's alignment (16-byte
// loads when the base and the row stride allow them) and for `checks`.
template <int kPage, KDtype kDtype, class Body>
inline void with_quantize_store_launch(uint8_t* cache, const void* k, int64_t n, int64_t k_ld, const int64_t* slots,
                                       ScaleMode mode, int num_sms, cudaStream_t stream, StoreChecks checks,
                                       const Body& body) {
  constexpr int64_t kElem = KElem<kDtype>::kBytes;
  const auto* kk = static_cast<const uint8_t*>(k);
  const bool vec = reinterpret_cast<uintptr_t>(k) % 16 == 0 && (k_ld * kElem) % 16 == 0;
  with_store_flags(vec, checks.error != nullptr, [&](auto vector, auto checked) {
    body(QuantizeStoreLaunch<kPage, kDtype, decltype(vector)::value, decltype(checked)::value>{cache, kk, n, k_ld,
                                                                                               slots, mode, num_sms,
                                                                                               stream, checks});
  });
}

// K [n, 128] of k_dtype (row stride k_ld elements; aligned to its element
// size) quantized and stored at slots. checks.error != nullptr launches the
// checked kernel (see StoreChecks).
template <int kPage = 64>
inline cudaError_t invoke_quantize_and_store_k(uint8_t* cache, const void* k, KDtype k_dtype, int64_t n, int64_t k_ld,
                                               const int64_t* slots, ScaleMode mode, int num_sms, cudaStream_t stream,
                                               StoreChecks checks = {}) {
  if (n == 0) return cudaSuccess;
  const auto chosen = [](const auto& launch) { choose_store_launch(launch); };
  switch (k_dtype) {
    case KDtype::kBf16:
      with_quantize_store_launch<kPage, KDtype::kBf16>(cache, k, n, k_ld, slots, mode, num_sms, stream, checks, chosen);
      break;
    case KDtype::kFp16:
      with_quantize_store_launch<kPage, KDtype::kFp16>(cache, k, n, k_ld, slots, mode, num_sms, stream, checks, chosen);
      break;
    case KDtype::kFp32:
      with_quantize_store_launch<kPage, KDtype::kFp32>(cache, k, n, k_ld, slots, mode, num_sms, stream, checks, chosen);
      break;
  }
  return cudaGetLastError();
}

// The same for store_k_and_s: body(launch) with the StoreKAndSLaunch for k's
// alignment and for `checks`.
template <int kPage, class Body>
inline void with_store_k_and_s_launch(uint8_t* cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                                      const int64_t* slots, int num_sms, cudaStream_t stream, StoreChecks checks,
                                      const Body& body) {
  const bool vec = reinterpret_cast<uintptr_t>(k) % 16 == 0 && k_ld % 16 == 0;
  with_store_flags(vec, checks.error != nullptr, [&](auto vector, auto checked) {
    body(StoreKAndSLaunch<kPage, decltype(vector)::value, decltype(checked)::value>{cache, k, n, k_ld, scale, slots,
                                                                                    num_sms, stream, checks});
  });
}

template <int kPage = 64>
inline cudaError_t invoke_store_k_and_s(uint8_t* cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                                        const int64_t* slots, int num_sms, cudaStream_t stream,
                                        StoreChecks checks = {}) {
  if (n == 0) return cudaSuccess;
  with_store_k_and_s_launch<kPage>(cache, k, n, k_ld, scale, slots, num_sms, stream, checks,
                                   [](const auto& launch) { choose_store_launch(launch); });
  return cudaGetLastError();
}

inline int gather_grid(int64_t max_items, int num_sms, int per_sm) {
  const int64_t cap = static_cast<int64_t>(num_sms) * per_sm;
  return static_cast<int>(max_items < cap ? (max_items > 0 ? max_items : 1) : cap);
}

// max_pages = batch * table_cols (the launcher's grid bound). p.error != nullptr
// launches the checked kernel (p.out_capacity and p.num_pages must be set then).
template <LengthForm kForm, bool kWriteK, bool kWriteS, class Policy = DefaultGatherPolicy<>, class TableT, class LenT>
cudaError_t invoke_paged_gather(const GatherParams<TableT, LenT>& p, int64_t max_pages, int num_sms,
                                cudaStream_t stream) {
  // Checked mode launches even without items: the lengths are still validated.
  if (p.batch == 0 || (max_pages == 0 && p.error == nullptr)) return cudaSuccess;
  const int64_t items = max_pages * Policy::kItemsPerPage;
  if (p.error != nullptr) {
    constexpr auto kernel = paged_gather_kernel<Policy, kForm, kWriteK, kWriteS, TableT, LenT, true>;
    kernel<<<gather_grid(items, num_sms, resident_ctas_per_sm<kernel>(Policy::kThreads)), Policy::kThreads, 0,
             stream>>>(p);
  } else {
    constexpr auto kernel = paged_gather_kernel<Policy, kForm, kWriteK, kWriteS, TableT, LenT>;
    kernel<<<gather_grid(items, num_sms, resident_ctas_per_sm<kernel>(Policy::kThreads)), Policy::kThreads, 0,
             stream>>>(p);
  }
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace nsa
