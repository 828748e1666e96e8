// Reference implementation of the metadata ops: the formulas of docs/spec/metadata.md
// §3/§4 and the plain per-field copies of §6.2, written literally with
// std::vector temporaries. Host memory only, no validation, no speed. Tests
// and benchmark checks compare every backend against these.
#pragma once

#include <cstdint>
#include <vector>

#include "nsa/metadata.h"

namespace nsa {
namespace reference {

// Spec §3 helpers.
std::vector<int32_t> cu(const std::vector<int32_t>& x);                                       // [0, x0, x0+x1, ...]
std::vector<int32_t> clamp_topk(const std::vector<int32_t>& x, int64_t topk);                 // min(x, topk)
std::vector<int32_t> expand(const std::vector<int32_t>& qo, const std::vector<int32_t>& kv);  // kv_b - qo_b + 1 + j

// DeepGEMM's paged-MQA schedule (spec §10), int32 [num_sms + 1, 2] flattened,
// from the per-request lengths as the logits kernel reads them.
std::vector<int32_t> paged_mqa_schedule(const std::vector<int32_t>& lens, int64_t next_n, int64_t num_sms,
                                        PagedMqaLayout layout, bool clamp_min_len);

// build_metadata into `count` destination sets (host pointers).
void build_metadata(const MetadataConfig& config, const MetadataInputs& inputs, const MetadataBuffers* targets,
                    int64_t count);

// copy_metadata: a loop of per-field copies into `count` destination sets.
void copy_metadata(const MetadataCopyShape& shape, const MetadataSources& sources, const MetadataBuffers* targets,
                   int64_t count);

}  // namespace reference
}  // namespace nsa
