// The scalars CTA of build_metadata (CTA 0): per-request and per-row fields
// of every destination, element 0 of the cumulative arrays, DRAFT_EXTEND's
// FlashMLA split counts and the checked-mode record.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "nsa/cuda/metadata/build_flashmla.cuh"
#include "nsa/cuda/metadata/build_inputs.cuh"
#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/cuda/metadata/launch_shape.cuh"
#include "nsa/cuda/metadata/targets.cuh"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

// sum_{j<q} min(kv - q + 1 + j, topk) in closed form (the nsa_cache_seqlens of
// one request's rows): rows j < k are below the clamp, the rest equal topk.
__host__ __device__ __forceinline__ int64_t clamped_rows_sum(int64_t kv, int64_t q, int64_t topk) {
  const int64_t first = kv - q + 1;
  int64_t k = topk - first;
  k = k < 0 ? 0 : (k > q ? q : k);
  return k * first + k * (k - 1) / 2 + (q - k) * topk;
}

// The per-request and per-row fields of one destination.
struct ScalarTarget {
  int32_t* cache_seqlens;
  int32_t* cu_seqlens_k;
  int32_t* seqlens_expanded;  // optional
  int32_t* nsa_cache_seqlens;
  int32_t* nsa_cu_seqlens_k;
};

// Request b's fields and those of its q rows (rows [row0, row0 + q)) in one
// destination; cu_before / nsa_before are the cumulative sums before the
// request (modulo 2^32, see BuildScan). One thread per request: no search of
// the row starts, and the stores leave as soon as the scan is done.
__device__ __forceinline__ void store_request_fields(const BuildParams& p, const ScalarTarget& t, int64_t b,
                                                     int64_t row0, int64_t kv, int64_t q, uint32_t cu_before,
                                                     uint32_t nsa_before) {
  t.cache_seqlens[b] = static_cast<int32_t>(kv);
  t.cu_seqlens_k[b + 1] = static_cast<int32_t>(cu_before + static_cast<uint32_t>(kv));
  uint32_t running = nsa_before;
  for (int64_t j = 0; j < q; ++j) {
    const int64_t expanded = kv - q + 1 + j;
    const int64_t clamped = expanded < p.topk ? expanded : p.topk;
    running += static_cast<uint32_t>(clamped);
    if (t.seqlens_expanded != nullptr) t.seqlens_expanded[row0 + j] = static_cast<int32_t>(expanded);
    t.nsa_cache_seqlens[row0 + j] = static_cast<int32_t>(clamped);
    t.nsa_cu_seqlens_k[row0 + j + 1] = static_cast<int32_t>(running);
  }
}

// The same into every destination of a descriptor table.
__device__ __forceinline__ void store_request_scalars(const BuildParams& p, const MetadataBuffers* targets, int64_t b,
                                                      int64_t row0, int64_t kv, int64_t q, uint32_t cu_before,
                                                      uint32_t nsa_before) {
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const MetadataBuffers& t = targets[d];
    store_request_fields(p,
                         ScalarTarget{t.cache_seqlens, t.cu_seqlens_k, t.seqlens_expanded, t.nsa_cache_seqlens,
                                      t.nsa_cu_seqlens_k},
                         b, row0, kv, q, cu_before, nsa_before);
  }
}

// The scalar fields of up to kWarpTargets destinations held in a warp's
// lanes, as WarpTargets does for the page tables: lane 4d + f holds field f
// of destination d in `a` {cache_seqlens, cu_seqlens_k, seqlens_expanded,
// nsa_cache_seqlens} and, for f = 0, nsa_cu_seqlens_k in `b`. Every lane of
// the warp must call operator() (it shuffles).
struct WarpScalarTargets {
  long long a = 0;
  long long b = 0;

  __device__ __forceinline__ static WarpScalarTargets load(const MetadataBuffers* targets, int64_t count, int lane) {
    const int d = lane >> 2, f = lane & 3;
    WarpScalarTargets w;
    if (d < count) {
      const MetadataBuffers* t = targets + d;
      const size_t offset = f == 0   ? offsetof(MetadataBuffers, cache_seqlens)
                            : f == 1 ? offsetof(MetadataBuffers, cu_seqlens_k)
                            : f == 2 ? offsetof(MetadataBuffers, seqlens_expanded)
                                     : offsetof(MetadataBuffers, nsa_cache_seqlens);
      w.a = __ldg(reinterpret_cast<const long long*>(reinterpret_cast<const char*>(t) + offset));
      if (f == 0) w.b = __ldg(reinterpret_cast<const long long*>(&t->nsa_cu_seqlens_k));
    }
    return w;
  }
  __device__ __forceinline__ ScalarTarget operator()(int64_t d) const {
    const int l = static_cast<int>(d) * 4;
    auto ptr = [](long long v) { return reinterpret_cast<int32_t*>(v); };
    return ScalarTarget{ptr(__shfl_sync(0xffffffffu, a, l)), ptr(__shfl_sync(0xffffffffu, a, l + 1)),
                        ptr(__shfl_sync(0xffffffffu, a, l + 2)), ptr(__shfl_sync(0xffffffffu, a, l + 3)),
                        ptr(__shfl_sync(0xffffffffu, b, l))};
  }
};

// The scalars of a batch of at most 32 requests with static rows (DECODE,
// TARGET_VERIFY) into at most kWarpTargets destinations, by one warp: lane b
// is request b. Inputs and descriptors arrive in one round trip, then a warp
// scan and the stores, with no shared memory and no barrier (the other warps
// of the CTA exit at once).
template <bool kChecked>
__device__ __forceinline__ void build_scalars_warp(const BuildParams& p, BuildShared& s, int lane) {
  const int count = static_cast<int>(p.batch);
  RequestInputs mine;
  if (lane < count) mine = load_request(p, lane);
  const WarpScalarTargets targets = WarpScalarTargets::load(p.targets, p.num_targets, lane);
  int64_t kv = 0, q = 0;
  if (lane < count) {
    kv = static_cast<int32_t>(mine.kv64);
    q = query_rows<kChecked>(p, mine.q);
    if constexpr (kChecked) record_request_errors(p, lane, mine, q);
  }
  const BuildScan in = lane < count ? BuildScan{static_cast<uint32_t>(q), static_cast<uint32_t>(kv),
                                                static_cast<uint32_t>(clamped_rows_sum(kv, q, p.topk))}
                                    : BuildScan{0, 0, 0};
  BuildScan before;
  BuildWarpScan(s.warp_scan).ExclusiveScan(in, before, BuildScan{0, 0, 0}, BuildScanSum());
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const ScalarTarget t = targets(d);  // all lanes: shuffles
    if (lane == 0) {
      // Element 0 of the cumulative arrays (spec §5.2: 0, written once at capture; we write it every call).
      t.cu_seqlens_k[0] = 0;
      t.nsa_cu_seqlens_k[0] = 0;
    }
    if (lane < count) store_request_fields(p, t, lane, before.rows, kv, q, before.kv, before.nsa);
  }
}

// The scalars CTA: per-request and per-row fields of every destination,
// element 0 of the cumulative arrays, DRAFT_EXTEND's FlashMLA split counts (R
// is known only after the scan), and in checked mode the validation record
// of every request. It holds no page-table item, so its scan and stores run
// beside the item CTAs' round trips; it is CTA 0, the first one dispatched,
// because its chain (inputs, scan, stores) is as long as theirs. Kept apart
// from the item path: its code is a short straight line with no item logic
// to branch over.
template <bool kChecked>
__device__ __forceinline__ void build_scalars(const BuildParams& p, BuildShared& s) {
  const int tid = threadIdx.x;
  const int64_t static_q = static_rows(p);
  if (static_q > 0 && p.batch <= 32 && p.num_targets <= kWarpTargets) {
    if (tid < 32) build_scalars_warp<kChecked>(p, s, tid);
    return;
  }
  const int count0 = static_cast<int>(p.batch < kMetaThreads ? p.batch : int64_t{kMetaThreads});
  RequestInputs mine;  // this thread's request of the current chunk
  if (tid < count0) mine = load_request(p, tid);
  const MetadataBuffers* targets = stage_targets<kMetaThreads>(p.targets, p.num_targets, s.targets());
  __syncthreads();
  // Element 0 of the cumulative arrays (spec §5.2: 0, written once at capture; we write it every call).
  for (int64_t d = tid; d < p.num_targets; d += kMetaThreads) {
    targets[d].cu_seqlens_k[0] = 0;
    targets[d].nsa_cu_seqlens_k[0] = 0;
  }
  int64_t row_base = 0;
  uint32_t kv_base = 0, nsa_base = 0;
  for (int64_t chunk = 0; chunk < p.batch; chunk += kMetaThreads) {
    const int count = static_cast<int>(p.batch - chunk < kMetaThreads ? p.batch - chunk : int64_t{kMetaThreads});
    if (chunk != 0) mine = tid < count ? load_request(p, chunk + tid) : RequestInputs{};
    int64_t kv = 0, q = 0;
    if (tid < count) {
      kv = static_cast<int32_t>(mine.kv64);
      q = query_rows<kChecked>(p, mine.q);
      if constexpr (kChecked) record_request_errors(p, chunk + tid, mine, q);
    }
    const BuildScan in = tid < count ? BuildScan{static_cast<uint32_t>(q), static_cast<uint32_t>(kv),
                                                 static_cast<uint32_t>(clamped_rows_sum(kv, q, p.topk))}
                                     : BuildScan{0, 0, 0};
    BuildScan before{0, 0, 0};
    BuildScan total{static_cast<uint32_t>(count * static_q), 0, 0};
    if (static_q > 0 && count <= 32) {
      // One warp holds the chunk, and it is the last one: warp 0 scans alone,
      // with no barrier (the rows are static, so no other warp needs a total).
      if (tid < 32) BuildWarpScan(s.warp_scan).ExclusiveScan(in, before, BuildScan{0, 0, 0}, BuildScanSum(), total);
    } else {
      BuildBlockScan(s.scan).ExclusiveScan(in, before, BuildScan{0, 0, 0}, BuildScanSum(), total);
    }
    if (tid < count)
      store_request_scalars(p, targets, chunk + tid, row_base + before.rows, kv, q, kv_base + before.kv,
                            nsa_base + before.nsa);
    row_base += total.rows;
    kv_base += total.kv;
    nsa_base += total.nsa;
    if (chunk + kMetaThreads < p.batch) __syncthreads();  // the next chunk reuses the scan storage
  }
  // DRAFT_EXTEND's R + 1 FlashMLA split counts (R = row_base; the item CTAs
  // copy the other FlashMLA elements).
  if (p.flashmla_num_splits != nullptr && static_q == 0) {
    for (int64_t e = tid; e <= row_base; e += kMetaThreads)
      store_flashmla_split(p, targets, e, __ldg(p.flashmla_num_splits + e));
  }
}

}  // namespace kernels
}  // namespace nsa
