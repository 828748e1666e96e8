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
  if (a.kernel != MqaLogitsKernel::kAuto && a.kernel != MqaLogitsKernel::kWgmma &&
      a.kernel != MqaLogitsKernel::kMmaSync && a.kernel != MqaLogitsKernel::kWgmmaPersistent)
    c.fail("kernel", "MqaLogitsKernel::kAuto, kWgmma, kMmaSync or kWgmmaPersistent", num(static_cast<int>(a.kernel)));
  if (a.wgmma_chunk_columns < 0 || a.wgmma_chunk_columns > kIndexerMaxChunkColumns ||
      a.wgmma_chunk_columns % kChunkColumns != 0)
    c.fail("wgmma_chunk_columns",
           "0 (the library's choice) or a multiple of " + num(kChunkColumns) + " up to " + num(kIndexerMaxChunkColumns),
           num(a.wgmma_chunk_columns));
  const int64_t rows = a.batch * a.next_n;
  c.product_fits(rows, a.logits_ld, "logits_ld", "rows * logits_ld within int64");
  if (cuda && a.batch > 0 &&
      (a.width + kChunkColumns - 1) / kChunkColumns > std::numeric_limits<int32_t>::max() / a.batch)
    c.fail("width", "batch * ceil(width / " + num(kChunkColumns) + ") < 2^31 (CUDA grid)",
           num(a.batch) + " x " + num(a.width));
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

void run_paged_mqa_logits(const Exec& exec, const PagedMqaLogitsArgs& args) {
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

// The topk_transform step of indexer_topk over the logits workspace.
TopkArgs topk_step(const IndexerTopkArgs& x) {
  const PagedMqaLogitsArgs& l = x.logits;
  TopkArgs t;
  t.scores = l.logits;
  t.rows = l.batch * l.next_n;
  t.width = l.width;
  t.score_ld = l.logits_ld;
  t.k = x.k;
  t.length_form = TopkLengths::kPerRequest;
  t.lengths = l.context_lens;
  t.rows_per_request = l.next_n;
  if (x.paged_output) {
    t.transform = TopkTransform::kPaged64;
    t.table = l.page_table;
    t.table_rows = l.batch;
    t.table_cols = l.table_cols;
    t.table_ld = l.table_ld;
  }
  t.out = x.out;
  t.out_ld = x.out_ld;
  t.out_raw = x.out_raw;
  t.out_raw_ld = x.out_raw_ld;
  t.order = x.order;
  return t;
}

}  // namespace

void paged_mqa_logits(const Exec& exec, const PagedMqaLogitsArgs& args) {
  const ArgChecker c("paged_mqa_logits");
  check_args(c, exec, args);
  run_paged_mqa_logits(exec, args);
}

void indexer_topk(const Exec& exec, const IndexerTopkArgs& args) {
  const ArgChecker c("indexer_topk");
  check_args(c, exec, args.logits);
  if (args.logits.page_size != IndexCacheLayout::kPageSize)
    c.fail("logits.page_size", "64 (the output maps position x to table[x >> 6] * 64 + (x & 63))",
           num(args.logits.page_size));
  if (args.logits.width > std::numeric_limits<int32_t>::max())
    c.fail("logits.width", "<= 2^31 - 1 columns (int32 positions)", num(args.logits.width));
  if (args.k < 1 || args.k > kTopkMaxK) c.fail("k", "1 <= k <= " + num(kTopkMaxK), num(args.k));
  const int64_t rows = args.logits.batch * args.logits.next_n;
  c.at_least(args.out_ld, args.k, "out_ld");
  if (rows > 0) c.not_null(args.out, "out");
  if (args.out_raw) c.at_least(args.out_raw_ld, args.k, "out_raw_ld");
  if (args.order != TopkOrder::kAny && args.order != TopkOrder::kAscending)
    c.fail("order", "TopkOrder::kAny or TopkOrder::kAscending", num(static_cast<int>(args.order)));
  if (rows == 0) return;
  if (args.logits.width == 0) {  // nothing to score: every row is all -1 (topk_transform writes it)
    topk_transform(exec, topk_step(args));
    return;
  }
  run_paged_mqa_logits(exec, args.logits);
  topk_transform(exec, topk_step(args));
}

}  // namespace nsa
