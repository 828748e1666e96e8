// copy_metadata: the kernel and its launcher.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/cuda/metadata/launch_shape.cuh"
#include "nsa/cuda/metadata/rows.cuh"
#include "nsa/cuda/metadata/targets.cuh"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

// ---------------------------------------------------------------------------
// copy_metadata: up to 9 copy jobs (spec §6.2 fields), each a [rows, cols]
// block with a source row stride, cut into warp items of kColsPerItem
// columns; every item is loaded once and stored to every destination that
// has the field. The job table is host-built and passed by value.
// ---------------------------------------------------------------------------
constexpr int kVecPerLane = 4;                          // copy kernel: 4 x 16 B loads in flight per lane
constexpr int64_t kColsPerItem = 32 * 4 * kVecPerLane;  // copy kernel: 512 int32 columns per warp item
constexpr int kCopyCtasPerSm = 4;                       // copy kernel: <= 64 registers/thread, 4 CTAs resident per SM

// The fields are those of the public field table (nsa/metadata.h).
using MetaField = MetadataField;
constexpr int kMaxCopyJobs = kMetadataFieldCount;

struct CopyJob {
  const int32_t* src;  // row 0, element `offset` already applied
  int64_t src_ld;
  int64_t rows, cols;
  int64_t offset;  // first destination element (1 for the cumulative arrays)
  int64_t items_per_row;
  int64_t item_start;
  MetaField field;
};

struct CopyParams {
  CopyJob jobs[kMaxCopyJobs];
  int32_t num_jobs;
  int64_t total_items;
  int64_t items_per_cta;  // set by invoke_copy_metadata: CTA c copies items [c, c + 1) * items_per_cta
  const MetadataBuffers* targets;
  int64_t num_targets;
};

__host__ __device__ __forceinline__ int32_t* field_pointer(const MetadataBuffers& t, MetaField f, int64_t* ld) {
  switch (f) {
    case MetaField::kCacheSeqlens: return t.cache_seqlens;
    case MetaField::kCuSeqlensK: return t.cu_seqlens_k;
    case MetaField::kPageTable1: *ld = t.page_table_1_ld; return t.page_table_1;
    case MetaField::kSeqlensExpanded: return t.seqlens_expanded;
    case MetaField::kNsaCacheSeqlens: return t.nsa_cache_seqlens;
    case MetaField::kNsaCuSeqlensK: return t.nsa_cu_seqlens_k;
    case MetaField::kRealPageTable: *ld = t.real_page_table_ld; return t.real_page_table;
    case MetaField::kFlashmlaNumSplits: return t.flashmla_num_splits;
    default: return t.flashmla_metadata;
  }
}

// One warp item: where it goes (job, row, first column) and its source
// columns, loaded.
template <int kVec>
struct CopyItem {
  int job;
  int64_t row, c0;
  int4 v[kVec];
};

template <int kVec>
__device__ __forceinline__ void load_copy_item(const CopyParams& p, int64_t i, int lane, CopyItem<kVec>& it) {
  int j = 0;
  while (j + 1 < p.num_jobs && p.jobs[j + 1].item_start <= i) ++j;
  const CopyJob& job = p.jobs[j];
  const int64_t local = i - job.item_start;
  it.job = j;
  it.row = local / job.items_per_row;
  it.c0 = (local - it.row * job.items_per_row) * kColsPerItem;
  const int32_t* src = job.src + it.row * job.src_ld;
  const bool src_vec = aligned16(src);
#pragma unroll
  for (int k = 0; k < kVec; ++k) it.v[k] = load_group(src, it.c0 + 4 * (lane + 32 * k), job.cols, src_vec);
}

// A template (with one instantiation) so that including this header in
// several translation units defines the kernel once (ODR), like the others.
template <int kVec = kVecPerLane>
__global__ void __launch_bounds__(kMetaThreads) copy_metadata_kernel(const __grid_constant__ CopyParams p) {
  __shared__ MetadataBuffers s_targets[kMaxSharedTargets];
  const int lane = threadIdx.x & 31;
  // A contiguous range of items per CTA, every kMetaWarps-th one per warp:
  // the warps of one SM work on the same few rows (and memory pages) at a
  // time, not on rows far apart. With at most one item per CTA this is item
  // blockIdx.x on warp 0, which spreads small jobs over the SMs.
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * p.items_per_cta;
  const int64_t end = begin + p.items_per_cta < p.total_items ? begin + p.items_per_cta : p.total_items;
  const int64_t first = begin + (threadIdx.x >> 5);
  // The warp's first item is loaded before the descriptors are staged, so the
  // two memory round trips overlap: a small copy's chain is one round trip.
  CopyItem<kVec> it;
  if (first < end) load_copy_item(p, first, lane, it);
  const MetadataBuffers* targets = stage_targets<kMetaThreads>(p.targets, p.num_targets, s_targets);
  __syncthreads();
  for (int64_t i = first; i < end; i += kMetaWarps) {
    if (i != first) load_copy_item(p, i, lane, it);
    const CopyJob& job = p.jobs[it.job];
    for (int64_t d = 0; d < p.num_targets; ++d) {
      int64_t ld = 0;
      int32_t* base = field_pointer(targets[d], job.field, &ld);
      if (base == nullptr) continue;  // optional field absent in this destination
      int32_t* dst = base + job.offset + it.row * ld;
      const bool dst_vec = aligned16(dst);
#pragma unroll
      for (int k = 0; k < kVec; ++k) store_group(dst, it.c0 + 4 * (lane + 32 * k), job.cols, dst_vec, it.v[k]);
    }
  }
}

// Appends a copy job (host side); empty or absent fields add nothing. `p` starts zeroed.
inline void add_copy_job(CopyParams& p, MetaField field, const int32_t* src, int64_t src_ld, int64_t rows, int64_t cols,
                         int64_t offset) {
  if (src == nullptr || rows <= 0 || cols <= 0 || p.num_jobs >= kMaxCopyJobs) return;
  CopyJob& j = p.jobs[p.num_jobs++];
  j.src = src + offset;
  j.src_ld = src_ld;
  j.rows = rows;
  j.cols = cols;
  j.offset = offset;
  j.field = field;
  j.items_per_row = (cols + kColsPerItem - 1) / kColsPerItem;
  j.item_start = p.total_items;
  p.total_items += rows * j.items_per_row;
}

inline cudaError_t invoke_copy_metadata(CopyParams p, int num_sms, cudaStream_t stream) {
  if (p.total_items == 0) return cudaSuccess;
  const int grid = metadata_grid(p.total_items, num_sms, kCopyCtasPerSm);
  p.items_per_cta = (p.total_items + grid - 1) / grid;
  copy_metadata_kernel<><<<grid, kMetaThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace nsa
