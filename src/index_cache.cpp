// Public API of the index-cache ops: validate every host-visible argument
// (nothing is written when a check fails), then hand over to one backend.
#include <limits>

#include "backends.h"
#include "common/check.h"

namespace nsa {

const char* to_string(ScaleMode mode) { return mode == ScaleMode::kFp32 ? "fp32" : "ue8m0"; }

namespace {

using L = IndexCacheLayout;
using detail::ArgChecker;

void check_cache(const ArgChecker& c, const Exec& exec, const void* data, int64_t num_pages) {
  detail::require_backend(c, exec);
  c.not_null(data, "cache.data");
  c.at_least(num_pages, 1, "cache.num_pages");
  if (num_pages > std::numeric_limits<int64_t>::max() / L::kBytesPerPage)
    c.fail("cache.num_pages", "a pool whose byte size fits in int64", std::to_string(num_pages));
  // Kernels move whole 16-byte vectors; pages (8448 B) keep the alignment of page 0.
  if (exec.backend == Backend::kCuda) c.aligned(data, 16, "cache.data");
}

void check_rows(const ArgChecker& c, const void* p, int64_t n, int64_t ld, const char* arg, const char* ld_arg) {
  c.at_least(n, 0, "n");
  c.at_least(ld, L::kHeadDim, ld_arg);
  c.product_fits(n, ld, ld_arg, "n * k_ld within int64");
  if (n > 0) c.not_null(p, arg);
}

}  // namespace

void quantize_and_store_k(const Exec& exec, IndexCache cache, const uint16_t* k_bf16, int64_t n, int64_t k_ld,
                          const int64_t* slots, ScaleMode mode) {
  const ArgChecker c("quantize_and_store_k");
  check_cache(c, exec, cache.data, cache.num_pages);
  check_rows(c, k_bf16, n, k_ld, "k", "k_ld");
  if (n > 0) c.not_null(slots, "slots");
  if (exec.backend == Backend::kCuda) c.aligned(slots, 8, "slots");
  if (mode != ScaleMode::kFp32 && mode != ScaleMode::kUe8m0)
    c.fail("mode", "ScaleMode::kFp32 or ScaleMode::kUe8m0", std::to_string(static_cast<int>(mode)));
  if (n == 0) return;
  if (exec.backend == Backend::kCpu) cpu::quantize_and_store_k(exec.cpu_threads, cache, k_bf16, n, k_ld, slots, mode);
  else cuda::quantize_and_store_k(exec.stream, exec.checked, cache, k_bf16, n, k_ld, slots, mode);
}

void store_k_and_s(const Exec& exec, IndexCache cache, const uint8_t* k_fp8, int64_t n, int64_t k_ld,
                   const float* scale, const int64_t* slots) {
  const ArgChecker c("store_k_and_s");
  check_cache(c, exec, cache.data, cache.num_pages);
  check_rows(c, k_fp8, n, k_ld, "k", "k_ld");
  if (n > 0) {
    c.not_null(scale, "scale");
    c.not_null(slots, "slots");
    if (exec.backend == Backend::kCuda) {
      c.aligned(scale, 4, "scale");
      c.aligned(slots, 8, "slots");
    }
  }
  if (n == 0) return;
  if (exec.backend == Backend::kCpu) cpu::store_k_and_s(exec.cpu_threads, cache, k_fp8, n, k_ld, scale, slots);
  else cuda::store_k_and_s(exec.stream, exec.checked, cache, k_fp8, n, k_ld, scale, slots);
}

namespace {
void check_single_gather(const ArgChecker& c, const Exec& exec, ConstIndexCache cache, int64_t length,
                         Indices page_ids, const void* out, const char* out_arg, int64_t out_align) {
  check_cache(c, exec, cache.data, cache.num_pages);
  c.at_least(length, 0, "length");
  if (length == 0) return;
  c.not_null(page_ids.data, "page_ids");
  c.indices(exec, page_ids, "page_ids");
  c.not_null(out, out_arg);
  if (exec.backend == Backend::kCuda) c.aligned(out, out_align, out_arg);
}
}  // namespace

void gather_k(const Exec& exec, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k) {
  const ArgChecker c("gather_k");
  check_single_gather(c, exec, cache, length, page_ids, out_k, "out_k", 16);
  if (length == 0) return;
  if (exec.backend == Backend::kCpu) cpu::gather_k(exec.cpu_threads, cache, length, page_ids, out_k);
  else cuda::gather_k(exec.stream, exec.checked, cache, length, page_ids, out_k);
}

void gather_s(const Exec& exec, ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s) {
  const ArgChecker c("gather_s");
  check_single_gather(c, exec, cache, length, page_ids, out_s, "out_s", 4);
  if (length == 0) return;
  if (exec.backend == Backend::kCpu) cpu::gather_s(exec.cpu_threads, cache, length, page_ids, out_s);
  else cuda::gather_s(exec.stream, exec.checked, cache, length, page_ids, out_s);
}

void gather_k_and_s(const Exec& exec, ConstIndexCache cache, const PagedBatch& batch, uint8_t* out_k, float* out_s,
                    int64_t out_capacity) {
  const ArgChecker c("gather_k_and_s");
  check_cache(c, exec, cache.data, cache.num_pages);
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
    // Lengths are bounded by 64 * table_cols and items by batch * table_cols.
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
  // Nothing can be written, but the CPU backend and checked mode still look
  // at the lengths: a positive sum over a zero capacity is a violation.
  if (out_capacity == 0 && exec.backend == Backend::kCuda && exec.checked == nullptr) return;
  if (exec.backend == Backend::kCpu) cpu::gather_k_and_s(exec.cpu_threads, cache, batch, out_k, out_s, out_capacity);
  else cuda::gather_k_and_s(exec.stream, exec.checked, cache, batch, out_k, out_s, out_capacity);
}

}  // namespace nsa
