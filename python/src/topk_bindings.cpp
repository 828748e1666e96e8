// Binding of topk_transform (include/nsa/topk.h). Output allocation, stream
// lookup and the keyword API live in python/nsa/ops.py; here every argument
// is checked and the library called.
#include <nanobind/nanobind.h>

#include "arrays.h"
#include "nsa/topk.h"

namespace nsa_py {

namespace {

// An int32 output [rows, >= k] with unit column stride; returns its row stride.
int64_t output_rows(const Call& c, const Array& a, int64_t rows, int64_t k) {
  c.dtype(a, {DType::kInt32}, "int32");
  const int64_t ld = c.table(a, "[rows, >= k]");
  if (a.shape[0] != rows || a.shape[1] < k)
    c.fail(a.name, "shape [rows, >= k] = [" + std::to_string(rows) + ", >= " + std::to_string(k) + "]", a.describe());
  return ld;
}

// An optional int32/int64 per-row vector [>= rows].
nsa::Indices per_row(const Call& c, const Array& a, int64_t rows) {
  if (!a.present) return nsa::Indices();
  c.index_type(a);
  c.vector(a, rows, "[rows]");
  return c.indices(a);
}

void topk_transform(nb::handle scores, int64_t k, nb::handle lengths, int64_t rows_per_request, nb::handle row_starts,
                    nb::handle row_to_request, int transform, nb::handle table, nb::handle offsets, nb::handle out,
                    nb::handle out_raw, int order, nb::handle stream) {
  Call c("topk_transform");
  const Array scores_a = c.require(scores, "scores");
  const Array lengths_a = c.require(lengths, "lengths");
  const Array starts_a = c.optional(row_starts, "row_starts");
  const Array rtr_a = c.optional(row_to_request, "row_to_request");
  const Array table_a = c.optional(table, "table");
  const Array offsets_a = c.optional(offsets, "offsets");
  const Array out_a = c.require(out, "out", true);
  const Array raw_a = c.optional(out_raw, "out_raw", true);

  nsa::TopkArgs a;
  c.dtype(scores_a, {DType::kFloat32, DType::kBfloat16, DType::kUint16, DType::kInt16},
          "float32, or bfloat16 (or its raw bits as uint16/int16)");
  a.score_type = scores_a.dtype == DType::kFloat32 ? nsa::ScoreType::kFloat32 : nsa::ScoreType::kBfloat16;
  a.score_ld = c.table(scores_a, "[rows, width]");
  a.rows = scores_a.shape[0];
  a.width = scores_a.shape[1];
  a.scores = scores_a.data;
  a.k = k;
  c.index_type(lengths_a);
  if (rows_per_request > 0) {  // per-request lengths (decode / MTP)
    a.length_form = nsa::TopkLengths::kPerRequest;
    a.rows_per_request = rows_per_request;
    c.vector(lengths_a, (a.rows + rows_per_request - 1) / rows_per_request, "[ceil(rows / rows_per_request)]");
  } else {
    c.vector(lengths_a, a.rows, "[rows]");
  }
  a.lengths = c.indices(lengths_a);
  a.row_starts = per_row(c, starts_a, a.rows);
  a.row_to_request = per_row(c, rtr_a, a.rows);
  if (transform < 0 || transform > 3)
    c.fail("transform", "'raw', 'paged64', 'token_table' or 'ragged'", std::to_string(transform));
  a.transform = static_cast<nsa::TopkTransform>(transform);
  const bool needs_table =
      a.transform == nsa::TopkTransform::kPaged64 || a.transform == nsa::TopkTransform::kTokenTable;
  if (needs_table) {
    if (!table_a.present) c.fail("page_table", "a [requests, columns] int32/int64 table for this transform", "None");
    c.index_type(table_a);
    a.table_ld = c.table(table_a, "[requests, columns]");
    a.table_rows = table_a.shape[0];
    a.table_cols = table_a.shape[1];
    a.table = c.indices(table_a);
  }
  if (a.transform == nsa::TopkTransform::kRaggedOffset) {
    if (!offsets_a.present) c.fail("offsets", "an int32/int64 [rows] array for transform 'ragged'", "None");
    a.offsets = per_row(c, offsets_a, a.rows);
  }
  a.out_ld = output_rows(c, out_a, a.rows, k);
  a.out = out_a.as<int32_t>();
  if (raw_a.present) {
    a.out_raw_ld = output_rows(c, raw_a, a.rows, k);
    a.out_raw = raw_a.as<int32_t>();
  }
  if (order != 0 && order != 1) c.fail("order", "'any' or 'ascending'", std::to_string(order));
  a.order = static_cast<nsa::TopkOrder>(order);
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::topk_transform(exec, a); });
}

}  // namespace

void bind_topk(nb::module_& m) {
  m.def("topk_transform", &topk_transform, nb::arg("scores"), nb::arg("k"), nb::arg("lengths"),
        nb::arg("rows_per_request"), nb::arg("row_starts").none(), nb::arg("row_to_request").none(),
        nb::arg("transform"), nb::arg("table").none(), nb::arg("offsets").none(), nb::arg("out"),
        nb::arg("out_raw").none(), nb::arg("order"), nb::arg("stream").none());
  m.attr("TOPK_MAX_K") = nsa::kTopkMaxK;
}

}  // namespace nsa_py
