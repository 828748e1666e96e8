// The upstream-style baselines behind one interface for both backends: the
// CUDA kernels/copies of bench/baselines (CUDA builds) or their CPU loops.
#pragma once

#include <cstdint>

#include "nsa/common.h"
#include "nsa/metadata.h"

namespace nsa {
namespace cli {
namespace baseline_call {

// Number of copies copy_metadata_per_field makes for these destinations.
int64_t metadata_copies(const MetadataCopyShape& shape, const MetadataSources& src, const MetadataBuffers* dsts,
                        int64_t count);
void copy_metadata_per_field(Backend backend, cudaStream stream, const MetadataCopyShape& shape,
                             const MetadataSources& src, const MetadataBuffers* dsts, int64_t count);
void quantize_k(Backend backend, cudaStream stream, const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0,
                uint8_t* k_fp8, float* scale);
void set_k_and_s(Backend backend, cudaStream stream, uint8_t* cache, const uint8_t* k_fp8, const float* scale,
                 const int64_t* slots, int64_t n);
void gather_k_and_s_per_token(Backend backend, cudaStream stream, const uint8_t* cache, const int32_t* page_table,
                              int64_t table_ld, const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens,
                              uint8_t* out_k, float* out_s);

}  // namespace baseline_call
}  // namespace cli
}  // namespace nsa
