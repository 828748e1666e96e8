// Tensor-memory-accelerator (TMA, sm_90) loads of the paged indexer cache
// and of q for the persistent wgmma schedule of paged_mqa_logits
// (nsa/cuda/indexer_wgmma_persistent.cuh): the tensor maps, built on the
// host at each launch, and the device-side copy and mbarrier wrappers.
//
// Why TMA. The persistent schedule's loading warps copied every 16 bytes of
// K with one cp.async each (1024 per 128-token tile); at 8 x 32K they, not
// the scoring, set its pace (docs/performance.md). One TMA copy moves a
// whole page segment of a tile (up to 128 tokens x 128 B), already in the
// 128-byte-swizzle layout wgmma reads, so one warp keeps the ring full.
//
// The maps (all UINT8, SWIZZLE_128B, so a row of 128 bytes lands as
// wg_swizzle lays it out: the swizzle follows the shared-memory address, and
// every destination row r sits at r * 128 of a 1024-aligned tile):
//   * k_page: the cache as {128 bytes, P tokens, num_pages} with strides
//     {128, P * 132}, box {128, min(P, 128), 1}: one copy per page segment
//     of a tile whose tokens are all visible;
//   * k_token: the same tensor, box {128, 1, 1}: one copy per visible token
//     of a segment that ends past the visible length (a row's tokens past
//     its length are never read, as in the cp.async schedule);
//   * q: q as {128 bytes, batch * N * 64 head rows}, box {128, 1}: one copy
//     per head row (wgmma's B operand keeps the heads in wg_head_of_column
//     order, not in q's).
// Scales go by bulk copy (cp.async.bulk, no map) for whole segments and by
// plain loads for the tokens of a partial one.
//
// Availability (ws_tma_supported): the page size a power of two in
// [8, 256], the cache and q 16-byte aligned, at least one page, and head
// rows and pages that fit the maps' 32-bit coordinates; the launcher runs
// the cp.async producer otherwise.
#pragma once

#include <cuda.h>  // CUtensorMap and its enums (no driver library is linked: see ws_encode_tiled)
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "nsa/indexer.h"

namespace nsa {
namespace kernels {

// The three maps of one launch, passed as one __grid_constant__ parameter.
struct WsTmaMaps {
  CUtensorMap k_page;
  CUtensorMap k_token;
  CUtensorMap q;
  int page_shift;     // log2(page_size)
  int segment_shift;  // log2(tokens per k_page copy) = min(page_shift, 7)
};

// The page sizes, alignments and extents the TMA producer takes.
inline bool ws_tma_supported(const PagedMqaLogitsArgs& a) {
  const int64_t p = a.page_size;
  const bool pow2 = p >= 8 && p <= 256 && (p & (p - 1)) == 0;
  const bool aligned =
      reinterpret_cast<uintptr_t>(a.cache.data) % 16 == 0 && reinterpret_cast<uintptr_t>(a.q) % 16 == 0;
  const int64_t head_rows = a.batch * a.next_n * kIndexerHeads;
  return pow2 && aligned && a.cache.data != nullptr && a.cache.num_pages >= 1 && a.cache.num_pages <= INT32_MAX &&
         head_rows <= INT32_MAX;
}

// cuTensorMapEncodeTiled from the driver the runtime loaded (asked once;
// cudaErrorNotSupported when the driver does not have it).
inline cudaError_t ws_encode_tiled(PFN_cuTensorMapEncodeTiled_v12000& fn) {
  static std::atomic<void*> cached{nullptr};
  void* p = cached.load(std::memory_order_acquire);
#if CUDART_VERSION < 12050
  // The versioned lookup came with CUDA 12.5; older runtimes use cp.async.
  if (p == nullptr) return cudaErrorNotSupported;
#endif
  if (p == nullptr) {
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    (void)cudaThreadExchangeStreamCaptureMode(&mode);
    const cudaError_t e =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &found);
    (void)cudaThreadExchangeStreamCaptureMode(&mode);
    if (e != cudaSuccess) return e;
    if (found != cudaDriverEntryPointSuccess || p == nullptr) return cudaErrorNotSupported;
    cached.store(p, std::memory_order_release);
  }
  fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  return cudaSuccess;
}

// The maps of `a` (ws_tma_supported(a) must hold). A map the driver refuses
// is cudaErrorInvalidValue: the checks above are meant to rule that out.
inline cudaError_t ws_make_tma_maps(const PagedMqaLogitsArgs& a, WsTmaMaps& m) {
  PFN_cuTensorMapEncodeTiled_v12000 encode = nullptr;
  const cudaError_t e = ws_encode_tiled(encode);
  if (e != cudaSuccess) return e;
  int page_shift = 0;
  while ((int64_t{1} << page_shift) < a.page_size) ++page_shift;
  m.page_shift = page_shift;
  m.segment_shift = page_shift < 7 ? page_shift : 7;
  const cuuint32_t segment = 1u << m.segment_shift;
  const cuuint64_t k_dims[3] = {static_cast<cuuint64_t>(kIndexerHeadDim), static_cast<cuuint64_t>(a.page_size),
                                static_cast<cuuint64_t>(a.cache.num_pages)};
  const cuuint64_t k_strides[2] = {static_cast<cuuint64_t>(kIndexerHeadDim),
                                   static_cast<cuuint64_t>(a.page_size * (kIndexerHeadDim + 4))};
  const cuuint32_t page_box[3] = {static_cast<cuuint32_t>(kIndexerHeadDim), segment, 1};
  const cuuint32_t token_box[3] = {static_cast<cuuint32_t>(kIndexerHeadDim), 1, 1};
  const cuuint64_t q_dims[2] = {static_cast<cuuint64_t>(kIndexerHeadDim),
                                static_cast<cuuint64_t>(a.batch * a.next_n * kIndexerHeads)};
  const cuuint64_t q_strides[1] = {static_cast<cuuint64_t>(kIndexerHeadDim)};
  // Every map: bytes, SWIZZLE_128B, element strides 1, no interleave or OOB fill.
  auto tiled = [&](CUtensorMap* map, cuuint32_t rank, const uint8_t* base, const cuuint64_t* dims,
                   const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapL2promotion l2) {
    const cuuint32_t ones[3] = {1, 1, 1};
    return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, rank, const_cast<uint8_t*>(base), dims, strides, box, ones,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, l2, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  };
  CUresult r = tiled(&m.k_page, 3, a.cache.data, k_dims, k_strides, page_box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
  if (r == CUDA_SUCCESS)
    r = tiled(&m.k_token, 3, a.cache.data, k_dims, k_strides, token_box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
  if (r == CUDA_SUCCESS) r = tiled(&m.q, 2, a.q, q_dims, q_strides, token_box, CU_TENSOR_MAP_L2_PROMOTION_NONE);
  return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t tma_smem(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// Adds `bytes` to the transaction count bar waits for and arrives (release).
__device__ __forceinline__ void tma_arrive_expect(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(tma_smem(bar)), "r"(bytes) : "memory");
}
// One box of a 3-D map at (x, y, z) into dst; completes `bar`'s transactions.
__device__ __forceinline__ void tma_load_3d(void* dst, const CUtensorMap* map, int x, int y, int z, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
      "[%5];\n" ::"r"(tma_smem(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(z), "r"(tma_smem(bar))
      : "memory");
}
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, int x, int y, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
      "[%4];\n" ::"r"(tma_smem(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(x), "r"(y), "r"(tma_smem(bar))
      : "memory");
}
// `bytes` (a multiple of 16; both addresses 16-byte aligned) from src to dst.
__device__ __forceinline__ void tma_load_bulk(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                   tma_smem(dst)),
               "l"(src), "r"(bytes), "r"(tma_smem(bar))
               : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}
#endif

}  // namespace kernels
}  // namespace nsa
