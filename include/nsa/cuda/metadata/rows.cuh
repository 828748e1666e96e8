// Row-chunk load and store helpers shared by the build and copy kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nsa {
namespace kernels {

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

// Element e of a group of 4 columns.
__device__ __forceinline__ int32_t group_elem(const int4& v, int e) {
  return e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
}

}  // namespace kernels
}  // namespace nsa
