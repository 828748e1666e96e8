// Binding of paged_mqa_logits (include/nsa/indexer.h). Output allocation,
// fp8 views and stream lookup live in python/nsa/indexer.py; here every
// argument is checked and the library called.
#include <nanobind/nanobind.h>

#include "arrays.h"
#include "nsa/indexer.h"

namespace nsa_py {

namespace {

constexpr int64_t kH = nsa::kIndexerHeads, kD = nsa::kIndexerHeadDim;

// The arguments of paged_mqa_logits, checked; `logits` is the output (or indexer_topk's workspace).
nsa::PagedMqaLogitsArgs logits_args(Call& c, nb::handle q, nb::handle weights, nb::handle cache,
                                    nb::handle context_lens, nb::handle page_table, int64_t page_size,
                                    nb::handle logits) {
  const Array q_a = c.require(q, "q");
  const Array w_a = c.require(weights, "weights");
  const Array cache_a = c.require(cache, "cache");
  const Array lens_a = c.require(context_lens, "context_lens");
  const Array table_a = c.require(page_table, "page_table");
  const Array out_a = c.require(logits, "logits", true);

  nsa::PagedMqaLogitsArgs a;
  c.dtype(q_a, {DType::kUint8, DType::kInt8}, "uint8 (fp8 e4m3 bytes; torch float8 is viewed as uint8)");
  if (q_a.ndim != 4 || q_a.shape[2] != kH || q_a.shape[3] != kD || !q_a.contiguous())
    c.fail("q", "a contiguous [batch, next_n, 64, 128] array", q_a.describe());
  a.batch = q_a.shape[0];
  a.next_n = q_a.shape[1];
  a.q = q_a.as<uint8_t>();
  c.dtype(w_a, {DType::kFloat32}, "float32");
  if (w_a.ndim != 2 || w_a.shape[0] != a.batch * a.next_n || w_a.shape[1] != kH || !w_a.contiguous())
    c.fail("weights", "a contiguous [batch * next_n, 64] array", w_a.describe());
  a.weights = w_a.as<float>();
  c.dtype(cache_a, {DType::kUint8}, "uint8 (fp8 buffers are viewed as uint8 by the Python layer)");
  if (page_size < 4 || page_size % 4 != 0) c.fail("page_size", "a positive multiple of 4", std::to_string(page_size));
  const int64_t page_bytes = page_size * (kD + 4);
  if (!cache_a.contiguous() || cache_a.numel() % page_bytes != 0)
    c.fail("cache", "contiguous pages of page_size * 132 bytes", cache_a.describe());
  a.cache = nsa::ConstIndexCache(cache_a.as<uint8_t>(), cache_a.numel() / page_bytes);
  a.page_size = page_size;
  c.index_type(lens_a);
  c.vector(lens_a, a.batch, "[batch]");
  a.context_lens = c.indices(lens_a);
  c.index_type(table_a);
  a.table_ld = c.table(table_a, "[batch, columns]");
  if (table_a.shape[0] < a.batch) c.fail("page_table", "[batch, columns] with >= batch rows", table_a.describe());
  a.table_cols = table_a.shape[1];
  a.page_table = c.indices(table_a);
  c.dtype(out_a, {DType::kFloat32}, "float32");
  a.logits_ld = c.table(out_a, "[batch * next_n, width]");
  if (out_a.shape[0] != a.batch * a.next_n)
    c.fail("logits", "[batch * next_n, width] = [" + std::to_string(a.batch * a.next_n) + ", width]", out_a.describe());
  a.width = out_a.shape[1];
  a.logits = out_a.as<float>();
  return a;
}

void paged_mqa_logits(nb::handle q, nb::handle weights, nb::handle cache, nb::handle context_lens,
                      nb::handle page_table, int64_t page_size, nb::handle logits, nb::handle stream) {
  Call c("paged_mqa_logits");
  const nsa::PagedMqaLogitsArgs a = logits_args(c, q, weights, cache, context_lens, page_table, page_size, logits);
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::paged_mqa_logits(exec, a); });
}

// An int32 output [rows, >= k] with unit column stride; returns its row stride.
int64_t topk_output(const Call& c, const Array& a, int64_t rows, int64_t k) {
  c.dtype(a, {DType::kInt32}, "int32");
  const int64_t ld = c.table(a, "[rows, >= k]");
  if (a.shape[0] != rows || a.shape[1] < k)
    c.fail(a.name, "shape [batch * next_n, >= k] = [" + std::to_string(rows) + ", >= " + std::to_string(k) + "]",
           a.describe());
  return ld;
}

void indexer_topk(nb::handle q, nb::handle weights, nb::handle cache, nb::handle context_lens, nb::handle page_table,
                  int64_t page_size, nb::handle workspace, int64_t k, bool paged_output, nb::handle out,
                  nb::handle out_raw, int order, nb::handle stream) {
  Call c("indexer_topk");
  nsa::IndexerTopkArgs x;
  x.logits = logits_args(c, q, weights, cache, context_lens, page_table, page_size, workspace);
  const int64_t rows = x.logits.batch * x.logits.next_n;
  const Array out_a = c.require(out, "out", true);
  const Array raw_a = c.optional(out_raw, "out_raw", true);
  x.k = k;
  x.paged_output = paged_output;
  x.out_ld = topk_output(c, out_a, rows, k);
  x.out = out_a.as<int32_t>();
  if (raw_a.present) {
    x.out_raw_ld = topk_output(c, raw_a, rows, k);
    x.out_raw = raw_a.as<int32_t>();
  }
  if (order != 0 && order != 1) c.fail("order", "'any' or 'ascending'", std::to_string(order));
  x.order = static_cast<nsa::TopkOrder>(order);
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::indexer_topk(exec, x); });
}

}  // namespace

void bind_indexer(nb::module_& m) {
  m.def("paged_mqa_logits", &paged_mqa_logits, nb::arg("q"), nb::arg("weights"), nb::arg("cache"),
        nb::arg("context_lens"), nb::arg("page_table"), nb::arg("page_size"), nb::arg("logits"),
        nb::arg("stream").none());
  m.def("indexer_topk", &indexer_topk, nb::arg("q"), nb::arg("weights"), nb::arg("cache"), nb::arg("context_lens"),
        nb::arg("page_table"), nb::arg("page_size"), nb::arg("workspace"), nb::arg("k"), nb::arg("paged_output"),
        nb::arg("out"), nb::arg("out_raw").none(), nb::arg("order"), nb::arg("stream").none());
}

}  // namespace nsa_py
