// Top-k kernel, the register route (the overview is in nsa/cuda/topk.cuh):
// rows short enough that every key stays in a register of the CTA.
//
// Built into the kernel only where NSA_TOPK_REGISTER_ROWS is 1: an experiment
// (the NSA_EXPERIMENT_BUILDS variants topk_registers_test and
// topk_registers_bench) until the GPU check has timed it against the cached
// route, which these rows take otherwise.
#pragma once

#include "nsa/cuda/topk/finish.cuh"

#ifndef NSA_TOPK_REGISTER_ROWS
#define NSA_TOPK_REGISTER_ROWS 0
#endif

namespace nsa {
namespace kernels {

// Keys per thread of the register route, and the longest row it takes.
constexpr int kTopkRegisterKeysPerThread = 8;
constexpr int kTopkRegisterMaxLen = kTopkThreads * kTopkRegisterKeysPerThread;  // 8192
// Words of shared memory for the prefetched table entries: a row's 128
// int64 entries at most.
constexpr int kTopkRegisterTableWords = 2 * (kTopkRegisterMaxLen / 64);

// Row r (window w, K < len <= kTopkRegisterMaxLen, request q) by one CTA,
// with its keys in registers: read once from global memory and never stored
// to shared memory, where the cached route (topk_finish_cached) stores them,
// sweeps them into bitmaps, collects pass 1's bin from a bitmap and emits
// through a second copy of the selected indices. Thread t holds the keys of
// indices j * kTopkThreads + t (j < 8): a warp's j-th keys are 32
// consecutive indices, and index order is (j, warp, lane).
//   1. Pass 1 as on the other routes (12-bit histogram, the bin of the K-th
//      key), the table's entries copied into shared memory meanwhile.
//   2. Passes 2 and 3 (topk_refine, with its plateau shortcut) over the
//      registers.
//   3. Each warp counts, per j, its keys above the final prefix and at it
//      (two ballots); one warp scans the 8 x 32 counts in index order; then
//      every selected key knows its output slot (the keys above, and the
//      ties taken, before it) and is transformed and written straight to
//      the output: ascending, the smallest indices winning ties, as on
//      every route.
// `smem` is the dynamic shared memory (kTopkSharedBytes).
template <class ScoreT, class Scan, class Mark>
__device__ __forceinline__ void topk_select_registers(const TopkArgs& a, int64_t r, int64_t q,
                                                      const detail::TopkWindow w, typename Scan::TempStorage& scan,
                                                      TopkBlockState& st, uint32_t* smem, Mark&& mark) {
  constexpr int kJ = kTopkRegisterKeysPerThread;
  static_assert(kTopkMaxK < (1 << 16) && kTopkRegisterMaxLen < (1 << 16), "the packed counts below");
  static_assert(kTopkBins + kJ * kTopkWarps + kTopkRegisterTableWords <= kTopkBins + kTopkCacheKeys,
                "the route's shared memory fits the histogram and the cache's");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = static_cast<int>(w.len);
  const ScoreT* const row = static_cast<const ScoreT*>(a.scores) + r * a.score_ld + w.start;
  uint32_t* const hist = smem;                                 // pass 1's bins, then passes 2 and 3's
  uint32_t* const counts = smem + kTopkBins;                   // [j][warp]: above | ties << 16
  uint32_t* const table_words = counts + kJ * kTopkWarps;      // 8-byte aligned: kTopkBins + 256 words in
  uint32_t key[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const int i = j * kTopkThreads + tid;
    key[j] = i < n ? topk_load_key(row + i) : 0u;
  }
  const TopkTableSlice table = topk_prefetch_table(a, q, 0, n, table_words, kTopkRegisterTableWords);
  for (int b = tid; b < kTopkBins; b += kTopkThreads) hist[b] = 0;
  __syncthreads();
  mark(1);

  int bins[kJ];
#pragma unroll
  for (int j = 0; j < kJ; ++j) bins[j] = j * kTopkThreads + tid < n ? static_cast<int>(key[j] >> kTopkTopShift) : -1;
  topk_hist_add_run(hist, st.sink, bins);
  const TopkSlice whole{0, 1};
  topk_pick<Scan, kTopkBins, false>(hist, nullptr, 0, whole, static_cast<uint32_t>(a.k), st, scan);
  mark(2);

  TopkPrefix found{static_cast<uint32_t>(st.bin), st.need, kTopkTopShift, st.in_bin == st.need};
  topk_refine<Scan, false>(found, hist, nullptr, whole, st, scan, mark, [&](auto&& f) {
#pragma unroll
    for (int j = 0; j < kJ; ++j) {
      const int i = j * kTopkThreads + tid;
      f(static_cast<int64_t>(i), key[j], i < n);
    }
  });
  const uint32_t prefix = found.prefix, need = found.need;
  const int shift = found.shift;
  // Bit l of above(j) / tie(j): lane l's j-th key is above the final prefix / at it.
  auto above = [&](int j) {
    return __ballot_sync(0xffffffffu, j * kTopkThreads + tid < n && (key[j] >> shift) > prefix);
  };
  auto tie = [&](int j) { return __ballot_sync(0xffffffffu, j * kTopkThreads + tid < n && (key[j] >> shift) == prefix); };
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const uint32_t c = static_cast<uint32_t>(__popc(above(j))) | static_cast<uint32_t>(__popc(tie(j))) << 16;
    if (lane == 0) counts[j * kTopkWarps + warp] = c;
  }
  __pipeline_wait_prior(0);  // this thread's table copies; the barrier publishes them all
  __syncthreads();
  mark(6);
  if (warp == 0) {  // exclusive scan of the counts in index order: lane l takes counts[8 l, 8 l + 8)
    uint32_t c[kJ], sum = 0;
#pragma unroll
    for (int u = 0; u < kJ; ++u) {
      c[u] = counts[kJ * lane + u];
      sum += c[u];
    }
    uint32_t incl = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t up = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += up;
    }
    uint32_t before = incl - sum;
#pragma unroll
    for (int u = 0; u < kJ; ++u) {
      counts[kJ * lane + u] = before;
      before += c[u];
    }
  }
  __syncthreads();
  mark(7);
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;
  const uint32_t lanes_below = (1u << lane) - 1u;
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const uint32_t am = above(j), tm = tie(j), base = counts[j * kTopkWarps + warp];
    const uint32_t a_before = (base & 0xffffu) + static_cast<uint32_t>(__popc(am & lanes_below));
    const uint32_t t_before = (base >> 16) + static_cast<uint32_t>(__popc(tm & lanes_below));
    const bool take = ((am >> lane) & 1u) != 0u || (((tm >> lane) & 1u) != 0u && t_before < need);
    if (take) {
      const int64_t i = static_cast<int64_t>(j) * kTopkThreads + tid;
      const uint32_t slot = a_before + (t_before < need ? t_before : need);
      out[slot] = table.on ? table.paged(a, i) : detail::topk_apply_transform(a, r, q, i);
      if (raw != nullptr) raw[slot] = static_cast<int32_t>(i);
    }
  }
  mark(9);
}

}  // namespace kernels
}  // namespace nsa
