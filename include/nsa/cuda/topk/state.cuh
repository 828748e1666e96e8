// Top-k kernel, part 1 of 5 (the overview is in nsa/cuda/topk.cuh): the probe
// hooks, the sizes, the CTA's shared state and the thread-block cluster helpers.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/detail/topk_math.h"
#include "nsa/topk.h"

namespace nsa {
namespace kernels {

// Hooks for bench/topk_probe_bench.cu only (the library never defines them):
// NSA_TOPK_PROBE_BEGIN() (the kernel's first statement: it may declare the
// probe's registers) and NSA_TOPK_PROBE_MARK(phase), when thread 0 reaches a
// phase boundary of topk_transform_kernel (each right after a CTA barrier);
// NSA_TOPK_HIST_ADD picks how topk_hist_add counts a warp's keys (0, the
// library's; 1, 2 and 3 the alternatives it is measured against, see there).
// The probe builds one binary per NSA_TOPK_HIST_ADD: separate programs, so
// no two definitions of these kernels ever meet in one link.
#ifndef NSA_TOPK_PROBE_MARK
#define NSA_TOPK_PROBE_BEGIN() ((void)0)
#define NSA_TOPK_PROBE_MARK(phase) ((void)0)
#endif
#ifndef NSA_TOPK_HIST_ADD
#define NSA_TOPK_HIST_ADD 0
#endif

constexpr int kTopkThreads = 1024;
constexpr int kTopkWarps = kTopkThreads / 32;
// The first digit has 12 bits (sign, exponent, 3 mantissa bits: fine enough
// that the bin of the K-th key is small on long rows), the other two 10.
constexpr int kTopkTopShift = 20;
constexpr int kTopkBins = 1 << (32 - kTopkTopShift);
constexpr int kTopkDigitBins = 1 << 10;  // bins of passes 2 and 3
// Keys of a row kept in shared memory (128 KiB; with the histogram the CTA
// stays within the 163 KiB opt-in limit of sm_80 as well as sm_90's 227 KiB).
constexpr int kTopkCacheKeys = 32 * 1024;
// Longer rows use the same memory for the candidates of pass 1's bin: (key,
// index) pairs, when that bin holds at most this many keys.
constexpr int kTopkCandidates = kTopkCacheKeys / 2;
// Cached rows keep the indices of pass 1's bin's keys (their keys stay in the
// cache) when the bin holds at most this many (topk_finish_cached); the same
// words later hold the selected indices (K <= kTopkMaxK of them).
constexpr int kTopkCachedCandidates = 4096;
// Longer slices of at most this many keys finish from two bitmaps of the
// slice (topk_finish_bitmaps), kept at the end of the cache's memory beside
// the candidates: 2 x 8192 words, leaving room for 8192 candidates at most.
constexpr int kTopkBitmapMaxKeys = 256 * 1024;
// Dynamic shared memory: the histogram, then the key cache (+3 words of
// alignment slack: the cache is shifted so vector stores are 16-byte
// aligned), then the cached rows' candidates. 160 KiB: with the static
// state within sm_80's 163 KiB opt-in limit.
constexpr size_t kTopkSharedBytes = (kTopkBins + kTopkCacheKeys + 4 + kTopkCachedCandidates) * sizeof(uint32_t);
// The largest thread-block cluster a row is split over (16 is non-portable).
constexpr int kTopkMaxCluster = 16;

// NSA_TOPK_STREAM (an experiment build, 0 in the library): pass 1 of a slice
// past the key cache copies its scores into the cache's memory with cp.async,
// an iteration ahead (topk_stream_global_runs).
#ifndef NSA_TOPK_STREAM
#define NSA_TOPK_STREAM 0
#endif
constexpr bool kTopkStream = NSA_TOPK_STREAM != 0;

struct TopkBlockState {
  int32_t bin;            // the bin holding the K-th key at this level
  uint32_t in_bin;        // keys in that bin
  uint32_t slice_in_bin;  // keys of this CTA's slice in that bin (in_bin with one CTA per row)
  uint32_t need;          // keys still to take from that bin
  uint32_t candidates;    // (key, index) pairs collected so far
  uint32_t warp_above[kTopkWarps];
  uint32_t warp_ties[kTopkWarps];
  uint32_t warp_slot[kTopkWarps];      // first output slot of each warp's chunk
  uint32_t warp_tie0[kTopkWarps];      // ties before each warp's chunk
  uint32_t cta_above, cta_ties;        // the CTA's counts, read by the later CTAs of its cluster
  uint32_t first_slot, slots;          // the CTA's output slots [first_slot, first_slot + slots)
  uint32_t above_before, ties_before;  // topk_finish_cached: counts in the slices before this CTA's
  // Cluster merge (topk_cluster_pick_bin), per pass parity: the total of the
  // bins this CTA merged; then the range holding the wanted key.
  uint32_t range_total[2];
  int32_t range;
  uint32_t range_above;       // keys in the ranges above it
  uint32_t key_min, key_max;  // topk_refine: the extremes of the keys in pass 1's bin (one CTA per row)
  uint32_t sink[32];          // topk_hist_add_run's adds of 0 (never read)
};

// This CTA's part of its row: slice `rank` of `size` (size 1: the whole row;
// size > 1: the CTAs of one thread-block cluster, sm_90 and later).
struct TopkSlice {
  int rank;
  int size;
};

template <bool kCluster>
__device__ __forceinline__ TopkSlice topk_this_slice() {
  if constexpr (kCluster) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
    return {static_cast<int>(cluster.block_rank()), static_cast<int>(cluster.num_blocks())};
#else
    __trap();  // the host launches the cluster kernel only from sm_90 code
#endif
  }
  return {0, 1};
}

// A barrier of the cluster: also of the CTA, and it orders the shared memory
// of every CTA of the cluster (what was written before it, anywhere, is
// visible to DSMEM reads after it).
__device__ __forceinline__ void topk_cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#endif
}

// The address of `p` (this CTA's shared memory) in the CTA `rank` of the cluster.
template <class T>
__device__ __forceinline__ T* topk_remote(T* p, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  (void)rank;
  return p;
#endif
}

// The last DSMEM read of a cluster CTA is followed by arrive, the CTA's exit
// preceded by wait: no CTA leaves while another may still read its memory.
template <bool kCluster>
__device__ __forceinline__ void topk_cluster_arrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kCluster) asm volatile("barrier.cluster.arrive.release.aligned;\n" ::: "memory");
#endif
}
template <bool kCluster>
__device__ __forceinline__ void topk_cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (kCluster) asm volatile("barrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}

// Warp 0, after a cluster barrier that follows every CTA's write of its
// cta_above / cta_ties: the sums of those counts over the CTAs before this
// one in the cluster (DSMEM reads), in every lane.
__device__ __forceinline__ void topk_counts_before(TopkBlockState& st, TopkSlice slice, int lane, uint32_t& above,
                                                   uint32_t& ties) {
  above = 0;
  ties = 0;
  for (int rank = lane; rank < slice.rank; rank += 32) {
    const TopkBlockState* other = topk_remote(&st, rank);
    above += other->cta_above;
    ties += other->cta_ties;
  }
  above = __reduce_add_sync(0xffffffffu, above);
  ties = __reduce_add_sync(0xffffffffu, ties);
}

}  // namespace kernels
}  // namespace nsa
