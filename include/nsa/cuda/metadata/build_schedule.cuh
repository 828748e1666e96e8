// The paged-MQA schedule CTA of build_metadata (the grid's last CTA, present
// only when some destination has paged_mqa_schedule): DeepGEMM's schedule
// (docs/spec/metadata.md §10) from the cache lengths, in the same launch as
// the other fields and beside them (it shares no data with the other CTAs).
#pragma once

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "nsa/cuda/metadata/build_inputs.cuh"
#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/cuda/metadata/launch_shape.cuh"
#include "nsa/detail/paged_mqa_schedule.h"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

// Units sum in 32 bits: T <= sum(L_b) / 256 + B, within int32 when
// cu_seqlens_k fits (a precondition of the build).
using ScheduleScan = cub::BlockScan<uint32_t, kMetaThreads, cub::BLOCK_SCAN_WARP_SCANS>;
using ScheduleReduce = cub::BlockReduce<uint32_t, kMetaThreads>;
struct ScheduleShared {
  union {
    typename ScheduleScan::TempStorage scan;
    typename ScheduleReduce::TempStorage reduce;
  };
  uint32_t total;  // T, broadcast from the reduction
};
static_assert(sizeof(ScheduleShared) <= sizeof(BuildShared), "the schedule CTA reuses the build's shared memory");

// Units of request b, from its cache length as cache_seqlens holds it.
__device__ __forceinline__ uint32_t schedule_units(const BuildParams& p, int64_t b) {
  const bool verify = p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify);
  const int64_t kv = static_cast<int32_t>(load_index(p.seq_lens, p.seq_lens_64, b) + (verify ? p.draft_tokens : 0));
  return static_cast<uint32_t>(detail::paged_mqa_units(kv, p.paged_mqa_clamp_min_len));
}

// Every SM row of every destination holding the field: each thread takes a
// request and writes the rows of the SMs that start inside its units (found
// by a binary search over the monotone SM starts), so no prefix array is
// kept; the rows of SMs starting at or past T (idle SMs in G1, the
// sentinel) are written by a strided loop. T must be known first: one tile
// (B <= kMetaThreads) gets it from the scan itself, larger batches from a
// reduction pass over the lengths before the scan pass.
__device__ __forceinline__ void build_paged_mqa_schedule(const BuildParams& p, BuildShared& shared) {
  ScheduleShared& s = *reinterpret_cast<ScheduleShared*>(&shared);
  const int tid = threadIdx.x;
  const bool g1 = p.paged_mqa_g1;
  const int64_t atoms = p.paged_mqa_atoms;
  uint32_t total = 0;
  if (p.batch > kMetaThreads) {
    uint32_t part = 0;
    for (int64_t b = tid; b < p.batch; b += kMetaThreads) part += schedule_units(p, b);
    total = ScheduleReduce(s.reduce).Sum(part);  // valid in thread 0
    if (tid == 0) s.total = total;
    __syncthreads();
    total = s.total;
    __syncthreads();  // the scan below reuses the reduction's storage
  }
  uint32_t base = 0;  // units of the tiles before this one
  for (int64_t tile = 0; tile < p.batch; tile += kMetaThreads) {
    const int64_t b = tile + tid;
    const uint32_t u = b < p.batch ? schedule_units(p, b) : 0u;
    uint32_t before = 0, tile_total = 0;
    ScheduleScan(s.scan).ExclusiveSum(u, before, tile_total);
    if (p.batch <= kMetaThreads) total = tile_total;
    const int64_t first = static_cast<int64_t>(base + before) * atoms, end = first + int64_t{u} * atoms;
    for (int64_t d = 0; d < p.num_targets; ++d) {
      int32_t* out = p.targets[d].paged_mqa_schedule;
      if (out == nullptr) continue;
      const detail::PagedMqaSplit split =
          detail::PagedMqaSplit::make(static_cast<int64_t>(total) * atoms, p.targets[d].paged_mqa_num_sms, g1);
      if (u > 0)
        for (int64_t i = split.first_at(first), stop = split.first_at(end); i < stop; ++i)
          detail::paged_mqa_store_row(out, i, b, atoms, u, split.start(i) - first);
    }
    base += tile_total;
    if (tile + kMetaThreads < p.batch) __syncthreads();  // the next tile reuses the scan storage
  }
  for (int64_t d = 0; d < p.num_targets; ++d) {
    int32_t* out = p.targets[d].paged_mqa_schedule;
    if (out == nullptr) continue;
    const int64_t sms = p.targets[d].paged_mqa_num_sms;
    const detail::PagedMqaSplit split = detail::PagedMqaSplit::make(static_cast<int64_t>(total) * atoms, sms, g1);
    for (int64_t i = split.first_at(static_cast<int64_t>(total) * atoms) + tid; i <= sms; i += kMetaThreads) {
      out[2 * i] = static_cast<int32_t>(p.batch * atoms);
      out[2 * i + 1] = 0;
    }
  }
}

}  // namespace kernels
}  // namespace nsa
