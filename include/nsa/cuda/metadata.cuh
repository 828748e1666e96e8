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
// warp ids interleave CTAs (warp w of CTA c is w * gridDim + c), so
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
// build_metadata: per-CTA redundant scan of the batch (chunks of kMetaThreads
// requests, cub BlockScan in shared memory) + grid-stride fill, one launch.
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
  int64_t max_kv;                // checked mode: largest valid cache length (see build_metadata in metadata.cu)
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

// Per-request quantities scanned across the batch.
struct BuildScan {
  int64_t rows;   // query rows (q_b)
  int64_t kv;     // cache_seqlens (for cu_seqlens_k)
  int64_t nsa;    // sum of nsa_cache_seqlens over the request's rows
  int64_t items;  // page-table warp items
};
struct BuildScanSum {
  __device__ __forceinline__ BuildScan operator()(const BuildScan& a, const BuildScan& b) const {
    return BuildScan{a.rows + b.rows, a.kv + b.kv, a.nsa + b.nsa, a.items + b.items};
  }
};

// Launch shape of build_metadata: int4 groups per lane of a page-table item
// (columns per item = 128 * kVecPerLane) and resident CTAs per SM (the
// register cap of __launch_bounds__). Small jobs want short items (more of
// them, spread over more SMs); large ones want long items and occupancy.
template <int kVecPerLaneT, int kCtasPerSmT>
struct BuildPolicy {
  static constexpr int kVecPerLane = kVecPerLaneT;
  static constexpr int64_t kColsPerItem = 32 * 4 * kVecPerLane;
  static constexpr int kCtasPerSm = kCtasPerSmT;
};
// Measured on an H100 (docs/gpu-report.md): 128-column items win while the job
// has fewer items than the grid has warps; 256-column items beyond. Longer
// items and 3 CTAs per SM (register spills) lost in most cases.
using SmallBuildPolicy = BuildPolicy<1, 2>;
using LargeBuildPolicy = BuildPolicy<2, 2>;

// One page-table item: columns [c0, c0 + kColsPerItem) of one request, loaded
// once, stored into its q rows (starting at row0) of every destination, plus
// the real_page_table entries of the page starts among those columns.
template <class Policy>
__device__ __forceinline__ void build_page_item(const BuildParams& p, const MetadataBuffers* targets,
                                                const int32_t* __restrict__ src, int64_t len, int64_t c0, int64_t row0,
                                                int64_t q, int lane) {
  const bool src_vec = aligned16(src);
  int4 v[Policy::kVecPerLane];
#pragma unroll
  for (int k = 0; k < Policy::kVecPerLane; ++k) v[k] = load_group(src, c0 + 4 * (lane + 32 * k), len, src_vec);
  for (int64_t d = 0; d < p.num_targets; ++d) {
    const MetadataBuffers& t = targets[d];
    int32_t* const table = t.page_table_1;
    const int64_t ld = t.page_table_1_ld;
    int32_t* const real = t.real_page_table;
    const int64_t real_ld = t.real_page_table_ld;
    for (int64_t j = 0; j < q; ++j) {
      int32_t* dst = table + (row0 + j) * ld;
      const bool dst_vec = aligned16(dst);
#pragma unroll
      for (int k = 0; k < Policy::kVecPerLane; ++k) store_group(dst, c0 + 4 * (lane + 32 * k), len, dst_vec, v[k]);
      if (real == nullptr) continue;
      int32_t* real_row = real + (row0 + j) * real_ld;
#pragma unroll
      for (int k = 0; k < Policy::kVecPerLane; ++k) {
        const int64_t c = c0 + 4 * (lane + 32 * k);
#pragma unroll
        for (int e = 0; e < 4; ++e) {  // real[r, page] = first slot of the page / P
          if (c + e < len && starts_page(p, c + e))
            real_row[page_of(p, c + e)] = static_cast<int32_t>(page_of(p, group_elem(v[k], e)));
        }
      }
    }
  }
}

// FlashMLA schedule: `count` split counts from index 0 and the tile table,
// broadcast to the destinations that have the fields.
__device__ __forceinline__ void copy_flashmla(const BuildParams& p, const MetadataBuffers* targets, int64_t splits,
                                              bool tiles) {
  const int64_t gtid = static_cast<int64_t>(blockIdx.x) * kMetaThreads + threadIdx.x;
  const int64_t gthreads = static_cast<int64_t>(gridDim.x) * kMetaThreads;
  if (p.flashmla_num_splits != nullptr) {
    for (int64_t i = gtid; i < splits; i += gthreads) {
      const int32_t v = __ldg(p.flashmla_num_splits + i);
      for (int64_t d = 0; d < p.num_targets; ++d) {
        int32_t* dst = targets[d].flashmla_num_splits;
        if (dst != nullptr) dst[i] = v;
      }
    }
  }
  if (tiles && p.flashmla_metadata != nullptr) {
    for (int64_t i = gtid; i < p.flashmla_metadata_max; i += gthreads) {
      const int32_t v = __ldg(p.flashmla_metadata + i);
      for (int64_t d = 0; d < p.num_targets; ++d) {
        const MetadataBuffers& t = targets[d];
        if (t.flashmla_metadata != nullptr && i < t.flashmla_metadata_size) t.flashmla_metadata[i] = v;
      }
    }
  }
}

// build_metadata: per-CTA redundant scan of the batch (chunks of kMetaThreads
// requests, cub BlockScan in shared memory) + grid-stride fill, one launch.
// The chain for a small batch: {inputs, descriptors, FlashMLA} loads -> scan
// -> req_to_token row loads -> stores.
// kChecked: requests with an invalid cache length, request row or extend
// length are recorded in p.error and write no page-table rows (an invalid
// extend length also counts as 0 query rows, so no row of it is written).
template <class Policy, bool kChecked>
__global__ void __launch_bounds__(kMetaThreads, Policy::kCtasPerSm) build_metadata_kernel(const __grid_constant__ BuildParams p) {
  constexpr int64_t kColsPerItem = Policy::kColsPerItem;
  using Scan = cub::BlockScan<BuildScan, kMetaThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t s_item_start[kMetaThreads];
  __shared__ int64_t s_row_start[kMetaThreads];
  __shared__ int64_t s_src_offset[kMetaThreads];  // rpi * ld
  __shared__ int64_t s_len[kMetaThreads];
  __shared__ int64_t s_q[kMetaThreads];
  __shared__ int64_t s_nsa_start[kMetaThreads];  // nsa_cu_seqlens_k before each request's rows
  __shared__ MetadataBuffers s_targets[kMaxSharedTargets];

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int64_t grid_warps = static_cast<int64_t>(gridDim.x) * kMetaWarps;
  const int64_t my_warp = static_cast<int64_t>(tid >> 5) * gridDim.x + blockIdx.x;
  const bool decode = p.mode == static_cast<int32_t>(ForwardMode::kDecode);
  const bool verify = p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify);
  const int64_t draft = verify ? p.draft_tokens : 0;

  // Inputs of request b: cache_seqlens (int32 by definition), query rows,
  // req_to_token row; `table_ok` = its page-table rows may be written.
  auto load_request = [&](int64_t b, int64_t& kv, int64_t& q, int64_t& rpi, bool& table_ok) {
    const int64_t kv64 = load_index(p.seq_lens, p.seq_lens_64, b) + draft;
    kv = static_cast<int32_t>(kv64);
    q = decode ? 1 : verify ? p.draft_tokens : load_index(p.extend_lens, p.extend_lens_64, b);
    rpi = load_index(p.req_pool_indices, p.req_pool_indices_64, b);
    table_ok = true;
    if constexpr (kChecked) {
      if (q < 0 || q > p.draft_tokens) {
        record_error(p.error, OpId::kBuildMetadata, ArgId::kExtendLens, b, q);
        q = 0;
      }
      if (kv64 < 0 || kv64 > p.max_kv) {  // checked before the int32 narrowing
        record_error(p.error, OpId::kBuildMetadata, ArgId::kSeqLens, b, kv64);
        table_ok = false;
      }
      if (rpi < 0 || rpi >= p.req_to_token_rows) {
        record_error(p.error, OpId::kBuildMetadata, ArgId::kReqPoolIndices, b, rpi);
        table_ok = false;
      }
    }
  };
  // The first chunk's inputs, the descriptors and (where R is known on the
  // host) the FlashMLA schedule are loaded together: one round trip.
  int64_t first_kv = 0, first_q = 0, first_rpi = 0;
  bool first_ok = true;
  if (tid < p.batch) load_request(tid, first_kv, first_q, first_rpi, first_ok);
  const MetadataBuffers* targets = stage_targets<kMetaThreads>(p.targets, p.num_targets, s_targets);
  __syncthreads();
  const int64_t known_rows = decode ? p.batch : verify ? p.batch * p.draft_tokens : -1;
  copy_flashmla(p, targets, known_rows + 1, true);  // DRAFT_EXTEND: split counts after the scan

  // Element 0 of the cumulative arrays (spec §5.2: 0, written once at capture; we write it every call).
  if (blockIdx.x == 0) {
    for (int64_t d = tid; d < p.num_targets; d += kMetaThreads) {
      targets[d].cu_seqlens_k[0] = 0;
      targets[d].nsa_cu_seqlens_k[0] = 0;
    }
  }

  int64_t row_base = 0, kv_base = 0, nsa_base = 0, item_base = 0;
  int64_t chunk_index = 0;
  for (int64_t chunk = 0; chunk < p.batch; chunk += kMetaThreads, ++chunk_index) {
    const int count = static_cast<int>(p.batch - chunk < kMetaThreads ? p.batch - chunk : int64_t{kMetaThreads});
    int64_t kv = 0, q = 0, rpi = 0;
    bool table_ok = true;
    if (chunk == 0) {
      kv = first_kv, q = first_q, rpi = first_rpi, table_ok = first_ok;
    } else if (tid < count) {
      load_request(chunk + tid, kv, q, rpi, table_ok);
    }
    BuildScan mine{0, 0, 0, 0};
    if (tid < count) {
      const int64_t items = (table_ok && q > 0 && kv > 0) ? (kv + kColsPerItem - 1) / kColsPerItem : 0;
      mine = BuildScan{q, kv, clamped_rows_sum(kv, q, p.topk), items};
    }
    BuildScan before, total;
    Scan(scan_storage).ExclusiveScan(mine, before, BuildScan{0, 0, 0, 0}, BuildScanSum(), total);
    s_item_start[tid] = before.items;
    s_row_start[tid] = before.rows;  // within the chunk
    s_src_offset[tid] = rpi * p.req_to_token_ld;
    s_len[tid] = kv;
    s_q[tid] = q;
    s_nsa_start[tid] = nsa_base + before.nsa;
    __syncthreads();

    // Per-request and per-row scalars: written by one CTA per chunk, the
    // requests' fields one thread each, the rows' fields one thread each (a
    // row finds its request by binary search over the row starts).
    if (chunk_index % gridDim.x == blockIdx.x) {
      if (tid < count) {
        const int64_t b = chunk + tid;
        const int64_t cu_k = kv_base + before.kv + kv;
        for (int64_t d = 0; d < p.num_targets; ++d) {
          const MetadataBuffers& t = targets[d];
          t.cache_seqlens[b] = static_cast<int32_t>(kv);
          t.cu_seqlens_k[b + 1] = static_cast<int32_t>(cu_k);
        }
      }
      for (int64_t r = tid; r < total.rows; r += kMetaThreads) {
        int lo = 0, hi = count - 1;  // last request whose first row <= r
        while (lo < hi) {
          const int mid = (lo + hi + 1) >> 1;
          if (s_row_start[mid] <= r) lo = mid;
          else hi = mid - 1;
        }
        const int64_t j = r - s_row_start[lo];  // row within its request
        const int64_t expanded = s_len[lo] - s_q[lo] + 1 + j;
        const int64_t clamped = expanded < p.topk ? expanded : p.topk;
        // nsa_cu_seqlens_k[r + 1]: the request's start plus its first j + 1 clamped rows.
        const int64_t running = s_nsa_start[lo] + clamped_rows_sum(expanded, j + 1, p.topk);
        for (int64_t d = 0; d < p.num_targets; ++d) {
          const MetadataBuffers& t = targets[d];
          if (t.seqlens_expanded != nullptr) t.seqlens_expanded[row_base + r] = static_cast<int32_t>(expanded);
          t.nsa_cache_seqlens[row_base + r] = static_cast<int32_t>(clamped);
          t.nsa_cu_seqlens_k[row_base + r + 1] = static_cast<int32_t>(running);
        }
      }
    }

    // Page-table items of this chunk, numbered globally (item_base + i) so the
    // round-robin over warps continues across chunks.
    int64_t first = my_warp;
    if (item_base != 0) {
      first = (my_warp - item_base) % grid_warps;
      if (first < 0) first += grid_warps;
    }
    for (int64_t i = first; i < total.items; i += grid_warps) {
      int lo = 0, hi = count - 1;  // last request whose item_start <= i (skips requests without items)
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (s_item_start[mid] <= i) lo = mid;
        else hi = mid - 1;
      }
      build_page_item<Policy>(p, targets, p.req_to_token + s_src_offset[lo], s_len[lo], (i - s_item_start[lo]) * kColsPerItem,
                      row_base + s_row_start[lo], s_q[lo], lane);
    }
    row_base += total.rows;
    kv_base += total.kv;
    nsa_base += total.nsa;
    item_base += total.items;
    __syncthreads();  // shared arrays and scan storage are reused by the next chunk
  }
  if (known_rows < 0) copy_flashmla(p, targets, row_base + 1, false);  // DRAFT_EXTEND: R = sum(e_b)
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

// `req_to_token_cols` bounds every row length (precondition), so it bounds the
// page-table items without reading device data.
template <class Policy>
cudaError_t launch_build_metadata(const BuildParams& p, int64_t req_to_token_cols, int num_sms, cudaStream_t stream) {
  if (p.batch == 0) return cudaSuccess;
  const int64_t items_per_request = (req_to_token_cols + Policy::kColsPerItem - 1) / Policy::kColsPerItem;
  const int64_t max_items = p.batch * (items_per_request > 0 ? items_per_request : 1);
  const int grid = metadata_grid(max_items, num_sms, Policy::kCtasPerSm);
  if (p.error != nullptr) build_metadata_kernel<Policy, true><<<grid, kMetaThreads, 0, stream>>>(p);
  else build_metadata_kernel<Policy, false><<<grid, kMetaThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// Picks the policy from what the host knows: with more short items than the
// grid has resident warps, long items; else short ones (more SMs storing).
inline cudaError_t invoke_build_metadata(const BuildParams& p, int64_t req_to_token_cols, int num_sms,
                                         cudaStream_t stream) {
  const int64_t small_items = p.batch * ((req_to_token_cols + SmallBuildPolicy::kColsPerItem - 1) /
                                         SmallBuildPolicy::kColsPerItem);
  const int64_t resident_warps = static_cast<int64_t>(num_sms) * SmallBuildPolicy::kCtasPerSm * kMetaWarps;
  return small_items > resident_warps ? launch_build_metadata<LargeBuildPolicy>(p, req_to_token_cols, num_sms, stream)
                                       : launch_build_metadata<SmallBuildPolicy>(p, req_to_token_cols, num_sms, stream);
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
