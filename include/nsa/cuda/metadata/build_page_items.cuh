// Page-table items of build_metadata: a warp loads kColsPerItem columns of a
// req_to_token row once and stores them into every query row of the request
// in every destination, with the real_page_table entries of its page starts.
// Shared by both item paths (build_items_one_pass.cuh, build_items_chunked.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/cuda/metadata/rows.cuh"
#include "nsa/cuda/metadata/targets.cuh"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

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

}  // namespace kernels
}  // namespace nsa
