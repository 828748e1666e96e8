// CUDA kernel and launcher of topk_transform (nsa/topk.h). Header-only so an
// engine can call invoke_topk_transform on raw pointers or fuse the pieces;
// the library's public API validates arguments and then calls the launcher.
//
// One CTA of 1024 threads per score row; every decision that depends on a
// length is made by that CTA on the device, so the launch shape depends on
// the row count only and a captured graph stays right for any live lengths.
//
//   len <= K  the identity 0 .. len-1, then -1 (scores are not read).
//   len >  K  a radix select on the order-preserving uint32 key of each
//             score (nsa/detail/topk_math.h), most significant digit first:
//             digits of 12, 10 and 10 bits. Each pass builds a histogram of
//             the keys that share the prefix found so far, in shared memory,
//             and picks the bin holding the K-th largest key; it stops early
//             when that bin is taken whole. Rows of up to kTopkCacheKeys
//             scores are read from global memory once: their keys stay in
//             shared memory for the later passes. For longer rows, when pass
//             1's bin holds <= kTopkCandidates keys, one more sweep collects
//             that bin's (key, index) pairs into the same shared memory and
//             counts each warp's keys above it; the later passes then read
//             only the candidates (3 reads of the row in all). Otherwise the
//             row is re-read per pass (mostly from L2).
//             Then the row is compacted in index order: each warp owns a
//             contiguous chunk, counts its keys above the threshold and its
//             ties, a 32-entry scan gives every warp its first output slot,
//             and ballots give each lane its slot. A tie at the threshold is
//             taken when fewer than `need` ties precede it in index order:
//             the smallest indices win, and the output is ascending. The
//             compaction writes raw indices to shared memory; the transform
//             (table loads) then runs over all K slots at once.
//
// No global scratch, no atomics outside shared memory, no inter-CTA
// communication (nothing to deadlock under co-scheduling), no allocation.
// Histogram updates are warp-aggregated per distinct bin, so exact-zero
// plateaus cost no more than spread-out rows.
#pragma once

#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "nsa/cuda/shared_memory.cuh"
#include "nsa/detail/topk_math.h"
#include "nsa/topk.h"

namespace nsa {
namespace kernels {

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
// Dynamic shared memory: the histogram, then the key cache (+3 words of
// alignment slack: the cache is shifted so vector stores are 16-byte aligned).
constexpr size_t kTopkSharedBytes = (kTopkBins + kTopkCacheKeys + 4) * sizeof(uint32_t);

struct TopkBlockState {
  int32_t bin;          // the bin holding the K-th key at this level
  uint32_t in_bin;      // keys in that bin
  uint32_t need;        // keys still to take from that bin
  uint32_t candidates;  // (key, index) pairs collected so far
  uint32_t warp_above[kTopkWarps];
  uint32_t warp_ties[kTopkWarps];
  uint32_t warp_slot[kTopkWarps];  // first output slot of each warp's chunk
  uint32_t warp_tie0[kTopkWarps];  // ties before each warp's chunk
};

// Adds 1 to hist[bin] for each lane with bin >= 0. All 32 lanes of the warp
// call it together; lanes that share a bin are aggregated (__match_any_sync)
// and their lowest lane adds their count with one atomic, so plateaus (exact
// zeros, one coarse bin) and partly clustered keys cost one atomic per
// distinct bin and warp step instead of one per key.
__device__ __forceinline__ void topk_hist_add(uint32_t* hist, int bin) {
  const uint32_t peers = __match_any_sync(0xffffffffu, bin);
  const uint32_t lanes_below = (1u << (threadIdx.x & 31)) - 1u;
  if (bin >= 0 && (peers & lanes_below) == 0u) atomicAdd(hist + bin, static_cast<uint32_t>(__popc(peers)));
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

template <class ScoreT>
__global__ void __launch_bounds__(kTopkThreads, 1) topk_transform_kernel(const TopkArgs a) {
  using Scan = cub::BlockScan<uint32_t, kTopkThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  static_assert(kTopkMaxK <= kTopkBins, "the selected indices reuse the histogram");
  __shared__ typename Scan::TempStorage scan;
  __shared__ TopkBlockState st;
  extern __shared__ __align__(16) uint32_t topk_smem[];
  uint32_t* const hist = topk_smem;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t r = blockIdx.x;
  const detail::TopkWindow w = detail::topk_window(a, r);
  const int64_t q = detail::topk_request(a, r);
  const int64_t len = w.len, k = a.k;
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;

  if (len <= k) {  // uniform over the CTA: the identity, then -1
    for (int64_t s = tid; s < k; s += kTopkThreads) {
      out[s] = s < len ? detail::topk_apply_transform(a, r, q, s) : -1;
      if (raw != nullptr) raw[s] = s < len ? static_cast<int32_t>(s) : -1;
    }
    return;
  }

  const ScoreT* const row = static_cast<const ScoreT*>(a.scores) + r * a.score_ld + w.start;
  const bool cached = len <= kTopkCacheKeys;
  uint32_t* const cache = topk_cache_base(topk_smem + kTopkBins, row);

  // Pass 1: top 12 bits of every key (and the keys into the cache).
  for (int b = tid; b < kTopkBins; b += kTopkThreads) hist[b] = 0;
  __syncthreads();
  auto count_top = [&](int64_t, uint32_t key, bool valid) {
    topk_hist_add(hist, valid ? static_cast<int>(key >> kTopkTopShift) : -1);
  };
  if (cached) topk_visit_global<ScoreT, true>(row, len, cache, count_top);
  else topk_visit_global<ScoreT, false>(row, len, cache, count_top);
  __syncthreads();
  topk_pick_bin<Scan, kTopkBins>(hist, static_cast<uint32_t>(k), st, scan);
  __syncthreads();

  // Chunks of the compaction (and of the candidate collection): warp w owns
  // the indices [w * chunk, min(len, (w + 1) * chunk)), a multiple of 32.
  const int64_t chunk = ((len + kTopkWarps - 1) / kTopkWarps + 31) / 32 * 32;
  const int64_t begin = warp * chunk;
  const int64_t end = begin + chunk < len ? begin + chunk : len;
  const uint32_t chunk32 = static_cast<uint32_t>(chunk);  // width <= 2^31 - 1 (checked by topk_transform)
  const uint32_t lanes_below = (1u << lane) - 1u;

  uint32_t prefix = static_cast<uint32_t>(st.bin);
  uint32_t need = st.need;
  int shift = kTopkTopShift;
  bool done = st.in_bin == need;

  // A row past the cache whose pass-1 bin is small enough: one more global
  // sweep (16-byte loads, like pass 1) collects the bin's (key, index) pairs
  // into shared memory and counts the keys above the bin per compaction
  // chunk (fewer than K of them: one shared atomic each); the later passes
  // then read only the candidates, and the compaction one global sweep.
  const bool use_candidates = !cached && !done && st.in_bin <= kTopkCandidates;  // uniform
  uint32_t* const cand_key = topk_smem + kTopkBins;
  uint32_t* const cand_idx = cand_key + kTopkCandidates;
  if (use_candidates) {
    if (tid == 0) st.candidates = 0;
    if (tid < kTopkWarps) st.warp_above[tid] = 0;
    __syncthreads();
    const uint32_t bin = prefix;
    topk_visit_global_runs<ScoreT, false>(row, len, cache, [&](int64_t i0, const auto& keys, int n) {
      constexpr int kN = sizeof(keys) / sizeof(keys[0]);
      uint32_t mine = 0;  // this lane's candidates in its run
#pragma unroll
      for (int e = 0; e < kN; ++e) {
        const uint32_t p = keys[e] >> kTopkTopShift;
        if (e < n && p > bin) atomicAdd(&st.warp_above[static_cast<uint32_t>(i0 + e) / chunk32], 1u);
        mine += e < n && p == bin;
      }
      // One shared atomic per warp and run reserves the warp's slots (not
      // one per element: all warps contend for st.candidates).
      uint32_t incl = mine;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t up = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += up;
      }
      const uint32_t total = __shfl_sync(0xffffffffu, incl, 31);
      if (total != 0u) {  // warp-uniform
        uint32_t base = 0;
        if (lane == 0) base = atomicAdd(&st.candidates, total);
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
    });
    __syncthreads();
  }
  const int64_t n_cand = use_candidates ? static_cast<int64_t>(st.in_bin) : 0;

  // Passes 2 and 3 refine the prefix while the bin must be split: over the
  // cached keys, the candidates, or the row in global memory.
  for (int level = 0; level < 2 && !done; ++level) {  // uniform over the CTA
    const int digit_shift = level == 0 ? 10 : 0;
    constexpr uint32_t digit_mask = 0x3ffu;  // 10 bits at shift 10, then at shift 0
    for (int b = tid; b < kTopkDigitBins; b += kTopkThreads) hist[b] = 0;
    __syncthreads();
    auto count_next = [&](int64_t, uint32_t key, bool valid) {
      const bool match = valid && (key >> shift) == prefix;
      topk_hist_add(hist, match ? static_cast<int>((key >> digit_shift) & digit_mask) : -1);
    };
    if (cached) topk_visit_cache(cache, len, count_next);
    else if (use_candidates) topk_visit_cache(cand_key, n_cand, count_next);
    else topk_visit_global<ScoreT, false>(row, len, cache, count_next);
    __syncthreads();
    topk_pick_bin<Scan, kTopkDigitBins>(hist, need, st, scan);
    __syncthreads();
    prefix = (prefix << (shift - digit_shift)) | static_cast<uint32_t>(st.bin);
    shift = digit_shift;
    need = st.need;
    done = st.in_bin == need;
  }

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
      // so from few chunks: the lowest lane of each chunk's group adds the
      // group's counts (one atomic per chunk and count, not per candidate).
      const uint32_t peers = __match_any_sync(0xffffffffu, owner);
      const uint32_t a_n = __popc(__ballot_sync(0xffffffffu, is_above) & peers);
      const uint32_t t_n = __popc(__ballot_sync(0xffffffffu, is_tie) & peers);
      if (valid && (peers & lanes_below) == 0u) {
        if (a_n != 0u) atomicAdd(&st.warp_above[owner], a_n);
        if (t_n != 0u) atomicAdd(&st.warp_ties[owner], t_n);
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
  if (warp == 0) {  // exclusive scans over the 32 warps
    uint32_t a_incl = st.warp_above[lane], t_incl = st.warp_ties[lane];
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t a_up = __shfl_up_sync(0xffffffffu, a_incl, o), t_up = __shfl_up_sync(0xffffffffu, t_incl, o);
      if (lane >= o) {
        a_incl += a_up;
        t_incl += t_up;
      }
    }
    const uint32_t a_before = a_incl - st.warp_above[lane], t_before = t_incl - st.warp_ties[lane];
    st.warp_tie0[lane] = t_before;
    st.warp_slot[lane] = a_before + (t_before < need ? t_before : need);
  }
  __syncthreads();
  // The compaction writes the selected raw indices in output order into the
  // histogram's memory (no longer needed; K <= kTopkBins words).
  uint32_t* const selected = hist;
  uint32_t slot = st.warp_slot[warp], tie_rank = st.warp_tie0[warp];
  // Only a warp whose chunk holds the cut among the ties ranks them; every
  // other warp takes all of its ties or none (warp-uniform).
  const bool cut_here = tie_rank < need && tie_rank + st.warp_ties[warp] > need;
  const bool take_ties = tie_rank < need;
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
    if (take) selected[slot + __popc(take_mask & lanes_below)] = static_cast<uint32_t>(i);
    slot += __popc(take_mask);
  });
  __syncthreads();
  // The transform reads the table: done here, all K slots at once, so its
  // global loads are in flight together instead of one per warp step.
  for (int64_t s = tid; s < k; s += kTopkThreads) {
    const int64_t i = selected[s];
    out[s] = detail::topk_apply_transform(a, r, q, i);
    if (raw != nullptr) raw[s] = static_cast<int32_t>(i);
  }
}

// The > 48 KiB shared-memory opt-in of the kernel (nsa/cuda/shared_memory.cuh).
template <class ScoreT>
inline cudaError_t topk_allow_shared_memory() {
  return allow_dynamic_shared_memory<topk_transform_kernel<ScoreT>>(kTopkSharedBytes);
}

// One launch of `a.rows` CTAs on `stream`. `a` must satisfy the checks of
// topk_transform (src/topk.cpp): 1 <= k <= 2048, rows <= 2^31 - 1, strides
// and pointers as documented in nsa/topk.h; scores aligned to their element.
inline cudaError_t invoke_topk_transform(const TopkArgs& a, cudaStream_t stream) {
  if (a.rows <= 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(a.rows));
  if (a.score_type == ScoreType::kBfloat16) {
    const cudaError_t e = topk_allow_shared_memory<uint16_t>();
    if (e != cudaSuccess) return e;
    topk_transform_kernel<uint16_t><<<grid, kTopkThreads, kTopkSharedBytes, stream>>>(a);
  } else {
    const cudaError_t e = topk_allow_shared_memory<float>();
    if (e != cudaSuccess) return e;
    topk_transform_kernel<float><<<grid, kTopkThreads, kTopkSharedBytes, stream>>>(a);
  }
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace nsa
