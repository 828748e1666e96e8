// CUDA kernels and launchers of the paged FP8 indexer-K cache. Header-only so
// an engine can fuse them into its own kernels; the library's public API in
// nsa/index_cache.h validates arguments and then calls the launchers below.
//
// Launchers take raw pointers, sizes and a stream, enqueue exactly one kernel
// and return the launch status (cudaGetLastError). They never allocate and
// never synchronise. Every byte offset is 64-bit; every grid is 1-D.
#pragma once

#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "nsa/detail/quant.h"

namespace nsa {
namespace kernels {

constexpr int64_t kPageSize = 64;
constexpr int64_t kHeadDim = 128;
constexpr int64_t kPageBytes = 8448;
constexpr int64_t kKBytesPerPage = 8192;

__device__ __forceinline__ int64_t k_byte_offset(int64_t slot) {
  return (slot >> 6) * kPageBytes + (slot & 63) * kHeadDim;
}
__device__ __forceinline__ int64_t scale_byte_offset(int64_t slot) {
  return (slot >> 6) * kPageBytes + kKBytesPerPage + (slot & 63) * 4;
}

// ---------------------------------------------------------------------------
// Stores: half a warp (16 lanes) per token, 8 elements per lane. All loads of
// a token (slot, K row, scale) are issued together, so a store costs one
// memory round trip before its write. The two half-warps of a warp work on
// neighbouring tokens; every lane runs the shuffles (full mask) and only
// lanes with a real token and a slot >= 0 write.
// ---------------------------------------------------------------------------
constexpr int kStoreThreads = 256;
constexpr int kTokensPerStoreBlock = kStoreThreads / 16;

// 8 bf16 of a row: one 16-byte load when aligned, else 8 scalar loads.
template <bool kVector>
__device__ __forceinline__ void load_bf16x8(const uint16_t* p, uint16_t (&h)[8]) {
  if constexpr (kVector) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      h[2 * i] = static_cast<uint16_t>(w[i] & 0xffffu);
      h[2 * i + 1] = static_cast<uint16_t>(w[i] >> 16);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) h[i] = p[i];
  }
}

template <bool kVectorLoad>
__global__ void __launch_bounds__(kStoreThreads) quantize_and_store_k_kernel(uint8_t* __restrict__ cache,
                                                                             const uint16_t* __restrict__ k, int64_t n,
                                                                             int64_t k_ld,
                                                                             const int64_t* __restrict__ slots,
                                                                             bool ue8m0) {
  const int sub = threadIdx.x & 15;  // lane within the half-warp: elements [8*sub, 8*sub + 8)
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTokensPerStoreBlock;
  // Loop bound on the warp's first token keeps the whole warp in the loop (shuffles need it).
  const int64_t warp_first = static_cast<int64_t>(blockIdx.x) * kTokensPerStoreBlock + (threadIdx.x >> 5) * 2;
  for (int64_t base = warp_first; base < n; base += stride) {
    const int64_t t = base + ((threadIdx.x >> 4) & 1);
    const bool active = t < n;
    int64_t slot = -1;
    uint16_t h[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    if (active) {
      slot = __ldg(slots + t);
      load_bf16x8<kVectorLoad>(k + t * k_ld + sub * 8, h);
    }
    float x[8];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      x[i] = detail::bf16_bits_to_float(h[i]);
      amax = fmaxf(amax, detail::finite_abs(x[i]));
    }
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    if (slot < 0) continue;  // padding row or past the end
    const float s = detail::scale_from_amax(amax, ue8m0);
    const float inv = 1.0f / s;
    uint32_t q[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) q[i / 4] |= static_cast<uint32_t>(detail::quantize_e4m3(x[i], inv)) << (8 * (i % 4));
    *reinterpret_cast<uint2*>(cache + k_byte_offset(slot) + sub * 8) = make_uint2(q[0], q[1]);
    if (sub == 0) *reinterpret_cast<float*>(cache + scale_byte_offset(slot)) = s;
  }
}

// store_k_and_s: the same shape without arithmetic; 8 bytes per lane.
template <bool kVectorCopy>
__global__ void __launch_bounds__(kStoreThreads) store_k_and_s_kernel(uint8_t* __restrict__ cache,
                                                                      const uint8_t* __restrict__ k, int64_t n,
                                                                      int64_t k_ld, const float* __restrict__ scale,
                                                                      const int64_t* __restrict__ slots) {
  const int sub = threadIdx.x & 15;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kTokensPerStoreBlock;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kTokensPerStoreBlock + (threadIdx.x >> 4); t < n; t += stride) {
    const int64_t slot = __ldg(slots + t);
    const uint8_t* src = k + t * k_ld + sub * 8;
    uint2 v;
    if constexpr (kVectorCopy) {
      v = __ldg(reinterpret_cast<const uint2*>(src));
    } else {
      uint8_t b[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) b[i] = src[i];
      v.x = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
      v.y = b[4] | (b[5] << 8) | (b[6] << 16) | (static_cast<uint32_t>(b[7]) << 24);
    }
    const float sc = sub == 0 ? __ldg(scale + t) : 0.0f;
    if (slot < 0) continue;
    *reinterpret_cast<uint2*>(cache + k_byte_offset(slot) + sub * 8) = v;
    if (sub == 0) *reinterpret_cast<float*>(cache + scale_byte_offset(slot)) = sc;
  }
}

// ---------------------------------------------------------------------------
// Paged gather. Work is page-granular: item (b, p) = page p of request b, i.e.
// up to 8192 contiguous K bytes and 256 contiguous scale bytes that land in
// consecutive output rows. Items are numbered b * table_cols + p, so a CTA
// knows its request and page without a search; items past a request's last
// page are skipped. A persistent 1-D grid walks the requests in chunks of
// kGatherThreads: each CTA scans the chunk's lengths in shared memory (the
// first output row of each request) and takes every gridDim-th item.
// The page id of a CTA's first item is loaded before the scan, so for small
// batches the chain is: {lengths, page id} -> K bytes -> store.
// ---------------------------------------------------------------------------
constexpr int kGatherThreads = 128;
constexpr int kVecPerThread = static_cast<int>(kKBytesPerPage / 16 / kGatherThreads);  // 4 x 16 B loads in flight

enum class LengthForm { kHost, kSeqLens, kCuSeqLens };

template <class TableT, class LenT>
struct GatherParams {
  const uint8_t* cache;
  const TableT* table;  // [batch, table_ld]; page ids of each request
  int64_t table_cols;   // pages per row that may be used (L_b <= 64 * table_cols)
  int64_t table_ld;
  const LenT* lens;     // kSeqLens: [batch]; kCuSeqLens: [batch + 1]; kHost: unused
  int64_t host_length;  // kHost: the single request's length
  int64_t batch;
  uint8_t* out_k;       // [rows, 128] or nullptr when K is not wanted
  float* out_s;         // [rows] or nullptr when scales are not wanted
};

template <LengthForm kForm, class LenT>
__device__ __forceinline__ int64_t request_length(const LenT* lens, int64_t host_length, int64_t b) {
  if constexpr (kForm == LengthForm::kHost) return host_length;
  else if constexpr (kForm == LengthForm::kSeqLens) return static_cast<int64_t>(lens[b]);
  else return static_cast<int64_t>(lens[b + 1]) - static_cast<int64_t>(lens[b]);
}

template <bool kWriteK, bool kWriteS>
__device__ __forceinline__ void copy_page(const uint8_t* __restrict__ page, int64_t tokens, int64_t row,
                                          uint8_t* __restrict__ out_k, float* __restrict__ out_s) {
  const int tid = threadIdx.x;
  if constexpr (kWriteK) {
    const uint4* src = reinterpret_cast<const uint4*>(page);
    uint4* dst = reinterpret_cast<uint4*>(out_k + row * kHeadDim);
    const int vectors = static_cast<int>(tokens * (kHeadDim / 16));
    uint4 v[kVecPerThread];
#pragma unroll
    for (int j = 0; j < kVecPerThread; ++j) {
      const int e = tid + j * kGatherThreads;
      if (e < vectors) v[j] = __ldg(src + e);
    }
#pragma unroll
    for (int j = 0; j < kVecPerThread; ++j) {
      const int e = tid + j * kGatherThreads;
      if (e < vectors) dst[e] = v[j];
    }
  }
  if constexpr (kWriteS) {
    if (tid < tokens) out_s[row + tid] = __ldg(reinterpret_cast<const float*>(page + kKBytesPerPage) + tid);
  }
}

template <LengthForm kForm, bool kWriteK, bool kWriteS, class TableT, class LenT>
__global__ void __launch_bounds__(kGatherThreads) paged_gather_kernel(GatherParams<TableT, LenT> p) {
  using Scan = cub::BlockScan<int64_t, kGatherThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t s_row_start[kGatherThreads];
  __shared__ int64_t s_len[kGatherThreads];

  const int tid = threadIdx.x;
  const int64_t grid = gridDim.x;
  const int64_t cols = p.table_cols;
  int64_t row_base = 0, item_base = 0;
  for (int64_t chunk = 0; chunk < p.batch; chunk += kGatherThreads) {
    const int count = static_cast<int>(p.batch - chunk < kGatherThreads ? p.batch - chunk : kGatherThreads);
    const int64_t items = count * cols;
    // Items are numbered globally (item_base + i) so the round-robin over CTAs continues across chunks.
    int64_t first = (static_cast<int64_t>(blockIdx.x) - item_base) % grid;
    if (first < 0) first += grid;
    // Prefetch the page id of the first item; it is used only if that page holds tokens.
    int64_t first_page = 0;
    if (first < items) first_page = static_cast<int64_t>(__ldg(p.table + (chunk + first / cols) * p.table_ld + first % cols));

    const int64_t len = tid < count ? request_length<kForm>(p.lens, p.host_length, chunk + tid) : 0;
    int64_t before = 0, total = 0;
    Scan(scan_storage).ExclusiveSum(len, before, total);
    s_len[tid] = len;
    s_row_start[tid] = row_base + before;
    __syncthreads();

    for (int64_t i = first; i < items; i += grid) {
      const int64_t b = i / cols;
      const int64_t page_in_req = i - b * cols;
      const int64_t left = s_len[b] - page_in_req * kPageSize;
      if (left <= 0) continue;  // past this request's last page
      const int64_t page =
          i == first ? first_page : static_cast<int64_t>(__ldg(p.table + (chunk + b) * p.table_ld + page_in_req));
      copy_page<kWriteK, kWriteS>(p.cache + page * kPageBytes, left < kPageSize ? left : kPageSize,
                                  s_row_start[b] + page_in_req * kPageSize, p.out_k, p.out_s);
    }
    row_base += total;
    item_base += items;
    __syncthreads();  // shared arrays are rewritten by the next chunk
  }
}

// ---------------------------------------------------------------------------
// Launchers.
// ---------------------------------------------------------------------------
inline int store_grid(int64_t n, int num_sms) {
  const int64_t blocks = (n + kTokensPerStoreBlock - 1) / kTokensPerStoreBlock;
  const int64_t cap = static_cast<int64_t>(num_sms) * 16;  // grid-stride beyond a few waves
  return static_cast<int>(blocks < cap ? blocks : cap);
}

inline cudaError_t invoke_quantize_and_store_k(uint8_t* cache, const uint16_t* k, int64_t n, int64_t k_ld,
                                               const int64_t* slots, bool ue8m0, int num_sms, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = reinterpret_cast<uintptr_t>(k) % 16 == 0 && k_ld % 8 == 0;
  const int grid = store_grid(n, num_sms);
  if (vec) quantize_and_store_k_kernel<true><<<grid, kStoreThreads, 0, stream>>>(cache, k, n, k_ld, slots, ue8m0);
  else quantize_and_store_k_kernel<false><<<grid, kStoreThreads, 0, stream>>>(cache, k, n, k_ld, slots, ue8m0);
  return cudaGetLastError();
}

inline cudaError_t invoke_store_k_and_s(uint8_t* cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                                        const int64_t* slots, int num_sms, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = reinterpret_cast<uintptr_t>(k) % 8 == 0 && k_ld % 8 == 0;
  const int grid = store_grid(n, num_sms);
  if (vec) store_k_and_s_kernel<true><<<grid, kStoreThreads, 0, stream>>>(cache, k, n, k_ld, scale, slots);
  else store_k_and_s_kernel<false><<<grid, kStoreThreads, 0, stream>>>(cache, k, n, k_ld, scale, slots);
  return cudaGetLastError();
}

// Persistent grid: one full wave of resident CTAs (enough to keep every SM's
// memory pipe busy), never more than there are page items.
inline int gather_grid(int64_t max_items, int num_sms) {
  const int64_t cap = static_cast<int64_t>(num_sms) * (2048 / kGatherThreads);
  return static_cast<int>(max_items < cap ? (max_items > 0 ? max_items : 1) : cap);
}

template <LengthForm kForm, bool kWriteK, bool kWriteS, class TableT, class LenT>
cudaError_t invoke_paged_gather(const GatherParams<TableT, LenT>& p, int64_t max_items, int num_sms,
                                cudaStream_t stream) {
  if (p.batch == 0 || max_items == 0) return cudaSuccess;
  paged_gather_kernel<kForm, kWriteK, kWriteS, TableT, LenT>
      <<<gather_grid(max_items, num_sms), kGatherThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace nsa
