// CPU counterparts of the upstream-style baselines (bench/baselines), used by
// `nsa bench` on the CPU backend. Single-threaded loops with the same
// structure as the GPU baselines: one std::memcpy per field per destination
// (per row of a table), quantize into a staging buffer then store per token,
// and a per-token gather that finds each token's request by binary search.
#pragma once

#include <cstdint>

#include "nsa/metadata.h"

namespace nsa {
namespace cli {
namespace cpu_baseline {

// Returns the number of field copies made (the "launches" of this path).
int64_t copy_metadata_per_field(const MetadataCopyShape& shape, const MetadataSources& src,
                                const MetadataBuffers* dsts, int64_t count);

void quantize_k(const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0, uint8_t* k_fp8, float* scale);
void set_k_and_s(uint8_t* cache, const uint8_t* k_fp8, const float* scale, const int64_t* slots, int64_t n);

void gather_k_and_s_per_token(const uint8_t* cache, const int32_t* page_table, int64_t table_ld,
                              const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens, uint8_t* out_k,
                              float* out_s);

}  // namespace cpu_baseline
}  // namespace cli
}  // namespace nsa
