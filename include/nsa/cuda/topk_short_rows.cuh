// The short-row kernel of topk_transform: rows of at most
// kTopkShortMaxWidth (16K) scores, one CTA of 512 threads per row, every key
// in registers from its one read to the output.
//
// Why a second kernel: the general one (nsa/cuda/topk.cuh) keeps a row's
// keys in shared memory and sweeps them once per pass with 1024 threads. On
// a 1 x 8K row its phases are latency, not work (H100 probe, one CTA: pass 1
// 4.5 us, pass 2 3.1 us, counts 1.0, compaction 1.4, transform 1.4 of 12 us;
// docs/performance.md), so this kernel removes work between the barriers:
//   - Warp w owns the consecutive slice [w * S * 32, (w + 1) * S * 32) of
//     the row (S = ceil(len / 512) steps of 32 keys, at most kSteps); lane l
//     holds the key of index w * S * 32 + 32 j + l at step j, loaded once
//     (coalesced, all kSteps loads in flight) and kept in registers.
//   - The histograms of the three passes (12, 10 and 10 bits, the digits of
//     the general kernel) are cleared together at the start, so a pass is
//     its count, one barrier, the pick of nsa/cuda/topk_common.cuh and one
//     barrier.
//   - The compaction counts each warp's keys above the threshold and its
//     ties from the registers, and after one barrier every warp sums the
//     counts of the warps before it itself (no published scan). Ballots give
//     each lane its slots in index order (smallest indices win ties; the
//     output is ascending, as the general kernel's).
//   - All of a lane's loads (scores, then the transform's table entries)
//     are issued before the first is used, so they are in flight together.
// The set, the order and every byte written are those of the general
// kernel (tests/cpp/topk_test.cpp compares the two byte for byte).
#pragma once

#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "nsa/cuda/topk_common.cuh"
#include "nsa/detail/topk_math.h"
#include "nsa/topk.h"

namespace nsa {
namespace kernels {

constexpr int kTopkShortThreads = 512;
constexpr int kTopkShortWarps = kTopkShortThreads / 32;
// The widest row the short-row kernel takes (32 steps of 32 keys per warp).
constexpr int64_t kTopkShortMaxWidth = 16 * 1024;

template <class ScoreT, int kSteps>
__global__ void __launch_bounds__(kTopkShortThreads) topk_short_rows_kernel(const TopkArgs a) {
  using Scan = cub::BlockScan<uint32_t, kTopkShortThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  constexpr int kHistWords = kTopkBins + 2 * kTopkDigitBins;  // passes 1, 2 and 3
  __shared__ typename Scan::TempStorage scan;
  __shared__ TopkBlockState st;
  __shared__ __align__(16) uint32_t hist[kHistWords];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // Cleared first: the stores overlap the loads of the window and the
  // scores, and the first barrier below publishes them.
  for (int v = tid; v < kHistWords / 4; v += kTopkShortThreads)
    reinterpret_cast<uint4*>(hist)[v] = make_uint4(0u, 0u, 0u, 0u);

  const int64_t r = blockIdx.x;
  const detail::TopkWindow w = detail::topk_window(a, r);
  const int64_t q = detail::topk_request(a, r);
  const int64_t k = a.k;
  int32_t* const out = a.out + r * a.out_ld;
  int32_t* const raw = a.out_raw != nullptr ? a.out_raw + r * a.out_raw_ld : nullptr;

  if (w.len <= k) {  // the identity, then -1 (uniform over the CTA: no barrier is skipped by some)
    constexpr int kSlots = (kTopkMaxK + kTopkShortThreads - 1) / kTopkShortThreads;
    auto slot_of = [&](int j) { return tid + kTopkShortThreads * j; };
    int32_t where[kSlots];
#pragma unroll
    for (int j = 0; j < kSlots; ++j) where[j] = slot_of(j) < w.len ? slot_of(j) : -1;
    topk_write_selected(a, r, q, where, slot_of, out, raw);
#pragma unroll
    for (int j = 0; j < kSlots; ++j) {
      if (slot_of(j) >= w.len && slot_of(j) < k) {
        out[slot_of(j)] = -1;
        if (raw != nullptr) raw[slot_of(j)] = -1;
      }
    }
    return;
  }

  // len <= width <= kTopkShortMaxWidth: 32-bit indices from here on.
  const int len = static_cast<int>(w.len);
  const int steps = (len + 32 * kTopkShortWarps - 1) / (32 * kTopkShortWarps);  // <= kSteps
  // This lane's index at step 0 (step j: base + 32 j).
  const int base = warp * steps * 32 + lane;
  const ScoreT* const row = static_cast<const ScoreT*>(a.scores) + r * a.score_ld + w.start;
  auto valid = [&](int j) { return j < steps && base + 32 * j < len; };
  // Every load is issued before any key is made from one: a conversion next
  // to its load waits for it, and the kSteps loads then run one after the
  // other (measured: 1 x 8K took 19.8 us that way, against 14.3 for the
  // general kernel).
  ScoreT scores[kSteps];
#pragma unroll
  for (int j = 0; j < kSteps; ++j) scores[j] = valid(j) ? __ldg(row + base + 32 * j) : ScoreT{};
  uint32_t keys[kSteps];
#pragma unroll
  for (int j = 0; j < kSteps; ++j) keys[j] = detail::topk_key(detail::topk_bits(scores[j]));

  // Pass 1 on the top 12 bits; passes 2 and 3 on the next 10 and 10 bits of
  // the keys under the prefix found so far, while the bin must be split.
  __syncthreads();  // the histograms are clear
#pragma unroll
  for (int j = 0; j < kSteps; ++j)
    if (j < steps) topk_hist_add(hist, valid(j) ? static_cast<int>(keys[j] >> kTopkTopShift) : -1);
  __syncthreads();
  topk_pick_bin<Scan, kTopkBins, kTopkShortThreads>(hist, static_cast<uint32_t>(k), st, scan);
  __syncthreads();
  uint32_t prefix = static_cast<uint32_t>(st.bin), need = st.need;
  int shift = kTopkTopShift;
  bool done = st.in_bin == need;
  for (int level = 0; level < 2 && !done; ++level) {  // uniform over the CTA
    const int digit_shift = level == 0 ? 10 : 0;
    uint32_t* const digit_hist = hist + kTopkBins + level * kTopkDigitBins;
#pragma unroll
    for (int j = 0; j < kSteps; ++j) {
      if (j < steps) {
        const bool match = valid(j) && (keys[j] >> shift) == prefix;
        topk_hist_add(digit_hist, match ? static_cast<int>((keys[j] >> digit_shift) & 0x3ffu) : -1);
      }
    }
    __syncthreads();
    topk_pick_bin<Scan, kTopkDigitBins, kTopkShortThreads>(digit_hist, need, st, scan);
    __syncthreads();
    prefix = (prefix << (shift - digit_shift)) | static_cast<uint32_t>(st.bin);
    shift = digit_shift;
    need = st.need;
    done = st.in_bin == need;
  }

  // Compaction in index order: every key with (key >> shift) > prefix (k -
  // need of them) and the first `need` ties.
  uint32_t above = 0, ties = 0;
#pragma unroll
  for (int j = 0; j < kSteps; ++j) {
    const uint32_t p = keys[j] >> shift;
    above += valid(j) && p > prefix;
    ties += valid(j) && p == prefix;
  }
  above = __reduce_add_sync(0xffffffffu, above);
  ties = __reduce_add_sync(0xffffffffu, ties);
  if (lane == 0) {
    st.warp_above[warp] = above;
    st.warp_ties[warp] = ties;
  }
  __syncthreads();
  // The warps before this one (lower indices): their counts give this warp's
  // first slot and the ties before its slice.
  const bool before = lane < warp;
  const uint32_t a_before = __reduce_add_sync(0xffffffffu, before ? st.warp_above[lane] : 0u);
  uint32_t tie_rank = __reduce_add_sync(0xffffffffu, before ? st.warp_ties[lane] : 0u);
  uint32_t slot = a_before + (tie_rank < need ? tie_rank : need);
  // Only the warp whose slice holds the cut among the ties ranks them; every
  // other warp takes all of its ties or none (warp-uniform).
  const bool cut_here = tie_rank < need && tie_rank + ties > need;
  const bool take_ties = tie_rank < need;
  const uint32_t lanes_below = (1u << lane) - 1u;
  int32_t where[kSteps];  // this lane's output slot at step j, or -1
#pragma unroll
  for (int j = 0; j < kSteps; ++j) {
    where[j] = -1;
    if (j < steps) {  // warp-uniform: the ballots see every lane
      const uint32_t p = keys[j] >> shift;
      const bool is_tie = valid(j) && p == prefix;
      bool take = valid(j) && p > prefix;
      if (cut_here) {
        const uint32_t tie_mask = __ballot_sync(0xffffffffu, is_tie);
        take = take || (is_tie && tie_rank + __popc(tie_mask & lanes_below) < need);
        tie_rank += __popc(tie_mask);
      } else {
        take = take || (is_tie && take_ties);
      }
      const uint32_t take_mask = __ballot_sync(0xffffffffu, take);
      if (take) where[j] = static_cast<int32_t>(slot + __popc(take_mask & lanes_below));
      slot += __popc(take_mask);
    }
  }
  topk_write_selected(
      a, r, q, where, [&](int j) { return base + 32 * j; }, out, raw);
}

// The steps of 32 keys per warp the short-row kernel needs for rows of
// `width` scores: the smallest of 8, 16 and 32 that holds them (fewer
// registers for narrower rows); 0 past kTopkShortMaxWidth.
inline int topk_short_rows_steps(int64_t width) {
  for (int steps : {8, 16, 32})
    if (width <= static_cast<int64_t>(steps) * kTopkShortThreads) return steps;
  return 0;
}

// One CTA of the short-row kernel per row; cudaErrorInvalidValue for rows
// wider than kTopkShortMaxWidth.
template <class ScoreT>
inline cudaError_t topk_short_rows_launch(const TopkArgs& a, cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(a.rows);
  switch (topk_short_rows_steps(a.width)) {
    case 8: topk_short_rows_kernel<ScoreT, 8><<<grid, kTopkShortThreads, 0, stream>>>(a); break;
    case 16: topk_short_rows_kernel<ScoreT, 16><<<grid, kTopkShortThreads, 0, stream>>>(a); break;
    case 32: topk_short_rows_kernel<ScoreT, 32><<<grid, kTopkShortThreads, 0, stream>>>(a); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace nsa
