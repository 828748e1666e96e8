// CUDA kernel and launcher of topk_transform (nsa/topk.h). Header-only so an
// engine can call invoke_topk_transform on raw pointers or fuse the pieces;
// the library's public API validates arguments and then calls the launcher.
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
//             set their bits (a bin of more than kTopkCachedCandidates keys
//             is refined over the whole cache instead, and one more sweep
//             writes both bitmaps); one block scan over the bitmap words
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
// Histogram updates are warp-aggregated when a warp's 32 keys fall in one
// bin, so exact-zero plateaus cost no more than spread-out rows.
#pragma once

#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

#include <atomic>
#include <cstdint>

#include "nsa/cuda/shared_memory.cuh"
#include "nsa/detail/topk_math.h"
#include "nsa/topk.h"

namespace nsa {
namespace kernels {

// Hooks for bench/topk_probe_bench.cu only (the library never defines them):
// NSA_TOPK_PROBE_BEGIN() (the kernel's first statement: it may declare the
// probe's registers) and NSA_TOPK_PROBE_MARK(phase), when thread 0 reaches a
// phase boundary of topk_transform_kernel (each right after a CTA barrier);
// NSA_TOPK_HIST_ADD picks how topk_hist_add counts a warp's keys (0, the
// library's; 1 and 2 the alternatives it is measured against, see there).
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

struct TopkBlockState {
  int32_t bin;          // the bin holding the K-th key at this level
  uint32_t in_bin;      // keys in that bin
  uint32_t need;        // keys still to take from that bin
  uint32_t candidates;  // (key, index) pairs collected so far
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

// Adds 1 to hist[bin] for each lane with bin >= 0. All 32 lanes of the warp
// call it together.
//   0 (the library's): when the 32 lanes share one bin (a plateau of exact
//     zeros; a warp step with no key under the prefix, most steps of passes 2
//     and 3), one atomic adds 32 (or nothing); otherwise one atomic per key.
//   1: lanes sharing a bin (__match_any_sync) add together, one atomic per
//     distinct bin. Measured on an H200 (docs/gpu-report.md of 5882a69 next
//     to the report of 7a25a22, which ran 0): one CTA per row took 1.25x as
//     long at 8K keys, 1.55x at 32K and 2.0x at 128K; the match costs more
//     than the atomics it saves.
//   2: the lanes in the first counted lane's bin add together, every other
//     lane adds its own (plateaus with a few other keys per warp step).
__device__ __forceinline__ void topk_hist_add(uint32_t* hist, int bin) {
#if NSA_TOPK_HIST_ADD == 1
  if (__ballot_sync(0xffffffffu, bin >= 0) == 0u) return;
  const uint32_t peers = __match_any_sync(0xffffffffu, bin);
  const uint32_t lanes_below = (1u << (threadIdx.x & 31)) - 1u;
  if (bin >= 0 && (peers & lanes_below) == 0u) atomicAdd(hist + bin, static_cast<uint32_t>(__popc(peers)));
#elif NSA_TOPK_HIST_ADD == 2
  const uint32_t counted = __ballot_sync(0xffffffffu, bin >= 0);
  if (counted == 0u) return;
  const int lead = __shfl_sync(0xffffffffu, bin, __ffs(counted) - 1);
  const uint32_t with_lead = __ballot_sync(0xffffffffu, bin == lead);
  const uint32_t lanes_below = (1u << (threadIdx.x & 31)) - 1u;
  if (bin != lead) {
    if (bin >= 0) atomicAdd(hist + bin, 1u);
  } else if ((with_lead & lanes_below) == 0u) {
    atomicAdd(hist + bin, static_cast<uint32_t>(__popc(with_lead)));
  }
#else
  const int first = __shfl_sync(0xffffffffu, bin, 0);
  if (__all_sync(0xffffffffu, bin == first)) {
    if ((threadIdx.x & 31) == 0 && first >= 0) atomicAdd(hist + first, 32u);
  } else if (bin >= 0) {
    atomicAdd(hist + bin, 1u);
  }
#endif
}

template <class ScoreT>
struct TopkVec;
template <>
struct TopkVec<float> {
  static constexpr int kElems = 4;
  __device__ __forceinline__ static uint32_t key(const uint4& v, int e) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    return detail::topk_key(w[e]);
  }
};
template <>
struct TopkVec<uint16_t> {
  static constexpr int kElems = 8;
  __device__ __forceinline__ static uint32_t key(const uint4& v, int e) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
    const uint32_t half = (e & 1) ? (w[e >> 1] & 0xffff0000u) : (w[e >> 1] << 16);
    return detail::topk_key(half);
  }
};

template <class ScoreT>
__device__ __forceinline__ uint32_t topk_load_key(const ScoreT* p) {
  return detail::topk_key(detail::topk_bits(__ldg(p)));
}

// Calls g(i0, keys, n) for runs of consecutive indices of the row [0, len)
// that together cover it once, in no particular order, with warp-uniform
// control flow: keys is a uint32_t array (of kElems keys, or of 1), of which
// the first n (maybe 0) are the keys of i0, i0 + 1, ... 16-byte loads for the
// aligned body, four in flight per thread; the unaligned head and the tail
// (< 2 vectors) go to warp 0, one element per lane. kStore: also writes each
// key to cache[i] (vector stores; `cache` must make &cache[head] 16-byte
// aligned, see topk_cache_base).
template <class ScoreT, bool kStore, class G>
__device__ __forceinline__ void topk_visit_global_runs(const ScoreT* row, int64_t len, uint32_t* cache, G&& g) {
  using V = TopkVec<ScoreT>;
  constexpr int kE = V::kElems;
  constexpr int kUnroll = 4;
  const int tid = threadIdx.x;
  const int64_t misalign = static_cast<int64_t>((reinterpret_cast<uintptr_t>(row) & 15) / sizeof(ScoreT));
  const int64_t head = misalign == 0 ? 0 : (kE - misalign < len ? kE - misalign : len);
  const int64_t nvec = (len - head) / kE;
  const int64_t tail = head + nvec * kE;
  const uint4* vec = reinterpret_cast<const uint4*>(row + head);
  for (int64_t v0 = 0; v0 < nvec; v0 += static_cast<int64_t>(kTopkThreads) * kUnroll) {
    uint4 regs[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * kTopkThreads + tid;
      if (v < nvec) regs[u] = __ldg(vec + v);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t v = v0 + u * kTopkThreads + tid;
      const bool valid = v < nvec;
      const int64_t i0 = head + v * kE;
      uint32_t keys[kE];
#pragma unroll
      for (int e = 0; e < kE; ++e) keys[e] = V::key(regs[u], e);
      if constexpr (kStore) {
        if (valid) {
#pragma unroll
          for (int e = 0; e < kE; e += 4)
            *reinterpret_cast<uint4*>(cache + i0 + e) = make_uint4(keys[e], keys[e + 1], keys[e + 2], keys[e + 3]);
        }
      }
      g(i0, keys, valid ? kE : 0);
    }
  }
  if (tid < 32) {  // head [0, head) and tail [tail, len): fewer than 2 * kE <= 16 elements
    const int lane = tid;
    const int64_t i = lane < head ? lane : tail + (lane - head);
    const bool valid = lane < head || (i >= tail && i < len);
    const uint32_t key[1] = {valid ? topk_load_key(row + i) : 0u};
    if constexpr (kStore) {
      if (valid) cache[i] = key[0];
    }
    g(i, key, valid ? 1 : 0);
  }
}

// The same, one element at a time: f(i, key, valid) (valid = false for the
// padding of warp-uniform calls).
template <class ScoreT, bool kStore, class F>
__device__ __forceinline__ void topk_visit_global(const ScoreT* row, int64_t len, uint32_t* cache, F&& f) {
  topk_visit_global_runs<ScoreT, kStore>(row, len, cache, [&](int64_t i0, const auto& keys, int n) {
    constexpr int kN = sizeof(keys) / sizeof(keys[0]);
#pragma unroll
    for (int e = 0; e < kN; ++e) f(i0 + e, keys[e], e < n);
  });
}

// The same over keys already in shared memory (conflict-free: consecutive lanes, consecutive words).
template <class F>
__device__ __forceinline__ void topk_visit_cache(const uint32_t* cache, int64_t len, F&& f) {
  const int n = static_cast<int>(len);
  for (int base = 0; base < n; base += kTopkThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    const bool valid = i < n;
    f(static_cast<int64_t>(i), valid ? cache[i] : 0u, valid);
  }
}

// Shifts the cache so that element `head` (the first vector-loaded one) is 16-byte aligned.
template <class ScoreT>
__device__ __forceinline__ uint32_t* topk_cache_base(uint32_t* raw, const ScoreT* row) {
  const int misalign = static_cast<int>((reinterpret_cast<uintptr_t>(row) & 15) / sizeof(ScoreT));
  const int head = misalign == 0 ? 0 : TopkVec<ScoreT>::kElems - misalign;
  return raw + ((4 - (head & 3)) & 3);
}

// Calls f(i, key, valid) for i in [begin, end) in index order, one warp, 32
// consecutive indices per step (lane l gets the l-th). The keys of kDepth
// steps are loaded before the first is used, so a warp keeps kDepth loads in
// flight when the keys come from global memory. f may use warp collectives:
// every lane calls it for every step (valid = false past `end`).
template <int kDepth, class KeyAt, class F>
__device__ __forceinline__ void topk_warp_sweep(int64_t begin, int64_t end, KeyAt&& key_at, F&& f) {
  // 32-bit index arithmetic: end <= width <= 2^31 - 1, so i0 + 32 * kDepth fits.
  const uint32_t lane = threadIdx.x & 31, stop = static_cast<uint32_t>(end);
  for (uint32_t i0 = static_cast<uint32_t>(begin); i0 < stop; i0 += 32 * kDepth) {  // warp-uniform bounds
    uint32_t keys[kDepth];
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      const uint32_t i = i0 + u * 32 + lane;
      keys[u] = i < stop ? key_at(i) : 0u;
    }
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      const uint32_t step = i0 + u * 32;
      if (step < stop) f(static_cast<int64_t>(step + lane), keys[u], step + lane < stop);
    }
  }
}

// topk_warp_sweep over the cached keys, or over the row in global memory
// with more loads in flight per warp (its latency is that of L2 or HBM).
template <class ScoreT, class F>
__device__ __forceinline__ void topk_sweep_row(bool cached, const uint32_t* cache, const ScoreT* row, int64_t begin,
                                               int64_t end, F&& f) {
  if (cached)
    topk_warp_sweep<8>(
        begin, end, [&](uint32_t i) { return cache[i]; }, f);
  else
    topk_warp_sweep<16>(
        begin, end, [&](uint32_t i) { return topk_load_key(row + i); }, f);
}

// Picks the bin (descending) that holds the need-th largest counted key and
// publishes it in st (bin, in_bin, need - keys in higher bins). Bins are
// walked from the top: thread t owns the kPerThread bins below
// kBins - t * kPerThread, and exactly one thread publishes.
template <class Scan, int kBins>
__device__ __forceinline__ void topk_pick_bin(const uint32_t* hist, uint32_t need, TopkBlockState& st,
                                              typename Scan::TempStorage& scan) {
  static_assert(kBins % kTopkThreads == 0, "topk_pick_bin gives each thread whole bins");
  constexpr int kPerThread = kBins / kTopkThreads;
  const int top = kBins - 1 - static_cast<int>(threadIdx.x) * kPerThread;
  uint32_t c[kPerThread];
  uint32_t mine = 0;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    c[j] = hist[top - j];
    mine += c[j];
  }
  uint32_t above = 0;
  Scan(scan).ExclusiveSum(mine, above);
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    if (above < need && need <= above + c[j]) {
      st.bin = top - j;
      st.in_bin = c[j];
      st.need = need - above;
    }
    above += c[j];
  }
}

// Merged counts of a cluster: CTA c owns the range [c * R, (c + 1) * R) of
// the bins (R = kBins / size) and sums it over the cluster's histograms into
// `merged` (its own shared memory), with the range's total in
// st.range_total[parity]. Two buffers, by pass parity: a CTA clears the next
// pass's while others may still read this pass's. Every CTA reads kBins
// words of remote histograms in all (not size x kBins: the SM-to-SM network
// is shared), with one 16-byte load per thread.
template <int kBins>
__device__ __forceinline__ void topk_clear_merge(uint32_t* merged, int parity, TopkSlice slice, TopkBlockState& st) {
  for (int b = threadIdx.x; b < kBins / slice.size; b += kTopkThreads) merged[b] = 0;
  if (threadIdx.x == 0) st.range_total[parity] = 0;
}

template <int kBins>
__device__ __forceinline__ void topk_merge_range(const uint32_t* hist, uint32_t* merged, int parity, TopkSlice slice,
                                                 TopkBlockState& st) {
  const int range = kBins / slice.size, vectors = range / 4;  // range >= 64 words
  uint32_t sum = 0;
  for (int t = threadIdx.x; t < kBins / 4; t += kTopkThreads) {
    const int source = t / vectors, v = t - source * vectors;
    const uint4 x = *reinterpret_cast<const uint4*>(topk_remote(hist, source) + slice.rank * range + 4 * v);
    if (x.x != 0u) atomicAdd(merged + 4 * v, x.x);  // (most bins of passes 2 and 3 are empty)
    if (x.y != 0u) atomicAdd(merged + 4 * v + 1, x.y);
    if (x.z != 0u) atomicAdd(merged + 4 * v + 2, x.z);
    if (x.w != 0u) atomicAdd(merged + 4 * v + 3, x.w);
    sum += x.x + x.y + x.z + x.w;
  }
  sum = __reduce_add_sync(0xffffffffu, sum);
  if ((threadIdx.x & 31) == 0 && sum != 0u) atomicAdd(&st.range_total[parity], sum);
}

// After topk_merge_range in every CTA (and a cluster barrier): the range
// holding the need-th largest key (ranges walked from the top), then the bin
// within it from its owner's merged counts; published in st like
// topk_pick_bin, identically in every CTA of the cluster.
template <class Scan, int kBins>
__device__ __forceinline__ void topk_cluster_pick_bin(uint32_t* merged, int parity, TopkSlice slice, uint32_t need,
                                                      TopkBlockState& st, typename Scan::TempStorage& scan) {
  const int lane = threadIdx.x & 31, range = kBins / slice.size;
  if (threadIdx.x < 32) {
    const uint32_t total = lane < slice.size ? topk_remote(&st, lane)->range_total[parity] : 0u;
    uint32_t from_top = total;  // keys in the ranges lane .. size - 1
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t down = __shfl_down_sync(0xffffffffu, from_top, o);
      if (lane + o < 32) from_top += down;
    }
    const uint32_t above = from_top - total;
    const uint32_t here = __ballot_sync(0xffffffffu, lane < slice.size && above < need && need <= from_top);
    const int owner = __ffs(here) - 1;
    if (lane == owner) {
      st.range = owner;
      st.range_above = above;
    }
  }
  __syncthreads();
  const int owner = st.range;
  const uint32_t need_in = need - st.range_above;
  // Thread t takes the bins range - 1 - 2t and range - 2 - 2t of the owner's range.
  const int hi = range - 1 - 2 * static_cast<int>(threadIdx.x);
  uint2 c = make_uint2(0u, 0u);  // c.y: bin hi, c.x: bin hi - 1
  if (hi > 0) c = *reinterpret_cast<const uint2*>(topk_remote(merged, owner) + hi - 1);
  uint32_t above = 0;
  Scan(scan).ExclusiveSum(c.x + c.y, above);
  const int base = owner * range;
  if (above < need_in && need_in <= above + c.y) {
    st.bin = base + hi;
    st.in_bin = c.y;
    st.need = need_in - above;
  }
  above += c.y;
  if (above < need_in && need_in <= above + c.x) {
    st.bin = base + hi - 1;
    st.in_bin = c.x;
    st.need = need_in - above;
  }
}

// The end of a pass: once every histogram of the row is complete, the bin
// holding the need-th largest key in st, the same in every CTA.
template <class Scan, int kBins, bool kCluster>
__device__ __forceinline__ void topk_pick(const uint32_t* hist, uint32_t* merged, int parity, TopkSlice slice,
                                          uint32_t need, TopkBlockState& st, typename Scan::TempStorage& scan) {
  if constexpr (kCluster) {
    static_assert(kBins / kTopkMaxCluster >= 64 && kBins / 2 <= 2 * kTopkThreads, "range sizes");
    topk_cluster_sync();  // every CTA's histogram is complete
    topk_merge_range<kBins>(hist, merged, parity, slice, st);
    topk_cluster_sync();  // every CTA's merged range is complete
    topk_cluster_pick_bin<Scan, kBins>(merged, parity, slice, need, st, scan);
  } else {
    __syncthreads();
    topk_pick_bin<Scan, kBins>(hist, need, st, scan);
  }
  __syncthreads();
}

// The prefix of the K-th largest key found so far: its top (32 - shift)
// bits, the keys still to take among those sharing them, and whether that is
// all of them (the bin need not be split further).
struct TopkPrefix {
  uint32_t prefix;
  uint32_t need;
  int shift;
  bool done;
};

// Passes 2 and 3: while the prefix's bin must be split, a histogram of the
// next 10 bits of the keys that share the prefix, over the keys visit(f)
// passes to f(i, key, valid) (uniform over the CTA: f uses warp collectives).
// mark(phase) is the probe's stamp (nothing in the library).
// With one CTA per row, pass 2 also finds the smallest and largest key that
// share the prefix: when they are equal (a plateau of exact ties, e.g. the
// zeros of ReLU'd scores, fills the bin) the K-th key is known and pass 3
// is skipped. (In a cluster the extremes would have to be merged too; there
// every pass runs.)
template <class Scan, bool kCluster, class Mark, class Visit>
__device__ __forceinline__ void topk_refine(TopkPrefix& found, uint32_t* hist, uint32_t* merged, TopkSlice slice,
                                            TopkBlockState& st, typename Scan::TempStorage& scan, Mark&& mark,
                                            Visit&& visit) {
  for (int level = 0; level < 2 && !found.done; ++level) {  // uniform over the cluster
    const int digit_shift = level == 0 ? 10 : 0;
    constexpr uint32_t digit_mask = 0x3ffu;  // 10 bits at shift 10, then at shift 0
    // (In a cluster the other CTAs have read this CTA's histogram before the
    // second barrier of the previous pick.)
    const int parity = (level + 1) & 1;  // pass 2 or 3
    uint32_t* const pass_merged = kCluster ? merged + parity * (kTopkBins / 2) : merged;
    for (int b = threadIdx.x; b < kTopkDigitBins; b += kTopkThreads) hist[b] = 0;
    if constexpr (kCluster) topk_clear_merge<kTopkDigitBins>(pass_merged, parity, slice, st);
    constexpr bool kExtremes = !kCluster;
    if (kExtremes && level == 0 && threadIdx.x == 0) {
      st.key_min = 0xffffffffu;
      st.key_max = 0u;
    }
    __syncthreads();
    const uint32_t prefix = found.prefix;
    const int shift = found.shift;
    uint32_t key_min = 0xffffffffu, key_max = 0u;  // this lane's, over the keys that share the prefix
    visit([&](int64_t, uint32_t key, bool valid) {
      const bool match = valid && (key >> shift) == prefix;
      topk_hist_add(hist, match ? static_cast<int>((key >> digit_shift) & digit_mask) : -1);
      if constexpr (kExtremes) {
        key_min = min(key_min, match ? key : 0xffffffffu);
        key_max = max(key_max, match ? key : 0u);
      }
    });
    if (kExtremes && level == 0) {  // one atomic each per warp; topk_pick's barrier publishes them
      key_min = __reduce_min_sync(0xffffffffu, key_min);
      key_max = __reduce_max_sync(0xffffffffu, key_max);
      if ((threadIdx.x & 31) == 0) {
        atomicMin(&st.key_min, key_min);
        atomicMax(&st.key_max, key_max);
      }
    }
    topk_pick<Scan, kTopkDigitBins, kCluster>(hist, pass_merged, parity, slice, found.need, st, scan);
    mark(4 + level);
    found.prefix = (found.prefix << (found.shift - digit_shift)) | static_cast<uint32_t>(st.bin);
    found.shift = digit_shift;
    found.need = st.need;
    found.done = st.in_bin == found.need;
    if (kExtremes && level == 0 && st.key_min == st.key_max) {  // CTA-uniform: every key of the bin is this one
      found.prefix = st.key_min;
      found.shift = 0;
      break;
    }
  }
}

// Appends the keys of a run (keys[0, n): the keys of i0, i0 + 1, ...) whose
// top digit is `bin` to the candidates (cand_key, cand_idx). One shared
// atomic per warp and run reserves the warp's slots (not one per key: every
// warp of the CTA counts on `counter`). Called by all 32 lanes together.
template <int kN>
__device__ __forceinline__ void topk_append_bin(const uint32_t (&keys)[kN], int n, int64_t i0, uint32_t bin,
                                                uint32_t& counter, uint32_t* cand_key, uint32_t* cand_idx) {
  const int lane = threadIdx.x & 31;
  uint32_t mine = 0;  // this lane's candidates in its run
#pragma unroll
  for (int e = 0; e < kN; ++e) mine += e < n && (keys[e] >> kTopkTopShift) == bin;
  uint32_t incl = mine;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t up = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += up;
  }
  const uint32_t total = __shfl_sync(0xffffffffu, incl, 31);
  if (total == 0u) return;  // warp-uniform
  uint32_t base = 0;
  if (lane == 0) base = atomicAdd(&counter, total);
  uint32_t pos = __shfl_sync(0xffffffffu, base, 0) + incl - mine;
#pragma unroll
  for (int e = 0; e < kN; ++e) {
    if (e < n && (keys[e] >> kTopkTopShift) == bin) {
      cand_key[pos] = keys[e];
      cand_idx[pos] = static_cast<uint32_t>(i0 + e);
      ++pos;
    }
  }
}

// Calls f(word, key, valid) for the cached keys [0, len) in steps of 32
// consecutive indices (word w: indices 32 w .. 32 w + 31, lane l the l-th),
// warp-uniform, each warp taking every 32nd step with 8 loads in flight.
template <class F>
__device__ __forceinline__ void topk_sweep_words(const uint32_t* cache, int64_t len, F&& f) {
  constexpr int kDepth = 8;
  const int lane = threadIdx.x & 31, n = static_cast<int>(len), words = (n + 31) / 32;
  for (int w0 = static_cast<int>(threadIdx.x >> 5); w0 < words; w0 += kTopkWarps * kDepth) {
    uint32_t keys[kDepth];
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      const int i = (w0 + u * kTopkWarps) * 32 + lane;
      keys[u] = i < n ? cache[i] : 0u;
    }
#pragma unroll
    for (int u = 0; u < kDepth; ++u) {
      const int word = w0 + u * kTopkWarps;
      if (word < words) f(word, keys[u], word * 32 + lane < n);
    }
  }
}

// One sweep of the cached keys [0, len): word w of `sel` gets the bits of
// the keys 32 w .. 32 w + 31 whose digits (key >> shift) are above `prefix`,
// word w of `tie` those equal to it (one ballot each per warp step).
__device__ __forceinline__ void topk_sweep_bitmaps(const uint32_t* cache, int64_t len, int shift, uint32_t prefix,
                                                   uint32_t* sel, uint32_t* tie) {
  const int lane = threadIdx.x & 31;
  topk_sweep_words(cache, len, [&](int word, uint32_t key, bool valid) {
    const uint32_t d = key >> shift;
    const uint32_t above = __ballot_sync(0xffffffffu, valid && d > prefix);
    const uint32_t at = __ballot_sync(0xffffffffu, valid && d == prefix);
    if (lane == 0) {
      sel[word] = above;
      tie[word] = at;
    }
  });
}

// The output of a slice from its two bitmaps (one bit per key; word w holds
// the keys 32 w .. 32 w + 31 of the slice): every key of `sel` and the first
// `need` keys of `tie` over the row in index order (the ties of the slices
// before this CTA's come first), written ascending into `selected` and then
// transformed into the output. Thread t owns the `per_thread` words from
// t * per_thread, so one block scan of the threads' counts places every
// word. The two counts share a word: `sel` in the low 12 bits (all of its
// keys are taken: fewer than K <= 2048 over the row), `tie` in the high 20
// (at most the slice's keys, <= kTopkBitmapMaxKeys). The caller's barrier
// must follow the last write of either bitmap.
template <class Scan, bool kCluster, class Mark>
__device__ __forceinline__ void topk_emit_bitmaps(const TopkArgs& a, int64_t r, int64_t q, const uint32_t* sel,
                                                  const uint32_t* tie, int words, int per_thread, uint32_t need,
                                                  int64_t lo, TopkSlice slice, uint32_t* selected, TopkBlockState& st,
                                                  typename Scan::TempStorage& scan, Mark&& mark) {
  static_assert(kTopkMaxK < (1 << 12) && kTopkBitmapMaxKeys < (1 << 20), "the packed counts of topk_emit_bitmaps");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int w0 = tid * per_thread;
  uint32_t mine = 0;
  for (int u = 0; u < per_thread && w0 + u < words; ++u)
    mine += static_cast<uint32_t>(__popc(sel[w0 + u])) | static_cast<uint32_t>(__popc(tie[w0 + u])) << 12;
  uint32_t before = 0, total = 0;
  Scan(scan).ExclusiveSum(mine, before, total);
  uint32_t a_cta = 0, t_cta = 0;  // above and ties in the slices before this CTA's
  if constexpr (kCluster) {
    if (tid == 0) {
      st.cta_above = total & 0xfffu;
      st.cta_ties = total >> 12;
    }
    topk_cluster_sync();
    if (warp == 0) {
      topk_counts_before(st, slice, lane, a_cta, t_cta);
      if (lane == 0) {
        st.above_before = a_cta;
        st.ties_before = t_cta;
      }
    }
    topk_cluster_arrive<true>();  // this CTA's last DSMEM read is done
    __syncthreads();
    a_cta = st.above_before;
    t_cta = st.ties_before;
  }
  mark(7);
  uint32_t ties_before = t_cta + (before >> 12);
  const uint32_t first = a_cta + (t_cta < need ? t_cta : need);  // this CTA's first output slot
  uint32_t s = a_cta + (before & 0xfffu) + (ties_before < need ? ties_before : need) - first;
  for (int u = 0; u < per_thread && w0 + u < words; ++u) {
    const uint32_t t_bits = tie[w0 + u];
    uint32_t take = sel[w0 + u];
    if (ties_before < need) {  // the first need - ties_before ties of this word (lowest bits first)
      uint32_t rest = t_bits, m = need - ties_before;
      if (m >= static_cast<uint32_t>(__popc(rest))) {
        take |= rest;
      } else {
        for (; m > 0; --m) {
          const uint32_t low = rest & (0u - rest);
          take |= low;
          rest ^= low;
        }
      }
    }
    ties_before += static_cast<uint32_t>(__popc(t_bits));
    const uint32_t base_index = static_cast<uint32_t>(lo) + 32u * static_cast<uint32_t>(w0 + u);
    for (; take != 0u; take &= take - 1u) selected[s++] = base_index + static_cast<uint32_t>(__ffs(take) - 1);
  }
  const uint32_t ties_after = t_cta + (total >> 12);
  const int64_t slots = (total & 0xfffu) + (ties_after < need ? ties_after : need) - (first - a_cta);
  __syncthreads();
  mark(8);
  // The transform reads the table: all of the CTA's slots at once, so its
  // global loads are in flight together.
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;
  for (int64_t j = tid; j < slots; j += kTopkThreads) {
    const int64_t i = selected[j];
    out[first + j] = detail::topk_apply_transform(a, r, q, i);
    if (raw != nullptr) raw[first + j] = static_cast<int32_t>(i);
  }
  mark(9);
}

// The rest of a row whose every slice is in the key cache, after pass 1
// (st holds its bin). Two bitmaps over the slice, one bit per key and one
// word per 32 keys: `sel` (taken: above the threshold) and `tie` (at it).
//   1. One sweep of the cache: each warp step's ballots "above pass 1's bin"
//      and "in it" are one word of each bitmap; when the bin holds at most
//      kTopkCachedCandidates keys (a row-wide count, so the choice is the
//      same in every CTA) a block scan over the second bitmap collects the
//      bin's indices.
//   2. Passes 2 and 3 over those candidates only; then each candidate sets
//      its bit in sel (above the final prefix) or tie (at it). A larger bin
//      is refined over the whole cache and one more sweep writes both
//      bitmaps from the final prefix.
//   3. One block scan over the words (the counts of sel and tie bits packed
//      in one word) gives each word its first output slot and the ties
//      before it: the first `need` ties in index order are taken, so the
//      smallest indices win and the output is ascending. Each thread writes
//      its word's selected indices, then the transform runs over all slots.
// Compared with the general path below, the four sweeps of every key after
// pass 1 (passes 2 and 3, the counts, the compaction) become one when the
// bin's keys are collected, three when it is too large.
template <class Scan, bool kCluster, class Mark>
__device__ __forceinline__ void topk_finish_cached(const TopkArgs& a, int64_t r, int64_t q, const uint32_t* cache,
                                                   int64_t slice_len, int64_t lo, TopkSlice slice, uint32_t* hist,
                                                   uint32_t* cand, uint32_t* merged, TopkBlockState& st,
                                                   typename Scan::TempStorage& scan, Mark&& mark) {
  static_assert(kTopkCacheKeys / 32 <= kTopkThreads, "one bitmap word per thread in topk_emit_bitmaps");
  static_assert(kTopkDigitBins + 2 * (kTopkCacheKeys / 32) <= kTopkBins, "the bitmaps share the histogram's memory");
  static_assert(kTopkMaxK <= kTopkCachedCandidates, "the selected indices reuse the candidates' memory");
  const int tid = threadIdx.x;
  // hist[0, kTopkDigitBins) stays the histogram of passes 2 and 3 (the only
  // part other CTAs of a cluster read from here on).
  uint32_t* const sel = hist + kTopkDigitBins;
  uint32_t* const tie = sel + kTopkCacheKeys / 32;
  const int words = static_cast<int>((slice_len + 31) / 32);

  TopkPrefix found{static_cast<uint32_t>(st.bin), st.need, kTopkTopShift, st.in_bin == st.need};
  const bool collect = !found.done && st.in_bin <= static_cast<uint32_t>(kTopkCachedCandidates);
  if (found.done || collect) {
    topk_sweep_bitmaps(cache, slice_len, kTopkTopShift, found.prefix, sel, tie);
    __syncthreads();
  }
  // The bin's indices, in index order, from its bitmap: one block scan over
  // the words' bit counts places each word's indices. (Reserving them with a
  // shared counter during the sweep serialised the warps on it: 7.9 us of a
  // 22.7 us 1 x 32K row with one CTA, H100 phase probe of b495087.)
  int n_cand = 0;  // this slice's
  if (collect) {
    uint32_t bits = tid < words ? tie[tid] : 0u, at = 0, total = 0;
    Scan(scan).ExclusiveSum(static_cast<uint32_t>(__popc(bits)), at, total);
    for (; bits != 0u; bits &= bits - 1u) cand[at++] = static_cast<uint32_t>(tid * 32 + __ffs(bits) - 1);
    if (tid < words) tie[tid] = 0u;  // the candidates set their own bits after passes 2 and 3
    n_cand = static_cast<int>(total);
    __syncthreads();  // the scan's storage is reused by the passes
  }
  if (found.done || collect) mark(3);

  if (collect) {
    topk_refine<Scan, kCluster>(found, hist, merged, slice, st, scan, mark, [&](auto&& f) {
      topk_visit_cache(cand, n_cand,
                       [&](int64_t c, uint32_t idx, bool valid) { f(c, valid ? cache[idx] : 0u, valid); });
    });
    const uint32_t prefix = found.prefix;
    const int shift = found.shift;
    for (int c = tid; c < n_cand; c += kTopkThreads) {
      const uint32_t idx = cand[c], d = cache[idx] >> shift, bit = 1u << (idx & 31);
      if (d > prefix) atomicOr(sel + (idx >> 5), bit);
      else if (d == prefix) atomicOr(tie + (idx >> 5), bit);
    }
  } else if (!found.done) {
    topk_refine<Scan, kCluster>(found, hist, merged, slice, st, scan, mark,
                                [&](auto&& f) { topk_visit_cache(cache, slice_len, f); });
    topk_sweep_bitmaps(cache, slice_len, found.shift, found.prefix, sel, tie);
  }
  __syncthreads();
  mark(6);

  topk_emit_bitmaps<Scan, kCluster>(a, r, q, sel, tie, words, 1, found.need, lo, slice, cand, st, scan, mark);
}

// The rest of a slice past the cache (of a row longer than the cache, or of
// a cluster's), when the slice has at most kTopkBitmapMaxKeys keys and pass
// 1's bin at most `capacity` keys over the row (both row-wide, so every CTA
// of a cluster takes this route or none). The candidates fill the cache's
// memory from its start, the two bitmaps (bitmap_words each) its end.
//   1. One more global sweep (the 16-byte loads of pass 1) sets the `sel`
//      bit of every key above pass 1's bin (fewer than K in the row: one
//      shared atomicOr per lane and run holding one) and appends the bin's
//      (key, index) pairs.
//   2. Passes 2 and 3 over the candidates; then each sets its bit in `sel`
//      (above the final prefix) or `tie` (at it).
//   3. topk_emit_bitmaps, several words per thread.
// Two reads of the row in all: the general path below reads it a third time
// for the compaction.
template <class ScoreT, class Scan, bool kCluster, class Mark>
__device__ __forceinline__ void topk_finish_bitmaps(const TopkArgs& a, int64_t r, int64_t q, const ScoreT* row,
                                                    int64_t slice_len, int64_t lo, int bitmap_words, int capacity,
                                                    TopkSlice slice, uint32_t* hist, uint32_t* area, uint32_t* selected,
                                                    uint32_t* merged, TopkBlockState& st,
                                                    typename Scan::TempStorage& scan, Mark&& mark) {
  static_assert(2 * (kTopkBitmapMaxKeys / 32) < kTopkCacheKeys, "the bitmaps leave room for candidates");
  static_assert(kTopkMaxK <= kTopkCachedCandidates, "the selected indices fit the cached rows' candidate memory");
  const int tid = threadIdx.x;
  uint32_t* const cand_key = area;
  uint32_t* const cand_idx = area + capacity;
  uint32_t* const sel = area + 2 * capacity;
  uint32_t* const tie = sel + bitmap_words;
  const int words = static_cast<int>((slice_len + 31) / 32);  // <= bitmap_words
  TopkPrefix found{static_cast<uint32_t>(st.bin), st.need, kTopkTopShift, st.in_bin == st.need};
  for (int w = tid; w < words; w += kTopkThreads) {
    sel[w] = 0u;
    tie[w] = 0u;
  }
  if (tid == 0) st.candidates = 0;
  __syncthreads();
  const uint32_t bin = found.prefix;
  topk_visit_global_runs<ScoreT, false>(row, slice_len, nullptr, [&](int64_t i0, const auto& keys, int n) {
    constexpr int kN = sizeof(keys) / sizeof(keys[0]);
    uint32_t above = 0;  // bit e: key e of the run is above the bin
#pragma unroll
    for (int e = 0; e < kN; ++e) above |= static_cast<uint32_t>(e < n && (keys[e] >> kTopkTopShift) > bin) << e;
    if (above != 0u) {  // a run of kN <= 8 keys spans at most two words
      const uint32_t i = static_cast<uint32_t>(i0), off = i & 31u;
      atomicOr(sel + (i >> 5), above << off);
      if (off + kN > 32u) atomicOr(sel + (i >> 5) + 1, above >> (32u - off));
    }
    topk_append_bin(keys, n, i0, bin, st.candidates, cand_key, cand_idx);
  });
  __syncthreads();
  mark(3);
  const int n_cand = static_cast<int>(st.candidates);  // this slice's
  topk_refine<Scan, kCluster>(found, hist, merged, slice, st, scan, mark,
                              [&](auto&& f) { topk_visit_cache(cand_key, n_cand, f); });
  const uint32_t prefix = found.prefix;
  const int shift = found.shift;
  for (int c = tid; c < n_cand; c += kTopkThreads) {
    const uint32_t idx = cand_idx[c], d = cand_key[c] >> shift, bit = 1u << (idx & 31);
    if (d > prefix) atomicOr(sel + (idx >> 5), bit);
    else if (d == prefix) atomicOr(tie + (idx >> 5), bit);
  }
  __syncthreads();
  mark(6);
  topk_emit_bitmaps<Scan, kCluster>(a, r, q, sel, tie, words, (words + kTopkThreads - 1) / kTopkThreads, found.need, lo,
                                    slice, selected, st, scan, mark);
}

// Row r (window w) by one CTA (kCluster = false) or by this CTA of a
// thread-block cluster: each CTA of a cluster selects over its slice with
// the cluster's merged histograms and writes its part of the output (the
// CTAs before it in the cluster give its first slot). `smem` is the dynamic
// shared memory (kTopkSharedBytes).
template <class ScoreT, bool kCluster, class Scan, class Mark>
__device__ __forceinline__ void topk_select_row(const TopkArgs& a, int64_t r, const detail::TopkWindow w,
                                                TopkSlice slice, typename Scan::TempStorage& scan, TopkBlockState& st,
                                                uint32_t* merged, uint32_t* smem, Mark&& mark) {
  static_assert(kTopkMaxK <= kTopkBins, "the selected indices reuse the histogram");
  uint32_t* const hist = smem;
  uint32_t* const area = smem + kTopkBins;  // the key cache or the candidates
  uint32_t* const cached_candidates = area + kTopkCacheKeys + 4;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t q = detail::topk_request(a, r);
  const int64_t len = w.len, k = a.k;
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;

  if (len <= k) {  // uniform over the cluster: the identity, then -1
    for (int64_t s = slice.rank * kTopkThreads + tid; s < k; s += slice.size * kTopkThreads) {
      out[s] = s < len ? detail::topk_apply_transform(a, r, q, s) : -1;
      if (raw != nullptr) raw[s] = s < len ? static_cast<int32_t>(s) : -1;
    }
    mark(9);
    return;
  }

  // This CTA's slice [lo, lo + slice_len) of the row: consecutive slices of a
  // multiple of 32 keys (the last one shorter, maybe empty). From here on
  // indices are relative to lo, and every count is over the slice unless it
  // comes from topk_pick_bin (the whole row).
  const int64_t per = ((len + slice.size - 1) / slice.size + 31) / 32 * 32;
  const int64_t lo = slice.rank * per < len ? slice.rank * per : len;
  const int64_t slice_len = len - lo < per ? len - lo : per;
  const ScoreT* const row = static_cast<const ScoreT*>(a.scores) + r * a.score_ld + w.start + lo;
  const bool cached = slice_len <= kTopkCacheKeys;
  uint32_t* const cache = topk_cache_base(area, row);

  // Pass 1: top 12 bits of every key (and the keys into the cache).
  for (int b = tid; b < kTopkBins; b += kTopkThreads) hist[b] = 0;
  if (tid == 0) st.candidates = 0;
  if constexpr (kCluster) topk_clear_merge<kTopkBins>(merged, 0, slice, st);
  __syncthreads();
  mark(1);
  auto count_top = [&](int64_t, uint32_t key, bool valid) {
    topk_hist_add(hist, valid ? static_cast<int>(key >> kTopkTopShift) : -1);
  };
  if (cached) topk_visit_global<ScoreT, true>(row, slice_len, cache, count_top);
  else topk_visit_global<ScoreT, false>(row, slice_len, cache, count_top);
  topk_pick<Scan, kTopkBins, kCluster>(hist, merged, 0, slice, static_cast<uint32_t>(k), st, scan);
  mark(2);

  // Every slice in the cache (`per` is the longest: uniform over the cluster).
  if (per <= kTopkCacheKeys) {
    topk_finish_cached<Scan, kCluster>(a, r, q, cache, slice_len, lo, slice, hist, cached_candidates, merged, st, scan,
                                       mark);
    topk_cluster_wait<kCluster>();
    return;
  }

  // Rows past the cache (and, in a cluster, the shorter slices of such rows).
  if (per <= kTopkBitmapMaxKeys) {
    const int bitmap_words = static_cast<int>((per + 31) / 32);
    const int capacity = (kTopkCacheKeys - 2 * bitmap_words) / 2;
    if (st.in_bin <= static_cast<uint32_t>(capacity)) {  // row-wide: uniform over the cluster
      topk_finish_bitmaps<ScoreT, Scan, kCluster>(a, r, q, row, slice_len, lo, bitmap_words, capacity, slice, hist,
                                                  area, cached_candidates, merged, st, scan, mark);
      topk_cluster_wait<kCluster>();
      return;
    }
  }
  // Otherwise (a longer slice, or a larger bin: a plateau of ties) the general path.

  // Chunks of the compaction (and of the candidate collection): warp w owns
  // the indices [w * chunk, min(slice_len, (w + 1) * chunk)), a multiple of 32.
  const int64_t chunk = ((slice_len + kTopkWarps - 1) / kTopkWarps + 31) / 32 * 32;
  const int64_t begin = warp * chunk;
  const int64_t end = begin + chunk < slice_len ? begin + chunk : slice_len;
  const uint32_t chunk32 = static_cast<uint32_t>(chunk);  // width <= 2^31 - 1 (checked by topk_transform)
  const uint32_t lanes_below = (1u << lane) - 1u;

  TopkPrefix found{static_cast<uint32_t>(st.bin), st.need, kTopkTopShift, st.in_bin == st.need};

  // A row past the cache whose pass-1 bin is small enough: one more global
  // sweep (16-byte loads, like pass 1) collects the bin's (key, index) pairs
  // into shared memory and counts the keys above the bin per compaction
  // chunk (fewer than K of them: one shared atomic each); the later passes
  // then read only the candidates, and the compaction one global sweep.
  // (In a cluster, CTAs may differ in `cached` and so in use_candidates:
  // both choices run the same barriers.)
  const bool use_candidates = !cached && !found.done && st.in_bin <= kTopkCandidates;  // uniform over the CTA
  uint32_t* const cand_key = area;
  uint32_t* const cand_idx = cand_key + kTopkCandidates;
  if (use_candidates) {
    if (tid == 0) st.candidates = 0;
    if (tid < kTopkWarps) st.warp_above[tid] = 0;
    __syncthreads();
    const uint32_t bin = found.prefix;
    topk_visit_global_runs<ScoreT, false>(row, slice_len, cache, [&](int64_t i0, const auto& keys, int n) {
      constexpr int kN = sizeof(keys) / sizeof(keys[0]);
#pragma unroll
      for (int e = 0; e < kN; ++e)
        if (e < n && (keys[e] >> kTopkTopShift) > bin)
          atomicAdd(&st.warp_above[static_cast<uint32_t>(i0 + e) / chunk32], 1u);
      topk_append_bin(keys, n, i0, bin, st.candidates, cand_key, cand_idx);
    });
    __syncthreads();
    mark(3);
  }
  const int64_t n_cand = use_candidates ? static_cast<int64_t>(st.candidates) : 0;  // this slice's

  // Passes 2 and 3 refine the prefix while the bin must be split: over the
  // cached keys, the candidates, or the row in global memory.
  topk_refine<Scan, kCluster>(found, hist, merged, slice, st, scan, mark, [&](auto&& f) {
    if (cached) topk_visit_cache(cache, slice_len, f);
    else if (use_candidates) topk_visit_cache(cand_key, n_cand, f);
    else topk_visit_global<ScoreT, false>(row, slice_len, cache, f);
  });
  const uint32_t prefix = found.prefix, need = found.need;
  const int shift = found.shift;

  // Compaction in index order. Keys with (key >> shift) > prefix are all
  // taken (k - need of them); of those equal to it, the first `need`.
  // First the counts of each warp's chunk: from a sweep of the row, or from
  // the candidates (above pass 1's bin was counted by the candidate sweep).
  if (use_candidates) {
    if (lane == 0) st.warp_ties[warp] = 0;  // st.warp_above holds the counts above pass 1's bin
    __syncthreads();
    topk_visit_cache(cand_idx, n_cand, [&](int64_t c, uint32_t idx, bool valid) {
      const uint32_t key = valid ? cand_key[c] : 0u;
      const int owner = valid ? static_cast<int>(idx / chunk32) : -1;
      const bool is_above = valid && (key >> shift) > prefix, is_tie = valid && (key >> shift) == prefix;
      // Consecutive candidates mostly come from one warp step of the sweep,
      // so from one chunk: then one atomic per count for the whole warp
      // (valid lanes are a prefix, so lane 0 is valid when any lane is).
      const int first = __shfl_sync(0xffffffffu, owner, 0);
      if (__all_sync(0xffffffffu, owner == first || !valid)) {
        const uint32_t a_n = __popc(__ballot_sync(0xffffffffu, is_above));
        const uint32_t t_n = __popc(__ballot_sync(0xffffffffu, is_tie));
        if (lane == 0 && a_n != 0u) atomicAdd(&st.warp_above[first], a_n);
        if (lane == 0 && t_n != 0u) atomicAdd(&st.warp_ties[first], t_n);
      } else {
        if (is_above) atomicAdd(&st.warp_above[owner], 1u);
        if (is_tie) atomicAdd(&st.warp_ties[owner], 1u);
      }
    });
    __syncthreads();
  } else {
    uint32_t above = 0, ties = 0;  // this lane's share of its warp's counts
    topk_sweep_row(cached, cache, row, begin, end, [&](int64_t, uint32_t key, bool valid) {
      const uint32_t p = key >> shift;
      above += valid && p > prefix;
      ties += valid && p == prefix;
    });
    above = __reduce_add_sync(0xffffffffu, above);
    ties = __reduce_add_sync(0xffffffffu, ties);
    if (lane == 0) {
      st.warp_above[warp] = above;
      st.warp_ties[warp] = ties;
    }
    __syncthreads();
  }
  mark(6);
  // Exclusive scans over the 32 warps, then over the CTAs of the cluster
  // (DSMEM reads of the earlier CTAs' totals): each warp's first output slot
  // and the ties before its chunk, over the whole row.
  uint32_t a_incl = 0, t_incl = 0, a_mine = 0, t_mine = 0;
  if (warp == 0) {
    a_mine = st.warp_above[lane];
    t_mine = st.warp_ties[lane];
    a_incl = a_mine;
    t_incl = t_mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t a_up = __shfl_up_sync(0xffffffffu, a_incl, o), t_up = __shfl_up_sync(0xffffffffu, t_incl, o);
      if (lane >= o) {
        a_incl += a_up;
        t_incl += t_up;
      }
    }
    if (lane == 31) {
      st.cta_above = a_incl;
      st.cta_ties = t_incl;
    }
  }
  uint32_t a_cta = 0, t_cta = 0;  // above and ties in the slices before this CTA's
  if constexpr (kCluster) {
    topk_cluster_sync();
    if (warp == 0) {
      topk_counts_before(st, slice, lane, a_cta, t_cta);
    }
    topk_cluster_arrive<true>();  // this CTA's last DSMEM read is done
  }
  if (warp == 0) {
    const uint32_t a_before = a_cta + a_incl - a_mine, t_before = t_cta + t_incl - t_mine;
    const uint32_t slot = a_before + (t_before < need ? t_before : need);
    st.warp_tie0[lane] = t_before;
    st.warp_slot[lane] = slot;
    // This CTA's output slots: [first, first + slots) of the row's K.
    const uint32_t first = __shfl_sync(0xffffffffu, slot, 0);
    const uint32_t t_after = t_before + t_mine;
    if (lane == 0) st.first_slot = first;
    if (lane == 31) st.slots = a_before + a_mine + (t_after < need ? t_after : need) - first;
  }
  __syncthreads();
  mark(7);
  // The compaction writes the selected indices (relative to the window) in
  // output order into the histogram's memory (no longer read by any CTA of
  // the cluster; K <= kTopkBins words).
  uint32_t* const selected = hist;
  const uint32_t first = st.first_slot;
  uint32_t slot = st.warp_slot[warp] - first, tie_rank = st.warp_tie0[warp];
  // Only a warp whose chunk holds the cut among the ties ranks them; every
  // other warp takes all of its ties or none (warp-uniform).
  const bool cut_here = tie_rank < need && tie_rank + st.warp_ties[warp] > need;
  const bool take_ties = tie_rank < need;
  const uint32_t lo32 = static_cast<uint32_t>(lo);
  topk_sweep_row(cached, cache, row, begin, end, [&](int64_t i, uint32_t key, bool valid) {
    const uint32_t p = key >> shift;
    const bool is_tie = valid && p == prefix;
    bool take = valid && p > prefix;
    if (cut_here) {
      const uint32_t tie_mask = __ballot_sync(0xffffffffu, is_tie);
      take = take || (is_tie && tie_rank + __popc(tie_mask & lanes_below) < need);
      tie_rank += __popc(tie_mask);
    } else {
      take = take || (is_tie && take_ties);
    }
    const uint32_t take_mask = __ballot_sync(0xffffffffu, take);
    if (take) selected[slot + __popc(take_mask & lanes_below)] = lo32 + static_cast<uint32_t>(i);
    slot += __popc(take_mask);
  });
  __syncthreads();
  mark(8);
  // The transform reads the table: done here, all of the CTA's slots at
  // once, so its global loads are in flight together instead of one per
  // warp step.
  const int64_t slots = st.slots;
  for (int64_t s = tid; s < slots; s += kTopkThreads) {
    const int64_t i = selected[s];
    out[first + s] = detail::topk_apply_transform(a, r, q, i);
    if (raw != nullptr) raw[first + s] = static_cast<int32_t>(i);
  }
  mark(9);
  topk_cluster_wait<kCluster>();
}

// One row per CTA (kCluster = false) or per thread-block cluster. A row
// whose live length fits one CTA's key cache is not split even in a cluster:
// its first CTA selects it alone and the others leave at once. The cluster
// size is chosen on the host from the width (a graph captured for 160K-wide
// rows is replayed with any lengths), and below the cache's size one CTA is
// never slower than a split (the sweep behind kTopkClusterMinWidth); the
// length is row-wide, so every CTA of the cluster makes the same choice.
template <class ScoreT, bool kCluster>
__global__ void __launch_bounds__(kTopkThreads, 1) topk_transform_kernel(const TopkArgs a) {
  using Scan = cub::BlockScan<uint32_t, kTopkThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ TopkBlockState st;
  // Two buffers of merged counts (topk_merge_range; at most half the bins each).
  __shared__ __align__(16) uint32_t merged[kCluster ? kTopkBins : 1];
  extern __shared__ __align__(16) uint32_t topk_smem[];
  NSA_TOPK_PROBE_BEGIN();
  auto mark = [&](int phase) {
    (void)phase;
    NSA_TOPK_PROBE_MARK(phase);
  };
  const TopkSlice slice = topk_this_slice<kCluster>();
  const int64_t r = blockIdx.x / slice.size;
  const detail::TopkWindow w = detail::topk_window(a, r);
  if (kCluster && w.len <= kTopkCacheKeys) {
    if (slice.rank == 0)
      topk_select_row<ScoreT, false, Scan>(a, r, w, TopkSlice{0, 1}, scan, st, merged, topk_smem, mark);
    return;
  }
  topk_select_row<ScoreT, kCluster, Scan>(a, r, w, slice, scan, st, merged, topk_smem, mark);
}

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
// split saves. Measured on an H100 (the GPU report of b495087, kept as
// docs/gpu-report-h100-b495087.md once a newer one replaces it; the bench's
// sweep, us with one CTA against the chosen cluster): 1 x 32K 22.28
// against 22.21 with 16, 8 x 32K 22.60 against 22.73 with 8, 64 x 32K 23.53
// against 27.45 with 2; wider rows still gain (1 x 128K: 76.29 with one,
// 23.87 with 16). The rule sees the width, not the lengths: 64 prefill
// windows of up to 16K in rows 64K wide get clusters of 2 CTAs (24.52 us
// in that report, one CTA 17.22), so the kernel also leaves a row whose live
// length fits the cache to the first CTA of its cluster.
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
