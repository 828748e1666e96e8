// Paged FP8 indexer-K cache of DeepSeek Sparse Attention (spec: indexer-cache.md).
//
// One buffer per layer, uint8[num_pages][8448]. A page holds 64 tokens: first
// all 64 x 128 fp8 e4m3 K bytes (token-major), then all 64 fp32 scales. The
// layout is byte-identical to SGLang, vLLM (block size 64) and DeepGEMM.
//
// Every function validates its host-visible arguments, then runs on the CPU or
// enqueues one CUDA launch on exec.stream (no allocation, no host sync, graph-
// capturable). Device-resident values (slots, page ids, lengths) are
// preconditions: out-of-range values are undefined behaviour on CUDA.
#pragma once

#include <cstdint>

#include "nsa/common.h"

namespace nsa {

struct IndexCacheLayout {
  static constexpr int64_t kPageSize = 64;                          // tokens per page
  static constexpr int64_t kHeadDim = 128;                          // fp8 bytes of K per token
  static constexpr int64_t kScaleBytes = 4;                         // one fp32 scale per token
  static constexpr int64_t kKBytesPerPage = kPageSize * kHeadDim;   // 8192
  static constexpr int64_t kBytesPerPage = kPageSize * (kHeadDim + kScaleBytes);  // 8448

  // Byte offset of K byte 0 / of the scale of `slot` (slot >= 0). 64-bit on purpose:
  // page * 8448 passes 2^31 from page 254,201.
  static constexpr int64_t k_offset(int64_t slot) {
    return (slot / kPageSize) * kBytesPerPage + (slot % kPageSize) * kHeadDim;
  }
  static constexpr int64_t scale_offset(int64_t slot) {
    return (slot / kPageSize) * kBytesPerPage + kKBytesPerPage + (slot % kPageSize) * kScaleBytes;
  }
};
static_assert(IndexCacheLayout::kBytesPerPage == 8448, "page layout must match SGLang/vLLM/DeepGEMM");

// A layer's cache: `data` points at page 0 and holds num_pages * 8448 bytes.
struct IndexCache {
  uint8_t* data = nullptr;
  int64_t num_pages = 0;
};
struct ConstIndexCache {
  const uint8_t* data = nullptr;
  int64_t num_pages = 0;
  ConstIndexCache() = default;
  ConstIndexCache(const uint8_t* d, int64_t n) : data(d), num_pages(n) {}
  ConstIndexCache(IndexCache c) : data(c.data), num_pages(c.num_pages) {}  // NOLINT: implicit on purpose
};

// How the per-token fp32 scale is chosen (spec §3).
enum class ScaleMode {
  kFp32,   // s = max(amax, 1e-4) / 448, q = e4m3(x * (1/s))   (SGLang's default fused store)
  kUe8m0,  // s rounded up to a power of two on the bits       (DeepSeek reference, vLLM)
};
const char* to_string(ScaleMode mode);

// ---------------------------------------------------------------------------
// quantize_and_store_k: bf16 K [n, 128] (row stride k_ld >= 128 elements,
// unit column stride; bf16 given as raw uint16 bits) quantized per token and
// written at slots[t] (int64 [n]). A negative slot is skipped (padding).
// Non-finite inputs: NaN and +-Inf do not contribute to amax; +-Inf saturates
// to +-448 (0x7E/0xFE) and NaN becomes 0x7F/0xFF (sign kept), so the scale
// is always finite and positive.
// ---------------------------------------------------------------------------
void quantize_and_store_k(const Exec& exec, IndexCache cache, const uint16_t* k_bf16, int64_t n,
                          int64_t k_ld, const int64_t* slots, ScaleMode mode);

// store_k_and_s (SGLang SetKAndS): already-quantized fp8 K [n, 128] (row
// stride k_ld >= 128 bytes) and fp32 scale [n] copied unchanged to slots[t].
void store_k_and_s(const Exec& exec, IndexCache cache, const uint8_t* k_fp8, int64_t n, int64_t k_ld,
                   const float* scale, const int64_t* slots);

// gather_k / gather_s: one sequence of `length` tokens whose pages are
// page_ids[0 .. ceil(length/64)). out_k is [length, 128] contiguous, out_s is
// [length]. Pages may repeat and come in any order.
void gather_k(const Exec& exec, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k);
void gather_s(const Exec& exec, ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s);

// A ragged batch described by a page table.
struct PagedBatch {
  int64_t batch_size = 0;
  // Exactly one of the two length forms:
  Indices seq_lens;     // [batch_size]     KV tokens per request (SGLang form), or
  Indices cu_seq_lens;  // [batch_size + 1] cumulative, cu[0] = 0   (vLLM form)
  Indices page_table;   // [batch_size, table_cols] with row stride table_ld >= table_cols
  int64_t table_cols = 0;
  int64_t table_ld = 0;
};

// gather_k_and_s: request-major ragged gather. Request b, token t < L_b goes
// to row sum_{b'<b} L_b' + t of out_k [out_capacity, 128] and out_s
// [out_capacity]. Rows past sum L are never written. L_b <= 64 * table_cols
// and sum L <= out_capacity are preconditions (device values). One launch.
// Table entries at columns >= ceil(L_b / 64) are never used, whatever they
// hold; the CUDA kernel may still load them (all inside [batch_size,
// table_ld]) to overlap the table read with the length read, so the table's
// memory must exist even where its values do not matter.
void gather_k_and_s(const Exec& exec, ConstIndexCache cache, const PagedBatch& batch, uint8_t* out_k,
                    float* out_s, int64_t out_capacity);

}  // namespace nsa
