// Parameters, launch policies, scan words and shared memory of the
// build_metadata kernel (see build.cuh for how its paths fit together).
#pragma once

#include <cub/block/block_scan.cuh>
#include <cub/warp/warp_scan.cuh>

#include <cstdint>

#include "nsa/common.h"
#include "nsa/cuda/metadata/fast_divisor.cuh"
#include "nsa/cuda/metadata/launch_shape.cuh"
#include "nsa/cuda/metadata/targets.cuh"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

struct BuildParams {
  const void* seq_lens;          // [batch]
  const void* req_pool_indices;  // [batch]
  const void* extend_lens;       // [batch] DRAFT_EXTEND only
  bool seq_lens_64, req_pool_indices_64, extend_lens_64;
  int32_t mode;                 // ForwardMode
  const int32_t* req_to_token;  // [req_to_token_rows, ld]
  int64_t req_to_token_ld;
  int64_t req_to_token_rows;
  int64_t batch;
  int64_t draft_tokens;
  int64_t topk;
  int64_t page_size;
  int32_t page_shift;  // log2(page_size) when it is a power of two (the usual 64), else -1
  // Every cache length is <= max_kv (a precondition the checked kernel
  // verifies; see build_metadata in metadata.cu). Bounds the items per request.
  int64_t max_kv;
  // Set by launch_build_metadata for its policy (launch the kernel through
  // it): page-table items per request, ceil(max_kv / columns per item), and
  // its divisor (valid while the count is below 2^31; the kernel falls back
  // to 64-bit division past it). The launcher also sizes the grid to hold
  // CTA 0 (scalars) and at least one item CTA.
  int64_t items_per_request;
  FastDivisor items_per_request_div;
  const int32_t* flashmla_num_splits;  // optional [R + 1]
  const int32_t* flashmla_metadata;    // optional [flashmla_metadata_max]
  int64_t flashmla_metadata_max;       // max flashmla_metadata_size over destinations having the field
  // DeepGEMM paged-MQA schedule (build_schedule.cuh): schedule_cta is 1 when
  // some destination has the field (CTA 1 computes it), else 0.
  int32_t schedule_cta;
  bool paged_mqa_g1;               // PagedMqaLayout::kG1
  bool paged_mqa_clamp_min_len;    // every length counts as >= 1
  int64_t paged_mqa_atoms;         // next_n atoms per request
  const MetadataBuffers* targets;  // device array [num_targets]
  int64_t num_targets;
  DeviceError* error;  // checked mode only
};

// x / P rounded toward zero, as the CPU backend and the reference compute it
// (a shift rounds negative slots down; they are garbage, but still bit-exact).
__device__ __forceinline__ int64_t page_of(const BuildParams& p, int64_t x) {
  return p.page_shift >= 0 && x >= 0 ? x >> p.page_shift : x / p.page_size;
}
__device__ __forceinline__ bool starts_page(const BuildParams& p, int64_t x) {
  return p.page_shift >= 0 ? (x & (p.page_size - 1)) == 0 : x % p.page_size == 0;
}

// Per-request quantities scanned across the batch. 32-bit words halve the
// shuffles of the scan: rows fit (R <= INT32_MAX is validated), and the two
// cumulative sums are int32 outputs, so their sums modulo 2^32 are exactly
// what a 64-bit sum narrowed to int32 gives.
struct BuildScan {
  uint32_t rows;  // query rows (q_b)
  uint32_t kv;    // cache_seqlens (for cu_seqlens_k)
  uint32_t nsa;   // sum of nsa_cache_seqlens over the request's rows
};
struct BuildScanSum {
  __device__ __forceinline__ BuildScan operator()(const BuildScan& a, const BuildScan& b) const {
    return BuildScan{a.rows + b.rows, a.kv + b.kv, a.nsa + b.nsa};
  }
};

// Launch shape of build_metadata: int4 groups per lane of a page-table item
// (columns per item = 128 * kVecPerLane) and resident CTAs per SM (the
// register cap of __launch_bounds__). Small jobs want short items (more of
// them, spread over more SMs); large ones want long items and occupancy.
// Under either policy each warp loads its first item in the kernel's second
// round trip, before any scan: a small job saves a round trip, and large ones
// measured about the same on an H100.
template <int kVecPerLaneT, int kCtasPerSmT>
struct BuildPolicy {
  static constexpr int kVecPerLane = kVecPerLaneT;
  static constexpr int64_t kColsPerItem = 32 * 4 * kVecPerLane;
  static constexpr int kCtasPerSm = kCtasPerSmT;
};
// Measured on an H100: 128-column items win while each item CTA has at most
// two of them; 256-column items beyond (see invoke_build_metadata).
using SmallBuildPolicy = BuildPolicy<1, 2>;
using LargeBuildPolicy = BuildPolicy<2, 2>;

// Warp scans: fewer steps on the critical path than the default raking scan.
using BuildBlockScan = cub::BlockScan<BuildScan, kMetaThreads, cub::BLOCK_SCAN_WARP_SCANS>;
using BuildWarpScan = cub::WarpScan<BuildScan>;

// Shared memory of build_metadata (the item path and the scalars CTA's
// function use the same bytes).
struct BuildShared {
  typename BuildBlockScan::TempStorage scan;
  typename BuildWarpScan::TempStorage warp_scan;
  int64_t row_start[kMetaThreads];   // first query row of each request, within the chunk
  int64_t src_offset[kMetaThreads];  // rpi * ld
  uint32_t cols[kMetaThreads];       // columns to copy: the cache length, 0 when no row may be written
  int64_t q[kMetaThreads];
  uint32_t warp_max_cols[kMetaWarps];  // the widest row of each warp's requests (chunk walk)
  // Descriptors as raw words: MetadataBuffers has default member
  // initializers, which a __shared__ object may not run.
  long long target_words[kMaxSharedTargets * sizeof(MetadataBuffers) / sizeof(long long)];
  __device__ __forceinline__ MetadataBuffers* targets() { return reinterpret_cast<MetadataBuffers*>(target_words); }
};

}  // namespace kernels
}  // namespace nsa
