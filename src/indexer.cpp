// Public API of paged_mqa_logits: validate every host-visible argument
// (nothing is written when a check fails), then hand over to one backend.
#include <limits>
#include <string>

#include "common/check.h"
#include "indexer_backends.h"
#include "nsa/detail/indexer_math.h"

namespace nsa {

namespace {

using detail::ArgChecker;

std::string num(int64_t v) { return std::to_string(v); }

constexpr int64_t kChunkColumns = detail::kIndexerCtaColumns;

void check_args(const ArgChecker& c, const Exec& exec, const PagedMqaLogitsArgs& a) {
  detail::require_backend(c, exec);
  const bool cuda = exec.backend == Backend::kCuda;
  c.at_least(a.batch, 0, "batch");
  if (a.next_n < 1 || a.next_n > kIndexerMaxNextN)
    c.fail("next_n", "1 <= next_n <= " + num(kIndexerMaxNextN), num(a.next_n));
  c.at_least(a.width, 0, "width");
  c.at_least(a.logits_ld, a.width, "logits_ld");
  const int64_t rows = a.batch * a.next_n;
  c.product_fits(rows, a.logits_ld, "logits_ld", "rows * logits_ld within int64");
  if (cuda && a.batch > 0 && (a.width + kChunkColumns - 1) / kChunkColumns > std::numeric_limits<int32_t>::max() / a.batch)
    c.fail("width", "batch * ceil(width / " + num(kChunkColumns) + ") < 2^31 (CUDA grid)", num(a.batch) + " x " + num(a.width));
  if (rows == 0 || a.width == 0) return;  // nothing is read or written

  c.not_null(a.logits, "logits");
  c.not_null(a.q, "q");
  c.not_null(a.weights, "weights");
  if (cuda) {
    c.aligned(a.logits, 4, "logits");
    c.aligned(a.q, 16, "q");
    c.aligned(a.weights, 4, "weights");
  }
  c.indices(exec, a.context_lens, "context_lens");
  if (a.page_size < 4 || a.page_size % 4 != 0)
    c.fail("page_size", "a positive multiple of 4 (16-byte aligned K rows)", num(a.page_size));
  c.at_least(a.cache.num_pages, 0, "cache.num_pages");
  c.product_fits(a.cache.num_pages, a.page_size * (kIndexerHeadDim + 4), "cache.num_pages",
                 "num_pages * page bytes within int64");
  c.at_least(a.table_cols, 0, "table_cols");
  c.at_least(a.table_ld, a.table_cols, "table_ld");
  c.product_fits(a.batch, a.table_ld, "table_ld", "batch * table_ld within int64");
  if (a.cache.num_pages > 0 && a.table_cols > 0) {
    c.not_null(a.cache.data, "cache.data");
    if (cuda) c.aligned(a.cache.data, 16, "cache.data");
    c.indices(exec, a.page_table, "page_table");
  }
}

}  // namespace

void paged_mqa_logits(const Exec& exec, const PagedMqaLogitsArgs& args) {
  const ArgChecker c("paged_mqa_logits");
  check_args(c, exec, args);
  if (args.batch == 0 || args.width == 0) return;
  PagedMqaLogitsArgs a = args;
  // No table or no pages: every token is masked and neither is ever read.
  if (a.cache.num_pages == 0 || a.table_cols == 0) {
    a.cache.num_pages = 0;
    a.table_cols = 0;
  }
  if (exec.backend == Backend::kCpu) cpu::paged_mqa_logits(exec.cpu_threads, a);
  else cuda::paged_mqa_logits(exec.stream, a);
}

}  // namespace nsa
