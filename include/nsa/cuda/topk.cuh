// CUDA kernel and launcher of topk_transform (nsa/topk.h). Header-only so an
// engine can call invoke_topk_transform on raw pointers or fuse the pieces;
// the library's public API validates arguments and then calls the launcher.
// This file has the overview below and the host side; the device code is in
// nsa/cuda/topk/: state.cuh (sizes, shared state, cluster helpers), keys.cuh
// (keys, histogram adds, sweeps), select.cuh (the passes), finish.cuh (the
// bitmap finishes) and kernel.cuh (a row's selection and the kernel).
//
// One CTA of 1024 threads per score row, or, on sm_90 and later when there
// are few rows wider than 32K scores, one thread-block cluster of C = 2..16
// such CTAs per row (C chosen on the host from the row count, the width and
// the device only; a row whose live length fits one CTA's key cache is still
// selected by the first CTA of its cluster alone). Every decision that
// depends on a length is made on the device, so the launch shape depends on
// the row count and width only and a captured graph stays right, and fast,
// for any live lengths.
//
// In a cluster, CTA c takes the c-th of C consecutive slices of the row's
// visible length (multiples of 32 keys); each pass below builds the CTA's
// histogram of its slice; after a cluster barrier CTA c sums the c-th 1/C of
// the bins over the C histograms (DSMEM reads), and after a second one every
// CTA finds the bin from those sums, so all CTAs follow the same prefix. The compaction's counts are exchanged the same
// way: CTA c's first output slot counts the keys above the threshold and the ties taken in slices 0..c-1, so the output
// is the same as with one CTA.
//
//   len <= K  the identity 0 .. len-1, then -1 (scores are not read).
//   len >  K  a radix select on the order-preserving uint32 key of each
//             score (nsa/detail/topk_math.h), most significant digit first:
//             digits of 12, 10 and 10 bits. Each pass builds a histogram of
//             the keys that share the prefix found so far, in shared memory,
//             and picks the bin holding the K-th largest key; it stops early
//             when that bin is taken whole. Slices of up to kTopkCacheKeys
//             scores (rows of up to C x 32K) are read from global memory once: their keys stay in
//             shared memory for the later passes.
//   Cached    (every slice within the cache, topk_finish_cached) one sweep of
//             the cache after pass 1 writes two bitmaps (keys above pass 1's
//             bin; keys in it) from warp ballots and collects the bin's
//             indices; passes 2 and 3 read only those candidates, which then
//             set their bits (a slice holding more than kTopkCachedCandidates
//             keys of the bin is refined over its whole cache instead, and
//             one more sweep writes both bitmaps; each CTA of a cluster
//             decides for its own slice); one block scan over the bitmap words
//             places every selected index (ascending, the smallest indices
//             winning ties).
//   Longer    (slices of up to kTopkBitmapMaxKeys, topk_finish_bitmaps) when
//             pass 1's bin fits the candidate space beside two bitmaps of
//             the slice, one more global sweep sets the bits of the keys
//             above the bin and collects the bin's (key, index) pairs into
//             the cache's memory; passes 2 and 3 read only the candidates,
//             which then set their bits, and the bitmaps give the output as
//             for cached rows (2 reads of the row in all).
//   General   otherwise (a plateau of ties fills the bin): when pass 1's bin
//             holds <= kTopkCandidates keys, the same sweep collects them and
//             counts each warp's keys above it (3 reads of the row in all),
//             else the row is re-read per pass (mostly from L2).
//             Then the row is compacted in index order: each warp owns a
//             contiguous chunk, counts its keys above the threshold and its
//             ties, a 32-entry scan gives every warp its first output slot,
//             and ballots give each lane its slot. A tie at the threshold is
//             taken when fewer than `need` ties precede it in index order:
//             the smallest indices win, and the output is ascending. The
//             compaction writes raw indices to shared memory; the transform
//             (table loads) then runs over all K slots at once.
//
// No global scratch, no atomics outside shared memory, no communication
// between CTAs outside a cluster (whose CTAs the hardware co-schedules:
// nothing to deadlock under concurrent work), no allocation.
// Histogram updates are warp-aggregated (pass 1: the keys in lane 0's bin,
// by one add of their warp sum; later passes: when a warp's 32 keys share a
// bin), so exact-zero plateaus cost no more than spread-out rows. The
// transform's table entries are read before they are needed: for rows of at
// most K scores together with the length, on the bitmap routes copied into
// shared memory while the selection runs.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "nsa/cuda/shared_memory.cuh"
#include "nsa/cuda/topk/kernel.cuh"
#include "nsa/topk.h"

namespace nsa {
namespace kernels {

// The host-side state of the launches below (attributes set, capacities
// cached) is keyed by the kernel itself, never by the score type alone:
// nvcc gives every translation unit that includes this header its own
// instance of each kernel (internal linkage), while the linker keeps one
// copy of each inline host function. A cache keyed by ScoreT let the
// library's query prepare the library's kernel and an engine's (or a
// bench's) launch then use its own, unprepared instance: "cluster
// misconfiguration". Keyed by the kernel, each unit prepares the instance it
// launches, in the function that launches it.

// The launch configuration of `grid` CTAs of the cluster kernel in clusters
// of `size` (`dims` holds the attribute the configuration points to).
struct TopkClusterLaunch {
  cudaLaunchAttribute dims[1] = {};
  cudaLaunchConfig_t config = {};
  TopkClusterLaunch(int size, unsigned grid, cudaStream_t stream) {
    dims[0].id = cudaLaunchAttributeClusterDimension;
    dims[0].val.clusterDim.x = static_cast<unsigned>(size);
    dims[0].val.clusterDim.y = 1;
    dims[0].val.clusterDim.z = 1;
    config.gridDim = dim3(grid);
    config.blockDim = dim3(kTopkThreads);
    config.dynamicSmemBytes = kTopkSharedBytes;
    config.stream = stream;
    config.attrs = dims;
    config.numAttrs = 1;
  }
  TopkClusterLaunch(const TopkClusterLaunch&) = delete;  // config points into this object
  TopkClusterLaunch& operator=(const TopkClusterLaunch&) = delete;
};

// How many clusters of `size` CTAs of `Kernel` (a cluster instance of
// topk_transform_kernel) can be resident at once on the current device, 0
// where clusters cannot be used: a device or a kernel binary older than
// sm_90 (compute_80 PTX compiled for a later part has no cluster code), or a
// size the device refuses. Sets the kernel's attributes (shared memory,
// non-portable size 16) on the way.
template <auto Kernel>
inline int topk_query_cluster_capacity(int size) {
  cudaFuncAttributes attrs{};
  // ptxVersion: the architecture the code was compiled for (binaryVersion
  // is the device's when the driver compiles compute_80 PTX).
  if (cudaFuncGetAttributes(&attrs, Kernel) != cudaSuccess || attrs.ptxVersion < 90 || attrs.binaryVersion < 90)
    return 0;
  if (allow_dynamic_shared_memory<Kernel>(kTopkSharedBytes) != cudaSuccess) return 0;
  if (size > 8 && cudaFuncSetAttribute(Kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess)
    return 0;
  const TopkClusterLaunch one(size, static_cast<unsigned>(size), nullptr);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, Kernel, &one.config) != cudaSuccess) return 0;
  return clusters;
}

// topk_query_cluster_capacity<Kernel>, asked once per device (0..63) and
// size; the errors of a refused query are cleared so that the launch status
// stays the launch's own. Safe inside a stream capture (no stream work; this
// thread's capture mode is relaxed for the queries).
template <auto Kernel>
inline int topk_cluster_capacity_of(int size) {
  static std::atomic<int> known[64][5];  // [device][log2 size]: capacity + 1, 0 = not asked yet
  int log2 = 0;
  while ((2 << log2) <= size) ++log2;
  if (size < 2 || size > kTopkMaxCluster || (1 << log2) != size) return 0;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  const bool cacheable = device >= 0 && device < 64;
  if (cacheable) {
    const int v = known[device][log2].load(std::memory_order_acquire);
    if (v != 0) return v - 1;
  }
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  const int capacity = topk_query_cluster_capacity<Kernel>(size);
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  (void)cudaGetLastError();
  if (cacheable) known[device][log2].store(capacity + 1, std::memory_order_release);
  return capacity;
}

// The capacity for decisions (the chosen size; tests and benches asking
// which sizes exist): the same number in every translation unit. A launch
// prepares its own instance through topk_cluster_capacity_of (topk_launch).
template <class ScoreT>
inline int topk_cluster_capacity(int size) {
  return topk_cluster_capacity_of<topk_transform_kernel<ScoreT, true>>(size);
}

// Rows at most this wide always get one CTA: a row that fits the shared-
// memory cache is read once and finished from bitmaps (topk_finish_cached),
// and a cluster's extra barriers and histogram merges cost more than the
// split saves. Measured on an H100 (docs/gpu-report-h100-b495087.md, the
// bench's sweep, us with one CTA against the chosen cluster): 1 x 32K 22.28
// against 22.21 with 16, 8 x 32K 22.60 against 22.73 with 8, 64 x 32K 23.53
// against 27.45 with 2; wider rows still gain (1 x 128K: 76.29 with one,
// 23.87 with 16). The rule sees the width, not the lengths: 64 prefill
// windows of up to 16K in rows 64K wide get clusters of 2 CTAs (24.52 us
// in that report, one CTA 17.22), so the kernel also leaves a row whose live
// length fits the cache to the first CTA of its cluster (docs/gpu-report-h100-10d7ed9.md,
// command 1: a cluster of 16 on one 8K row 13.24 us against 13.16 with one
// CTA, where it took 22.62 before).
constexpr int64_t kTopkClusterMinWidth = kTopkCacheKeys + 1;

// The CTAs per row, from the row count, the score width and the device only
// (never from lengths, which are device values: a captured graph stays right
// and fast for any live lengths). Few rows leave most SMs idle with one CTA
// per row, so a row wider than kTopkClusterMinWidth - 1 is split over a
// cluster while every row's cluster still fits on the device at once;
// otherwise one CTA per row.
template <class ScoreT>
inline int topk_choose_cluster(int64_t rows, int64_t width) {
  if (width < kTopkClusterMinWidth) return 1;
  const int wanted = rows <= 8 ? 16 : rows <= 33 ? 4 : rows <= 66 ? 2 : 1;
  for (int size = wanted; size > 1; size /= 2)
    if (topk_cluster_capacity<ScoreT>(size) >= rows) return size;
  return 1;
}

template <class ScoreT>
inline cudaError_t topk_launch(const TopkArgs& a, int cluster, cudaStream_t stream) {
  constexpr auto kPerRow = topk_transform_kernel<ScoreT, false>;
  constexpr auto kSplit = topk_transform_kernel<ScoreT, true>;
  const bool forced = cluster != 0;
  if (!forced) cluster = topk_choose_cluster<ScoreT>(a.rows, a.width);
  // A chosen size this unit's own instance cannot run (another unit's
  // instance answered the choice, built for other architectures): one CTA
  // per row. A forced size is the caller's to check (cudaErrorInvalidValue).
  if (!forced && cluster > 1 && topk_cluster_capacity_of<kSplit>(cluster) == 0) cluster = 1;
  if (cluster == 1) {
    const cudaError_t e = allow_dynamic_shared_memory<kPerRow>(kTopkSharedBytes);
    if (e != cudaSuccess) return e;
    kPerRow<<<dim3(static_cast<unsigned>(a.rows)), kTopkThreads, kTopkSharedBytes, stream>>>(a);
    return cudaGetLastError();
  }
  // The size must be usable, and this unit's instance prepared for it (a
  // cached lookup after the first call per device and size).
  if (topk_cluster_capacity_of<kSplit>(cluster) == 0 || a.rows > INT32_MAX / cluster) return cudaErrorInvalidValue;
  const TopkClusterLaunch launch(cluster, static_cast<unsigned>(a.rows * cluster), stream);
  return cudaLaunchKernelEx(&launch.config, kSplit, a);
}

// One launch on `stream`: `a.rows` CTAs, or `a.rows` clusters of CTAs that
// split each row. `a` must satisfy the checks of topk_transform
// (src/topk.cpp): 1 <= k <= 2048, rows <= 2^31 - 1, strides and pointers as
// documented in nsa/topk.h; scores aligned to their element. `cluster`
// forces the CTAs per row (1, or 2, 4, 8, 16 where topk_cluster_capacity is
// not 0; tests use it); 0 chooses from the row count and the width.
inline cudaError_t invoke_topk_transform(const TopkArgs& a, cudaStream_t stream, int cluster = 0) {
  if (a.rows <= 0) return cudaSuccess;
  if (a.score_type == ScoreType::kBfloat16) return topk_launch<uint16_t>(a, cluster, stream);
  return topk_launch<float>(a, cluster, stream);
}

}  // namespace kernels
}  // namespace nsa
