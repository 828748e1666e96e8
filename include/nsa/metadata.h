// NSA attention metadata for DECODE, TARGET_VERIFY and DRAFT_EXTEND
// (spec: docs/spec/metadata.md). Two ops, each writing into any number of destination
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
#include <memory>

#include "nsa/common.h"

namespace nsa {

enum class ForwardMode : int32_t { kDecode = 0, kTargetVerify = 1, kDraftExtend = 2 };
const char* to_string(ForwardMode mode);

// Layout generation of the DeepGEMM paged-MQA schedule (docs/spec/metadata.md
// §10): the DeepGEMM the logits kernel comes from decides which one it reads.
//   kG4: DeepGEMM >= 88965b0 (2026-06) and sgl-deep-gemm 0.2.5: next_n atoms,
//        the remainder units go to the LAST SMs, idle SMs start at unit 0.
//   kG1: DeepGEMM <= 477618c (v2.1.x): no atoms, the remainder goes to the
//        FIRST SMs, idle SMs start at the end sentinel.
enum class PagedMqaLayout : int32_t { kG4 = 0, kG1 = 1 };

// Per-call shape of a build. Rows R (query rows, one per query token):
//   DECODE: R = bs;  TARGET_VERIFY: R = bs * N;  DRAFT_EXTEND: R = sum(e_b) <= bs * N.
struct MetadataConfig {
  ForwardMode mode = ForwardMode::kDecode;
  int64_t batch_size = 0;    // bs (under CUDA graphs: the captured, padded size)
  int64_t draft_tokens = 1;  // N: TARGET_VERIFY query tokens per request; DRAFT_EXTEND max e_b
  int64_t topk = 2048;       // index_topk: nsa_cache_seqlens = min(expanded, topk); 1..INT32_MAX
  int64_t page_size = 64;    // P of real_page_table (page id = slot / P)
  // DeepGEMM paged-MQA schedule (destinations with paged_mqa_schedule only):
  // its layout generation, and whether every length counts as at least 1 in
  // it (the all-zero-lengths hazard; the logits kernel's context_lens must
  // then be clamped the same way, see docs/spec/metadata.md §10.3).
  PagedMqaLayout paged_mqa_layout = PagedMqaLayout::kG4;
  bool paged_mqa_clamp_min_len = false;
};

// One destination set. Optional fields are absent when their pointer is null.
// Capacities are checked against each call's shape before anything is written.
struct MetadataBuffers {
  int32_t* cache_seqlens = nullptr;     // [max_batch]
  int32_t* cu_seqlens_k = nullptr;      // [max_batch + 1]
  int32_t* page_table_1 = nullptr;      // [max_rows, page_table_1_cols], row stride page_table_1_ld
  int64_t page_table_1_cols = 0;        // W
  int64_t page_table_1_ld = 0;          // >= page_table_1_cols
  int32_t* seqlens_expanded = nullptr;  // [max_rows]; optional in DECODE (gets the cache_seqlens values; its own array)
  int32_t* nsa_cache_seqlens = nullptr;  // [max_rows]
  int32_t* nsa_cu_seqlens_k = nullptr;   // [max_rows + 1]
  int32_t* real_page_table = nullptr;    // optional [max_rows, real_page_table_cols], stride real_page_table_ld
  int64_t real_page_table_cols = 0;
  int64_t real_page_table_ld = 0;
  int32_t* flashmla_num_splits = nullptr;  // optional [max_rows + 1], opaque
  int32_t* flashmla_metadata = nullptr;    // optional [flashmla_metadata_size], opaque tile-scheduler table
  int64_t flashmla_metadata_size = 0;
  // optional [paged_mqa_num_sms + 1, 2], contiguous: DeepGEMM's paged-MQA
  // schedule (get_paged_mqa_logits_metadata) for the logits kernel's SM count.
  int32_t* paged_mqa_schedule = nullptr;
  int64_t paged_mqa_num_sms = 0;  // >= 1 when paged_mqa_schedule is given
  int64_t max_rows = 0;           // capacity of the per-row arrays and page-table rows
  int64_t max_batch = 0;          // capacity of the per-request arrays: requests (bs) a call may have
};

// The fields of a destination set, in MetadataBuffers order: one row per
// field with its name, its pointer member, its extent (what its length is
// counted in) and whether it may be absent. Code that treats every field the
// same way (allocation, poisoning, descriptors, bindings) walks this table.
enum class MetadataExtent : int32_t {
  kBatch,          // [max_batch]              per request
  kBatchPlusOne,   // [max_batch + 1]          per request, cumulative
  kRows,           // [max_rows]               per query row
  kRowsPlusOne,    // [max_rows + 1]           per query row, cumulative (or FlashMLA's R + 1)
  kPageTable1,     // [max_rows, page_table_1_cols], row stride page_table_1_ld
  kRealPageTable,  // [max_rows, real_page_table_cols], row stride real_page_table_ld
  kFlashmlaTiles,  // [flashmla_metadata_size], opaque
  kPagedMqaSms,    // [paged_mqa_num_sms + 1, 2]
};

struct MetadataFieldInfo {
  const char* name;
  int32_t* MetadataBuffers::*pointer;
  MetadataExtent extent;
  bool optional;
};

inline constexpr MetadataFieldInfo kMetadataFields[] = {
    {"cache_seqlens", &MetadataBuffers::cache_seqlens, MetadataExtent::kBatch, false},
    {"cu_seqlens_k", &MetadataBuffers::cu_seqlens_k, MetadataExtent::kBatchPlusOne, false},
    {"page_table_1", &MetadataBuffers::page_table_1, MetadataExtent::kPageTable1, false},
    {"seqlens_expanded", &MetadataBuffers::seqlens_expanded, MetadataExtent::kRows, true},
    {"nsa_cache_seqlens", &MetadataBuffers::nsa_cache_seqlens, MetadataExtent::kRows, false},
    {"nsa_cu_seqlens_k", &MetadataBuffers::nsa_cu_seqlens_k, MetadataExtent::kRowsPlusOne, false},
    {"real_page_table", &MetadataBuffers::real_page_table, MetadataExtent::kRealPageTable, true},
    {"flashmla_num_splits", &MetadataBuffers::flashmla_num_splits, MetadataExtent::kRowsPlusOne, true},
    {"flashmla_metadata", &MetadataBuffers::flashmla_metadata, MetadataExtent::kFlashmlaTiles, true},
    {"paged_mqa_schedule", &MetadataBuffers::paged_mqa_schedule, MetadataExtent::kPagedMqaSms, true},
};
inline constexpr int kMetadataFieldCount = static_cast<int>(sizeof(kMetadataFields) / sizeof(kMetadataFields[0]));

// Index of each field in kMetadataFields (and its bit in MetadataTargets' field masks).
enum class MetadataField : int32_t {
  kCacheSeqlens,
  kCuSeqlensK,
  kPageTable1,
  kSeqlensExpanded,
  kNsaCacheSeqlens,
  kNsaCuSeqlensK,
  kRealPageTable,
  kFlashmlaNumSplits,
  kFlashmlaMetadata,
  kPagedMqaSchedule,
};
constexpr uint32_t metadata_field_bit(MetadataField f) { return 1u << static_cast<int>(f); }

// Elements a destination's field spans at full capacity (0 for a table with no row).
inline int64_t metadata_field_elements(const MetadataBuffers& b, MetadataExtent e) {
  switch (e) {
    case MetadataExtent::kBatch: return b.max_batch;
    case MetadataExtent::kBatchPlusOne: return b.max_batch + 1;
    case MetadataExtent::kRows: return b.max_rows;
    case MetadataExtent::kRowsPlusOne: return b.max_rows + 1;
    case MetadataExtent::kPageTable1:
      return b.max_rows > 0 ? (b.max_rows - 1) * b.page_table_1_ld + b.page_table_1_cols : 0;
    case MetadataExtent::kRealPageTable:
      return b.max_rows > 0 ? (b.max_rows - 1) * b.real_page_table_ld + b.real_page_table_cols : 0;
    case MetadataExtent::kFlashmlaTiles: return b.flashmla_metadata_size;
    case MetadataExtent::kPagedMqaSms: return b.paged_mqa_num_sms > 0 ? 2 * (b.paged_mqa_num_sms + 1) : 0;
  }
  return 0;
}

// A capacity or width of a destination table: the smallest value over the
// destinations that have the field, and the first destination holding it
// (named in error messages). index -1: no destination has the field.
struct MetadataBound {
  int64_t value = 0;
  int64_t index = -1;
};

namespace detail {
struct MetadataTargetsHost;  // host copy of the validated descriptors (src/metadata.cpp)
}

// A validated, uploaded destination table: what the ops take. Returned by
// upload_metadata_targets; copies are cheap and share the host state.
// The caller keeps alive: the workspace (`table` points into it) and every
// destination buffer the descriptors point to. The descriptor array passed to
// upload_metadata_targets may be freed after the call.
struct MetadataTargets {
  const MetadataBuffers* table = nullptr;  // the descriptors in the exec's memory, read by the kernels
  int64_t count = 0;                       // destination sets
  Backend backend = Backend::kCpu;         // exec backend of the upload: memory `table` lives in
  // What every call is checked against (O(1) per call, whatever the count):
  MetadataBound max_batch;                      // smallest per-request capacity
  MetadataBound max_rows;                       // smallest per-row capacity
  MetadataBound page_table_1_cols;              // narrowest page_table_1
  MetadataBound real_page_table_cols;           // narrowest real_page_table (destinations having one)
  MetadataBound flashmla_metadata_size;         // smallest tile table (destinations having one)
  int64_t flashmla_metadata_max = 0;            // largest tile table: what a build reads from its input
  uint32_t fields_all = 0;                      // metadata_field_bit of each field every destination has
  uint32_t fields_any = 0;                      // ... that at least one destination has
  int64_t first_without_seqlens_expanded = -1;  // a destination lacking it (TARGET_VERIFY/DRAFT_EXTEND need it)
  std::shared_ptr<const detail::MetadataTargetsHost> host;  // descriptors and argument names, for overlap checks
};

// Bytes of workspace the table of `count` destinations needs.
size_t metadata_targets_workspace_bytes(int64_t count);

// Validates the destination descriptors (non-null mandatory pointers, strides
// >= columns, capacities >= 0, ...), copies them into `workspace` (exec's
// memory; for kCuda one cudaMemcpyAsync on exec.stream) and returns the
// table with its summary. Call once per set of graph buffers, at setup time,
// not per step (it allocates the small host state the result shares).
MetadataTargets upload_metadata_targets(const Exec& exec, const MetadataBuffers* host, int64_t count, void* workspace,
                                        size_t workspace_bytes);

// The validated descriptor of destination `d` of `targets` (its host copy).
const MetadataBuffers& metadata_target(const MetadataTargets& targets, int64_t d);

// Device inputs of build_metadata (spec docs/spec/metadata.md §1).
struct MetadataInputs {
  Indices seq_lens;                       // [bs] KV length per request (DRAFT_EXTEND: including the new tokens)
  Indices req_pool_indices;               // [bs] row of each request in req_to_token
  const int32_t* req_to_token = nullptr;  // [req_to_token_rows, req_to_token_cols], row stride req_to_token_ld
  int64_t req_to_token_rows = 0;
  int64_t req_to_token_cols = 0;
  int64_t req_to_token_ld = 0;
  Indices extend_lens;  // DRAFT_EXTEND only: [bs] query tokens per request, 0 <= e_b <= N
  // Optional FlashMLA schedule produced by FlashMLA's own builder, copied
  // unchanged into every destination that has the field. Each length is
  // required when its pointer is given and some destination has the field.
  const int32_t* flashmla_num_splits = nullptr;  // [flashmla_num_splits_size >= R + 1]
  const int32_t* flashmla_metadata = nullptr;    // [flashmla_metadata_size >= the largest destination's]
  int64_t flashmla_num_splits_size = 0;
  int64_t flashmla_metadata_size = 0;
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
//   destination have the field, and all of paged_mqa_schedule (one schedule
//   row per request, lengths = cache_seqlens, next_n = 1 in DECODE, N
//   otherwise: docs/spec/metadata.md §10). Rows >= R (DRAFT_EXTEND) keep
//   stale values.
// Preconditions on device values (the CPU backend checks them and throws;
// CUDA checks them in checked mode, Exec::checked, see docs/checked-mode.md):
//   0 <= req_pool_indices[b] < req_to_token_rows; 0 <= L_b <= req_to_token_cols
//   and <= page_table_1_cols of every destination; ceil(L_b / P) <=
//   real_page_table_cols; DRAFT_EXTEND: 0 <= e_b <= N and R + 1 <=
//   flashmla_num_splits_size (the host checks it in DECODE / TARGET_VERIFY,
//   where R is known, and the CPU backend in DRAFT_EXTEND); cumulative sums
//   fit in int32.
// No destination array may overlap an input or another destination array
// (checked on the host over the byte ranges this call reads and writes).
// CUDA checked mode: a request with a bad length or request row writes no
// page-table rows (its per-request and per-row scalars are still written); a
// bad e_b counts as 0 query rows (nothing of it is written, later rows move up).
void build_metadata(const Exec& exec, const MetadataConfig& config, const MetadataInputs& inputs,
                    const MetadataTargets& targets);

// DeepGEMM's get_paged_mqa_logits_metadata on its own: the schedule that
// build_metadata writes into a destination's paged_mqa_schedule, from
// lengths given directly (docs/spec/metadata.md §10.4). One CTA on CUDA.
struct PagedMqaScheduleArgs {
  const int32_t* context_lens = nullptr;  // [batch, next_n], row stride context_lens_ld; column next_n - 1 is read
  int64_t batch = 0;
  int64_t next_n = 1;           // query rows per request (N)
  int64_t context_lens_ld = 0;  // 0: next_n (contiguous)
  int64_t num_sms = 0;          // SMs of the logits kernel, 1 .. 2^20
  PagedMqaLayout layout = PagedMqaLayout::kG4;
  bool clamp_min_len = false;
  int32_t* schedule = nullptr;  // [num_sms + 1, 2], contiguous; every element written (batch 0: zeros)
};
void paged_mqa_schedule(const Exec& exec, const PagedMqaScheduleArgs& args);

// Precomputed sources of copy_metadata (spec docs/spec/metadata.md §6.2), contiguous
// unless a row stride is given.
struct MetadataSources {
  const int32_t* cache_seqlens = nullptr;  // [bs]
  const int32_t* cu_seqlens_k = nullptr;   // [bs + 1]
  const int32_t* page_table_1 = nullptr;   // [rows, cols], row stride page_table_1_ld (0 = cols)
  int64_t page_table_1_ld = 0;
  const int32_t* seqlens_expanded = nullptr;   // optional [E]
  const int32_t* nsa_cache_seqlens = nullptr;  // [bs (DECODE) or E]
  const int32_t* nsa_cu_seqlens_k = nullptr;   // [bs + 1 (DECODE) or E + 1]
  const int32_t* real_page_table = nullptr;    // optional [rows, real_page_table_cols], stride (0 = cols)
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

// copy_metadata writes exactly what the per-field copies of spec §6.2 write
// (no written range may overlap a source or another written range):
// rows of page_table_1 and real_page_table = bs (DECODE) or E (TARGET_VERIFY,
// DRAFT_EXTEND; upstream's source shape[0], bs*N or T); element 0 of
// cu_seqlens_k / nsa_cu_seqlens_k untouched; num_splits copied from index 0;
// seqlens_expanded never copied in DECODE. An optional field is copied into
// every destination that has it when its source is given; paged_mqa_schedule
// has no source and is never written by a copy (build_metadata computes it).
void copy_metadata(const Exec& exec, const MetadataCopyShape& shape, const MetadataSources& sources,
                   const MetadataTargets& targets);

}  // namespace nsa
