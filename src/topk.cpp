// Public API of topk_transform: validate every host-visible argument (nothing
// is written when a check fails), then hand over to one backend.
#include <limits>
#include <string>

#include "common/check.h"
#include "topk_backends.h"

namespace nsa {

const char* to_string(ScoreType type) { return type == ScoreType::kFloat32 ? "float32" : "bfloat16"; }
const char* to_string(TopkLengths form) { return form == TopkLengths::kPerRow ? "per_row" : "per_request"; }
const char* to_string(TopkTransform mode) {
  switch (mode) {
    case TopkTransform::kRaw: return "raw";
    case TopkTransform::kPaged64: return "paged64";
    case TopkTransform::kTokenTable: return "token_table";
    case TopkTransform::kRaggedOffset: return "ragged_offset";
  }
  return "unknown";
}
const char* to_string(TopkOrder order) { return order == TopkOrder::kAny ? "any" : "ascending"; }

namespace {

using detail::ArgChecker;

std::string num(int64_t v) { return std::to_string(v); }

void check_output(const ArgChecker& c, const Exec& exec, const TopkArgs& a, const int32_t* out, int64_t ld,
                  const char* arg, const char* ld_arg) {
  c.at_least(ld, a.k, ld_arg);
  c.product_fits(a.rows, ld, ld_arg, "rows * ld within int64");
  if (a.rows > 0) c.not_null(out, arg);
  if (exec.backend == Backend::kCuda) c.aligned(out, 4, arg);
}

void check_args(const ArgChecker& c, const Exec& exec, const TopkArgs& a) {
  detail::require_backend(c, exec);
  c.at_least(a.rows, 0, "rows");
  if (a.rows > std::numeric_limits<int32_t>::max())
    c.fail("rows", "<= 2^31 - 1 rows (one CUDA block per row)", num(a.rows));
  if (a.k < 1 || a.k > kTopkMaxK) c.fail("k", "1 <= k <= " + num(kTopkMaxK), num(a.k));
  if (a.score_type != ScoreType::kFloat32 && a.score_type != ScoreType::kBfloat16)
    c.fail("score_type", "ScoreType::kFloat32 or ScoreType::kBfloat16", num(static_cast<int>(a.score_type)));
  c.at_least(a.width, 0, "width");
  // Raw indices are written as int32.
  if (a.width > std::numeric_limits<int32_t>::max()) c.fail("width", "<= 2^31 - 1 columns", num(a.width));
  c.at_least(a.score_ld, a.width, "score_ld");
  c.product_fits(a.rows, a.score_ld, "score_ld", "rows * score_ld within int64");
  if (a.rows > 0 && a.width > 0) c.not_null(a.scores, "scores");
  if (exec.backend == Backend::kCuda) c.aligned(a.scores, a.score_type == ScoreType::kFloat32 ? 4 : 2, "scores");

  if (a.length_form != TopkLengths::kPerRow && a.length_form != TopkLengths::kPerRequest)
    c.fail("length_form", "TopkLengths::kPerRow or TopkLengths::kPerRequest", num(static_cast<int>(a.length_form)));
  if (a.rows > 0) c.indices(exec, a.lengths, "lengths");
  c.at_least(a.rows_per_request, 1, "rows_per_request");
  if (a.rows_per_request > std::numeric_limits<int32_t>::max())  // the length math adds it to the width
    c.fail("rows_per_request", "<= 2^31 - 1", num(a.rows_per_request));
  if (a.length_form == TopkLengths::kPerRow && a.rows_per_request != 1)
    c.fail("rows_per_request", "1 with TopkLengths::kPerRow (N applies to per-request lengths)",
           num(a.rows_per_request));
  if (a.row_starts) {
    if (a.length_form != TopkLengths::kPerRow)
      c.fail("row_starts", "no row_starts with TopkLengths::kPerRequest (MTP rows start at column 0)", "an array");
    c.indices(exec, a.row_starts, "row_starts");
  }
  if (a.row_to_request) c.indices(exec, a.row_to_request, "row_to_request");

  switch (a.transform) {
    case TopkTransform::kRaw: break;
    case TopkTransform::kRaggedOffset: c.indices(exec, a.offsets, "offsets"); break;
    case TopkTransform::kPaged64:
    case TopkTransform::kTokenTable:
      c.at_least(a.table_rows, 0, "table_rows");
      c.at_least(a.table_cols, 0, "table_cols");
      c.at_least(a.table_ld, a.table_cols, "table_ld");
      c.product_fits(a.table_rows, a.table_ld, "table_ld", "table_rows * table_ld within int64");
      if (a.table_rows > 0 && a.table_cols > 0) c.indices(exec, a.table, "table");
      break;
    default:
      c.fail("transform", "TopkTransform::kRaw, kPaged64, kTokenTable or kRaggedOffset",
             num(static_cast<int>(a.transform)));
  }
  check_output(c, exec, a, a.out, a.out_ld, "out", "out_ld");
  if (a.out_raw) check_output(c, exec, a, a.out_raw, a.out_raw_ld, "out_raw", "out_raw_ld");
  if (a.order != TopkOrder::kAny && a.order != TopkOrder::kAscending)
    c.fail("order", "TopkOrder::kAny or TopkOrder::kAscending", num(static_cast<int>(a.order)));
}

}  // namespace

void topk_transform(const Exec& exec, const TopkArgs& args) {
  const ArgChecker c("topk_transform");
  check_args(c, exec, args);
  if (args.rows == 0) return;
  TopkArgs a = args;
  // A table with no entries masks every slot: the kernels then never read it.
  if ((a.transform == TopkTransform::kPaged64 || a.transform == TopkTransform::kTokenTable) &&
      (a.table_rows == 0 || a.table_cols == 0)) {
    a.table_rows = 0;
    a.table_cols = 0;
  }
  if (exec.backend == Backend::kCpu) cpu::topk_transform(exec.cpu_threads, a);
  else cuda::topk_transform(exec.stream, a);
}

}  // namespace nsa
