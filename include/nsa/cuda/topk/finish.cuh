// Top-k kernel, part 4 of 5 (the overview is in nsa/cuda/topk.cuh): the finishes
// from bitmaps, of rows in the key cache and of longer slices.
#pragma once

#include <cuda_pipeline_primitives.h>

#include "nsa/cuda/topk/select.cuh"

namespace nsa {
namespace kernels {

// The table entries of a slice's paged-64 transform, copied into shared
// memory (cp.async) while the slice is selected, so the transform at the end
// reads shared memory instead of waiting on global loads (1.2-1.5 us of a
// short row's 12, the probe's "transform" phase). Entry c - col0 holds
// column c of the request's table row, for the columns of the slice's
// indices that are inside the table. `on` is false where the transform is not
// paged, the request is outside the table or the entries would not fit:
// topk_apply_transform then reads the table itself.
struct TopkTableSlice {
  const uint32_t* words;  // int32 entries, or int64 ones as (low, high) word pairs
  int64_t col0;
  bool wide;
  bool on;

  // The output of raw index x (a slice's), as topk_apply_transform gives it.
  __device__ __forceinline__ int32_t paged(const TopkArgs& a, int64_t x) const {
    const int64_t col = x >> 6;
    if (col >= a.table_cols) return -1;
    const int64_t j = col - col0;
    const int64_t e = wide ? static_cast<int64_t>(words[2 * j] | static_cast<uint64_t>(words[2 * j + 1]) << 32)
                           : static_cast<int64_t>(static_cast<int32_t>(words[j]));
    return detail::topk_paged_result(e, x);
  }
};

// Starts the copy of the entries for the slice [lo, lo + slice_len) of a
// row of request q into dst (capacity_words words, 8-byte aligned); every thread
// of the CTA calls it, and every thread calls __pipeline_wait_prior(0) before
// the barrier that precedes the first read (topk_emit_bitmaps).
__device__ __forceinline__ TopkTableSlice topk_prefetch_table(const TopkArgs& a, int64_t q, int64_t lo,
                                                              int64_t slice_len, uint32_t* dst, int capacity_words) {
  TopkTableSlice t{dst, lo >> 6, a.table.type == IndexType::kInt64, false};
  if (a.transform != TopkTransform::kPaged64 || q < 0 || q >= a.table_rows || slice_len <= 0) return t;
  const int64_t last = (lo + slice_len - 1) >> 6 < a.table_cols - 1 ? (lo + slice_len - 1) >> 6 : a.table_cols - 1;
  const int64_t cols = last >= t.col0 ? last - t.col0 + 1 : 0;
  const int size = t.wide ? 8 : 4;
  if (cols * (size / 4) > capacity_words) return t;
  t.on = true;
  const char* const src = static_cast<const char*>(a.table.data) + (q * a.table_ld + t.col0) * size;
  for (int64_t c = threadIdx.x; c < cols; c += kTopkThreads)
    __pipeline_memcpy_async(reinterpret_cast<char*>(dst) + c * size, src + c * size, size);
  __pipeline_commit();
  return t;
}

// After passes 2 and 3: the candidate of index idx (in the slice) and key
// sets its bit in `sel` when its digits are above the final prefix, in `tie`
// when they equal it (a key below it was not selected).
__device__ __forceinline__ void topk_mark_candidate(uint32_t idx, uint32_t key, const TopkPrefix& found, uint32_t* sel,
                                                    uint32_t* tie) {
  const uint32_t d = key >> found.shift, bit = 1u << (idx & 31);
  if (d > found.prefix) atomicOr(sel + (idx >> 5), bit);
  else if (d == found.prefix) atomicOr(tie + (idx >> 5), bit);
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
                                                  int64_t lo, TopkSlice slice, const TopkTableSlice& table,
                                                  uint32_t* selected, TopkBlockState& st,
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
  __pipeline_wait_prior(0);  // this thread's table copies (topk_prefetch_table); the barrier publishes them all
  __syncthreads();
  mark(8);
  // The transform: from the prefetched entries, or reading the table for all
  // of the CTA's slots at once, so its global loads are in flight together.
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;
  static_assert(kTopkMaxK % kTopkThreads == 0, "whole slots per thread");
#pragma unroll
  for (int j0 = 0; j0 < kTopkMaxK; j0 += kTopkThreads) {  // slots <= K <= kTopkMaxK: two unrolled steps
    const int j = j0 + tid;
    if (j >= slots) break;
    const int64_t i = selected[j];
    out[first + j] = table.on ? table.paged(a, i) : detail::topk_apply_transform(a, r, q, i);
    if (raw != nullptr) raw[first + j] = static_cast<int32_t>(i);
  }
  mark(9);
}

// The rest of a row whose every slice is in the key cache, after pass 1
// (st holds its bin). Two bitmaps over the slice, one bit per key and one
// word per 32 keys: `sel` (taken: above the threshold) and `tie` (at it).
//   1. One sweep of the cache: each warp step's ballots "above pass 1's bin"
//      and "in it" are one word of each bitmap; when the slice holds at most
//      kTopkCachedCandidates keys of the bin (each CTA of a cluster counts
//      its own) a block scan over the second bitmap collects the bin's
//      indices.
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
  uint32_t* const table_words = tie + kTopkCacheKeys / 32;  // the rest of the histogram's memory
  constexpr int kTableWords = kTopkBins - kTopkDigitBins - 2 * (kTopkCacheKeys / 32);
  const TopkTableSlice table = topk_prefetch_table(a, q, lo, slice_len, table_words, kTableWords);
  const int words = static_cast<int>((slice_len + 31) / 32);

  TopkPrefix found{static_cast<uint32_t>(st.bin), st.need, kTopkTopShift, st.in_bin == st.need};
  // Per CTA: in a cluster each CTA collects when its own slice's keys of the
  // bin fit (a row of 128K in 16 slices of 8K: about 512 of a bin of 8192).
  // The two ways run the same cluster barriers (topk_refine's picks), so the
  // CTAs of one cluster may choose differently.
  const bool collect = !found.done && st.slice_in_bin <= static_cast<uint32_t>(kTopkCachedCandidates);
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
#pragma unroll
    for (int c0 = 0; c0 < kTopkCachedCandidates; c0 += kTopkThreads) {  // n_cand <= kTopkCachedCandidates
      const int c = c0 + tid;
      if (c >= n_cand) break;
      topk_mark_candidate(cand[c], cache[cand[c]], found, sel, tie);
    }
  } else if (!found.done) {
    topk_refine<Scan, kCluster>(found, hist, merged, slice, st, scan, mark,
                                [&](auto&& f) { topk_visit_cache(cache, slice_len, f); });
    topk_sweep_bitmaps(cache, slice_len, found.shift, found.prefix, sel, tie);
  }
  __syncthreads();
  mark(6);

  topk_emit_bitmaps<Scan, kCluster>(a, r, q, sel, tie, words, 1, found.need, lo, slice, table, cand, st, scan, mark);
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
  // The histogram's memory past passes 2 and 3's bins is free from here on.
  const TopkTableSlice table =
      topk_prefetch_table(a, q, lo, slice_len, hist + kTopkDigitBins, kTopkBins - kTopkDigitBins);
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
  for (int c = tid; c < n_cand; c += kTopkThreads) topk_mark_candidate(cand_idx[c], cand_key[c], found, sel, tie);
  __syncthreads();
  mark(6);
  topk_emit_bitmaps<Scan, kCluster>(a, r, q, sel, tie, words, (words + kTopkThreads - 1) / kTopkThreads, found.need, lo,
                                    slice, table, selected, st, scan, mark);
}

}  // namespace kernels
}  // namespace nsa
