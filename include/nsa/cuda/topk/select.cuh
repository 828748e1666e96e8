// Top-k kernel, part 3 of 5 (the overview is in nsa/cuda/topk.cuh): picking the
// bin of the K-th key from a histogram (of one CTA or merged over a cluster),
// and passes 2 and 3.
#pragma once

#include "nsa/cuda/topk/keys.cuh"

namespace nsa {
namespace kernels {

// The block-wide exclusive prefix sum of one uint32 per thread of a
// kTopkThreads CTA, with the interface of the cub::BlockScan calls it
// replaces (the same storage rule: a barrier between one scan's reads of the
// storage and the next scan). cub's warp-scans algorithm gives each thread
// its warp's prefix by walking all 32 warp totals in an unrolled loop: about
// 150 of the 236 SASS instructions of a 4096-bin pick, run by every warp
// (sm_90a, cuobjdump), and a short row's time is mostly the issue of such
// per-warp instructions. Here a warp reads the 32 totals with one load per
// lane and takes its prefix and the total with two warp reductions.
struct TopkBlockScan {
  static_assert(kTopkWarps == 32, "one warp total per lane");
  struct TempStorage {
    uint32_t warp_total[kTopkWarps];
  };
  TempStorage& storage;

  __device__ __forceinline__ explicit TopkBlockScan(TempStorage& s) : storage(s) {}

  __device__ __forceinline__ void ExclusiveSum(uint32_t v, uint32_t& before, uint32_t& total) {
    const int lane = static_cast<int>(threadIdx.x & 31), warp = static_cast<int>(threadIdx.x >> 5);
    uint32_t incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t up = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += up;
    }
    if (lane == 31) storage.warp_total[warp] = incl;
    __syncthreads();
    const uint32_t w = storage.warp_total[lane];
    before = __reduce_add_sync(0xffffffffu, lane < warp ? w : 0u) + incl - v;
    total = __reduce_add_sync(0xffffffffu, w);
  }
  __device__ __forceinline__ void ExclusiveSum(uint32_t v, uint32_t& before) {
    uint32_t total;
    ExclusiveSum(v, before, total);
  }
};

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
      st.slice_in_bin = c[j];
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
// topk_pick_bin, identically in every CTA of the cluster, with this CTA's
// own count of the bin (from its histogram `hist`, which no CTA writes
// during the pick) in st.slice_in_bin.
template <class Scan, int kBins>
__device__ __forceinline__ void topk_cluster_pick_bin(const uint32_t* hist, uint32_t* merged, int parity,
                                                      TopkSlice slice, uint32_t need, TopkBlockState& st,
                                                      typename Scan::TempStorage& scan) {
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
    st.slice_in_bin = hist[base + hi];
    st.need = need_in - above;
  }
  above += c.y;
  if (above < need_in && need_in <= above + c.x) {
    st.bin = base + hi - 1;
    st.in_bin = c.x;
    st.slice_in_bin = hist[base + hi - 1];
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
    topk_cluster_pick_bin<Scan, kBins>(hist, merged, parity, slice, need, st, scan);
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
    // (Kept a loop: one store per thread, kTopkDigitBins == kTopkThreads,
    // made ptxas spill 56 bytes per thread in the cluster kernels, not 28.)
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

}  // namespace kernels
}  // namespace nsa
