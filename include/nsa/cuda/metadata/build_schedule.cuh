// DeepGEMM's paged-MQA schedule (docs/spec/metadata.md §10) on the device:
// the schedule CTA of build_metadata (CTA 1, present only when
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
// Where one schedule goes: its rows and the SM count it is split over.
struct ScheduleOutput {
  int32_t* rows;  // nullptr: this destination has no schedule
  int64_t sms;
};
// Outputs whose descriptors are staged in shared memory (the rest, rare, are
// read from global memory where they are used).
constexpr int kScheduleSharedOutputs = kMaxSharedTargets;

struct ScheduleShared {
  union {
    typename ScheduleScan::TempStorage scan;
    typename ScheduleReduce::TempStorage reduce;
  };
  uint32_t total;                 // T, broadcast from the reduction
  uint32_t prefix[kMetaThreads];  // inclusive unit prefix of the tile's requests
  ScheduleOutput outputs[kScheduleSharedOutputs];
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
  __device__ __forceinline__ ScheduleOutput output(int64_t d) const {
    if (targets == nullptr) return ScheduleOutput{out, sms};
    return ScheduleOutput{targets[d].paged_mqa_schedule, targets[d].paged_mqa_num_sms};
  }
  __device__ __forceinline__ uint32_t units(int64_t b) const {
    const int64_t len = static_cast<int32_t>(load_index(lens, lens_64, b * lens_ld + lens_column) + lens_add);
    return static_cast<uint32_t>(detail::paged_mqa_units(len, clamp_min_len));
  }
};

// Every SM row of every output, by one CTA of kMetaThreads threads, a tile
// of kMetaThreads requests at a time: the tile's inclusive unit prefix goes
// to shared memory, the SMs that start inside the tile's units are a
// contiguous range (found by binary search over the monotone SM starts), and
// the threads share those rows, each decoding its SM's request by binary
// search over the prefix (so a long request spanning many SMs is written by
// many threads). The last tile also writes the rows of SMs starting at or
// past T (idle SMs in G1, the sentinel). T must be known first: one tile (B
// <= kMetaThreads) gets it from the scan itself, larger batches from a
// reduction pass over the lengths before the scan pass.
//
// Latency is what this CTA costs build_metadata at small batches (it runs
// beside the item CTAs), so the destinations' descriptors are loaded once,
// by one thread each, while the lengths are in flight, and no destination
// waits for another's memory round trip.
__device__ __forceinline__ void paged_mqa_schedule_cta(const ScheduleJob& j, ScheduleShared& s) {
  const int tid = threadIdx.x;
  const int64_t outputs = j.outputs();
  if (tid < outputs && tid < kScheduleSharedOutputs) s.outputs[tid] = j.output(tid);  // read after the next sync
  const auto output = [&](int64_t d) { return d < kScheduleSharedOutputs ? s.outputs[d] : j.output(d); };
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
  for (int64_t tile = 0; tile < j.batch || tile == 0; tile += kMetaThreads) {
    const bool last = tile + kMetaThreads >= j.batch;
    const int count = static_cast<int>(last ? j.batch - tile : int64_t{kMetaThreads});
    const uint32_t u = tid < count ? j.units(tile + tid) : 0u;
    uint32_t before = 0, tile_total = 0;
    ScheduleScan(s.scan).ExclusiveSum(u, before, tile_total);
    if (j.batch <= kMetaThreads) total = tile_total;
    s.prefix[tid] = base + before + u;
    __syncthreads();
    const int64_t units = static_cast<int64_t>(total) * j.atoms;
    const int64_t tile_first = static_cast<int64_t>(base) * j.atoms;
    const int64_t tile_end = static_cast<int64_t>(base + tile_total) * j.atoms;
    for (int64_t d = 0; d < outputs; ++d) {
      const ScheduleOutput o = output(d);
      if (o.rows == nullptr || (!last && tile_end == tile_first)) continue;
      const detail::PagedMqaSplit split = detail::PagedMqaSplit::make(units, o.sms, j.g1);
      const int64_t first = tile_first == 0 ? 0 : split.first_at(tile_first);
      const int64_t stop = last ? o.sms + 1 : split.first_at(tile_end);
      for (int64_t i = first + tid; i < stop; i += kMetaThreads) {
        const int64_t start = split.start(i);
        if (start >= units) {  // an idle SM (G1) or the sentinel row S
          o.rows[2 * i] = static_cast<int32_t>(j.batch * j.atoms);
          o.rows[2 * i + 1] = 0;
          continue;
        }
        int lo = 0, hi = count - 1;  // the first request of the tile with prefix * atoms > start
        while (lo < hi) {
          const int mid = (lo + hi) / 2;
          if (static_cast<int64_t>(s.prefix[mid]) * j.atoms > start) hi = mid;
          else lo = mid + 1;
        }
        const uint32_t end = s.prefix[lo], first_unit = lo > 0 ? s.prefix[lo - 1] : base;
        detail::paged_mqa_store_row(o.rows, i, tile + lo, j.atoms, end - first_unit,
                                    start - static_cast<int64_t>(first_unit) * j.atoms);
      }
    }
    base += tile_total;
    if (!last) __syncthreads();  // the next tile reuses the scan storage and prefix
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
