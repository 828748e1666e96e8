// Upstream-shaped baseline of copy_metadata, kept only to measure against:
// SGLang's fused copy of precomputed metadata (fused_metadata_copy, and
// fused_metadata_copy_multi for three destinations; spec docs/spec/metadata.md §6.4),
// written from its described behaviour. One launch of 256-thread CTAs, grid
// min(ceil(max_elements / 256), 1024), grid-stride loops of scalar int32
// copies that run the fields one after another; each source element is read
// once and stored to every destination (1 to 3 of them). Index math is 32-bit
// like upstream: the launcher refuses a field of 2^31 elements or more.
//
// Writes the same elements as nsa::copy_metadata (spec §6.2; each destination
// uses its own row strides, where upstream takes destination 0's).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "nsa/metadata.h"

namespace nsa {
namespace baseline {

constexpr int kFusedCopyMaxDests = 3;

// cudaErrorInvalidValue for count outside [1, 3] or a field too large for 32-bit indices.
cudaError_t fused_copy_upstream_style(const MetadataCopyShape& shape, const MetadataSources& src,
                                      const MetadataBuffers* dsts, int count, nsa::cudaStream stream);

}  // namespace baseline
}  // namespace nsa
