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
// quantize_and_store_k: one warp per token, 4 bf16 per lane (one 8-byte load
// when aligned), warp-shuffle amax, one 4-byte fp8 store per lane (the warp
// writes the token's 128 K bytes in one coalesced transaction), lane 0 writes
// the scale. A negative slot skips the token.
// ---------------------------------------------------------------------------
template <bool kVectorLoad>
__global__ void __launch_bounds__(256) quantize_and_store_k_kernel(uint8_t* __restrict__ cache,
                                                                   const uint16_t* __restrict__ k, int64_t n,
                                                                   int64_t k_ld, const int64_t* __restrict__ slots,
                                                                   bool ue8m0) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_grid = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); t < n;
       t += warps_per_grid) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;  // uniform across the warp
    const uint16_t* row = k + t * k_ld + lane * 4;
    uint16_t h[4];
    if constexpr (kVectorLoad) {
      const uint2 v = *reinterpret_cast<const uint2*>(row);
      h[0] = static_cast<uint16_t>(v.x & 0xffffu);
      h[1] = static_cast<uint16_t>(v.x >> 16);
      h[2] = static_cast<uint16_t>(v.y & 0xffffu);
      h[3] = static_cast<uint16_t>(v.y >> 16);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) h[i] = row[i];
    }
    float x[4];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      x[i] = detail::bf16_bits_to_float(h[i]);
      amax = fmaxf(amax, detail::finite_abs(x[i]));
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float s = detail::scale_from_amax(amax, ue8m0);
    const float inv = 1.0f / s;
    uint32_t packed = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) packed |= static_cast<uint32_t>(detail::float_to_e4m3_satfinite(x[i] * inv)) << (8 * i);
    *reinterpret_cast<uint32_t*>(cache + k_byte_offset(slot) + lane * 4) = packed;
    if (lane == 0) *reinterpret_cast<float*>(cache + scale_byte_offset(slot)) = s;
  }
}

// store_k_and_s: one warp per token; each lane copies 4 K bytes (one word when
// the rows are 4-byte aligned), lane 0 copies the scale.
template <bool kWordCopy>
__global__ void __launch_bounds__(256) store_k_and_s_kernel(uint8_t* __restrict__ cache,
                                                            const uint8_t* __restrict__ k, int64_t n, int64_t k_ld,
                                                            const float* __restrict__ scale,
                                                            const int64_t* __restrict__ slots) {
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_grid = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); t < n;
       t += warps_per_grid) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    const uint8_t* src = k + t * k_ld + lane * 4;
    uint8_t* dst = cache + k_byte_offset(slot) + lane * 4;
    if constexpr (kWordCopy) {
      *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(src);
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i) dst[i] = src[i];
    }
    if (lane == 0) *reinterpret_cast<float*>(cache + scale_byte_offset(slot)) = scale[t];
  }
}

// ---------------------------------------------------------------------------
// Paged gather. Work is page-granular: item = (request, page of that request),
// i.e. up to 8192 contiguous K bytes and 256 contiguous scale bytes that land
// in consecutive output rows. A persistent 1-D grid walks the requests in
// chunks of kGatherThreads: each CTA scans the chunk's lengths in shared
// memory (rows and pages before each request), then takes every gridDim-th
// page item, finding its request by binary search in shared memory.
// ---------------------------------------------------------------------------
constexpr int kGatherThreads = 128;
constexpr int kVecPerThread = static_cast<int>(kKBytesPerPage / 16 / kGatherThreads);  // 4 x 16 B loads in flight

enum class LengthForm { kHost, kSeqLens, kCuSeqLens };

template <class TableT, class LenT>
struct GatherParams {
  const uint8_t* cache;
  const TableT* table;  // [batch, ld]; page ids of each request
  int64_t table_ld;
  const LenT* lens;     // kSeqLens: [batch]; kCuSeqLens: [batch + 1]; kHost: unused
  int64_t host_length;  // kHost: the single request's length
  int64_t batch;
  uint8_t* out_k;       // [rows, 128] or nullptr when K is not wanted
  float* out_s;         // [rows] or nullptr when scales are not wanted
};

struct RowsPages {
  int64_t rows, pages;
};
struct RowsPagesSum {
  __device__ __forceinline__ RowsPages operator()(const RowsPages& a, const RowsPages& b) const {
    return RowsPages{a.rows + b.rows, a.pages + b.pages};
  }
};

template <LengthForm kForm, class LenT>
__device__ __forceinline__ int64_t request_length(const LenT* lens, int64_t host_length, int64_t b) {
  if constexpr (kForm == LengthForm::kHost) return host_length;
  else if constexpr (kForm == LengthForm::kSeqLens) return static_cast<int64_t>(lens[b]);
  else return static_cast<int64_t>(lens[b + 1]) - static_cast<int64_t>(lens[b]);
}

template <LengthForm kForm, bool kWriteK, bool kWriteS, class TableT, class LenT>
__global__ void __launch_bounds__(kGatherThreads) paged_gather_kernel(GatherParams<TableT, LenT> p) {
  using Scan = cub::BlockScan<RowsPages, kGatherThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t s_row_start[kGatherThreads];
  __shared__ int64_t s_page_start[kGatherThreads + 1];
  __shared__ int64_t s_len[kGatherThreads];

  const int tid = threadIdx.x;
  int64_t row_base = 0, page_base = 0;
  for (int64_t chunk = 0; chunk < p.batch; chunk += kGatherThreads) {
    const int count = static_cast<int>((p.batch - chunk < kGatherThreads ? p.batch - chunk : int64_t{kGatherThreads}));
    const int64_t len = tid < count ? request_length<kForm>(p.lens, p.host_length, chunk + tid) : 0;
    RowsPages mine{len, (len + kPageSize - 1) / kPageSize}, before, total;
    Scan(scan_storage).ExclusiveScan(mine, before, RowsPages{0, 0}, RowsPagesSum(), total);
    s_len[tid] = len;
    s_row_start[tid] = row_base + before.rows;
    s_page_start[tid] = before.pages;
    if (tid == 0) s_page_start[kGatherThreads] = total.pages;
    __syncthreads();

    // Items of this chunk are numbered globally (page_base + i) so that the
    // round-robin over CTAs continues across chunks.
    const int64_t grid = gridDim.x;
    int64_t first = (static_cast<int64_t>(blockIdx.x) - page_base) % grid;
    if (first < 0) first += grid;
    for (int64_t i = first; i < total.pages; i += grid) {
      int lo = 0, hi = count - 1;  // last request whose page_start <= i
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (s_page_start[mid] <= i) lo = mid;
        else hi = mid - 1;
      }
      const int64_t page_in_req = i - s_page_start[lo];
      const int64_t left = s_len[lo] - page_in_req * kPageSize;
      const int64_t tokens = left < kPageSize ? left : kPageSize;
      const int64_t page = static_cast<int64_t>(p.table[(chunk + lo) * p.table_ld + page_in_req]);
      const uint8_t* src = p.cache + page * kPageBytes;
      const int64_t row = s_row_start[lo] + page_in_req * kPageSize;
      if constexpr (kWriteK) {
        const uint4* src_k = reinterpret_cast<const uint4*>(src);
        uint4* dst_k = reinterpret_cast<uint4*>(p.out_k + row * kHeadDim);
        const int vectors = static_cast<int>(tokens * (kHeadDim / 16));
        uint4 v[kVecPerThread];
#pragma unroll
        for (int j = 0; j < kVecPerThread; ++j) {
          const int e = tid + j * kGatherThreads;
          if (e < vectors) v[j] = __ldcs(src_k + e);
        }
#pragma unroll
        for (int j = 0; j < kVecPerThread; ++j) {
          const int e = tid + j * kGatherThreads;
          if (e < vectors) __stcs(dst_k + e, v[j]);
        }
      }
      if constexpr (kWriteS) {
        if (tid < tokens) {
          p.out_s[row + tid] = __ldcs(reinterpret_cast<const float*>(src + kKBytesPerPage) + tid);
        }
      }
    }
    row_base += total.rows;
    page_base += total.pages;
    __syncthreads();  // shared arrays are rewritten by the next chunk
  }
}

// ---------------------------------------------------------------------------
// Launchers.
// ---------------------------------------------------------------------------
inline int quantize_store_grid(int64_t n, int num_sms) {
  const int64_t warps_per_block = 256 / 32;
  const int64_t blocks = (n + warps_per_block - 1) / warps_per_block;
  const int64_t cap = static_cast<int64_t>(num_sms) * 16;  // grid-stride beyond ~16 resident blocks per SM
  return static_cast<int>(blocks < cap ? blocks : cap);
}

inline cudaError_t invoke_quantize_and_store_k(uint8_t* cache, const uint16_t* k, int64_t n, int64_t k_ld,
                                               const int64_t* slots, bool ue8m0, int num_sms, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vec = reinterpret_cast<uintptr_t>(k) % 8 == 0 && k_ld % 4 == 0;
  const int grid = quantize_store_grid(n, num_sms);
  if (vec) quantize_and_store_k_kernel<true><<<grid, 256, 0, stream>>>(cache, k, n, k_ld, slots, ue8m0);
  else quantize_and_store_k_kernel<false><<<grid, 256, 0, stream>>>(cache, k, n, k_ld, slots, ue8m0);
  return cudaGetLastError();
}

inline cudaError_t invoke_store_k_and_s(uint8_t* cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                                        const int64_t* slots, int num_sms, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool word = reinterpret_cast<uintptr_t>(k) % 4 == 0 && k_ld % 4 == 0;
  const int grid = quantize_store_grid(n, num_sms);
  if (word) store_k_and_s_kernel<true><<<grid, 256, 0, stream>>>(cache, k, n, k_ld, scale, slots);
  else store_k_and_s_kernel<false><<<grid, 256, 0, stream>>>(cache, k, n, k_ld, scale, slots);
  return cudaGetLastError();
}

// Persistent grid: enough CTAs to keep every SM's memory pipe busy, never more
// than there are page items.
inline int gather_grid(int64_t max_items, int num_sms) {
  const int64_t cap = static_cast<int64_t>(num_sms) * 16;
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
