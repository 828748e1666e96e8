// topk_transform: the indexer's top-k selection fused with the index
// transform of DeepSeek Sparse Attention (spec: docs/spec/topk.md).
//
// For every score row r, the op selects the K largest of the row's visible
// scores, writes their indices (optionally mapped through a page table, a
// token table or a ragged offset) into slots [0, min(len_r, K)) of the
// caller's int32 output row, and -1 into slots [min(len_r, K), K). Slots past
// K are never touched.
//
//   * Exact: the selected set is the K largest by value; among scores equal
//     to the K-th largest value, the smallest indices win. The set is a pure
//     function of the scores (no dependence on scheduling), so it is the same
//     on every run, stream and rank.
//   * Short rows (len_r <= K): the identity 0 .. len_r - 1; scores are not read.
//   * Order: TopkOrder::kAscending writes the valid prefix in ascending raw
//     index order (byte-identical across runs and ranks). TopkOrder::kAny
//     leaves the order of the prefix unspecified; both backends currently
//     write ascending order in that mode too (callers must not rely on it).
//   * Scores are ordered as floats with -0 == +0; a NaN with the sign bit
//     clear ranks above +inf, one with the sign bit set below -inf (NaNs
//     among themselves by bit pattern). -inf is a legal, selectable score.
//
// Every length decision is made per row on the device: no host maximum, no
// host-side dispatch on lengths, so a captured CUDA graph stays correct and
// fast when the lengths change between replays. Lengths are clamped, never
// trusted: a negative length is 0 and a window is cut at the score width.
// The op never allocates and uses no scratch memory (no workspace). No
// device value can be invalid (see TopkArgs), so Exec::checked is ignored.
#pragma once

#include <cstdint>

#include "nsa/common.h"

namespace nsa {

// The largest K the op accepts (the DSA index_topk; DeepSeek-V4 uses 512/1024).
constexpr int64_t kTopkMaxK = 2048;

enum class ScoreType : int32_t {
  kFloat32 = 0,   // the DSA path (DeepGEMM logits)
  kBfloat16 = 1,  // explicit mode: half the bytes, more ties; raw uint16 bits
};

// Where each row's visible length comes from.
enum class TopkLengths : int32_t {
  // lengths[r] per row. With row_starts, row r sees the window
  // [row_starts[r], row_starts[r] + lengths[r]) (ragged prefill); raw indices
  // are relative to the window start.
  kPerRow = 0,
  // lengths[b] = L_b per request, rows_per_request = N rows per request
  // (decode: N = 1; MTP / target verify: N > 1). Row r = b * N + j sees
  // len = max(0, L_b - N + 1 + j) columns from column 0.
  kPerRequest = 1,
};

// What is written for a selected raw index x (0 <= x < len_r) of row r,
// with q = the row's request (see TopkArgs::row_to_request).
enum class TopkTransform : int32_t {
  kRaw = 0,           // x
  kPaged64 = 1,       // table[q, x >> 6] * 64 + (x & 63)   (64-token page table)
  kTokenTable = 2,    // table[q, x]                        (req_to_token / page_table_1)
  kRaggedOffset = 3,  // x + offsets[r]                     (ragged KV of a prefill)
};

enum class TopkOrder : int32_t {
  kAny = 0,        // order of the valid prefix unspecified (currently ascending)
  kAscending = 1,  // valid prefix sorted by ascending raw index
};

const char* to_string(ScoreType type);
const char* to_string(TopkLengths form);
const char* to_string(TopkTransform mode);
const char* to_string(TopkOrder order);

struct TopkArgs {
  // Scores [rows, width] with row stride score_ld >= width elements, unit
  // column stride; fp32, or bf16 as raw uint16 bits. Only columns inside a
  // row's window are read (columns past it may hold anything).
  const void* scores = nullptr;
  ScoreType score_type = ScoreType::kFloat32;
  int64_t rows = 0;
  int64_t width = 0;  // readable columns per row; every window is cut at it
  int64_t score_ld = 0;

  int64_t k = kTopkMaxK;  // 1 .. kTopkMaxK, a runtime value

  // Visible lengths (device values; clamped, never an error).
  TopkLengths length_form = TopkLengths::kPerRow;
  Indices lengths;               // [rows] (kPerRow) or [ceil(rows / N)] (kPerRequest)
  int64_t rows_per_request = 1;  // N (kPerRequest)
  Indices row_starts;            // optional, kPerRow only: [rows] window starts (clamped to [0, width])

  // The request of row r, for the table transforms: row_to_request[r] when
  // given (flattened rows, prefill tokens), else r / N (kPerRequest) or r
  // (kPerRow: one table row per score row).
  Indices row_to_request;

  // The transform. Table entries and offsets are device values; a slot whose
  // result cannot be a valid int32 index is written as -1: x >> 6 (or x) at or
  // past table_cols, a negative table entry (padding page), a request outside
  // [0, table_rows), or a result outside [0, 2^31).
  TopkTransform transform = TopkTransform::kRaw;
  Indices table;  // [table_rows, table_cols], row stride table_ld
  int64_t table_rows = 0;
  int64_t table_cols = 0;
  int64_t table_ld = 0;
  Indices offsets;  // kRaggedOffset: [rows]

  // Outputs, caller-owned int32 [rows, >= k] with row strides >= k. Slots
  // [0, k) of every row are written; slots past k never are.
  int32_t* out = nullptr;
  int64_t out_ld = 0;
  int32_t* out_raw = nullptr;  // optional: the raw indices (before the transform)
  int64_t out_raw_ld = 0;

  TopkOrder order = TopkOrder::kAny;
};

// Validates every host-visible argument (throws nsa::Error naming it before
// anything is written), then runs on the CPU or enqueues one CUDA launch on
// exec.stream (no allocation, no host sync, graph-capturable).
void topk_transform(const Exec& exec, const TopkArgs& args);

}  // namespace nsa
