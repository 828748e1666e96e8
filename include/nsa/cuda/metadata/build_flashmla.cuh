// FlashMLA schedule elements of build_metadata: copied unchanged into every
// destination that has the field.
#pragma once

#include <cstdint>

#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/metadata.h"

namespace nsa {
namespace kernels {

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

}  // namespace kernels
}  // namespace nsa
