// Backend entry points of the metadata ops. The public API (metadata.cpp)
// validates everything first; backends never validate again and never allocate.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "nsa/metadata.h"

namespace nsa {

namespace detail {
// Host state of an uploaded table, shared by every copy of its MetadataTargets.
struct MetadataTargetsHost {
  std::vector<MetadataBuffers> descriptors;  // as validated by upload_metadata_targets
  std::vector<std::string> names;            // "targets[d].<field>", [d * kMetadataFieldCount + field]
  const char* name(int64_t d, MetadataField f) const {
    return names[static_cast<size_t>(d * kMetadataFieldCount + static_cast<int>(f))].c_str();
  }
  // Every destination field at full capacity, [begin, end), sorted by begin.
  // When they are pairwise disjoint (any sane set of graph buffers), what one
  // call writes is too, and a call only has to keep its inputs off these
  // spans (O(inputs * log spans)); otherwise every call checks its own ranges.
  struct Span {
    uintptr_t begin, end;
  };
  std::vector<Span> spans;
  bool spans_disjoint = false;
};
}  // namespace detail

namespace cpu {
void build_metadata(int threads, const MetadataConfig& config, const MetadataInputs& inputs,
                    const MetadataTargets& targets);
void copy_metadata(int threads, const MetadataCopyShape& shape, const MetadataSources& sources,
                   const MetadataTargets& targets);
void paged_mqa_schedule(const PagedMqaScheduleArgs& args);
}  // namespace cpu

namespace cuda {
// One cudaMemcpyAsync of `count` descriptors into device memory `workspace`.
void upload_metadata_targets(cudaStream stream, const MetadataBuffers* host, int64_t count, void* workspace);
// `checked` (device memory) non-null: validate device values and record violations there.
void build_metadata(cudaStream stream, DeviceError* checked, const MetadataConfig& config, const MetadataInputs& inputs,
                    const MetadataTargets& targets);
void copy_metadata(cudaStream stream, const MetadataCopyShape& shape, const MetadataSources& sources,
                   const MetadataTargets& targets);
void paged_mqa_schedule(cudaStream stream, const PagedMqaScheduleArgs& args);
}  // namespace cuda

// Rows of the per-row arrays and page tables one call writes at most
// (capacity needed in every destination): bs (DECODE) or bs * N.
inline int64_t metadata_row_capacity(const MetadataConfig& c) {
  return c.mode == ForwardMode::kDecode ? c.batch_size : c.batch_size * c.draft_tokens;
}

// Rows of the page tables and per-row arrays copied by copy_metadata: bs in
// DECODE, E otherwise. Upstream takes the page-table rows from the source
// tensor's shape[0], which is bs*N (TARGET_VERIFY) or T (DRAFT_EXTEND), i.e.
// E in both cases (spec §6.1); the real page table uses the same row count.
inline int64_t copy_rows(const MetadataCopyShape& s) {
  return s.mode == ForwardMode::kDecode ? s.batch_size : s.seqlens_expanded_size;
}
// Columns of page_table_1 copied: max_len (DECODE) or max_seqlen_k.
inline int64_t copy_page_cols(const MetadataCopyShape& s) {
  return s.mode == ForwardMode::kDecode ? s.max_len : s.max_seqlen_k;
}

}  // namespace nsa
