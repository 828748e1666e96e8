// build_metadata: the kernel (a router over its three named paths), the
// launch policy and the launcher.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/cuda/metadata/build_items_chunked.cuh"
#include "nsa/cuda/metadata/build_items_one_pass.cuh"
#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/cuda/metadata/build_scalars.cuh"
#include "nsa/cuda/metadata/build_schedule.cuh"
#include "nsa/cuda/metadata/fast_divisor.cuh"
#include "nsa/cuda/metadata/launch_shape.cuh"
#include "nsa/cuda/metadata/targets.cuh"
#include "nsa/detail/dispatch.h"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

// ---------------------------------------------------------------------------
// build_metadata: ONE launch. The batch is read in chunks of kMetaThreads
// requests. CTA 0 scans each chunk (cub scans in shared memory) and writes
// the per-request and per-row scalars. In DRAFT_EXTEND the other CTAs
// scan too (a request's first row is a prefix sum of the extend lengths); in
// DECODE / TARGET_VERIFY request b owns rows [b * q, (b + 1) * q) and they
// skip the scan. Page-table items are numbered statically: item i is columns
// [c * kColsPerItem, (c + 1) * kColsPerItem) of request b, i = b * ipr + c,
// with ipr = items per request from the host bound max_kv. A warp therefore
// knows its first item's request without the scan, and the chain for a small
// batch is two memory round trips, like a gather:
//   1. {inputs of the chunk, the first item's request, descriptors, FlashMLA}
//   2. the first item's req_to_token columns
//   -> stores.
// After that, the chunk walk (build_items_chunked) numbers each chunk's items
// by its widest live row rather than by max_kv, so tables far wider than the
// rows cost no walk over dead items. Items past a request's length are
// skipped (the warp jumps to its first item of the next request), and each
// warp loads its next item before it stores the current one, so two items'
// loads are in flight per warp.
// When every warp has one item at most (most small and medium jobs), the
// launcher picks the one-pass kernel instead: no chunk walk, no shared
// memory, no barrier in the item CTAs (build_items_one_pass), and for a batch
// of <= 32 requests with static rows one warp writes the scalars
// (build_scalars_warp).
// When some destination has the DeepGEMM paged-MQA schedule, one more CTA,
// CTA 1, computes it (build_schedule.cuh); without it the grid and every
// path are as before, at the cost of one uniform compare. It is CTA 1, not
// the last, because CTAs start in index order: a small build's grid has a
// few hundred CTAs, mostly without an item, and the last one would start
// after all of them were dispatched, on the launch's critical path.
// ---------------------------------------------------------------------------

// kChecked: requests with an invalid cache length, request row or extend
// length are recorded in p.error (by the scalars CTA) and write no
// page-table rows (an invalid extend length also counts as 0 query rows, so
// no row of it is written).
template <class Policy, bool kChecked, bool kOnePass>
__global__ void __launch_bounds__(kMetaThreads, Policy::kCtasPerSm)
    build_metadata_kernel(const __grid_constant__ BuildParams p) {
  __shared__ BuildShared s;
  // CTA 0 writes the scalars (the launcher's grid always has an item CTA
  // besides it).
  if (blockIdx.x == 0) {
    build_scalars<kChecked>(p, s);
    return;
  }
  if (p.schedule_cta != 0 && blockIdx.x == 1) {
    build_paged_mqa_schedule(p, s);
    return;
  }
  if constexpr (kOnePass) {
    build_items_one_pass<Policy, kChecked>(p);
    return;
  }
  build_items_chunked<Policy, kChecked>(p, s);
}

// ---------------------------------------------------------------------------
// Launcher and policy choice.
// ---------------------------------------------------------------------------
// p.max_kv bounds every row length (precondition), so it bounds the
// page-table items without reading device data.
template <class Policy>
inline int64_t build_items_per_request(const BuildParams& p) {
  return (p.max_kv + Policy::kColsPerItem - 1) / Policy::kColsPerItem;
}

// Grid of a build with `items` page-table items: CTA 0 (scalars), the item
// CTAs (at least one: build_metadata_kernel relies on it) and, when present,
// the schedule CTA, within one wave of resident CTAs where possible.
inline int build_grid(int64_t items, int num_sms, int ctas_per_sm, int schedule_cta) {
  const int grid = metadata_grid(items + 1 + schedule_cta, num_sms, ctas_per_sm);
  return grid < 2 + schedule_cta ? 2 + schedule_cta : grid;
}

// The one-pass item path applies (see build_items_one_pass).
template <class Policy>
inline bool build_one_pass(const BuildParams& p, int num_sms) {
  if (p.batch > kMetaThreads || p.num_targets > kWarpTargets) return false;
  const int64_t items = p.batch * build_items_per_request<Policy>(p);  // batch <= 256: no overflow
  const int item_ctas = build_grid(items, num_sms, Policy::kCtasPerSm, p.schedule_cta) - 1 - p.schedule_cta;
  return items <= static_cast<int64_t>(item_ctas) * kMetaWarps;
}

template <class Policy, bool kOnePass>
cudaError_t launch_build_metadata(BuildParams p, int num_sms, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const int64_t items_per_request = build_items_per_request<Policy>(p);
  p.items_per_request = items_per_request;
  p.items_per_request_div = FastDivisor::make(
      items_per_request >= 1 && items_per_request <= INT32_MAX ? static_cast<uint32_t>(items_per_request) : 1u);
  const int64_t max_items = p.batch * (items_per_request > 0 ? items_per_request : 1);
  const int grid = build_grid(max_items, num_sms, Policy::kCtasPerSm, p.schedule_cta);
  NSA_DISPATCH_BOOL(p.error != nullptr, kChecked,
                    [&] { build_metadata_kernel<Policy, kChecked, kOnePass><<<grid, kMetaThreads, 0, stream>>>(p); });
  return cudaGetLastError();
}

// Picks the policy from what the host knows: short items while there are at
// most two per item CTA of a full grid (CTA 0 holds none), so a small job's
// stores spread over many SMs; long ones beyond, which halve the warps, and
// so the instructions each SM issues, for the same columns. One pass whenever
// it applies with short items; with long items only in DECODE (measured on
// an H100: with q > 1 rows per item and three or four destinations, the
// long-item one-pass kernel was slower than the chunk walk).
inline cudaError_t invoke_build_metadata(const BuildParams& p, int num_sms, cudaStream_t stream) {
  static_assert(SmallBuildPolicy::kCtasPerSm == LargeBuildPolicy::kCtasPerSm, "one grid size for both");
  const int64_t small_items = p.batch * build_items_per_request<SmallBuildPolicy>(p);
  const int64_t item_ctas = static_cast<int64_t>(num_sms) * SmallBuildPolicy::kCtasPerSm - 1 - p.schedule_cta;
  if (small_items <= 2 * item_ctas && build_one_pass<SmallBuildPolicy>(p, num_sms))
    return launch_build_metadata<SmallBuildPolicy, true>(p, num_sms, stream);
  if (p.mode == static_cast<int32_t>(ForwardMode::kDecode) && build_one_pass<LargeBuildPolicy>(p, num_sms))
    return launch_build_metadata<LargeBuildPolicy, true>(p, num_sms, stream);
  return launch_build_metadata<LargeBuildPolicy, false>(p, num_sms, stream);
}

}  // namespace kernels
}  // namespace nsa
