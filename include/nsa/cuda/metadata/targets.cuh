// How the metadata kernels read the destination descriptors
// (MetadataBuffers, a small device table written once at setup).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

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

// Destinations whose descriptors a warp can hold in its lanes, 4 words each
// (WarpTargets in build_page_items.cuh, WarpScalarTargets in build_scalars.cuh).
// The two stay separate structs: one template for both (tried) compiled to
// the same instructions in a different order, and this split keeps the PTX
// of the kernels unchanged.
constexpr int kWarpTargets = 8;

}  // namespace kernels
}  // namespace nsa
