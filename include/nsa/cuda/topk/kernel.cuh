// Top-k kernel, part 5 of 5 (the overview is in nsa/cuda/topk.cuh): one row's
// selection (pass 1, the routes, the general path) and the kernel.
#pragma once

#include "nsa/cuda/topk/finish.cuh"

namespace nsa {
namespace kernels {

// Slots of the identity (rows with len <= K) per thread.
constexpr int kTopkIdentitySlots = kTopkMaxK / kTopkThreads;
static_assert(kTopkMaxK % kTopkThreads == 0, "whole identity slots per thread");

// Bytes of a row's head prefetched into L2 at kernel start (topk_prefetch_row_head).
constexpr int64_t kTopkPrefetchBytes = 32 * 1024;

// Starts one bulk L2 prefetch of the first kTopkPrefetchBytes of row r (or
// the whole row when narrower), issued by one thread before the row's length
// is known: the scores' DRAM round trip then overlaps the length's instead of
// following it, and pass 1's loads of that head hit L2. Only when the row
// starts at column 0 (no ragged windows, whose start is itself a load) and
// may be longer than K (a row of at most K scores reads none of them). The
// range is the row's 16-byte-aligned interior, never a byte outside the row;
// a prefetch changes no value and needs no wait.
template <class ScoreT>
__device__ __forceinline__ void topk_prefetch_row_head(const TopkArgs& a, int64_t r) {
  if (a.row_starts.data != nullptr || a.width <= a.k || threadIdx.x != 0) return;  // width <= K: all identity
  const int64_t row_bytes = a.width * static_cast<int64_t>(sizeof(ScoreT));
  const uintptr_t head = reinterpret_cast<uintptr_t>(static_cast<const ScoreT*>(a.scores) + r * a.score_ld);
  const uintptr_t begin = (head + 15) & ~uintptr_t{15};
  const uintptr_t end =
      (head + static_cast<uintptr_t>(row_bytes < kTopkPrefetchBytes ? row_bytes : kTopkPrefetchBytes)) & ~uintptr_t{15};
  if (end > begin) topk_prefetch_l2(reinterpret_cast<const void*>(begin), static_cast<uint32_t>(end - begin));
}

// Once the length is known, thread 0 also prefetches into L2 what pass 1
// will read of a slice that fits the key cache (up to 128 KB) past the head
// topk_prefetch_row_head asked for: pass 1 reads 64 KB per iteration, and
// without it each iteration past the first waits for its own DRAM round
// trip (a 32K row: two). Slices past the cache are left alone (a rolling
// prefetch of long rows made them slower, see topk_visit_global_runs).
template <class ScoreT>
__device__ __forceinline__ void topk_prefetch_slice(const TopkArgs& a, int64_t r, const ScoreT* slice_row,
                                                    int64_t slice_len) {
  if (threadIdx.x != 0 || slice_len > kTopkCacheKeys) return;
  uintptr_t begin = reinterpret_cast<uintptr_t>(slice_row);
  const uintptr_t end = (begin + static_cast<uintptr_t>(slice_len) * sizeof(ScoreT)) & ~uintptr_t{15};
  if (a.row_starts.data == nullptr && a.width > a.k) {  // the head prefetch's range is in L2 already
    const int64_t row_bytes = a.width * static_cast<int64_t>(sizeof(ScoreT));
    const uintptr_t head_end = reinterpret_cast<uintptr_t>(static_cast<const ScoreT*>(a.scores) + r * a.score_ld) +
                               static_cast<uintptr_t>(row_bytes < kTopkPrefetchBytes ? row_bytes : kTopkPrefetchBytes);
    if (begin < head_end) begin = head_end;
  }
  begin = (begin + 15) & ~uintptr_t{15};
  if (end > begin) topk_prefetch_l2(reinterpret_cast<const void*>(begin), static_cast<uint32_t>(end - begin));
}

// Row r (window w, len > K, request q) by one CTA (kCluster = false) or by
// this CTA of a thread-block cluster: each CTA of a cluster selects over its
// slice with the cluster's merged histograms and writes its part of the
// output (the CTAs before it in the cluster give its first slot). `smem` is
// the dynamic shared memory (kTopkSharedBytes).
template <class ScoreT, bool kCluster, class Scan, class Mark>
__device__ __forceinline__ void topk_select_row(const TopkArgs& a, int64_t r, int64_t q, const detail::TopkWindow w,
                                                TopkSlice slice, typename Scan::TempStorage& scan, TopkBlockState& st,
                                                uint32_t* merged, uint32_t* smem, Mark&& mark) {
  static_assert(kTopkMaxK <= kTopkBins, "the selected indices reuse the histogram");
  uint32_t* const hist = smem;
  uint32_t* const area = smem + kTopkBins;  // the key cache or the candidates
  uint32_t* const cached_candidates = area + kTopkCacheKeys + 4;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t len = w.len, k = a.k;
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;

  // This CTA's slice [lo, lo + slice_len) of the row: consecutive slices of a
  // multiple of 32 keys (the last one shorter, maybe empty). From here on
  // indices are relative to lo, and every count is over the slice unless it
  // comes from a pick (the whole row; but st.slice_in_bin is the slice's).
  const int64_t per = ((len + slice.size - 1) / slice.size + 31) / 32 * 32;
  const int64_t lo = slice.rank * per < len ? slice.rank * per : len;
  const int64_t slice_len = len - lo < per ? len - lo : per;
  const ScoreT* const row = static_cast<const ScoreT*>(a.scores) + r * a.score_ld + w.start + lo;
  const bool cached = slice_len <= kTopkCacheKeys;
  uint32_t* const cache = topk_cache_base(area, row);
  topk_prefetch_slice(a, r, row, slice_len);

  // Pass 1: top 12 bits of every key (and the keys into the cache). The
  // histogram is cleared in 4 unrolled stores per thread: a strided loop
  // compiled to a generic loop of about 20 instructions per warp (and one
  // 16-byte store of zeros made the cluster kernel spill twice as much).
  static_assert(kTopkBins % kTopkThreads == 0, "whole bins per thread");
#pragma unroll
  for (int j = 0; j < kTopkBins / kTopkThreads; ++j) hist[j * kTopkThreads + tid] = 0;
  if (tid == 0) st.candidates = 0;
  if constexpr (kCluster) topk_clear_merge<kTopkBins>(merged, 0, slice, st);
  __syncthreads();
  mark(1);
  auto count_top = [&](int64_t, const auto& keys, int n) {
    constexpr int kN = sizeof(keys) / sizeof(keys[0]);
    int bins[kN];
#pragma unroll
    for (int e = 0; e < kN; ++e) bins[e] = e < n ? static_cast<int>(keys[e] >> kTopkTopShift) : -1;
    topk_hist_add_run(hist, st.sink, bins);
  };
  if (cached) topk_visit_global_runs<ScoreT, true>(row, slice_len, cache, count_top);
  else if constexpr (kTopkStream) topk_stream_global_runs<ScoreT>(row, slice_len, area, count_top);
  else topk_visit_global_runs<ScoreT, false>(row, slice_len, cache, count_top);
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
#pragma unroll
  for (int s0 = 0; s0 < kTopkMaxK; s0 += kTopkThreads) {  // slots <= K <= kTopkMaxK
    const int s = s0 + tid;
    if (s >= slots) break;
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
  using Scan = TopkBlockScan;
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
  if (slice.rank == 0) topk_prefetch_row_head<ScoreT>(a, r);
  const detail::TopkWindow w = detail::topk_window(a, r);
  const int64_t q = detail::topk_request(a, r);
  // The identity's outputs, computed before the length is known: their
  // table loads are in flight together with the length's load instead of
  // after it (one global latency less for rows of at most K scores). Reads
  // past the length stay within the table (topk_apply_transform checks the
  // column against table_cols); their values are dropped.
  int32_t identity[kTopkIdentitySlots];
#pragma unroll
  for (int j = 0; j < kTopkIdentitySlots; ++j) {
    const int64_t s = j * kTopkThreads + threadIdx.x;
    identity[j] = s < a.k ? detail::topk_apply_transform(a, r, q, s) : -1;
  }
  if (w.len <= a.k) {  // the identity, then -1 (by the cluster's first CTA alone)
    if (slice.rank != 0) return;
    int32_t* const out = a.out + r * a.out_ld;
    int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;
#pragma unroll
    for (int j = 0; j < kTopkIdentitySlots; ++j) {
      const int64_t s = j * kTopkThreads + threadIdx.x;
      if (s >= a.k) break;
      out[s] = s < w.len ? identity[j] : -1;
      if (raw != nullptr) raw[s] = s < w.len ? static_cast<int32_t>(s) : -1;
    }
    mark(9);
    return;
  }
  if (kCluster && w.len <= kTopkCacheKeys) {
    if (slice.rank == 0)
      topk_select_row<ScoreT, false, Scan>(a, r, q, w, TopkSlice{0, 1}, scan, st, merged, topk_smem, mark);
    return;
  }
  topk_select_row<ScoreT, kCluster, Scan>(a, r, q, w, slice, scan, st, merged, topk_smem, mark);
}

}  // namespace kernels
}  // namespace nsa
