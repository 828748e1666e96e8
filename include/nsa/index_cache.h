// Paged FP8 indexer-K cache of DeepSeek Sparse Attention (spec: docs/spec/index-cache.md).
//
// One buffer per layer, uint8[num_pages][P * 132]. A page holds P tokens
// (P = 64 by default; 16..256 supported): first all P x 128 fp8 e4m3 K bytes
// (token-major), then all P fp32 scales. At P = 64 the layout is byte-identical
// to SGLang, vLLM (block size 64) and DeepGEMM.
//
// No output of a call may share a byte with an input or another output of the
// same call (checked on the host-visible pointer ranges before anything runs).
//
// Every function validates its host-visible arguments, then runs on the CPU or
// enqueues one CUDA launch on exec.stream (no allocation, no host sync, graph-
// capturable). Device-resident values (slots, page ids, lengths) are
// preconditions: out-of-range values are undefined behaviour on CUDA.
#pragma once

#include <cstdint>

#include "nsa/common.h"

namespace nsa {

// Page geometry. A page of P tokens holds P x 128 fp8 K bytes (token-major),
// then P fp32 scales: P * 132 bytes. P = 64 is the layout every upstream
// engine uses on CUDA (and the default everywhere here); 16, 32, 128 and 256
// are supported for engines configured with another block size.
struct IndexCacheLayout {
  static constexpr int64_t kPageSize = 64;                           // default tokens per page
  static constexpr int64_t kHeadDim = 128;                           // fp8 bytes of K per token
  static constexpr int64_t kScaleBytes = 4;                          // one fp32 scale per token
  static constexpr int64_t kTokenBytes = kHeadDim + kScaleBytes;     // 132
  static constexpr int64_t kKBytesPerPage = kPageSize * kHeadDim;    // 8192 (page size 64)
  static constexpr int64_t kBytesPerPage = kPageSize * kTokenBytes;  // 8448 (page size 64)

  // Page sizes the ops accept (every power of two in [16, 256]).
  static constexpr bool is_supported_page_size(int64_t page_size) {
    return page_size == 16 || page_size == 32 || page_size == 64 || page_size == 128 || page_size == 256;
  }
  static constexpr int64_t bytes_per_page(int64_t page_size = kPageSize) { return page_size * kTokenBytes; }
  static constexpr int64_t k_bytes_per_page(int64_t page_size = kPageSize) { return page_size * kHeadDim; }

  // Byte offset of K byte 0 / of the scale of `slot` (slot >= 0). 64-bit on purpose:
  // page * 8448 passes 2^31 from page 254,201.
  static constexpr int64_t k_offset(int64_t slot, int64_t page_size = kPageSize) {
    return (slot / page_size) * bytes_per_page(page_size) + (slot % page_size) * kHeadDim;
  }
  static constexpr int64_t scale_offset(int64_t slot, int64_t page_size = kPageSize) {
    return (slot / page_size) * bytes_per_page(page_size) + k_bytes_per_page(page_size) +
           (slot % page_size) * kScaleBytes;
  }
};
static_assert(IndexCacheLayout::kBytesPerPage == 8448, "page layout must match SGLang/vLLM/DeepGEMM");

// A layer's cache: `data` points at page 0 and holds num_pages * page_size * 132
// bytes. page_size must satisfy IndexCacheLayout::is_supported_page_size.
struct IndexCache {
  uint8_t* data = nullptr;
  int64_t num_pages = 0;
  int64_t page_size = IndexCacheLayout::kPageSize;
};
struct ConstIndexCache {
  const uint8_t* data = nullptr;
  int64_t num_pages = 0;
  int64_t page_size = IndexCacheLayout::kPageSize;
  ConstIndexCache() = default;
  ConstIndexCache(const uint8_t* d, int64_t n, int64_t p = IndexCacheLayout::kPageSize)
      : data(d), num_pages(n), page_size(p) {}
  ConstIndexCache(IndexCache c)
      : data(c.data), num_pages(c.num_pages), page_size(c.page_size) {}  // NOLINT: implicit on purpose
};

// How the per-token fp32 scale is chosen and applied (spec §3). The two plain
// variants differ only in the quantizing expression: x * (1/s) and x / s give
// different e4m3 bytes when the quotient lands next to an e4m3 rounding tie
// (about 1 byte in 2000 on random data). In ue8m0 mode both are identical
// (s is a power of two), so there is one ue8m0 mode.
enum class ScaleMode {
  kFp32,        // s = max(amax, 1e-4) / 448, q = e4m3(x * (1/s))  (SGLang's fused store, DeepGEMM's helper)
  kUe8m0,       // s rounded up to a power of two on the bits        (DeepSeek reference, vLLM for V3.2)
  kFp32Divide,  // s as kFp32, q = e4m3(x / s)                       (vLLM's CUDA kernel with a plain scale)
};
const char* to_string(ScaleMode mode);

// Element type of the K rows given to quantize_and_store_k (raw bits; the
// conversion to fp32 is exact for all three).
enum class KDtype {
  kBf16,  // 2 bytes per element (default: what the indexer produces)
  kFp16,  // 2 bytes per element
  kFp32,  // 4 bytes per element
};
const char* to_string(KDtype dtype);
constexpr int64_t element_bytes(KDtype dtype) { return dtype == KDtype::kFp32 ? 4 : 2; }

// ---------------------------------------------------------------------------
// quantize_and_store_k: K [n, 128] of `k_dtype` (row stride k_ld >= 128
// elements, unit column stride; bf16/fp16 given as raw 16-bit patterns)
// quantized per token and written at slots[t] (int64 [n]). A negative slot is
// skipped (padding).
// Non-finite inputs: NaN and +-Inf do not contribute to amax; +-Inf saturates
// to +-448 (0x7E/0xFE) and NaN becomes 0x7F/0xFF (sign kept), so the scale
// is always finite and positive.
// ---------------------------------------------------------------------------
void quantize_and_store_k(const Exec& exec, IndexCache cache, const void* k, int64_t n, int64_t k_ld,
                          const int64_t* slots, ScaleMode mode, KDtype k_dtype = KDtype::kBf16);

// store_k_and_s (SGLang SetKAndS): already-quantized fp8 K [n, 128] (row
// stride k_ld >= 128 bytes) and fp32 scale [n] copied unchanged to slots[t].
void store_k_and_s(const Exec& exec, IndexCache cache, const uint8_t* k_fp8, int64_t n, int64_t k_ld,
                   const float* scale, const int64_t* slots);

// gather_k / gather_s: one sequence of `length` tokens whose pages are
// page_ids[0 .. ceil(length/page_size)). out_k is [length, 128] contiguous, out_s is
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
// [out_capacity]. Rows past sum L are never written. L_b <= page_size * table_cols
// and sum L <= out_capacity are preconditions (device values). One launch.
// Table entries at columns >= ceil(L_b / page_size) are never used, whatever they
// hold; the CUDA kernel may still load them (all inside [batch_size,
// table_ld]) to overlap the table read with the length read, so the table's
// memory must exist even where its values do not matter.
void gather_k_and_s(const Exec& exec, ConstIndexCache cache, const PagedBatch& batch, uint8_t* out_k, float* out_s,
                    int64_t out_capacity);

}  // namespace nsa
