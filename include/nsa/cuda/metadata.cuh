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
// never synchronise. All index math is 64-bit; every grid is 1-D.
#pragma once

#include <cuda_runtime.h>
#include <cub/block/block_scan.cuh>

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

__device__ __forceinline__ int4 load_group(const int32_t* __restrict__ row, int64_t c, int64_t len, bool vec) {
  int4 v = make_int4(0, 0, 0, 0);
  if (c >= len) return v;
  if (vec && c + 4 <= len) return __ldg(reinterpret_cast<const int4*>(row + c));
  v.x = __ldg(row + c);
  if (c + 1 < len) v.y = __ldg(row + c + 1);
  if (c + 2 < len) v.z = __ldg(row + c + 2);
  if (c + 3 < len) v.w = __ldg(row + c + 3);
  return v;
}

__device__ __forceinline__ void store_group(int32_t* row, int64_t c, int64_t len, bool vec, const int4& v) {
  if (c >= len) return;
  if (vec && c + 4 <= len) {
    *reinterpret_cast<int4*>(row + c) = v;
    return;
  }
  row[c] = v.x;
  if (c + 1 < len) row[c + 1] = v.y;
  if (c + 2 < len) row[c + 2] = v.z;
  if (c + 3 < len) row[c + 3] = v.w;
}

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
// requests. The last CTA scans each chunk (cub BlockScan in shared memory) and
// writes the per-request and per-row scalars. In DRAFT_EXTEND the other CTAs
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
// Measured on an H100 (docs/gpu-report.md): 128-column items win while there
// is a warp per item; 256-column items beyond.
using SmallBuildPolicy = BuildPolicy<1, 2>;
using LargeBuildPolicy = BuildPolicy<2, 2>;

// One page-table item in registers: a lane's int4 groups of the source row.
template <class Policy>
struct PageItem {
  int4 v[Policy::kVecPerLane];
};

// Columns [c0, c0 + kColsPerItem) of a req_to_token row of length `len`.
template <class Policy>
__device__ __forceinline__ void load_page_item(PageItem<Policy>& it, const int32_t* __restrict__ src, int64_t len,
                                               int64_t c0, int lane) {
  const bool vec = aligned16(src);
#pragma unroll
  for (int k = 0; k < Policy::kVecPerLane; ++k) it.v[k] = load_group(src, c0 + 4 * (lane + 32 * k), len, vec);
}

// Stores an item into its q rows (starting at row0) of every destination,
// plus the real_page_table entries of the page starts among its columns.
// Everything that does not depend on the destination or the row is computed
// once per item, and rows are walked by pointer increments: with a few warps
// per SM this loop runs latency-bound, so its length per row is what counts.
template <class Policy>
__device__ __forceinline__ void store_page_item(const BuildParams& p, const MetadataBuffers* targets,
                                                const PageItem<Policy>& it, int64_t len, int64_t c0, int64_t row0,
                                                int64_t q, int lane) {
  constexpr int kV = Policy::kVecPerLane;
  int64_t col[kV];  // a lane's groups of 4 columns
  bool full[kV];    // all 4 columns exist: one 16-byte store when the row is aligned
  // With P a power of two >= 4, a lane's 4 columns (c a multiple of 4) hold at
  // most one page start, c itself: real[r, c / P] = (slot at c) / P.
  const bool one_start = p.page_shift >= 2;
  bool real_start[kV];
  int64_t real_col[kV];
  int32_t real_val[kV];
#pragma unroll
  for (int k = 0; k < kV; ++k) {
    col[k] = c0 + 4 * (lane + 32 * k);
    full[k] = col[k] + 4 <= len;
    real_start[k] = one_start && col[k] < len && (col[k] & (p.page_size - 1)) == 0;
    real_col[k] = one_start ? col[k] >> p.page_shift : 0;
    real_val[k] = static_cast<int32_t>(page_of(p, it.v[k].x));
  }
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const MetadataBuffers& t = targets[d];  // all four fields are read before the first store
    const int64_t ld = t.page_table_1_ld, real_ld = t.real_page_table_ld;
    int32_t* row = t.page_table_1 + row0 * ld;
    int32_t* const real = t.real_page_table;
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
      if (one_start) {
#pragma unroll
        for (int k = 0; k < kV; ++k)
          if (real_start[k]) real_row[real_col[k]] = real_val[k];
        continue;
      }
#pragma unroll
      for (int k = 0; k < kV; ++k) {  // any page size
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int64_t c = col[k] + e;
          if (c < len && starts_page(p, c))
            real_row[page_of(p, c)] = static_cast<int32_t>(page_of(p, group_elem(it.v[k], e)));
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

// Request b's fields and those of its q rows (rows [row0, row0 + q)), into
// every destination; cu_before / nsa_before are the cumulative sums before
// the request (modulo 2^32, see BuildScan). One thread per request: no search
// of the row starts, and the stores leave as soon as the scan is done.
__device__ __forceinline__ void store_request_scalars(const BuildParams& p, const MetadataBuffers* targets, int64_t b,
                                                      int64_t row0, int64_t kv, int64_t q, uint32_t cu_before,
                                                      uint32_t nsa_before) {
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const MetadataBuffers& t = targets[d];
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
}

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

// kChecked: requests with an invalid cache length, request row or extend
// length are recorded in p.error and write no page-table rows (an invalid
// extend length also counts as 0 query rows, so no row of it is written).
template <class Policy, bool kChecked>
__global__ void __launch_bounds__(kMetaThreads, Policy::kCtasPerSm)
    build_metadata_kernel(const __grid_constant__ BuildParams p) {
  constexpr int64_t kCols = Policy::kColsPerItem;
  // Warp scans: fewer steps on the critical path than the default raking scan.
  using Scan = cub::BlockScan<BuildScan, kMetaThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t s_row_start[kMetaThreads];   // first query row of each request, within the chunk
  __shared__ int64_t s_src_offset[kMetaThreads];  // rpi * ld
  __shared__ int64_t s_cols[kMetaThreads];        // columns to copy: the cache length, 0 when no row may be written
  __shared__ int64_t s_q[kMetaThreads];
  __shared__ MetadataBuffers s_targets[kMaxSharedTargets];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  // CTAs [0, item_ctas) copy the page-table items. The last CTA writes the
  // scalars; in a grid of more than one CTA it has no item, so its scan and
  // stores run beside the others' page-table round trips instead of after them.
  const int item_ctas = gridDim.x > 1 ? static_cast<int>(gridDim.x) - 1 : 1;
  const bool item_cta = static_cast<int>(blockIdx.x) < item_ctas;
  const bool scalars_cta = blockIdx.x == gridDim.x - 1;
  const int64_t grid_warps = static_cast<int64_t>(item_ctas) * kMetaWarps;
  const int64_t my_warp = static_cast<int64_t>(tid >> 5) * item_ctas + blockIdx.x;  // meaningful in item CTAs
  const int64_t gtid = static_cast<int64_t>(blockIdx.x) * kMetaThreads + tid;
  const int64_t gthreads = static_cast<int64_t>(gridDim.x) * kMetaThreads;
  const int64_t ipr = (p.max_kv + kCols - 1) / kCols;  // items per request
  const bool decode = p.mode == static_cast<int32_t>(ForwardMode::kDecode);
  const bool verify = p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify);
  const int64_t draft = verify ? p.draft_tokens : 0;
  const int64_t known_rows = decode ? p.batch : verify ? p.batch * p.draft_tokens : -1;  // R, if known before the scan

  auto load_request = [&](int64_t b) {
    RequestInputs r;
    r.kv64 = load_index(p.seq_lens, p.seq_lens_64, b) + draft;
    r.q = decode ? 1 : verify ? p.draft_tokens : load_index(p.extend_lens, p.extend_lens_64, b);
    r.rpi = load_index(p.req_pool_indices, p.req_pool_indices_64, b);
    return r;
  };
  // Its page-table rows may be read and written (always, unchecked).
  auto table_ok = [&](const RequestInputs& r) {
    if constexpr (kChecked) return r.kv64 >= 0 && r.kv64 <= p.max_kv && r.rpi >= 0 && r.rpi < p.req_to_token_rows;
    else return true;
  };

  // ---- Round trip 1: every load that depends on no device data. ----------
  const int count0 = static_cast<int>(p.batch < kMetaThreads ? p.batch : int64_t{kMetaThreads});
  RequestInputs mine;  // this thread's request of the current chunk (scan input)
  if (tid < count0) mine = load_request(tid);
  // This warp's first item is item my_warp (chunk 0 holds items [0, count0 * ipr)).
  const bool has_first = item_cta && my_warp < count0 * ipr;
  RequestInputs first;
  // (32-bit division: my_warp < 2^31 and ipr <= max_kv / 128 < 2^31 in any real table.)
  const int64_t first_b = has_first ? (my_warp <= INT32_MAX && ipr <= INT32_MAX
                                           ? static_cast<int64_t>(static_cast<uint32_t>(my_warp) / static_cast<uint32_t>(ipr))
                                           : my_warp / ipr)
                                    : 0;
  if (has_first) first = load_request(first_b);
  // The first item's first row: b * q in DECODE / TARGET_VERIFY; in
  // DRAFT_EXTEND the extend lengths before request b, summed by the warp in
  // this round trip (b < kMetaThreads), so no mode waits for the scan.
  const int64_t static_q = decode ? 1 : verify ? p.draft_tokens : 0;
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
  // count R + 1 is only known after the scan: its splits are copied last).
  const bool split0 = p.flashmla_num_splits != nullptr && gtid < known_rows + 1;
  const bool tile0 = p.flashmla_metadata != nullptr && gtid < p.flashmla_metadata_max;
  const int32_t split0_v = split0 ? __ldg(p.flashmla_num_splits + gtid) : 0;
  const int32_t tile0_v = tile0 ? __ldg(p.flashmla_metadata + gtid) : 0;

  // ---- Round trip 2: the first item's source columns. ---------------------
  PageItem<Policy> cur;
  const int64_t first_kv = static_cast<int32_t>(first.kv64);
  const int64_t first_c0 = (my_warp - first_b * ipr) * kCols;
  const bool first_loaded = has_first && table_ok(first) && first_c0 < first_kv;
  if (first_loaded) load_page_item(cur, p.req_to_token + first.rpi * p.req_to_token_ld, first_kv, first_c0, lane);

  // Descriptors become visible at the barrier; the stores below need them.
#pragma unroll
  for (int k = 0; k < kDescRegs; ++k) {
    const int64_t w = tid + k * kMetaThreads;
    if (shared_targets && w < p.num_targets * kWords) reinterpret_cast<long long*>(s_targets)[w] = desc[k];
  }
  const MetadataBuffers* targets = shared_targets ? s_targets : p.targets;
  __syncthreads();
  // The first item is stored now: the scan and its barriers stay off the
  // small batch's critical path.
  if (first_loaded) {
    const int64_t first_q = static_q > 0 ? static_q : query_rows<kChecked>(p, first.q);
    store_page_item(p, targets, cur, first_kv, first_c0, first_row0, first_q, lane);
  }
  if (split0) store_flashmla_split(p, targets, gtid, split0_v);
  if (tile0) store_flashmla_tile(p, targets, gtid, tile0_v);
  // Element 0 of the cumulative arrays (spec §5.2: 0, written once at capture; we write it every call).
  if (scalars_cta) {
    for (int64_t d = tid; d < p.num_targets; d += kMetaThreads) {
      targets[d].cu_seqlens_k[0] = 0;
      targets[d].nsa_cu_seqlens_k[0] = 0;
    }
  }

  // Only the scalars CTA scans in DECODE / TARGET_VERIFY (request b's rows
  // start at b * q); in DRAFT_EXTEND every CTA that walks the chunks needs the
  // row starts of its later items.
  const bool scans = scalars_cta || static_q == 0;
  // An item CTA whose warps had one item each at most (stored above) is done:
  // one chunk, and even the CTA's lowest warp id (blockIdx.x) has no second item.
  const bool items_done = item_cta && p.batch <= kMetaThreads && blockIdx.x + grid_warps >= p.batch * ipr;
  const bool walks_chunks = scalars_cta || !items_done;
  int64_t row_base = 0;
  uint32_t kv_base = 0, nsa_base = 0;  // meaningful in CTAs that scan
  for (int64_t chunk = 0; walks_chunks && chunk < p.batch; chunk += kMetaThreads) {
    const int count = static_cast<int>(p.batch - chunk < kMetaThreads ? p.batch - chunk : int64_t{kMetaThreads});
    if (chunk != 0) mine = tid < count ? load_request(chunk + tid) : RequestInputs{};
    int64_t kv = 0, q = 0;
    bool ok = false;
    if (tid < count) {
      kv = static_cast<int32_t>(mine.kv64);
      q = mine.q;
      ok = table_ok(mine);
      if constexpr (kChecked) {
        const int64_t b = chunk + tid;
        if (q != query_rows<kChecked>(p, q)) {
          record_error(p.error, OpId::kBuildMetadata, ArgId::kExtendLens, b, q);
          q = 0;
        }
        if (mine.kv64 < 0 || mine.kv64 > p.max_kv)  // checked before the int32 narrowing
          record_error(p.error, OpId::kBuildMetadata, ArgId::kSeqLens, b, mine.kv64);
        if (mine.rpi < 0 || mine.rpi >= p.req_to_token_rows)
          record_error(p.error, OpId::kBuildMetadata, ArgId::kReqPoolIndices, b, mine.rpi);
      }
    }
    BuildScan before{static_cast<uint32_t>(tid * static_q), 0, 0};
    BuildScan total{static_cast<uint32_t>(count * static_q), 0, 0};
    if (scans) {
      const BuildScan in = tid < count ? BuildScan{static_cast<uint32_t>(q), static_cast<uint32_t>(kv),
                                                   static_cast<uint32_t>(clamped_rows_sum(kv, q, p.topk))}
                                       : BuildScan{0, 0, 0};
      Scan(scan_storage).ExclusiveScan(in, before, BuildScan{0, 0, 0}, BuildScanSum(), total);
    }
    if (scalars_cta && tid < count)
      store_request_scalars(p, targets, chunk + tid, row_base + before.rows, kv, q, kv_base + before.kv,
                            nsa_base + before.nsa);
    s_row_start[tid] = before.rows;
    s_src_offset[tid] = mine.rpi * p.req_to_token_ld;
    s_cols[tid] = ok && q > 0 ? kv : 0;
    s_q[tid] = q;
    if (item_cta) __syncthreads();  // the items below read them (the scalars CTA of a larger grid has none)

    // Page-table items of this chunk: global numbers [chunk * ipr, (chunk +
    // count) * ipr), every grid_warps-th one for this warp (the round robin
    // continues across chunks). Item math is chunk-relative and 32-bit when it
    // fits: a 64-bit division costs dozens of instructions on the critical path.
    const int64_t items = count * ipr;
    const bool narrow = items <= INT32_MAX && grid_warps <= INT32_MAX;
    auto div = [narrow](int64_t x, int64_t y) {
      return narrow ? static_cast<int64_t>(static_cast<uint32_t>(x) / static_cast<uint32_t>(y)) : x / y;
    };
    struct Item {
      int64_t rel, b, c0;  // chunk-relative number, request within the chunk, first column
    };
    // The warp's first item at or after `rel` that has columns to copy (rel == items: none).
    auto live = [&](int64_t rel) {
      while (rel < items) {
        const int64_t b = div(rel, ipr);
        const int64_t c0 = (rel - b * ipr) * kCols;
        if (c0 < s_cols[b]) return Item{rel, b, c0};
        rel += div((b + 1) * ipr - rel + grid_warps - 1, grid_warps) * grid_warps;  // its first item of request b + 1
      }
      return Item{items, 0, 0};
    };
    auto load_item = [&](PageItem<Policy>& it, const Item& x) {
      load_page_item(it, p.req_to_token + s_src_offset[x.b], s_cols[x.b], x.c0, lane);
    };
    int64_t rel0 = my_warp;  // chunk 0
    if (chunk != 0) {
      rel0 = (my_warp - chunk * ipr) % grid_warps;
      if (rel0 < 0) rel0 += grid_warps;
    }
    if (!item_cta) rel0 = items;
    // Chunk 0: item my_warp may be stored already.
    if (chunk == 0 && first_loaded) rel0 += grid_warps;
    Item x = live(rel0);
    if (x.rel < items) load_item(cur, x);
    while (x.rel < items) {
      const Item n = live(x.rel + grid_warps);
      PageItem<Policy> next;
      if (n.rel < items) load_item(next, n);  // in flight while `cur` is stored
      store_page_item(p, targets, cur, s_cols[x.b], x.c0, row_base + s_row_start[x.b], s_q[x.b], lane);
      cur = next;
      x = n;
    }
    row_base += total.rows;
    kv_base += total.kv;
    nsa_base += total.nsa;
    if (chunk + kMetaThreads < p.batch) __syncthreads();  // the next chunk reuses the shared arrays and scan storage
  }

  // FlashMLA elements past the first gthreads, and DRAFT_EXTEND's split
  // counts (R + 1 elements; R = row_base is known to the scalars CTA, the one
  // CTA sure to have walked every chunk): load, then store.
  if (p.flashmla_num_splits != nullptr) {
    if (known_rows >= 0) {
      for (int64_t e = gtid + gthreads; e <= known_rows; e += gthreads)
        store_flashmla_split(p, targets, e, __ldg(p.flashmla_num_splits + e));
    } else if (scalars_cta) {
      for (int64_t e = tid; e <= row_base; e += kMetaThreads)
        store_flashmla_split(p, targets, e, __ldg(p.flashmla_num_splits + e));
    }
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

template <class Policy>
cudaError_t launch_build_metadata(const BuildParams& p, int num_sms, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const int64_t items_per_request = build_items_per_request<Policy>(p);
  const int64_t max_items = p.batch * (items_per_request > 0 ? items_per_request : 1);
  const int grid = metadata_grid(max_items + 1, num_sms, Policy::kCtasPerSm);  // + 1: see the scalars
  if (p.error != nullptr) build_metadata_kernel<Policy, true><<<grid, kMetaThreads, 0, stream>>>(p);
  else build_metadata_kernel<Policy, false><<<grid, kMetaThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// Picks the policy from what the host knows: short items while the job has no
// more of them than the item CTAs of a full grid have warps (the last CTA
// holds none; in a batch of one chunk every item is then a first item), else
// long ones.
inline cudaError_t invoke_build_metadata(const BuildParams& p, int num_sms, cudaStream_t stream) {
  static_assert(SmallBuildPolicy::kCtasPerSm == LargeBuildPolicy::kCtasPerSm, "one grid size for both");
  const int64_t small_items = p.batch * build_items_per_request<SmallBuildPolicy>(p);
  const int64_t item_warps = (static_cast<int64_t>(num_sms) * SmallBuildPolicy::kCtasPerSm - 1) * kMetaWarps;
  return small_items > item_warps ? launch_build_metadata<LargeBuildPolicy>(p, num_sms, stream)
                                  : launch_build_metadata<SmallBuildPolicy>(p, num_sms, stream);
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
