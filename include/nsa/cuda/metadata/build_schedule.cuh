// DeepGEMM's paged-MQA schedule (docs/spec/metadata.md §10) on the device:
// the schedule CTA of build_metadata (the grid's last CTA, present only when
// some destination has paged_mqa_schedule; it shares no data with the other
// CTAs, so it runs beside them in the same launch), and the one-CTA kernel of
// paged_mqa_schedule, which takes the lengths directly.
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

// One schedule computation: where the lengths come from, where the rows go.
// Length of request b: int32(lens[b * lens_ld + lens_column] + lens_add).
struct ScheduleJob {
  const void* lens;
  bool lens_64;
  int64_t lens_ld, lens_column, lens_add;
  int64_t batch;
  int64_t atoms;  // next_n atoms per request
  bool g1, clamp_min_len;
  // Outputs: every destination of `targets` holding the field (build_metadata),
  // or `out` for `sms` SMs when targets is null (paged_mqa_schedule).
  const MetadataBuffers* targets;
  int64_t num_targets;
  int32_t* out;
  int64_t sms;

  __device__ __forceinline__ int64_t outputs() const { return targets != nullptr ? num_targets : 1; }
  __device__ __forceinline__ int32_t* output(int64_t d, int64_t* num_sms) const {
    if (targets == nullptr) {
      *num_sms = sms;
      return out;
    }
    *num_sms = targets[d].paged_mqa_num_sms;
    return targets[d].paged_mqa_schedule;
  }
  __device__ __forceinline__ uint32_t units(int64_t b) const {
    const int64_t len = static_cast<int32_t>(load_index(lens, lens_64, b * lens_ld + lens_column) + lens_add);
    return static_cast<uint32_t>(detail::paged_mqa_units(len, clamp_min_len));
  }
};

// Every SM row of every output, by one CTA of kMetaThreads threads: each
// thread takes a request and writes the rows of the SMs that start inside its
// units (found by a binary search over the monotone SM starts), so no prefix
// array is kept; the rows of SMs starting at or past T (idle SMs in G1, the
// sentinel) are written by a strided loop. T must be known first: one tile
// (B <= kMetaThreads) gets it from the scan itself, larger batches from a
// reduction pass over the lengths before the scan pass.
__device__ __forceinline__ void paged_mqa_schedule_cta(const ScheduleJob& j, ScheduleShared& s) {
  const int tid = threadIdx.x;
  uint32_t total = 0;
  if (j.batch > kMetaThreads) {
    uint32_t part = 0;
    for (int64_t b = tid; b < j.batch; b += kMetaThreads) part += j.units(b);
    total = ScheduleReduce(s.reduce).Sum(part);  // valid in thread 0
    if (tid == 0) s.total = total;
    __syncthreads();
    total = s.total;
    __syncthreads();  // the scan below reuses the reduction's storage
  }
  uint32_t base = 0;  // units of the tiles before this one
  for (int64_t tile = 0; tile < j.batch; tile += kMetaThreads) {
    const int64_t b = tile + tid;
    const uint32_t u = b < j.batch ? j.units(b) : 0u;
    uint32_t before = 0, tile_total = 0;
    ScheduleScan(s.scan).ExclusiveSum(u, before, tile_total);
    if (j.batch <= kMetaThreads) total = tile_total;
    const int64_t first = static_cast<int64_t>(base + before) * j.atoms, end = first + int64_t{u} * j.atoms;
    for (int64_t d = 0; d < j.outputs() && u > 0; ++d) {
      int64_t sms = 0;
      int32_t* out = j.output(d, &sms);
      if (out == nullptr) continue;
      const detail::PagedMqaSplit split = detail::PagedMqaSplit::make(static_cast<int64_t>(total) * j.atoms, sms, j.g1);
      for (int64_t i = split.first_at(first), stop = split.first_at(end); i < stop; ++i)
        detail::paged_mqa_store_row(out, i, b, j.atoms, u, split.start(i) - first);
    }
    base += tile_total;
    if (tile + kMetaThreads < j.batch) __syncthreads();  // the next tile reuses the scan storage
  }
  for (int64_t d = 0; d < j.outputs(); ++d) {
    int64_t sms = 0;
    int32_t* out = j.output(d, &sms);
    if (out == nullptr) continue;
    const int64_t units = static_cast<int64_t>(total) * j.atoms;
    const detail::PagedMqaSplit split = detail::PagedMqaSplit::make(units, sms, j.g1);
    for (int64_t i = split.first_at(units) + tid; i <= sms; i += kMetaThreads) {
      out[2 * i] = static_cast<int32_t>(j.batch * j.atoms);
      out[2 * i + 1] = 0;
    }
  }
}

// build_metadata's schedule CTA: one row per request, its cache length
// (seq_lens, + N in TARGET_VERIFY), into every destination with the field.
__device__ __forceinline__ void build_paged_mqa_schedule(const BuildParams& p, BuildShared& shared) {
  const bool verify = p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify);
  const ScheduleJob j{p.seq_lens,
                      p.seq_lens_64,
                      1,
                      0,
                      verify ? p.draft_tokens : 0,
                      p.batch,
                      p.paged_mqa_atoms,
                      p.paged_mqa_g1,
                      p.paged_mqa_clamp_min_len,
                      p.targets,
                      p.num_targets,
                      nullptr,
                      0};
  paged_mqa_schedule_cta(j, *reinterpret_cast<ScheduleShared*>(&shared));
}

// paged_mqa_schedule on its own: one CTA (a template, so the header stays ODR-safe).
template <int kThreads>
__global__ void __launch_bounds__(kThreads) paged_mqa_schedule_kernel(const __grid_constant__ ScheduleJob j) {
  static_assert(kThreads == kMetaThreads, "the scan is sized for kMetaThreads");
  __shared__ ScheduleShared s;
  paged_mqa_schedule_cta(j, s);
}

inline cudaError_t invoke_paged_mqa_schedule(const ScheduleJob& j, cudaStream_t stream) {
  paged_mqa_schedule_kernel<kMetaThreads><<<1, kMetaThreads, 0, stream>>>(j);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace nsa
