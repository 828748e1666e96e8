// Device pieces shared by the two topk_transform kernels: the general one
// (nsa/cuda/topk.cuh: one CTA or one cluster per row, any width) and the
// short-row one (nsa/cuda/topk_short_rows.cuh: rows of at most 16K scores):
// the digits of the radix select, the block state, the warp-aggregated
// histogram update, the pick of the bin that holds the K-th key, and the
// output writes with the transform.
#pragma once

#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

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
// Dynamic shared memory: the histogram, then the key cache (+3 words of
// alignment slack: the cache is shifted so vector stores are 16-byte aligned).
constexpr size_t kTopkSharedBytes = (kTopkBins + kTopkCacheKeys + 4) * sizeof(uint32_t);
// The largest thread-block cluster a row is split over (16 is non-portable).
constexpr int kTopkMaxCluster = 16;

struct TopkBlockState {
  int32_t bin;          // the bin holding the K-th key at this level
  uint32_t in_bin;      // keys in that bin
  uint32_t need;        // keys still to take from that bin
  uint32_t candidates;  // (key, index) pairs collected so far
  uint32_t warp_above[kTopkWarps];
  uint32_t warp_ties[kTopkWarps];
  uint32_t warp_slot[kTopkWarps];  // first output slot of each warp's chunk
  uint32_t warp_tie0[kTopkWarps];  // ties before each warp's chunk
  uint32_t cta_above, cta_ties;    // the CTA's counts, read by the later CTAs of its cluster
  uint32_t first_slot, slots;      // the CTA's output slots [first_slot, first_slot + slots)
  // Cluster merge (topk_cluster_pick_bin), per pass parity: the total of the
  // bins this CTA merged; then the range holding the wanted key.
  uint32_t range_total[2];
  int32_t range;
  uint32_t range_above;  // keys in the ranges above it
};

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

// The order-preserving key of the score at p (nsa/detail/topk_math.h).
template <class ScoreT>
__device__ __forceinline__ uint32_t topk_load_key(const ScoreT* p) {
  return detail::topk_key(detail::topk_bits(__ldg(p)));
}

// Picks the bin (descending) that holds the need-th largest counted key and
// publishes it in st (bin, in_bin, need - keys in higher bins). Bins are
// walked from the top: thread t of the kThreads owns the kPerThread bins
// below kBins - t * kPerThread, and exactly one thread publishes.
template <class Scan, int kBins, int kThreads = kTopkThreads>
__device__ __forceinline__ void topk_pick_bin(const uint32_t* hist, uint32_t need, TopkBlockState& st,
                                              typename Scan::TempStorage& scan) {
  static_assert(kBins % kThreads == 0, "topk_pick_bin gives each thread whole bins");
  constexpr int kPerThread = kBins / kThreads;
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

// The outputs of a lane's selected indices (where[j] >= 0: raw index
// index_of(j) goes to slot where[j]) under a table transform with T entries:
// every table read is issued before the first is used (a read used right
// away, as topk_apply_transform does, waits before the next is issued).
template <class T, int kN, class IndexOf>
__device__ __forceinline__ void topk_write_from_table(const TopkArgs& a, int64_t q, const int32_t (&where)[kN],
                                                      IndexOf index_of, int32_t* out, int32_t* raw) {
  const T* const table = static_cast<const T*>(a.table.data);
  T entry[kN];
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    const int64_t at = where[j] >= 0 ? detail::topk_table_position(a, q, index_of(j)) : -1;
    entry[j] = at >= 0 ? table[at] : T{};
  }
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    if (where[j] >= 0) {
      const bool in_table = detail::topk_table_position(a, q, index_of(j)) >= 0;
      const int64_t operand = in_table ? static_cast<int64_t>(entry[j]) : detail::kTopkNoOperand;
      out[where[j]] = detail::topk_transform_result(a, index_of(j), operand);
      if (raw != nullptr) raw[where[j]] = index_of(j);
    }
  }
}

// The outputs of a thread's selected indices under any transform: slot
// where[j] (skipped where -1) gets the transform of raw index index_of(j),
// and the raw output that index.
template <int kN, class IndexOf>
__device__ __forceinline__ void topk_write_selected(const TopkArgs& a, int64_t r, int64_t q, const int32_t (&where)[kN],
                                                    IndexOf index_of, int32_t* out, int32_t* raw) {
  const bool table = a.transform == TopkTransform::kPaged64 || a.transform == TopkTransform::kTokenTable;
  if (table && a.table.type == IndexType::kInt32) {
    topk_write_from_table<int32_t>(a, q, where, index_of, out, raw);
  } else if (table) {
    topk_write_from_table<int64_t>(a, q, where, index_of, out, raw);
  } else {
    const int64_t operand = detail::topk_transform_operand(a, r, q, 0);  // the row's offset, or nothing
#pragma unroll
    for (int j = 0; j < kN; ++j) {
      if (where[j] >= 0) {
        out[where[j]] = detail::topk_transform_result(a, index_of(j), operand);
        if (raw != nullptr) raw[where[j]] = index_of(j);
      }
    }
  }
}

}  // namespace kernels
}  // namespace nsa
