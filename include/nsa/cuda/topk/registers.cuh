// Top-k kernel, the register route (the overview is in nsa/cuda/topk.cuh):
// rows short enough that every key stays in a register of the CTA.
//
// Built into the kernel only where NSA_TOPK_REGISTER_ROWS is set: an
// experiment (the NSA_EXPERIMENT_BUILDS variants topk_registers_test,
// topk_registers_bench and topk_registers16_bench) until the GPU check has
// timed it against the cached route, which these rows take otherwise. Its
// value is the most keys a thread holds: 8 (rows of up to 8192 scores), 16
// (16384) or 32 (32768). With 32, ptxas spills in the one-CTA kernels (sm_90a,
// float: 60 bytes stored and 72 loaded per thread; none with 16): which is
// faster is for the bench.
#pragma once

#include "nsa/cuda/topk/finish.cuh"

#ifndef NSA_TOPK_REGISTER_ROWS
#define NSA_TOPK_REGISTER_ROWS 0
#endif
#if NSA_TOPK_REGISTER_ROWS != 0 && NSA_TOPK_REGISTER_ROWS != 8 && NSA_TOPK_REGISTER_ROWS != 16 && \
    NSA_TOPK_REGISTER_ROWS != 32
#error "NSA_TOPK_REGISTER_ROWS is 0 (off), 8, 16 or 32 (keys per thread at most)"
#endif

namespace nsa {
namespace kernels {

// The longest row the register route takes (0 when it is off).
constexpr int kTopkRegisterMaxLen = kTopkThreads * NSA_TOPK_REGISTER_ROWS;
// Words of shared memory for the prefetched table entries: a 32K row's 512
// int64 entries.
constexpr int kTopkRegisterTableWords = 2 * (32 * kTopkThreads / 64);

// Row r (window w, K < len <= kJ x kTopkThreads, request q) by one CTA,
// with its keys in registers: read once from global memory and never stored
// to shared memory, where the cached route (topk_finish_cached) stores them,
// sweeps them into bitmaps, collects pass 1's bin from a bitmap and emits
// through a second copy of the selected indices. Thread t holds the keys of
// indices j * kTopkThreads + t (j < kJ): a warp's j-th keys are 32
// consecutive indices, and index order is (j, warp, lane).
//   1. Pass 1 as on the other routes (12-bit histogram, the bin of the K-th
//      key), the table's entries copied into shared memory meanwhile.
//   2. Passes 2 and 3 (topk_refine, with its plateau shortcut) over the
//      registers, in runs of 8 keys whose adds have no branch per key.
//   3. Each warp counts, per j, its keys above the final prefix and at it
//      (two ballots); a block scan of the kJ x 32 counts in index order; then
//      every selected key knows its output slot (the keys above, and the
//      ties taken, before it) and is written straight to the output,
//      transformed from the copied table entries (or raw); other transforms
//      go through shared memory so that their loads overlap. Ascending, the
//      smallest indices winning ties, as on every route.
// `smem` is the dynamic shared memory (kTopkSharedBytes).
template <int kJ, class ScoreT, class Scan, class Mark>
__device__ __forceinline__ void topk_select_registers(const TopkArgs& a, int64_t r, int64_t q,
                                                      const detail::TopkWindow w, typename Scan::TempStorage& scan,
                                                      TopkBlockState& st, uint32_t* smem, Mark&& mark) {
  static_assert(kJ % 8 == 0 && kJ <= 32, "runs of 8 keys; kJ x 32 warps counts, one per thread");
  static_assert(kTopkMaxK < (1 << 16) && 32 * kTopkThreads < (1 << 16), "the packed counts below");
  static_assert(kTopkBins + kTopkThreads + kTopkRegisterTableWords <= kTopkBins + kTopkCacheKeys,
                "the route's shared memory fits the histogram and the cache's");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int n = static_cast<int>(w.len);
  const ScoreT* const row = static_cast<const ScoreT*>(a.scores) + r * a.score_ld + w.start;
  uint32_t* const hist = smem;                          // pass 1's bins, then passes 2 and 3's
  uint32_t* const counts = smem + kTopkBins;            // [j][warp]: above | ties << 16
  uint32_t* const table_words = counts + kTopkThreads;  // 8-byte aligned: kTopkBins + 1024 words in
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

#pragma unroll
  for (int j0 = 0; j0 < kJ; j0 += 8) {  // runs of 8 keys: fewer live registers than one run of kJ
    int bins[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const int j = j0 + e;
      bins[e] = j * kTopkThreads + tid < n ? static_cast<int>(key[j] >> kTopkTopShift) : -1;
    }
    topk_hist_add_run(hist, st.sink, bins);
  }
  const TopkSlice whole{0, 1};
  topk_pick<Scan, kTopkBins, false>(hist, nullptr, 0, whole, static_cast<uint32_t>(a.k), st, scan);
  mark(2);

  TopkPrefix found{static_cast<uint32_t>(st.bin), st.need, kTopkTopShift, st.in_bin == st.need};
  topk_refine<Scan, false, true>(found, hist, nullptr, whole, st, scan, mark, [&](auto&& f) {
#pragma unroll
    for (int j0 = 0; j0 < kJ; j0 += 8) {  // runs of 8: topk_hist_add_run's adds, no branch per key
      uint32_t run[8], valid = 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        run[e] = key[j0 + e];
        valid |= static_cast<uint32_t>((j0 + e) * kTopkThreads + tid < n) << e;
      }
      f(run, valid);
    }
  });
  const uint32_t prefix = found.prefix, need = found.need;
  const int shift = found.shift;
  // Bit l of above(j) / tie(j): lane l's j-th key is above the final prefix / at it.
  auto above = [&](int j) {
    return __ballot_sync(0xffffffffu, j * kTopkThreads + tid < n && (key[j] >> shift) > prefix);
  };
  auto tie = [&](int j) {
    return __ballot_sync(0xffffffffu, j * kTopkThreads + tid < n && (key[j] >> shift) == prefix);
  };
#pragma unroll
  for (int j = 0; j < kJ; ++j) {
    const uint32_t c = static_cast<uint32_t>(__popc(above(j))) | static_cast<uint32_t>(__popc(tie(j))) << 16;
    if (lane == 0) counts[j * kTopkWarps + warp] = c;
  }
  __pipeline_wait_prior(0);  // this thread's table copies; the barrier publishes them all
  __syncthreads();
  mark(6);
  {  // the exclusive scan of the counts in index order ([j][warp] is index order)
    uint32_t before = 0;
    Scan(scan).ExclusiveSum(tid < kJ * kTopkWarps ? counts[tid] : 0u, before);
    __syncthreads();  // every count is read before it is overwritten
    if (tid < kJ * kTopkWarps) counts[tid] = before;
  }
  __syncthreads();
  mark(7);
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;
  // Transforms that read global memory (the token table, the ragged offset,
  // a table not copied in) go through shared memory: each thread's selected
  // keys would otherwise wait on one table load after another; over all K
  // slots at once the loads are in flight together (as on the other routes).
  const bool direct = table.on || a.transform == TopkTransform::kRaw;  // CTA-uniform
  uint32_t* const selected = hist;  // free since the last pass's pick; K <= kTopkBins words
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
      if (direct) out[slot] = table.on ? table.paged(a, i) : static_cast<int32_t>(i);
      else selected[slot] = static_cast<uint32_t>(i);
      if (raw != nullptr) raw[slot] = static_cast<int32_t>(i);
    }
  }
  if (!direct) {
    __syncthreads();
    mark(8);
    for (int64_t s = tid; s < a.k; s += kTopkThreads) out[s] = detail::topk_apply_transform(a, r, q, selected[s]);
  }
  mark(9);
}

}  // namespace kernels
}  // namespace nsa
