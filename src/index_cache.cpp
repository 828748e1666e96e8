// Public API of the index-cache ops: validate every host-visible argument
// (nothing is written when a check fails), then hand over to one backend.
#include <limits>

#include "backends.h"
#include "common/check.h"
#include "common/overlap.h"

namespace nsa {

const char* to_string(ScaleMode mode) {
  switch (mode) {
    case ScaleMode::kFp32: return "fp32";
    case ScaleMode::kUe8m0: return "ue8m0";
    case ScaleMode::kFp32Divide: return "fp32_divide";
  }
  return "?";
}

const char* to_string(KDtype dtype) {
  switch (dtype) {
    case KDtype::kBf16: return "bf16";
    case KDtype::kFp16: return "fp16";
    case KDtype::kFp32: return "fp32";
  }
  return "?";
}

namespace {

using L = IndexCacheLayout;
using detail::ArgChecker;
using detail::ByteRange;

// Returns the pool's size in bytes.
uint64_t check_cache(const ArgChecker& c, const Exec& exec, const void* data, int64_t num_pages, int64_t page_size) {
  detail::require_backend(c, exec);
  if (!L::is_supported_page_size(page_size))
    c.fail("cache.page_size", "one of 16, 32, 64, 128, 256 tokens per page", std::to_string(page_size));
  c.not_null(data, "cache.data");
  c.at_least(num_pages, 1, "cache.num_pages");
  if (num_pages > std::numeric_limits<int64_t>::max() / L::bytes_per_page(page_size))
    c.fail("cache.num_pages", "a pool whose byte size fits in int64", std::to_string(num_pages));
  // Kernels move whole 16-byte vectors; pages (P * 132 B, P >= 16) keep the alignment of page 0.
  if (exec.backend == Backend::kCuda) c.aligned(data, 16, "cache.data");
  return static_cast<uint64_t>(num_pages * L::bytes_per_page(page_size));
}

// Returns the bytes the n rows span: (n - 1) * ld + 128 elements.
uint64_t check_rows(const ArgChecker& c, const void* p, int64_t n, int64_t ld, int64_t elem_bytes, const char* arg,
                    const char* ld_arg) {
  c.at_least(n, 0, "n");
  c.at_least(ld, L::kHeadDim, ld_arg);
  c.product_fits(n, ld * elem_bytes, ld_arg, "n * k_ld * element size within int64");
  if (n > 0) c.not_null(p, arg);
  return n > 0 ? static_cast<uint64_t>(((n - 1) * ld + L::kHeadDim) * elem_bytes) : 0;
}

// Outputs must be disjoint from each other and from every input; inputs may
// share memory (reading twice is harmless).
template <size_t kOut, size_t kIn>
void check_outputs_disjoint(const ArgChecker& c, const ByteRange (&outputs)[kOut], const ByteRange (&inputs)[kIn]) {
  // check_no_overlap names the later range of an overlapping pair: list each
  // pair so that the message names the output (the first of two outputs).
  for (size_t i = 0; i < kOut; ++i) {
    for (size_t j = i + 1; j < kOut; ++j) {
      const ByteRange pair[] = {outputs[j], outputs[i]};
      detail::check_no_overlap(c, pair, 2);
    }
    for (const ByteRange& in : inputs) {
      const ByteRange pair[] = {in, outputs[i]};
      detail::check_no_overlap(c, pair, 2);
    }
  }
}

uint64_t index_bytes(Indices v, int64_t count) {
  return v.data != nullptr && count > 0 ? static_cast<uint64_t>(count) * static_cast<uint64_t>(v.type) : 0;
}

}  // namespace

void quantize_and_store_k(const Exec& exec, IndexCache cache, const void* k, int64_t n, int64_t k_ld,
                          const int64_t* slots, ScaleMode mode, KDtype k_dtype) {
  const ArgChecker c("quantize_and_store_k");
  const uint64_t pool = check_cache(c, exec, cache.data, cache.num_pages, cache.page_size);
  if (k_dtype != KDtype::kBf16 && k_dtype != KDtype::kFp16 && k_dtype != KDtype::kFp32)
    c.fail("k_dtype", "KDtype::kBf16, kFp16 or kFp32", std::to_string(static_cast<int>(k_dtype)));
  const uint64_t k_bytes = check_rows(c, k, n, k_ld, element_bytes(k_dtype), "k", "k_ld");
  if (n > 0) c.not_null(slots, "slots");
  if (exec.backend == Backend::kCuda) c.aligned(k, element_bytes(k_dtype), "k");
  if (exec.backend == Backend::kCuda) c.aligned(slots, 8, "slots");
  if (mode != ScaleMode::kFp32 && mode != ScaleMode::kUe8m0 && mode != ScaleMode::kFp32Divide)
    c.fail("mode", "ScaleMode::kFp32, kUe8m0 or kFp32Divide", std::to_string(static_cast<int>(mode)));
  check_outputs_disjoint(c, {ByteRange{cache.data, pool, "cache"}},
                         {ByteRange{k, k_bytes, "k"}, ByteRange{slots, 8 * uint64_t(n), "slots"}});
  if (n == 0) return;
  if (exec.backend == Backend::kCpu)
    cpu::quantize_and_store_k(exec.cpu_threads, cache, k, n, k_ld, slots, mode, k_dtype);
  else cuda::quantize_and_store_k(exec.stream, exec.checked, cache, k, n, k_ld, slots, mode, k_dtype);
}

void store_k_and_s(const Exec& exec, IndexCache cache, const uint8_t* k_fp8, int64_t n, int64_t k_ld,
                   const float* scale, const int64_t* slots) {
  const ArgChecker c("store_k_and_s");
  const uint64_t pool = check_cache(c, exec, cache.data, cache.num_pages, cache.page_size);
  const uint64_t k_bytes = check_rows(c, k_fp8, n, k_ld, 1, "k", "k_ld");
  if (n > 0) {
    c.not_null(scale, "scale");
    c.not_null(slots, "slots");
    if (exec.backend == Backend::kCuda) {
      c.aligned(scale, 4, "scale");
      c.aligned(slots, 8, "slots");
    }
  }
  check_outputs_disjoint(c, {ByteRange{cache.data, pool, "cache"}},
                         {ByteRange{k_fp8, k_bytes, "k"}, ByteRange{scale, 4 * uint64_t(n), "scale"},
                          ByteRange{slots, 8 * uint64_t(n), "slots"}});
  if (n == 0) return;
  if (exec.backend == Backend::kCpu) cpu::store_k_and_s(exec.cpu_threads, cache, k_fp8, n, k_ld, scale, slots);
  else cuda::store_k_and_s(exec.stream, exec.checked, cache, k_fp8, n, k_ld, scale, slots);
}

namespace {
void check_single_gather(const ArgChecker& c, const Exec& exec, ConstIndexCache cache, int64_t length, Indices page_ids,
                         const void* out, const char* out_arg, int64_t out_align, int64_t out_row_bytes) {
  const uint64_t pool = check_cache(c, exec, cache.data, cache.num_pages, cache.page_size);
  c.at_least(length, 0, "length");
  if (length == 0) return;
  c.not_null(page_ids.data, "page_ids");
  c.indices(exec, page_ids, "page_ids");
  c.not_null(out, out_arg);
  if (exec.backend == Backend::kCuda) c.aligned(out, out_align, out_arg);
  const int64_t pages = (length + cache.page_size - 1) / cache.page_size;
  check_outputs_disjoint(c, {ByteRange{out, static_cast<uint64_t>(length * out_row_bytes), out_arg}},
                         {ByteRange{cache.data, pool, "cache"},
                          ByteRange{page_ids.data, index_bytes(page_ids, pages), "page_ids"}});
}
}  // namespace

void gather_k(const Exec& exec, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k) {
  const ArgChecker c("gather_k");
  check_single_gather(c, exec, cache, length, page_ids, out_k, "out_k", 16, L::kHeadDim);
  if (length == 0) return;
  if (exec.backend == Backend::kCpu) cpu::gather_k(exec.cpu_threads, cache, length, page_ids, out_k);
  else cuda::gather_k(exec.stream, exec.checked, cache, length, page_ids, out_k);
}

void gather_s(const Exec& exec, ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s) {
  const ArgChecker c("gather_s");
  check_single_gather(c, exec, cache, length, page_ids, out_s, "out_s", 4, L::kScaleBytes);
  if (length == 0) return;
  if (exec.backend == Backend::kCpu) cpu::gather_s(exec.cpu_threads, cache, length, page_ids, out_s);
  else cuda::gather_s(exec.stream, exec.checked, cache, length, page_ids, out_s);
}

void gather_k_and_s(const Exec& exec, ConstIndexCache cache, const PagedBatch& batch, uint8_t* out_k, float* out_s,
                    int64_t out_capacity) {
  const ArgChecker c("gather_k_and_s");
  const uint64_t pool = check_cache(c, exec, cache.data, cache.num_pages, cache.page_size);
  c.at_least(batch.batch_size, 0, "batch.batch_size");
  c.at_least(out_capacity, 0, "out_capacity");
  if (batch.batch_size > 0) {
    if (static_cast<bool>(batch.seq_lens) == static_cast<bool>(batch.cu_seq_lens))
      c.fail("batch.seq_lens/batch.cu_seq_lens", "exactly one of the two", batch.seq_lens ? "both" : "neither");
    if (batch.seq_lens) c.indices(exec, batch.seq_lens, "batch.seq_lens");
    else c.indices(exec, batch.cu_seq_lens, "batch.cu_seq_lens");
    c.not_null(batch.page_table.data, "batch.page_table");
    c.indices(exec, batch.page_table, "batch.page_table");
    c.at_least(batch.table_cols, 0, "batch.table_cols");
    c.at_least(batch.table_ld, batch.table_cols, "batch.table_ld");
    // Lengths are bounded by page_size * table_cols and items by batch * table_cols.
    if (batch.table_cols > std::numeric_limits<int32_t>::max())
      c.fail("batch.table_cols", "<= 2^31 - 1 pages per request", std::to_string(batch.table_cols));
    c.product_fits(batch.batch_size, batch.table_ld, "batch.table_ld", "batch_size * table_ld within int64");
  }
  if (out_capacity > 0) {
    c.not_null(out_k, "out_k");
    c.not_null(out_s, "out_s");
    if (exec.backend == Backend::kCuda) {
      c.aligned(out_k, 16, "out_k");
      c.aligned(out_s, 4, "out_s");
    }
  }
  if (batch.batch_size == 0) return;
  const uint64_t cap = static_cast<uint64_t>(out_capacity);
  const int64_t table_elems = (batch.batch_size - 1) * batch.table_ld + batch.table_cols;
  check_outputs_disjoint(
      c, {ByteRange{out_k, cap * L::kHeadDim, "out_k"}, ByteRange{out_s, cap * L::kScaleBytes, "out_s"}},
      {ByteRange{cache.data, pool, "cache"},
       ByteRange{batch.seq_lens.data, index_bytes(batch.seq_lens, batch.batch_size), "batch.seq_lens"},
       ByteRange{batch.cu_seq_lens.data, index_bytes(batch.cu_seq_lens, batch.batch_size + 1), "batch.cu_seq_lens"},
       ByteRange{batch.page_table.data, index_bytes(batch.page_table, table_elems), "batch.page_table"}});
  // Nothing can be written, but the CPU backend and checked mode still look
  // at the lengths: a positive sum over a zero capacity is a violation.
  if (out_capacity == 0 && exec.backend == Backend::kCuda && exec.checked == nullptr) return;
  if (exec.backend == Backend::kCpu) cpu::gather_k_and_s(exec.cpu_threads, cache, batch, out_k, out_s, out_capacity);
  else cuda::gather_k_and_s(exec.stream, exec.checked, cache, batch, out_k, out_s, out_capacity);
}

}  // namespace nsa
