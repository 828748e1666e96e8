// Top-k kernel, part 2 of 5 (the overview is in nsa/cuda/topk.cuh): keys from
// scores, histogram adds, and the sweeps over a row in global or shared memory.
#pragma once

#include <cuda_pipeline_primitives.h>

#include "nsa/cuda/topk/state.cuh"

namespace nsa {
namespace kernels {

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
//   3: no aggregation: one shared add per counted key, here and in pass 1
//     (what the aggregation costs uniform rows, and saves plateaus).
__device__ __forceinline__ void topk_hist_add(uint32_t* hist, int bin) {
#if NSA_TOPK_HIST_ADD == 3
  if (bin >= 0) atomicAdd(hist + bin, 1u);
#elif NSA_TOPK_HIST_ADD == 1
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

// Pass 1's adds: the bins of one run of keys per lane (bins[e] >= 0 counts,
// -1 skips). All 32 lanes call it together. The keys in lane 0's first bin
// are counted by one add of their warp sum, every other key by its own, so a
// plateau of exact zeros makes about one histogram add per warp step and
// spread-out keys one each. No shuffle, vote or branch per key: every key
// makes one unconditional shared reduction, of 1 to its bin or of 0 to this
// lane's word of `sink` (32 words no one reads, one bank per lane, so the
// plateau's adds of 0 never collide; they still cost an issue each: 99%-zero
// 32K rows took 1.11x the uniform ones in the GPU check of beb360b). (topk_hist_add
// per key, with its shuffle, vote and branches, was about 25 instructions
// per key in pass 1's SASS, and issuing them was most of pass 1's time; an
// add under an `if`, or of a constant 1, still became a branch per key.)
// Under the probe's alternative aggregations (NSA_TOPK_HIST_ADD 1 or 2) each
// key goes through topk_hist_add, as before; under 3 each counted key makes
// its own add.
__device__ __forceinline__ void topk_shared_add(uint32_t* p, uint32_t v) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  asm volatile("red.shared.add.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}

template <int kN>
__device__ __forceinline__ void topk_hist_add_run(uint32_t* hist, uint32_t* sink, const int (&bins)[kN]) {
#if NSA_TOPK_HIST_ADD == 0
  const int lane = static_cast<int>(threadIdx.x & 31);
  const int first = __shfl_sync(0xffffffffu, bins[0], 0);
  uint32_t same = 0;
#pragma unroll
  for (int e = 0; e < kN; ++e) {
    same += bins[e] == first;
    const bool own = bins[e] >= 0 && bins[e] != first;
    topk_shared_add(own ? hist + bins[e] : sink + lane, static_cast<uint32_t>(own));
  }
  same = __reduce_add_sync(0xffffffffu, same);
  if (lane == 0 && first >= 0 && same != 0u) atomicAdd(hist + first, same);
#elif NSA_TOPK_HIST_ADD == 3
  const int lane = static_cast<int>(threadIdx.x & 31);
#pragma unroll
  for (int e = 0; e < kN; ++e) {
    const bool own = bins[e] >= 0;
    topk_shared_add(own ? hist + bins[e] : sink + lane, static_cast<uint32_t>(own));
  }
#else
  (void)sink;
#pragma unroll
  for (int e = 0; e < kN; ++e) topk_hist_add(hist, bins[e]);
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

// Starts a bulk prefetch of [p, p + bytes) into L2 (p and bytes multiples
// of 16; sm_90 and later, elsewhere nothing). A prefetch changes no value and
// needs no wait; one thread issues it.
__device__ __forceinline__ void topk_prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#else
  (void)p;
  (void)bytes;
#endif
}

// A row [0, len) as the sweeps below read it: the unaligned head [0, head),
// the 16-byte vectors vec[0, nvec) of the aligned body [head, tail), and the
// tail [tail, len) (the head and the tail are fewer than 2 * kElems <= 16
// elements).
template <class ScoreT>
struct TopkRowVectors {
  int64_t head, nvec, tail;
  const uint4* vec;

  __device__ __forceinline__ TopkRowVectors(const ScoreT* row, int64_t len) {
    constexpr int kE = TopkVec<ScoreT>::kElems;
    const int64_t misalign = static_cast<int64_t>((reinterpret_cast<uintptr_t>(row) & 15) / sizeof(ScoreT));
    head = misalign == 0 ? 0 : (kE - misalign < len ? kE - misalign : len);
    nvec = (len - head) / kE;
    tail = head + nvec * kE;
    vec = reinterpret_cast<const uint4*>(row + head);
  }
};

// Vectors per thread of one iteration of the sweeps below (64 KB per CTA).
constexpr int kTopkUnroll = 4;

// One iteration's runs: regs[u] holds vector v0 + u * kTopkThreads + tid of
// the row (where it exists); g gets its keys, and with kStore the cache too.
template <class ScoreT, bool kStore, class G>
__device__ __forceinline__ void topk_visit_iteration(const uint4 (&regs)[kTopkUnroll], int64_t v0,
                                                     const TopkRowVectors<ScoreT>& rv, uint32_t* cache, G&& g) {
  using V = TopkVec<ScoreT>;
  constexpr int kE = V::kElems;
  const int tid = threadIdx.x;
#pragma unroll
  for (int u = 0; u < kTopkUnroll; ++u) {
    // No thread of the CTA has a vector from here on (the last iteration of
    // a row that is not a multiple of 64 KB: an 8K row has 2 of the 4):
    // skip the runs' keys and adds instead of making them all with n = 0.
    // CTA-uniform, so g's warp collectives still see all 32 lanes.
    if (v0 + u * kTopkThreads >= rv.nvec) break;
    const int64_t v = v0 + u * kTopkThreads + tid;
    const bool valid = v < rv.nvec;
    const int64_t i0 = rv.head + v * kE;
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

// The head and the tail of a row, one element per lane of warp 0.
template <class ScoreT, bool kStore, class G>
__device__ __forceinline__ void topk_visit_head_tail(const ScoreT* row, int64_t len, const TopkRowVectors<ScoreT>& rv,
                                                     uint32_t* cache, G&& g) {
  if (threadIdx.x >= 32 || (rv.head == 0 && rv.tail >= len)) return;  // warp-uniform
  const int lane = static_cast<int>(threadIdx.x);
  const int64_t i = lane < rv.head ? lane : rv.tail + (lane - rv.head);
  const bool valid = lane < rv.head || (i >= rv.tail && i < len);
  const uint32_t key[1] = {valid ? topk_load_key(row + i) : 0u};
  if constexpr (kStore) {
    if (valid) cache[i] = key[0];
  }
  g(i, key, valid ? 1 : 0);
}

// Calls g(i0, keys, n) for runs of consecutive indices of the row [0, len)
// that together cover it once, in no particular order, with warp-uniform
// control flow: keys is a uint32_t array (of kElems keys, or of 1), of which
// the first n (maybe 0) are the keys of i0, i0 + 1, ... 16-byte loads for the
// aligned body, four in flight per thread; the unaligned head and the tail
// (< 2 vectors) go to warp 0, one element per lane. kStore: also writes each
// key to cache[i] (vector stores; `cache` must make &cache[head] 16-byte
// aligned, see topk_cache_base). (Thread 0 prefetching the next two
// iterations into L2 made 128K rows slower: 64 x 128K 1.03x, 256 x 128K
// 1.07x in docs/gpu-report.md of b1b49ed; taken out again.)
template <class ScoreT, bool kStore, class G>
__device__ __forceinline__ void topk_visit_global_runs(const ScoreT* row, int64_t len, uint32_t* cache, G&& g) {
  const int tid = threadIdx.x;
  const TopkRowVectors<ScoreT> rv(row, len);
  for (int64_t v0 = 0; v0 < rv.nvec; v0 += static_cast<int64_t>(kTopkThreads) * kTopkUnroll) {
    uint4 regs[kTopkUnroll];
#pragma unroll
    for (int u = 0; u < kTopkUnroll; ++u) {
      const int64_t v = v0 + u * kTopkThreads + tid;
      if (v < rv.nvec) regs[u] = __ldg(rv.vec + v);
    }
    topk_visit_iteration<ScoreT, kStore>(regs, v0, rv, cache, g);
  }
  topk_visit_head_tail<ScoreT, kStore>(row, len, rv, cache, g);
}

// NSA_TOPK_STREAM (an experiment build; kTopkStream, false in the library):
// topk_visit_global_runs for pass 1 of a slice past the key cache, whose
// memory is free until pass 1 ends. Each thread copies its own 16-byte
// vectors into it with cp.async, two iterations of 64 KB per CTA ahead (two
// stages: 2 x 4 vectors x 1024 threads = 128 KB), and reads them back from
// shared memory. A thread reads only what it copied, so it waits on its own
// copies (cp.async.wait_group) and needs no CTA barrier; it refills a stage
// after its keys were used. The aim: the next iteration's DRAM round trip
// runs while this one's keys are counted, where the plain loads wait for
// every iteration's round trip (ncu of 64 x 128K: long scoreboard the
// largest stall, DRAM at 25% of its peak).
template <class ScoreT, class G>
__device__ __forceinline__ void topk_stream_global_runs(const ScoreT* row, int64_t len, uint32_t* stage_words, G&& g) {
  constexpr int64_t kPerIteration = int64_t{kTopkThreads} * kTopkUnroll;
  static_assert(2 * kPerIteration * 16 <= int64_t{kTopkCacheKeys} * 4, "two stages fit the key cache's memory");
  const int tid = threadIdx.x;
  const TopkRowVectors<ScoreT> rv(row, len);
  uint4* const stage = reinterpret_cast<uint4*>(stage_words);
  const int64_t iterations = (rv.nvec + kPerIteration - 1) / kPerIteration;
  auto copy = [&](int64_t it) {  // iteration it into stage it & 1; one commit group per call, maybe empty
    if (it < iterations) {
#pragma unroll
      for (int u = 0; u < kTopkUnroll; ++u) {
        const int64_t v = it * kPerIteration + u * kTopkThreads + tid;
        if (v < rv.nvec)
          __pipeline_memcpy_async(stage + ((it & 1) * kTopkUnroll + u) * kTopkThreads + tid, rv.vec + v, 16);
      }
    }
    __pipeline_commit();
  };
  copy(0);
  copy(1);
  for (int64_t it = 0; it < iterations; ++it) {
    __pipeline_wait_prior(1);  // this thread's copies of iteration it
    const int64_t v0 = it * kPerIteration;
    uint4 regs[kTopkUnroll];
#pragma unroll
    for (int u = 0; u < kTopkUnroll; ++u) {
      const int64_t v = v0 + u * kTopkThreads + tid;
      if (v < rv.nvec) regs[u] = stage[((it & 1) * kTopkUnroll + u) * kTopkThreads + tid];
    }
    topk_visit_iteration<ScoreT, false>(regs, v0, rv, nullptr, g);
    copy(it + 2);  // into the stage just read: its keys are used above
  }
  topk_visit_head_tail<ScoreT, false>(row, len, rv, nullptr, g);
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

}  // namespace kernels
}  // namespace nsa
