// CUDA kernels and launchers of the NSA attention metadata ops (spec:
// metadata.md). Header-only so an engine can fuse them into its own code; the
// public API in nsa/metadata.h validates arguments and then calls the
// launchers below.
//
// Both ops are ONE launch for any number of destination sets. The destination
// descriptors (MetadataBuffers) live in a small device array written once at
// setup (upload_metadata_targets); kernels read them through the read-only
// path (every lane of a warp reads the same descriptor: one broadcast L1 hit).
//
// Work split. Page-table rows dominate the bytes; they are cut into warp
// items of kColsPerItem columns (32 lanes x kVecPerLane int4). A warp loads
// its item's source columns ONCE (all vectors first, so several 16-byte loads
// are in flight per lane) and stores them into every query row that repeats
// the request (TARGET_VERIFY / DRAFT_EXTEND) of every destination. Global
// warp ids interleave CTAs (warp w of CTA c is w * CTAs + c), so
// consecutive items land on different SMs even for a single request.
//
// Launchers take raw pointers, sizes and a stream, enqueue exactly one kernel
// and return the launch status (cudaGetLastError). They never allocate and
// never synchronise. Index math is 64-bit, except the build kernel's column
// math (32-bit: rows are int32 cache lengths); every grid is 1-D.
#pragma once

#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>
#include <cub/warp/warp_scan.cuh>

#include <cstddef>
#include <cstdint>

#include "nsa/cuda/checked.cuh"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

constexpr int kMetaThreads = 256;
constexpr int kMetaWarps = kMetaThreads / 32;
constexpr int kVecPerLane = 4;                                // copy kernel: 4 x 16 B loads in flight per lane
constexpr int64_t kColsPerItem = 32 * 4 * kVecPerLane;        // copy kernel: 512 int32 columns per warp item
constexpr int kCopyCtasPerSm = 4;   // copy kernel: <= 64 registers/thread, 4 CTAs resident per SM

// ---------------------------------------------------------------------------
// Row-chunk helpers shared by both kernels. A lane owns kVecPerLane groups of
// 4 consecutive columns, c = c0 + 4 * (lane + 32 * k); `len` bounds the
// columns that exist. 16-byte accesses need a 16-byte aligned row start: rows
// whose address is not aligned (row stride % 4 != 0, or a +1 offset) fall
// back to 4-byte accesses, which are still coalesced across the warp.
// ---------------------------------------------------------------------------
__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// I is int64_t (copy kernel) or uint32_t (build kernel: its rows are int32
// cache lengths, and 32-bit compares halve the instructions on the path to
// the first load). Comparisons are written as len - c so nothing overflows.
template <class I>
__device__ __forceinline__ int4 load_group(const int32_t* __restrict__ row, I c, I len, bool vec) {
  int4 v = make_int4(0, 0, 0, 0);
  if (c >= len) return v;
  if (vec && len - c >= 4) return __ldg(reinterpret_cast<const int4*>(row + c));
  v.x = __ldg(row + c);
  if (len - c > 1) v.y = __ldg(row + c + 1);
  if (len - c > 2) v.z = __ldg(row + c + 2);
  if (len - c > 3) v.w = __ldg(row + c + 3);
  return v;
}

template <class I>
__device__ __forceinline__ void store_group(int32_t* row, I c, I len, bool vec, const int4& v) {
  if (c >= len) return;
  if (vec && len - c >= 4) {
    *reinterpret_cast<int4*>(row + c) = v;
    return;
  }
  row[c] = v.x;
  if (len - c > 1) row[c + 1] = v.y;
  if (len - c > 2) row[c + 2] = v.z;
  if (len - c > 3) row[c + 3] = v.w;
}

// n / d for any n < 2^31 with one multiply-high and a shift, for a divisor
// fixed per launch: the host picks the multiplier (round-up method of
// Granlund and Montgomery, "Division by invariant integers using
// multiplication", 1994), so the kernel's item math does not run the ~20
// dependent instructions of a hardware-less 32-bit division. 1 <= d < 2^31.
struct FastDivisor {
  uint32_t divisor = 1;
  uint32_t multiplier = 0;
  uint32_t shift = 0;

  static FastDivisor make(uint32_t d) {
    FastDivisor f;
    f.divisor = d;
    while ((uint64_t{1} << f.shift) < d) ++f.shift;  // shift = ceil(log2 d)
    f.multiplier = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << f.shift) - d)) / d + 1);
    return f;
  }
  // (mulhi(n, m) + n) >> s; n < 2^31 keeps the sum below 2^32.
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(n, multiplier);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> 32);
#endif
    return (hi + n) >> shift;
  }
};

__device__ __forceinline__ int32_t group_elem(const int4& v, int e) {
  return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
}

// Destination descriptors are staged into shared memory at kernel start: all
// of them arrive in one memory round trip (a loop reading them from global
// memory would pay one dependent round trip per destination). Tables larger
// than kMaxSharedTargets stay in global memory.
constexpr int kMaxSharedTargets = 32;
static_assert(sizeof(MetadataBuffers) % sizeof(long long) == 0, "descriptors are copied as 8-byte words");

template <int kThreads>
__device__ __forceinline__ const MetadataBuffers* stage_targets(const MetadataBuffers* global, int64_t count,
                                                                 MetadataBuffers* shared) {
  if (count > kMaxSharedTargets) return global;
  constexpr int kWords = sizeof(MetadataBuffers) / sizeof(long long);
  const long long* src = reinterpret_cast<const long long*>(global);
  long long* dst = reinterpret_cast<long long*>(shared);
  for (int64_t w = threadIdx.x; w < count * kWords; w += kThreads) dst[w] = __ldg(src + w);
  return shared;  // visible after the caller's next __syncthreads()
}

// Index arrays come as int32 or int64; the flag is uniform across the grid.
__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<int64_t>(__ldg(static_cast<const long long*>(p) + i))
              : static_cast<int64_t>(__ldg(static_cast<const int32_t*>(p) + i));
}

// sum_{j<q} min(kv - q + 1 + j, topk) in closed form (the nsa_cache_seqlens of
// one request's rows): rows j < k are below the clamp, the rest equal topk.
__host__ __device__ __forceinline__ int64_t clamped_rows_sum(int64_t kv, int64_t q, int64_t topk) {
  const int64_t first = kv - q + 1;
  int64_t k = topk - first;
  k = k < 0 ? 0 : (k > q ? q : k);
  return k * first + k * (k - 1) / 2 + (q - k) * topk;
}

// ---------------------------------------------------------------------------
// build_metadata: ONE launch. The batch is read in chunks of kMetaThreads
// requests. CTA 0 scans each chunk (cub scans in shared memory) and writes
// the per-request and per-row scalars. In DRAFT_EXTEND the other CTAs
// scan too (a request's first row is a prefix sum of the extend lengths); in
// DECODE / TARGET_VERIFY request b owns rows [b * q, (b + 1) * q) and they
// skip the scan. Page-table items are numbered statically: item i is columns
// [c * kColsPerItem, (c + 1) * kColsPerItem) of request b, i = b * ipr + c,
// with ipr = items per request from the host bound max_kv. A warp therefore
// knows its first item's request without the scan, and the chain for a small
// batch is two memory round trips, like a gather:
//   1. {inputs of the chunk, the first item's request, descriptors, FlashMLA}
//   2. the first item's req_to_token columns
//   -> stores.
// Items past a request's length are skipped (the warp jumps to its first item
// of the next request), and each warp loads its next item before it stores
// the current one, so two items' loads are in flight per warp.
// When every warp has one item at most (most small and medium jobs), the
// launcher picks the one-pass kernel instead: no chunk walk, no shared
// memory, no barrier in the item CTAs (build_items_one_pass), and for a batch
// of <= 32 requests with static rows one warp writes the scalars
// (build_scalars_warp).
// ---------------------------------------------------------------------------
struct BuildParams {
  const void* seq_lens;          // [batch]
  const void* req_pool_indices;  // [batch]
  const void* extend_lens;       // [batch] DRAFT_EXTEND only
  bool seq_lens_64, req_pool_indices_64, extend_lens_64;
  int32_t mode;                  // ForwardMode
  const int32_t* req_to_token;   // [req_to_token_rows, ld]
  int64_t req_to_token_ld;
  int64_t req_to_token_rows;
  int64_t batch;
  int64_t draft_tokens;
  int64_t topk;
  int64_t page_size;
  int32_t page_shift;            // log2(page_size) when it is a power of two (the usual 64), else -1
  // Every cache length is <= max_kv (a precondition the checked kernel
  // verifies; see build_metadata in metadata.cu). Bounds the items per request.
  int64_t max_kv;
  // Set by launch_build_metadata for its policy (launch the kernel through
  // it): page-table items per request, ceil(max_kv / columns per item), and
  // its divisor (valid while the count is below 2^31; the kernel falls back
  // to 64-bit division past it). The launcher also sizes the grid to hold
  // CTA 0 (scalars) and at least one item CTA.
  int64_t items_per_request;
  FastDivisor items_per_request_div;
  const int32_t* flashmla_num_splits;  // optional [R + 1]
  const int32_t* flashmla_metadata;    // optional [flashmla_metadata_max]
  int64_t flashmla_metadata_max;       // max flashmla_metadata_size over destinations having the field
  const MetadataBuffers* targets;      // device array [num_targets]
  int64_t num_targets;
  DeviceError* error;                  // checked mode only
};

// x / P rounded toward zero, as the CPU backend and the reference compute it
// (a shift rounds negative slots down; they are garbage, but still bit-exact).
__device__ __forceinline__ int64_t page_of(const BuildParams& p, int64_t x) {
  return p.page_shift >= 0 && x >= 0 ? x >> p.page_shift : x / p.page_size;
}
__device__ __forceinline__ bool starts_page(const BuildParams& p, int64_t x) {
  return p.page_shift >= 0 ? (x & (p.page_size - 1)) == 0 : x % p.page_size == 0;
}

// Per-request quantities scanned across the batch. 32-bit words halve the
// shuffles of the scan: rows fit (R <= INT32_MAX is validated), and the two
// cumulative sums are int32 outputs, so their sums modulo 2^32 are exactly
// what a 64-bit sum narrowed to int32 gives.
struct BuildScan {
  uint32_t rows;  // query rows (q_b)
  uint32_t kv;    // cache_seqlens (for cu_seqlens_k)
  uint32_t nsa;   // sum of nsa_cache_seqlens over the request's rows
};
struct BuildScanSum {
  __device__ __forceinline__ BuildScan operator()(const BuildScan& a, const BuildScan& b) const {
    return BuildScan{a.rows + b.rows, a.kv + b.kv, a.nsa + b.nsa};
  }
};

// Launch shape of build_metadata: int4 groups per lane of a page-table item
// (columns per item = 128 * kVecPerLane) and resident CTAs per SM (the
// register cap of __launch_bounds__). Small jobs want short items (more of
// them, spread over more SMs); large ones want long items and occupancy.
// Under either policy each warp loads its first item in the kernel's second
// round trip and stores it before the scan: a small job saves a round trip,
// and large ones measured about the same on an H100.
template <int kVecPerLaneT, int kCtasPerSmT>
struct BuildPolicy {
  static constexpr int kVecPerLane = kVecPerLaneT;
  static constexpr int64_t kColsPerItem = 32 * 4 * kVecPerLane;
  static constexpr int kCtasPerSm = kCtasPerSmT;
};
// Measured on an H100: 128-column items win while each item CTA has at most
// two of them; 256-column items beyond (see invoke_build_metadata).
using SmallBuildPolicy = BuildPolicy<1, 2>;
using LargeBuildPolicy = BuildPolicy<2, 2>;

// One page-table item in registers: a lane's int4 groups of the source row.
template <class Policy>
struct PageItem {
  int4 v[Policy::kVecPerLane];
};

// Columns [c0, c0 + kColsPerItem) of a req_to_token row of length `len`.
// 0 <= c0 < len < 2^31, so every column index fits 32 bits unsigned.
template <class Policy>
__device__ __forceinline__ void load_page_item(PageItem<Policy>& it, const int32_t* __restrict__ src, uint32_t len,
                                               uint32_t c0, int lane) {
  const bool vec = aligned16(src);
#pragma unroll
  for (int k = 0; k < Policy::kVecPerLane; ++k)
    it.v[k] = load_group(src, c0 + 4u * static_cast<uint32_t>(lane + 32 * k), len, vec);
}

// x / P rounded toward zero for an int32 slot and P = 2^shift, in 32 bits
// (the 64-bit page_of would add a division call to the store loop for the
// negative, garbage slots that must still come out bit-exact).
__device__ __forceinline__ int32_t slot_page_pow2(int32_t x, int shift) {
  if (shift >= 32) return 0;  // |x| <= 2^31 < P (and no shift by the width or more)
  if (x >= 0) return x >> shift;
  return -static_cast<int32_t>((0u - static_cast<uint32_t>(x)) >> shift);
}

// real_page_table entries of one row for a page size that is not a power of
// two >= 4: any of a lane's 4 columns may start a page. Out of line: no
// engine uses such page sizes, and inlined it would triple the store loop's
// code (`inline` only for the one-definition rule: the header is shared).
inline __device__ __noinline__ void store_real_any_page_size(const BuildParams& p, int32_t* real_row, int4 v,
                                                             uint32_t c0, uint32_t len) {
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const int64_t c = static_cast<int64_t>(c0) + e;
    if (c < len && starts_page(p, c)) real_row[page_of(p, c)] = static_cast<int32_t>(page_of(p, group_elem(v, e)));
  }
}

// The page-table fields of one destination, as the item stores read them.
struct TableTarget {
  int32_t* table;
  int64_t ld;
  int32_t* real;  // real_page_table, or nullptr
  int64_t real_ld;
};

// Destination descriptors read from a table (shared or global memory).
struct TableTargets {
  const MetadataBuffers* targets;
  __device__ __forceinline__ TableTarget operator()(int64_t d) const {
    const MetadataBuffers& t = targets[d];
    return TableTarget{t.page_table_1, t.page_table_1_ld, t.real_page_table, t.real_page_table_ld};
  }
};

// Destination descriptors held in a warp's lanes: lane 4d + f holds word f
// of destination d's page-table fields {page_table_1, page_table_1_ld,
// real_page_table, real_page_table_ld}. They arrive with the kernel's first
// loads and need no shared memory and no barrier. Every lane of the warp must
// call operator() (it shuffles).
constexpr int kWarpTargets = 8;
struct WarpTargets {
  long long word = 0;

  __device__ __forceinline__ static WarpTargets load(const MetadataBuffers* targets, int64_t count, int lane) {
    static_assert(offsetof(MetadataBuffers, page_table_1) % sizeof(long long) == 0 &&
                      offsetof(MetadataBuffers, real_page_table) % sizeof(long long) == 0,
                  "descriptor fields are 8-byte words");
    const int d = lane >> 2, f = lane & 3;
    WarpTargets w;
    if (d < count) {
      const size_t offset = f == 0   ? offsetof(MetadataBuffers, page_table_1)
                            : f == 1 ? offsetof(MetadataBuffers, page_table_1_ld)
                            : f == 2 ? offsetof(MetadataBuffers, real_page_table)
                                     : offsetof(MetadataBuffers, real_page_table_ld);
      w.word = __ldg(reinterpret_cast<const long long*>(reinterpret_cast<const char*>(targets + d) + offset));
    }
    return w;
  }
  __device__ __forceinline__ TableTarget operator()(int64_t d) const {
    const int l = static_cast<int>(d) * 4;
    return TableTarget{reinterpret_cast<int32_t*>(__shfl_sync(0xffffffffu, word, l)),
                       __shfl_sync(0xffffffffu, word, l + 1),
                       reinterpret_cast<int32_t*>(__shfl_sync(0xffffffffu, word, l + 2)),
                       __shfl_sync(0xffffffffu, word, l + 3)};
  }
};

// Stores an item into its q rows (starting at row0) of every destination,
// plus the real_page_table entries of the page starts among its columns.
// Everything that does not depend on the destination or the row is computed
// once per item, and rows are walked by pointer increments: with a few warps
// per SM this loop runs issue-bound, so its length per row is what counts.
// `target_of(d)` gives destination d's page-table fields (TableTargets or
// WarpTargets).
template <class Policy, class TargetOf>
__device__ __forceinline__ void store_page_item(const BuildParams& p, const TargetOf& target_of,
                                                const PageItem<Policy>& it, uint32_t len, uint32_t c0, int64_t row0,
                                                int64_t q, int lane) {
  constexpr int kV = Policy::kVecPerLane;
  uint32_t col[kV];  // a lane's groups of 4 columns (0 <= c0 < len < 2^31)
  bool full[kV];     // all 4 columns exist: one 16-byte store when the row is aligned
  // With P a power of two >= 4, a lane's 4 columns (c a multiple of 4) hold at
  // most one page start, c itself: real[r, c / P] = (slot at c) / P.
  const bool one_start = p.page_shift >= 2;
  bool real_start[kV];
  uint32_t real_col[kV];
  int32_t real_val[kV];
#pragma unroll
  for (int k = 0; k < kV; ++k) {
    col[k] = c0 + 4u * static_cast<uint32_t>(lane + 32 * k);
    full[k] = col[k] < len && len - col[k] >= 4;
    real_start[k] = one_start && col[k] < len && (col[k] & static_cast<uint32_t>(p.page_size - 1)) == 0;
    real_col[k] = one_start && p.page_shift < 32 ? col[k] >> p.page_shift : 0;
    real_val[k] = one_start ? slot_page_pow2(it.v[k].x, p.page_shift) : 0;
  }
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const TableTarget t = target_of(d);  // all four fields are read before the first store
    const int64_t ld = t.ld, real_ld = t.real_ld;
    int32_t* row = t.table + row0 * ld;
    int32_t* const real = t.real;
    int64_t real_offset = row0 * real_ld;
    for (int64_t j = 0; j < q; ++j, row += ld, real_offset += real_ld) {
      const bool vec = aligned16(row);
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        if (full[k] && vec) *reinterpret_cast<int4*>(row + col[k]) = it.v[k];
        else store_group(row, col[k], len, false, it.v[k]);
      }
      if (real == nullptr) continue;
      int32_t* real_row = real + real_offset;
#pragma unroll
      for (int k = 0; k < kV; ++k) {
        if (one_start) {
          if (real_start[k]) real_row[real_col[k]] = real_val[k];
        } else if (col[k] < len) {
          store_real_any_page_size(p, real_row, it.v[k], col[k], len);
        }
      }
    }
  }
}

// Query rows of a request with extend length q: in checked mode an invalid
// length (outside [0, N]) counts as 0 rows (it is recorded, and none of its
// rows is written).
template <bool kChecked>
__device__ __forceinline__ int64_t query_rows(const BuildParams& p, int64_t q) {
  return kChecked && (q < 0 || q > p.draft_tokens) ? 0 : q;
}

// DRAFT_EXTEND: the query rows of requests [0, b), b < kMetaThreads, summed
// by one warp (all loads in flight at once, then one warp reduction).
template <bool kChecked>
__device__ __forceinline__ int64_t extend_rows_before(const BuildParams& p, int64_t b, int lane) {
  uint32_t part = 0;  // R <= INT32_MAX (validated): 32 bits hold every partial sum
#pragma unroll
  for (int k = 0; k < kMetaThreads / 32; ++k) {
    const int64_t i = lane + 32 * k;
    if (i < b) part += static_cast<uint32_t>(query_rows<kChecked>(p, load_index(p.extend_lens, p.extend_lens_64, i)));
  }
  return __reduce_add_sync(0xffffffffu, part);
}

// The per-request and per-row fields of one destination.
struct ScalarTarget {
  int32_t* cache_seqlens;
  int32_t* cu_seqlens_k;
  int32_t* seqlens_expanded;  // optional
  int32_t* nsa_cache_seqlens;
  int32_t* nsa_cu_seqlens_k;
};

// Request b's fields and those of its q rows (rows [row0, row0 + q)) in one
// destination; cu_before / nsa_before are the cumulative sums before the
// request (modulo 2^32, see BuildScan). One thread per request: no search of
// the row starts, and the stores leave as soon as the scan is done.
__device__ __forceinline__ void store_request_fields(const BuildParams& p, const ScalarTarget& t, int64_t b,
                                                     int64_t row0, int64_t kv, int64_t q, uint32_t cu_before,
                                                     uint32_t nsa_before) {
  t.cache_seqlens[b] = static_cast<int32_t>(kv);
  t.cu_seqlens_k[b + 1] = static_cast<int32_t>(cu_before + static_cast<uint32_t>(kv));
  uint32_t running = nsa_before;
  for (int64_t j = 0; j < q; ++j) {
    const int64_t expanded = kv - q + 1 + j;
    const int64_t clamped = expanded < p.topk ? expanded : p.topk;
    running += static_cast<uint32_t>(clamped);
    if (t.seqlens_expanded != nullptr) t.seqlens_expanded[row0 + j] = static_cast<int32_t>(expanded);
    t.nsa_cache_seqlens[row0 + j] = static_cast<int32_t>(clamped);
    t.nsa_cu_seqlens_k[row0 + j + 1] = static_cast<int32_t>(running);
  }
}

// The same into every destination of a descriptor table.
__device__ __forceinline__ void store_request_scalars(const BuildParams& p, const MetadataBuffers* targets, int64_t b,
                                                      int64_t row0, int64_t kv, int64_t q, uint32_t cu_before,
                                                      uint32_t nsa_before) {
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const MetadataBuffers& t = targets[d];
    store_request_fields(p, ScalarTarget{t.cache_seqlens, t.cu_seqlens_k, t.seqlens_expanded, t.nsa_cache_seqlens,
                                         t.nsa_cu_seqlens_k},
                         b, row0, kv, q, cu_before, nsa_before);
  }
}

// The scalar fields of up to kWarpTargets destinations held in a warp's
// lanes, as WarpTargets does for the page tables: lane 4d + f holds field f
// of destination d in `a` {cache_seqlens, cu_seqlens_k, seqlens_expanded,
// nsa_cache_seqlens} and, for f = 0, nsa_cu_seqlens_k in `b`. Every lane of
// the warp must call operator() (it shuffles).
struct WarpScalarTargets {
  long long a = 0;
  long long b = 0;

  __device__ __forceinline__ static WarpScalarTargets load(const MetadataBuffers* targets, int64_t count, int lane) {
    const int d = lane >> 2, f = lane & 3;
    WarpScalarTargets w;
    if (d < count) {
      const MetadataBuffers* t = targets + d;
      const size_t offset = f == 0   ? offsetof(MetadataBuffers, cache_seqlens)
                            : f == 1 ? offsetof(MetadataBuffers, cu_seqlens_k)
                            : f == 2 ? offsetof(MetadataBuffers, seqlens_expanded)
                                     : offsetof(MetadataBuffers, nsa_cache_seqlens);
      w.a = __ldg(reinterpret_cast<const long long*>(reinterpret_cast<const char*>(t) + offset));
      if (f == 0) w.b = __ldg(reinterpret_cast<const long long*>(&t->nsa_cu_seqlens_k));
    }
    return w;
  }
  __device__ __forceinline__ ScalarTarget operator()(int64_t d) const {
    const int l = static_cast<int>(d) * 4;
    auto ptr = [](long long v) { return reinterpret_cast<int32_t*>(v); };
    return ScalarTarget{ptr(__shfl_sync(0xffffffffu, a, l)), ptr(__shfl_sync(0xffffffffu, a, l + 1)),
                        ptr(__shfl_sync(0xffffffffu, a, l + 2)), ptr(__shfl_sync(0xffffffffu, a, l + 3)),
                        ptr(__shfl_sync(0xffffffffu, b, l))};
  }
};

// One FlashMLA schedule element to every destination that has the field.
__device__ __forceinline__ void store_flashmla_split(const BuildParams& p, const MetadataBuffers* targets, int64_t i,
                                                     int32_t v) {
  for (int64_t d = 0; d < p.num_targets; ++d) {
    int32_t* dst = targets[d].flashmla_num_splits;
    if (dst != nullptr) dst[i] = v;
  }
}
__device__ __forceinline__ void store_flashmla_tile(const BuildParams& p, const MetadataBuffers* targets, int64_t i,
                                                    int32_t v) {
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const MetadataBuffers& t = targets[d];
    if (t.flashmla_metadata != nullptr && i < t.flashmla_metadata_size) t.flashmla_metadata[i] = v;
  }
}

// The inputs of one request as loaded (before any narrowing or validation).
struct RequestInputs {
  int64_t kv64 = 0;  // cache length: seq_lens (+ N in TARGET_VERIFY)
  int64_t q = 0;     // query rows
  int64_t rpi = 0;   // req_to_token row
};

// Query rows per request when the mode fixes them (DECODE 1, TARGET_VERIFY
// N); 0 in DRAFT_EXTEND, whose rows come from the extend lengths.
__device__ __forceinline__ int64_t static_rows(const BuildParams& p) {
  return p.mode == static_cast<int32_t>(ForwardMode::kDecode)         ? 1
         : p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify) ? p.draft_tokens
                                                                       : 0;
}

__device__ __forceinline__ RequestInputs load_request(const BuildParams& p, int64_t b) {
  const int64_t static_q = static_rows(p);
  const bool verify = p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify);
  RequestInputs r;
  r.kv64 = load_index(p.seq_lens, p.seq_lens_64, b) + (verify ? p.draft_tokens : 0);
  r.q = static_q > 0 ? static_q : load_index(p.extend_lens, p.extend_lens_64, b);
  r.rpi = load_index(p.req_pool_indices, p.req_pool_indices_64, b);
  return r;
}

// Its page-table rows may be read and written (always, unchecked).
template <bool kChecked>
__device__ __forceinline__ bool table_ok(const BuildParams& p, const RequestInputs& r) {
  if constexpr (kChecked) return r.kv64 >= 0 && r.kv64 <= p.max_kv && r.rpi >= 0 && r.rpi < p.req_to_token_rows;
  else return true;
}

// Checked mode: records request b's invalid inputs (q: its query rows after
// query_rows, which differ from r.q when the extend length is invalid).
__device__ __forceinline__ void record_request_errors(const BuildParams& p, int64_t b, const RequestInputs& r,
                                                      int64_t q) {
  if (q != r.q) record_error(p.error, OpId::kBuildMetadata, ArgId::kExtendLens, b, r.q);
  if (r.kv64 < 0 || r.kv64 > p.max_kv)  // checked before the int32 narrowing
    record_error(p.error, OpId::kBuildMetadata, ArgId::kSeqLens, b, r.kv64);
  if (r.rpi < 0 || r.rpi >= p.req_to_token_rows)
    record_error(p.error, OpId::kBuildMetadata, ArgId::kReqPoolIndices, b, r.rpi);
}

// Warp scans: fewer steps on the critical path than the default raking scan.
using BuildBlockScan = cub::BlockScan<BuildScan, kMetaThreads, cub::BLOCK_SCAN_WARP_SCANS>;
using BuildWarpScan = cub::WarpScan<BuildScan>;

// Shared memory of build_metadata (the item path and the scalars CTA's
// function use the same bytes).
struct BuildShared {
  typename BuildBlockScan::TempStorage scan;
  typename BuildWarpScan::TempStorage warp_scan;
  int64_t row_start[kMetaThreads];   // first query row of each request, within the chunk
  int64_t src_offset[kMetaThreads];  // rpi * ld
  uint32_t cols[kMetaThreads];       // columns to copy: the cache length, 0 when no row may be written
  int64_t q[kMetaThreads];
  // Descriptors as raw words: MetadataBuffers has default member
  // initializers, which a __shared__ object may not run.
  long long target_words[kMaxSharedTargets * sizeof(MetadataBuffers) / sizeof(long long)];
  __device__ __forceinline__ MetadataBuffers* targets() { return reinterpret_cast<MetadataBuffers*>(target_words); }
};

// The scalars of a batch of at most 32 requests with static rows (DECODE,
// TARGET_VERIFY) into at most kWarpTargets destinations, by one warp: lane b
// is request b. Inputs and descriptors arrive in one round trip, then a warp
// scan and the stores, with no shared memory and no barrier (the other warps
// of the CTA exit at once).
template <bool kChecked>
__device__ __forceinline__ void build_scalars_warp(const BuildParams& p, BuildShared& s, int lane) {
  const int count = static_cast<int>(p.batch);
  RequestInputs mine;
  if (lane < count) mine = load_request(p, lane);
  const WarpScalarTargets targets = WarpScalarTargets::load(p.targets, p.num_targets, lane);
  int64_t kv = 0, q = 0;
  if (lane < count) {
    kv = static_cast<int32_t>(mine.kv64);
    q = query_rows<kChecked>(p, mine.q);
    if constexpr (kChecked) record_request_errors(p, lane, mine, q);
  }
  const BuildScan in = lane < count ? BuildScan{static_cast<uint32_t>(q), static_cast<uint32_t>(kv),
                                                static_cast<uint32_t>(clamped_rows_sum(kv, q, p.topk))}
                                    : BuildScan{0, 0, 0};
  BuildScan before;
  BuildWarpScan(s.warp_scan).ExclusiveScan(in, before, BuildScan{0, 0, 0}, BuildScanSum());
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const ScalarTarget t = targets(d);  // all lanes: shuffles
    if (lane == 0) {
      // Element 0 of the cumulative arrays (spec §5.2: 0, written once at capture; we write it every call).
      t.cu_seqlens_k[0] = 0;
      t.nsa_cu_seqlens_k[0] = 0;
    }
    if (lane < count) store_request_fields(p, t, lane, before.rows, kv, q, before.kv, before.nsa);
  }
}

// The scalars CTA: per-request and per-row fields of every destination,
// element 0 of the cumulative arrays, DRAFT_EXTEND's FlashMLA split counts (R
// is known only after the scan), and in checked mode the validation record
// of every request. It holds no page-table item, so its scan and stores run
// beside the item CTAs' round trips; it is CTA 0, the first one dispatched,
// because its chain (inputs, scan, stores) is as long as theirs. Kept apart
// from the item path: its code is a short straight line with no item logic
// to branch over.
template <bool kChecked>
__device__ __forceinline__ void build_scalars(const BuildParams& p, BuildShared& s) {
  const int tid = threadIdx.x;
  const int64_t static_q = static_rows(p);
  if (static_q > 0 && p.batch <= 32 && p.num_targets <= kWarpTargets) {
    if (tid < 32) build_scalars_warp<kChecked>(p, s, tid);
    return;
  }
  const int count0 = static_cast<int>(p.batch < kMetaThreads ? p.batch : int64_t{kMetaThreads});
  RequestInputs mine;  // this thread's request of the current chunk
  if (tid < count0) mine = load_request(p, tid);
  const MetadataBuffers* targets = stage_targets<kMetaThreads>(p.targets, p.num_targets, s.targets());
  __syncthreads();
  // Element 0 of the cumulative arrays (spec §5.2: 0, written once at capture; we write it every call).
  for (int64_t d = tid; d < p.num_targets; d += kMetaThreads) {
    targets[d].cu_seqlens_k[0] = 0;
    targets[d].nsa_cu_seqlens_k[0] = 0;
  }
  int64_t row_base = 0;
  uint32_t kv_base = 0, nsa_base = 0;
  for (int64_t chunk = 0; chunk < p.batch; chunk += kMetaThreads) {
    const int count = static_cast<int>(p.batch - chunk < kMetaThreads ? p.batch - chunk : int64_t{kMetaThreads});
    if (chunk != 0) mine = tid < count ? load_request(p, chunk + tid) : RequestInputs{};
    int64_t kv = 0, q = 0;
    if (tid < count) {
      kv = static_cast<int32_t>(mine.kv64);
      q = query_rows<kChecked>(p, mine.q);
      if constexpr (kChecked) record_request_errors(p, chunk + tid, mine, q);
    }
    const BuildScan in = tid < count ? BuildScan{static_cast<uint32_t>(q), static_cast<uint32_t>(kv),
                                                 static_cast<uint32_t>(clamped_rows_sum(kv, q, p.topk))}
                                     : BuildScan{0, 0, 0};
    BuildScan before{0, 0, 0};
    BuildScan total{static_cast<uint32_t>(count * static_q), 0, 0};
    if (static_q > 0 && count <= 32) {
      // One warp holds the chunk, and it is the last one: warp 0 scans alone,
      // with no barrier (the rows are static, so no other warp needs a total).
      if (tid < 32) BuildWarpScan(s.warp_scan).ExclusiveScan(in, before, BuildScan{0, 0, 0}, BuildScanSum(), total);
    } else {
      BuildBlockScan(s.scan).ExclusiveScan(in, before, BuildScan{0, 0, 0}, BuildScanSum(), total);
    }
    if (tid < count)
      store_request_scalars(p, targets, chunk + tid, row_base + before.rows, kv, q, kv_base + before.kv,
                            nsa_base + before.nsa);
    row_base += total.rows;
    kv_base += total.kv;
    nsa_base += total.nsa;
    if (chunk + kMetaThreads < p.batch) __syncthreads();  // the next chunk reuses the scan storage
  }
  // DRAFT_EXTEND's R + 1 FlashMLA split counts (R = row_base; the item CTAs
  // copy the other FlashMLA elements).
  if (p.flashmla_num_splits != nullptr && static_q == 0) {
    for (int64_t e = tid; e <= row_base; e += kMetaThreads)
      store_flashmla_split(p, targets, e, __ldg(p.flashmla_num_splits + e));
  }
}

// Item CTAs of a one-pass launch: the launcher picks it when every item warp
// has one page-table item at most (batch * items_per_request <= item warps),
// the batch fits one chunk and the destinations fit a warp's lanes
// (kWarpTargets). Each warp then knows its item, its request and its rows
// from the kernel parameters alone, so it runs the two round trips (inputs
// and descriptors, then the item's columns) and stores, with no shared
// memory, no barrier and no chunk walk. A warp with no item and no FlashMLA
// element exits at once: at small sizes most warps have nothing to do, and
// their instructions would otherwise compete for issue slots with the warps
// on the critical path.
template <class Policy, bool kChecked>
__device__ __forceinline__ void build_items_one_pass(const BuildParams& p) {
  constexpr int64_t kCols = Policy::kColsPerItem;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int item_ctas = static_cast<int>(gridDim.x) - 1;
  const int block = static_cast<int>(blockIdx.x) - 1;
  // Warp numbers interleave CTAs, as in the multi-pass path. The launcher
  // bounds the grid, so they and the item count fit 31 bits.
  const uint32_t my_warp = static_cast<uint32_t>((tid >> 5) * item_ctas + block);
  // Item my_warp belongs to request b; b >= batch means the warp has no item
  // (item < batch * ipr  <=>  item / ipr < batch).
  const uint32_t b = p.items_per_request_div.div(my_warp);
  const bool has_item = b < p.batch;  // warp-uniform
  const int64_t static_q = static_rows(p);

  if (has_item) {
    // ---- Round trip 1: the item's request and the descriptors. ----
    const RequestInputs r = load_request(p, b);
    const WarpTargets targets = WarpTargets::load(p.targets, p.num_targets, lane);
    // The item's first row: b * q, or in DRAFT_EXTEND the extend lengths
    // before request b, summed by the warp (b < kMetaThreads).
    const int64_t row0 =
        static_q > 0 ? static_cast<int64_t>(b) * static_q : extend_rows_before<kChecked>(p, b, lane);
    // ---- Round trip 2: the item's source columns, then its stores. ----
    const int64_t kv = static_cast<int32_t>(r.kv64);
    const int64_t c0 = static_cast<int64_t>(my_warp - b * static_cast<uint32_t>(p.items_per_request)) * kCols;
    // Columns are 32-bit from here on: 0 <= c0 < kv <= INT32_MAX.
    if (table_ok<kChecked>(p, r) && c0 < kv) {
      PageItem<Policy> it;
      load_page_item(it, p.req_to_token + r.rpi * p.req_to_token_ld, static_cast<uint32_t>(kv),
                     static_cast<uint32_t>(c0), lane);
      const int64_t q = static_q > 0 ? static_q : query_rows<kChecked>(p, r.q);
      store_page_item(p, targets, it, static_cast<uint32_t>(kv), static_cast<uint32_t>(c0), row0, q, lane);
    }
  }

  // FlashMLA elements: numbered from the last warp down, so the warps without
  // an item take them and the item warps' chain stays short (each thread
  // still gets every gthreads-th element; descriptors from the global table).
  // DRAFT_EXTEND's split counts are the scalars CTA's: R + 1 is only known
  // after the scan.
  const int64_t gthreads = static_cast<int64_t>(item_ctas) * kMetaThreads;
  const int64_t first = (static_cast<int64_t>(item_ctas) * kMetaWarps - 1 - my_warp) * 32 + lane;
  const int64_t known_rows = static_q > 0 ? p.batch * static_q : -1;  // R, if known before the scan
  if (p.flashmla_num_splits != nullptr) {
    for (int64_t e = first; e <= known_rows; e += gthreads)
      store_flashmla_split(p, p.targets, e, __ldg(p.flashmla_num_splits + e));
  }
  if (p.flashmla_metadata != nullptr) {
    for (int64_t e = first; e < p.flashmla_metadata_max; e += gthreads)
      store_flashmla_tile(p, p.targets, e, __ldg(p.flashmla_metadata + e));
  }
}

// kChecked: requests with an invalid cache length, request row or extend
// length are recorded in p.error (by the scalars CTA) and write no
// page-table rows (an invalid extend length also counts as 0 query rows, so
// no row of it is written).
template <class Policy, bool kChecked, bool kOnePass>
__global__ void __launch_bounds__(kMetaThreads, Policy::kCtasPerSm)
    build_metadata_kernel(const __grid_constant__ BuildParams p) {
  __shared__ BuildShared s;
  // CTA 0 writes the scalars (the launcher's grid always has an item CTA
  // besides it).
  if (blockIdx.x == 0) {
    build_scalars<kChecked>(p, s);
    return;
  }
  if constexpr (kOnePass) {
    build_items_one_pass<Policy, kChecked>(p);
    return;
  }
  const int64_t block = blockIdx.x - 1;  // item CTA number

  // ---- Item CTAs 1 .. gridDim.x - 1: page tables and FlashMLA copies. ----
  constexpr int64_t kCols = Policy::kColsPerItem;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int item_ctas = static_cast<int>(gridDim.x) - 1;
  const int64_t grid_warps = static_cast<int64_t>(item_ctas) * kMetaWarps;
  const int64_t my_warp = static_cast<int64_t>(tid >> 5) * item_ctas + block;
  const int64_t gtid = block * kMetaThreads + tid;
  const int64_t gthreads = static_cast<int64_t>(item_ctas) * kMetaThreads;
  const int64_t ipr = p.items_per_request;
  // Item number -> request: one multiply-high while the numbers fit 31 bits.
  const bool fast_ipr = ipr <= INT32_MAX;
  auto request_of = [&](int64_t item) {
    return fast_ipr && item <= INT32_MAX ? static_cast<int64_t>(p.items_per_request_div.div(static_cast<uint32_t>(item)))
                                         : item / ipr;
  };
  const int64_t static_q = static_rows(p);
  const int64_t known_rows = static_q > 0 ? p.batch * static_q : -1;  // R, if known before the scan

  // ---- Round trip 1: every load that depends on no device data. ----------
  const int count0 = static_cast<int>(p.batch < kMetaThreads ? p.batch : int64_t{kMetaThreads});
  RequestInputs mine;  // this thread's request of the current chunk
  // Loaded even by CTAs that will not walk the chunk: skipping it measured
  // slower at small batches (probably because these coalesced loads bring in
  // the lines that the warps' first-item loads below read).
  if (tid < count0) mine = load_request(p, tid);
  // This warp's first item is item my_warp (chunk 0 holds items [0, count0 * ipr)).
  const bool has_first = my_warp < count0 * ipr;
  RequestInputs first;
  const int64_t first_b = has_first ? request_of(my_warp) : 0;
  if (has_first) first = load_request(p, first_b);
  // The first item's first row: b * q in DECODE / TARGET_VERIFY; in
  // DRAFT_EXTEND the extend lengths before request b, summed by the warp in
  // this round trip (b < kMetaThreads), so no mode waits for the scan.
  const int64_t first_row0 = static_q > 0 ? first_b * static_q
                             : has_first  ? extend_rows_before<kChecked>(p, first_b, lane)
                                          : 0;
  // Destination descriptors, into registers now and into shared memory below.
  constexpr int kWords = static_cast<int>(sizeof(MetadataBuffers) / sizeof(long long));
  constexpr int kDescRegs = (kMaxSharedTargets * kWords + kMetaThreads - 1) / kMetaThreads;
  const bool shared_targets = p.num_targets <= kMaxSharedTargets;
  long long desc[kDescRegs];
#pragma unroll
  for (int k = 0; k < kDescRegs; ++k) {
    const int64_t w = tid + k * kMetaThreads;
    if (shared_targets && w < p.num_targets * kWords) desc[k] = __ldg(reinterpret_cast<const long long*>(p.targets) + w);
  }
  // One element of each FlashMLA array per thread (DRAFT_EXTEND's split
  // counts are the scalars CTA's: R + 1 is only known after the scan).
  const bool split0 = p.flashmla_num_splits != nullptr && gtid < known_rows + 1;
  const bool tile0 = p.flashmla_metadata != nullptr && gtid < p.flashmla_metadata_max;
  const int32_t split0_v = split0 ? __ldg(p.flashmla_num_splits + gtid) : 0;
  const int32_t tile0_v = tile0 ? __ldg(p.flashmla_metadata + gtid) : 0;

  // ---- Round trip 2: the first item's source columns. ---------------------
  PageItem<Policy> cur;
  const int64_t first_kv = static_cast<int32_t>(first.kv64);
  const int64_t first_c0 = (my_warp - first_b * ipr) * kCols;
  // Columns are 32-bit from here on: 0 <= c0 < kv <= INT32_MAX.
  const bool first_loaded = has_first && table_ok<kChecked>(p, first) && first_c0 < first_kv;
  if (first_loaded)
    load_page_item(cur, p.req_to_token + first.rpi * p.req_to_token_ld, static_cast<uint32_t>(first_kv),
                   static_cast<uint32_t>(first_c0), lane);

  // Descriptors become visible at the barrier; the stores below need them.
#pragma unroll
  for (int k = 0; k < kDescRegs; ++k) {
    const int64_t w = tid + k * kMetaThreads;
    if (shared_targets && w < p.num_targets * kWords) s.target_words[w] = desc[k];
  }
  const MetadataBuffers* targets = shared_targets ? s.targets() : p.targets;
  __syncthreads();
  // The first item is stored now: the chunk walk below stays off the small
  // batch's critical path.
  if (first_loaded) {
    const int64_t first_q = static_q > 0 ? static_q : query_rows<kChecked>(p, first.q);
    store_page_item(p, TableTargets{targets}, cur, static_cast<uint32_t>(first_kv), static_cast<uint32_t>(first_c0),
                    first_row0, first_q, lane);
  }
  if (split0) store_flashmla_split(p, targets, gtid, split0_v);
  if (tile0) store_flashmla_tile(p, targets, gtid, tile0_v);

  // A CTA whose warps had one item each at most (stored above) is done: one
  // chunk, and even the CTA's lowest warp id (`block`) has no second item.
  const bool items_done = p.batch <= kMetaThreads && block + grid_warps >= p.batch * ipr;
  int64_t row_base = 0;  // first query row of the chunk
  for (int64_t chunk = 0; !items_done && chunk < p.batch; chunk += kMetaThreads) {
    const int count = static_cast<int>(p.batch - chunk < kMetaThreads ? p.batch - chunk : int64_t{kMetaThreads});
    if (chunk != 0) mine = tid < count ? load_request(p, chunk + tid) : RequestInputs{};
    int64_t kv = 0, q = 0;
    bool ok = false;
    if (tid < count) {
      kv = static_cast<int32_t>(mine.kv64);
      q = query_rows<kChecked>(p, mine.q);
      ok = table_ok<kChecked>(p, mine);
    }
    // Row starts: b * q, or in DRAFT_EXTEND a scan of the extend lengths.
    uint32_t rows_before = static_cast<uint32_t>(tid * static_q);
    uint32_t rows_total = static_cast<uint32_t>(count * static_q);
    if (static_q == 0) {
      BuildScan before, total;
      BuildBlockScan(s.scan).ExclusiveScan(BuildScan{static_cast<uint32_t>(q), 0, 0}, before, BuildScan{0, 0, 0},
                                           BuildScanSum(), total);
      rows_before = before.rows;
      rows_total = total.rows;
    }
    s.row_start[tid] = rows_before;
    s.src_offset[tid] = mine.rpi * p.req_to_token_ld;
    s.cols[tid] = ok && q > 0 && kv > 0 ? static_cast<uint32_t>(kv) : 0u;
    s.q[tid] = q;
    __syncthreads();  // the items below read them

    // Page-table items of this chunk: global numbers [chunk * ipr, (chunk +
    // count) * ipr), every grid_warps-th one for this warp (the round robin
    // continues across chunks). Item math is chunk-relative and 32-bit when it
    // fits: a 64-bit division costs dozens of instructions on the critical path.
    const int64_t items = count * ipr;
    const bool narrow = items <= INT32_MAX && grid_warps <= INT32_MAX;
    struct Item {
      int64_t rel, b, c0;  // chunk-relative number, request within the chunk, first column
    };
    // The warp's first item at or after `rel` that has columns to copy (rel == items: none).
    auto live = [&](int64_t rel) {
      while (rel < items) {
        const int64_t b = narrow ? request_of(rel) : rel / ipr;
        const int64_t c0 = (rel - b * ipr) * kCols;
        if (c0 < s.cols[b]) return Item{rel, b, c0};
        const int64_t skip = (b + 1) * ipr - rel + grid_warps - 1;  // to its first item of request b + 1
        rel += (narrow ? static_cast<int64_t>(static_cast<uint32_t>(skip) / static_cast<uint32_t>(grid_warps))
                       : skip / grid_warps) *
               grid_warps;
      }
      return Item{items, 0, 0};
    };
    auto load_item = [&](PageItem<Policy>& it, const Item& x) {
      load_page_item(it, p.req_to_token + s.src_offset[x.b], s.cols[x.b], static_cast<uint32_t>(x.c0), lane);
    };
    int64_t rel0 = my_warp;  // chunk 0
    if (chunk != 0) {
      rel0 = (my_warp - chunk * ipr) % grid_warps;
      if (rel0 < 0) rel0 += grid_warps;
    }
    // Chunk 0: item my_warp may be stored already.
    if (chunk == 0 && first_loaded) rel0 += grid_warps;
    Item x = live(rel0);
    if (x.rel < items) load_item(cur, x);
    while (x.rel < items) {
      const Item n = live(x.rel + grid_warps);
      PageItem<Policy> next;
      if (n.rel < items) load_item(next, n);  // in flight while `cur` is stored
      store_page_item(p, TableTargets{targets}, cur, s.cols[x.b], static_cast<uint32_t>(x.c0),
                      row_base + s.row_start[x.b], s.q[x.b], lane);
      cur = next;
      x = n;
    }
    row_base += rows_total;
    if (chunk + kMetaThreads < p.batch) __syncthreads();  // the next chunk reuses the shared arrays and scan storage
  }

  // FlashMLA elements past the first gthreads (DRAFT_EXTEND's split counts
  // are the scalars CTA's).
  if (p.flashmla_num_splits != nullptr && known_rows >= 0) {
    for (int64_t e = gtid + gthreads; e <= known_rows; e += gthreads)
      store_flashmla_split(p, targets, e, __ldg(p.flashmla_num_splits + e));
  }
  if (p.flashmla_metadata != nullptr) {
    for (int64_t e = gtid + gthreads; e < p.flashmla_metadata_max; e += gthreads)
      store_flashmla_tile(p, targets, e, __ldg(p.flashmla_metadata + e));
  }
}

// ---------------------------------------------------------------------------
// copy_metadata: up to 9 copy jobs (spec §6.2 fields), each a [rows, cols]
// block with a source row stride, cut into warp items of kColsPerItem
// columns; every item is loaded once and stored to every destination that
// has the field. The job table is host-built and passed by value.
// ---------------------------------------------------------------------------
enum class MetaField : int32_t {
  kCacheSeqlens,
  kCuSeqlensK,
  kPageTable1,
  kSeqlensExpanded,
  kNsaCacheSeqlens,
  kNsaCuSeqlensK,
  kRealPageTable,
  kFlashmlaNumSplits,
  kFlashmlaMetadata,
};
constexpr int kMaxCopyJobs = 9;

struct CopyJob {
  const int32_t* src;  // row 0, element `offset` already applied
  int64_t src_ld;
  int64_t rows, cols;
  int64_t offset;      // first destination element (1 for the cumulative arrays)
  int64_t items_per_row;
  int64_t item_start;
  MetaField field;
};

struct CopyParams {
  CopyJob jobs[kMaxCopyJobs];
  int32_t num_jobs;
  int64_t total_items;
  const MetadataBuffers* targets;
  int64_t num_targets;
};

__host__ __device__ __forceinline__ int32_t* field_pointer(const MetadataBuffers& t, MetaField f, int64_t* ld) {
  switch (f) {
    case MetaField::kCacheSeqlens: return t.cache_seqlens;
    case MetaField::kCuSeqlensK: return t.cu_seqlens_k;
    case MetaField::kPageTable1: *ld = t.page_table_1_ld; return t.page_table_1;
    case MetaField::kSeqlensExpanded: return t.seqlens_expanded;
    case MetaField::kNsaCacheSeqlens: return t.nsa_cache_seqlens;
    case MetaField::kNsaCuSeqlensK: return t.nsa_cu_seqlens_k;
    case MetaField::kRealPageTable: *ld = t.real_page_table_ld; return t.real_page_table;
    case MetaField::kFlashmlaNumSplits: return t.flashmla_num_splits;
    default: return t.flashmla_metadata;
  }
}

// A template (with one instantiation) so that including this header in
// several translation units defines the kernel once (ODR), like the others.
template <int kVec = kVecPerLane>
__global__ void __launch_bounds__(kMetaThreads) copy_metadata_kernel(const __grid_constant__ CopyParams p) {
  __shared__ MetadataBuffers s_targets[kMaxSharedTargets];
  const MetadataBuffers* targets = stage_targets<kMetaThreads>(p.targets, p.num_targets, s_targets);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t grid_warps = static_cast<int64_t>(gridDim.x) * kMetaWarps;
  const int64_t my_warp = static_cast<int64_t>(threadIdx.x >> 5) * gridDim.x + blockIdx.x;
  for (int64_t i = my_warp; i < p.total_items; i += grid_warps) {
    int j = 0;
    while (j + 1 < p.num_jobs && p.jobs[j + 1].item_start <= i) ++j;
    const CopyJob& job = p.jobs[j];
    const int64_t local = i - job.item_start;
    const int64_t row = local / job.items_per_row;
    const int64_t c0 = (local - row * job.items_per_row) * kColsPerItem;
    const int32_t* src = job.src + row * job.src_ld;
    const bool src_vec = aligned16(src);
    int4 v[kVec];
#pragma unroll
    for (int k = 0; k < kVec; ++k) v[k] = load_group(src, c0 + 4 * (lane + 32 * k), job.cols, src_vec);
    for (int64_t d = 0; d < p.num_targets; ++d) {
      int64_t ld = 0;
      int32_t* base = field_pointer(targets[d], job.field, &ld);
      if (base == nullptr) continue;  // optional field absent in this destination
      int32_t* dst = base + job.offset + row * ld;
      const bool dst_vec = aligned16(dst);
#pragma unroll
      for (int k = 0; k < kVec; ++k) store_group(dst, c0 + 4 * (lane + 32 * k), job.cols, dst_vec, v[k]);
    }
  }
}

// ---------------------------------------------------------------------------
// Launchers.
// ---------------------------------------------------------------------------
// One wave of resident CTAs at most (extra CTAs of the build kernel would only
// repeat the batch scan), never more CTAs than there are warp items. Small
// jobs get one item per CTA, so their stores spread over many SMs instead of
// queueing in one SM's store path.
inline int metadata_grid(int64_t max_items, int num_sms, int ctas_per_sm) {
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * ctas_per_sm;
  return static_cast<int>(max_items < 1 ? 1 : (max_items < cap ? max_items : cap));
}

// p.max_kv bounds every row length (precondition), so it bounds the
// page-table items without reading device data.
template <class Policy>
inline int64_t build_items_per_request(const BuildParams& p) {
  return (p.max_kv + Policy::kColsPerItem - 1) / Policy::kColsPerItem;
}

// The one-pass item path applies (see build_items_one_pass).
template <class Policy>
inline bool build_one_pass(const BuildParams& p, int num_sms) {
  if (p.batch > kMetaThreads || p.num_targets > kWarpTargets) return false;
  const int64_t items = p.batch * build_items_per_request<Policy>(p);  // batch <= 256: no overflow
  const int64_t item_warps = (metadata_grid(items + 1, num_sms, Policy::kCtasPerSm) - 1) * int64_t{kMetaWarps};
  return items <= item_warps;
}

template <class Policy, bool kOnePass>
cudaError_t launch_build_metadata(BuildParams p, int num_sms, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const int64_t items_per_request = build_items_per_request<Policy>(p);
  p.items_per_request = items_per_request;
  p.items_per_request_div =
      FastDivisor::make(items_per_request >= 1 && items_per_request <= INT32_MAX ? static_cast<uint32_t>(items_per_request) : 1u);
  const int64_t max_items = p.batch * (items_per_request > 0 ? items_per_request : 1);
  // + 1: the scalars CTA. max_items >= 1 and the cap >= 2, so the grid
  // always has an item CTA besides it (build_metadata_kernel relies on it).
  const int grid = metadata_grid(max_items + 1, num_sms, Policy::kCtasPerSm);
  if (p.error != nullptr) build_metadata_kernel<Policy, true, kOnePass><<<grid, kMetaThreads, 0, stream>>>(p);
  else build_metadata_kernel<Policy, false, kOnePass><<<grid, kMetaThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// Picks the policy from what the host knows: short items while there are at
// most two per item CTA of a full grid (CTA 0 holds none), so a small job's
// stores spread over many SMs; long ones beyond, which halve the warps, and
// so the instructions each SM issues, for the same columns. One pass whenever
// it applies with short items; with long items only in DECODE (measured on
// an H100: with q > 1 rows per item and three or four destinations, the
// long-item one-pass kernel was slower than the chunk walk).
inline cudaError_t invoke_build_metadata(const BuildParams& p, int num_sms, cudaStream_t stream) {
  static_assert(SmallBuildPolicy::kCtasPerSm == LargeBuildPolicy::kCtasPerSm, "one grid size for both");
  const int64_t small_items = p.batch * build_items_per_request<SmallBuildPolicy>(p);
  const int64_t item_ctas = static_cast<int64_t>(num_sms) * SmallBuildPolicy::kCtasPerSm - 1;
  if (small_items <= 2 * item_ctas && build_one_pass<SmallBuildPolicy>(p, num_sms))
    return launch_build_metadata<SmallBuildPolicy, true>(p, num_sms, stream);
  if (p.mode == static_cast<int32_t>(ForwardMode::kDecode) && build_one_pass<LargeBuildPolicy>(p, num_sms))
    return launch_build_metadata<LargeBuildPolicy, true>(p, num_sms, stream);
  return launch_build_metadata<LargeBuildPolicy, false>(p, num_sms, stream);
}

// Appends a copy job (host side); empty or absent fields add nothing. `p` starts zeroed.
inline void add_copy_job(CopyParams& p, MetaField field, const int32_t* src, int64_t src_ld, int64_t rows,
                         int64_t cols, int64_t offset) {
  if (src == nullptr || rows <= 0 || cols <= 0 || p.num_jobs >= kMaxCopyJobs) return;
  CopyJob& j = p.jobs[p.num_jobs++];
  j.src = src + offset;
  j.src_ld = src_ld;
  j.rows = rows;
  j.cols = cols;
  j.offset = offset;
  j.field = field;
  j.items_per_row = (cols + kColsPerItem - 1) / kColsPerItem;
  j.item_start = p.total_items;
  p.total_items += rows * j.items_per_row;
}

inline cudaError_t invoke_copy_metadata(const CopyParams& p, int num_sms, cudaStream_t stream) {
  if (p.total_items == 0) return cudaSuccess;
  copy_metadata_kernel<><<<metadata_grid(p.total_items, num_sms, kCopyCtasPerSm), kMetaThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace kernels
}  // namespace nsa
