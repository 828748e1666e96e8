// NSA attention metadata for DECODE, TARGET_VERIFY and DRAFT_EXTEND
// (spec: metadata.md). Two ops, each writing into any number of destination
// sets (the captured CUDA-graph buffers of one attention backend each):
//
//   build_metadata  computes every field on the device from seq_lens,
//                   req_pool_indices, req_to_token (and the extend lengths in
//                   DRAFT_EXTEND) and writes all destinations in ONE launch.
//                   No host value derived from device data is needed, so the
//                   call is graph-capturable as is.
//   copy_metadata   the upstream fused copy of precomputed fields (SGLang
//                   fused_metadata_copy / _multi), all modes, any count.
//
// Destinations are described once by MetadataBuffers (device pointers,
// capacities, row strides) and uploaded into a small caller-owned table
// (upload_metadata_targets); the number of destinations is a runtime value.
// All index math is 64-bit. All metadata tensors are int32.
#pragma once

#include <cstddef>
#include <cstdint>

#include "nsa/common.h"

namespace nsa {

enum class ForwardMode : int32_t { kDecode = 0, kTargetVerify = 1, kDraftExtend = 2 };
const char* to_string(ForwardMode mode);

// Per-call shape of a build. Rows R (query rows, one per query token):
//   DECODE: R = bs;  TARGET_VERIFY: R = bs * N;  DRAFT_EXTEND: R = sum(e_b) <= bs * N.
struct MetadataConfig {
  ForwardMode mode = ForwardMode::kDecode;
  int64_t batch_size = 0;    // bs (under CUDA graphs: the captured, padded size)
  int64_t draft_tokens = 1;  // N: TARGET_VERIFY query tokens per request; DRAFT_EXTEND max e_b
  int64_t topk = 2048;       // index_topk: nsa_cache_seqlens = min(expanded, topk); 1..INT32_MAX
  int64_t page_size = 64;    // P of real_page_table (page id = slot / P)
};

// One destination set. Optional fields are absent when their pointer is null.
// Capacities are checked against each call's shape before anything is written.
struct MetadataBuffers {
  int32_t* cache_seqlens = nullptr;      // [max_batch]
  int32_t* cu_seqlens_k = nullptr;       // [max_batch + 1]
  int32_t* page_table_1 = nullptr;       // [max_rows, page_table_1_cols], row stride page_table_1_ld
  int64_t page_table_1_cols = 0;         // W
  int64_t page_table_1_ld = 0;           // >= page_table_1_cols
  int32_t* seqlens_expanded = nullptr;   // [max_rows]; optional in DECODE (equals cache_seqlens there)
  int32_t* nsa_cache_seqlens = nullptr;  // [max_rows]
  int32_t* nsa_cu_seqlens_k = nullptr;   // [max_rows + 1]
  int32_t* real_page_table = nullptr;    // optional [max_rows, real_page_table_cols], stride real_page_table_ld
  int64_t real_page_table_cols = 0;
  int64_t real_page_table_ld = 0;
  int32_t* flashmla_num_splits = nullptr;  // optional [max_rows + 1], opaque
  int32_t* flashmla_metadata = nullptr;    // optional [flashmla_metadata_size], opaque tile-scheduler table
  int64_t flashmla_metadata_size = 0;
  int64_t max_rows = 0;                    // capacity of the per-row arrays and page-table rows
  int64_t max_batch = 0;                   // capacity of the per-request arrays: requests (bs) a call may have
};

// Destination table as the ops read it. `host` is the caller's array (kept
// alive by the caller, used for host-side validation); `table` is its copy in
// the exec's memory (device memory for kCuda), read by the kernels.
struct MetadataTargets {
  const MetadataBuffers* host = nullptr;
  const MetadataBuffers* table = nullptr;
  int64_t count = 0;
};

// Bytes of workspace the table of `count` destinations needs.
size_t metadata_targets_workspace_bytes(int64_t count);

// Validates the destination descriptors (non-null mandatory pointers, strides
// >= columns, ...) and copies them into `workspace` (exec's memory; for kCuda
// one cudaMemcpyAsync on exec.stream). Call once per set of graph buffers, at
// setup time, not per step.
MetadataTargets upload_metadata_targets(const Exec& exec, const MetadataBuffers* host, int64_t count,
                                        void* workspace, size_t workspace_bytes);

// Device inputs of build_metadata (spec metadata.md §1).
struct MetadataInputs {
  Indices seq_lens;          // [bs] KV length per request (DRAFT_EXTEND: including the new tokens)
  Indices req_pool_indices;  // [bs] row of each request in req_to_token
  const int32_t* req_to_token = nullptr;  // [req_to_token_rows, req_to_token_cols], row stride req_to_token_ld
  int64_t req_to_token_rows = 0;
  int64_t req_to_token_cols = 0;
  int64_t req_to_token_ld = 0;
  Indices extend_lens;       // DRAFT_EXTEND only: [bs] query tokens per request, 0 <= e_b <= N
  // Optional FlashMLA schedule produced by FlashMLA's own builder, copied
  // unchanged into every destination that has the field.
  const int32_t* flashmla_num_splits = nullptr;  // [R + 1]
  const int32_t* flashmla_metadata = nullptr;    // [flashmla_metadata_size of the destinations]
};

// What build_metadata writes in every destination (R = query rows, L_r = the
// cache_seqlens of row r's request; nothing else is touched):
//   cache_seqlens[0, bs), cu_seqlens_k[0, bs] (element 0 written as 0),
//   seqlens_expanded[0, R) (required in TARGET_VERIFY / DRAFT_EXTEND; in
//   DECODE written only when non-null, with the cache_seqlens values),
//   nsa_cache_seqlens[0, R), nsa_cu_seqlens_k[0, R] (element 0 written as 0),
//   page_table_1 row r columns [0, L_r), real_page_table row r columns
//   [0, ceil(L_r / P)) when present, flashmla_num_splits[0, R] and
//   flashmla_metadata[0, flashmla_metadata_size) when both the input and the
//   destination have the field. Rows >= R (DRAFT_EXTEND) keep stale values.
// Preconditions on device values (the CPU backend checks them and throws;
// CUDA checks them in checked mode, Exec::checked, see docs/checked-mode.md):
//   0 <= req_pool_indices[b] < req_to_token_rows; 0 <= L_b <= req_to_token_cols
//   and <= page_table_1_cols of every destination; ceil(L_b / P) <=
//   real_page_table_cols; DRAFT_EXTEND: 0 <= e_b <= N; cumulative sums fit in
//   int32; flashmla_num_splits holds R + 1 values and flashmla_metadata the
//   largest flashmla_metadata_size of the destinations.
// CUDA checked mode: a request with a bad length or request row writes no
// page-table rows (its per-request and per-row scalars are still written); a
// bad e_b counts as 0 query rows (nothing of it is written, later rows move up).
void build_metadata(const Exec& exec, const MetadataConfig& config, const MetadataInputs& inputs,
                    const MetadataTargets& targets);

// Precomputed sources of copy_metadata (spec metadata.md §6.2), contiguous
// unless a row stride is given.
struct MetadataSources {
  const int32_t* cache_seqlens = nullptr;     // [bs]
  const int32_t* cu_seqlens_k = nullptr;      // [bs + 1]
  const int32_t* page_table_1 = nullptr;      // [rows, cols], row stride page_table_1_ld (0 = cols)
  int64_t page_table_1_ld = 0;
  const int32_t* seqlens_expanded = nullptr;  // optional [E]
  const int32_t* nsa_cache_seqlens = nullptr; // [bs (DECODE) or E]
  const int32_t* nsa_cu_seqlens_k = nullptr;  // [bs + 1 (DECODE) or E + 1]
  const int32_t* real_page_table = nullptr;   // optional [rows, real_page_table_cols], stride (0 = cols)
  int64_t real_page_table_cols = 0;
  int64_t real_page_table_ld = 0;
  const int32_t* flashmla_num_splits = nullptr;  // optional [bs + 1 (DECODE) or E + 1]
  const int32_t* flashmla_metadata = nullptr;    // optional [flashmla_metadata_size]
  int64_t flashmla_metadata_size = 0;
};

// Sizes of a copy, exactly as upstream passes them.
struct MetadataCopyShape {
  ForwardMode mode = ForwardMode::kDecode;
  int64_t batch_size = 0;             // bs
  int64_t max_len = 0;                // DECODE page_table_1 columns copied
  int64_t max_seqlen_k = 0;           // TARGET_VERIFY / DRAFT_EXTEND page_table_1 columns copied
  int64_t seqlens_expanded_size = 0;  // E (rows of the per-row arrays outside DECODE)
};

// copy_metadata writes exactly what the per-field copies of spec §6.2 write:
// rows of page_table_1 and real_page_table = bs (DECODE) or E (TARGET_VERIFY,
// DRAFT_EXTEND; upstream's source shape[0], bs*N or T); element 0 of
// cu_seqlens_k / nsa_cu_seqlens_k untouched; num_splits copied from index 0;
// seqlens_expanded never copied in DECODE. An optional field is copied into
// every destination that has it when its source is given.
void copy_metadata(const Exec& exec, const MetadataCopyShape& shape, const MetadataSources& sources,
                   const MetadataTargets& targets);

}  // namespace nsa
