// CPU counterpart of the upstream-style metadata baseline (bench/baselines),
// used by `nsa bench` on the CPU backend: one std::memcpy per field per
// destination (per row of a table), as the GPU baseline makes one copy each.
// The index-cache CPU baselines are in the baselines library
// (index_cache_baseline.h, namespace baseline::cpu).
#pragma once

#include <cstdint>

#include "nsa/metadata.h"

namespace nsa {
namespace cli {
namespace cpu_baseline {

// Returns the number of field copies made (the "launches" of this path).
int64_t copy_metadata_per_field(const MetadataCopyShape& shape, const MetadataSources& src, const MetadataBuffers* dsts,
                                int64_t count);

}  // namespace cpu_baseline
}  // namespace cli
}  // namespace nsa
