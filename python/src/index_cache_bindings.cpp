// Bindings of the index-cache ops (include/nsa/index_cache.h). Output
// allocation, stream lookup and framework handling live in python/nsa/ops.py;
// here every argument is checked and the library called.
#include <nanobind/nanobind.h>

#include "arrays.h"
#include "nsa/index_cache.h"

namespace nsa_py {

namespace {

using L = nsa::IndexCacheLayout;

// The layer's buffer: any contiguous uint8 array of num_pages * page_size * 132
// bytes (SGLang's [num_pages, 8448], vLLM's [num_blocks, block_size, 132],
// or flat).
nsa::IndexCache index_cache(const Call& c, const Array& a, int64_t page_size) {
  if (!L::is_supported_page_size(page_size))
    c.fail("page_size", "one of 16, 32, 64, 128, 256 tokens per page", std::to_string(page_size));
  c.dtype(a, {DType::kUint8}, "uint8 (fp8 buffers are viewed as uint8 by the Python layer)");
  const int64_t page_bytes = L::bytes_per_page(page_size);
  if (a.numel() == 0 || a.numel() % page_bytes != 0)
    c.fail(a.name, "a whole number (>= 1) of pages of page_size * 132 = " + std::to_string(page_bytes) + " bytes",
           a.describe());
  if (!a.contiguous()) c.fail(a.name, "contiguous pages", a.describe());
  return {a.as<uint8_t>(), a.numel() / page_bytes, page_size};
}

// Scales are fp32 [n] (or [n, 1], as SGLang's index_k_scale may come) or, as
// SGLang returns them, the same bytes as uint8 [n, 4]. Returns n.
int64_t scale_rows(const Call& c, const Array& a) {
  if (a.dtype == DType::kUint8) {
    c.dense_rows(a, 4, "[n, 4] (the fp32 scale bytes)");
    return a.shape[0];
  }
  c.dtype(a, {DType::kFloat32, DType::kUint8}, "float32 [n] or uint8 [n, 4]");
  if (a.ndim == 2 && a.shape[1] == 1) {
    if (a.shape[0] > 1 && a.stride[0] != 1) c.fail(a.name, "a unit stride", a.describe());
    return a.shape[0];
  }
  return c.vector(a, 0, "[n]");
}

// mode: 0 = ScaleMode::kFp32, 1 = kUe8m0, 2 = kFp32Divide (ops.py maps the
// (mode, scale_formula) strings onto these).
void quantize_and_store_k(nb::handle cache, nb::handle k, nb::handle slots, int mode, int64_t page_size,
                          nb::handle stream) {
  Call c("quantize_and_store_k");
  const Array cache_a = c.require(cache, "cache", true);
  const Array k_a = c.require(k, "k");
  const Array slots_a = c.require(slots, "slots");
  const nsa::IndexCache ic = index_cache(c, cache_a, page_size);
  c.dtype(k_a, {DType::kBfloat16, DType::kUint16, DType::kInt16, DType::kFloat16, DType::kFloat32},
          "bfloat16 (or its raw bits as uint16/int16), float16 or float32");
  const nsa::KDtype k_dtype = k_a.dtype == DType::kFloat32   ? nsa::KDtype::kFp32
                              : k_a.dtype == DType::kFloat16 ? nsa::KDtype::kFp16
                                                             : nsa::KDtype::kBf16;
  const int64_t ld = c.rows(k_a, L::kHeadDim, "[n, 128]");
  const int64_t n = k_a.shape[0];
  c.dtype(slots_a, {DType::kInt64}, "int64");
  c.vector(slots_a, n, "[k.shape[0]]", true);
  if (mode < 0 || mode > 2) c.fail("mode", "'fp32' or 'ue8m0'", std::to_string(mode));
  const nsa::ScaleMode m = mode == 0   ? nsa::ScaleMode::kFp32
                           : mode == 1 ? nsa::ScaleMode::kUe8m0
                                       : nsa::ScaleMode::kFp32Divide;
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::quantize_and_store_k(exec, ic, k_a.data, n, ld, slots_a.as<const int64_t>(), m, k_dtype); });
}

void store_k_and_s(nb::handle cache, nb::handle k, nb::handle scale, nb::handle slots, int64_t page_size,
                   nb::handle stream) {
  Call c("store_k_and_s");
  const Array cache_a = c.require(cache, "cache", true);
  const Array k_a = c.require(k, "k");
  const Array scale_a = c.require(scale, "scale");
  const Array slots_a = c.require(slots, "slots");
  const nsa::IndexCache ic = index_cache(c, cache_a, page_size);
  c.dtype(k_a, {DType::kUint8, DType::kInt8}, "uint8 (fp8 e4m3 bytes; torch float8 is viewed as uint8)");
  const int64_t ld = c.rows(k_a, L::kHeadDim, "[n, 128]");
  const int64_t n = k_a.shape[0];
  c.dtype(scale_a, {DType::kFloat32}, "float32");
  if (scale_rows(c, scale_a) != n)
    c.fail("scale", "[n] or [n, 1] with n = k.shape[0] = " + std::to_string(n), scale_a.describe());
  c.dtype(slots_a, {DType::kInt64}, "int64");
  c.vector(slots_a, n, "[k.shape[0]]", true);
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] {
    nsa::store_k_and_s(exec, ic, k_a.as<const uint8_t>(), n, ld, scale_a.as<const float>(),
                       slots_a.as<const int64_t>());
  });
}

void check_page_ids(const Call& c, const Array& a, int64_t length, int64_t page_size) {
  c.index_type(a);
  const int64_t pages = (length + page_size - 1) / page_size;
  c.vector(a, pages, "[ceil(length / page_size)]");
}

void gather_k(nb::handle cache, int64_t length, nb::handle page_ids, nb::handle out_k, int64_t page_size,
              nb::handle stream) {
  Call c("gather_k");
  const Array cache_a = c.require(cache, "cache");
  const Array pages_a = c.require(page_ids, "page_ids");
  const Array out_a = c.require(out_k, "out", true);  // the Python argument is `out`
  const nsa::IndexCache ic = index_cache(c, cache_a, page_size);
  if (length < 0) c.fail("length", ">= 0", std::to_string(length));
  check_page_ids(c, pages_a, length, page_size);
  c.dtype(out_a, {DType::kUint8, DType::kInt8}, "uint8");
  c.dense_rows(out_a, L::kHeadDim, "[>= length, 128]");
  if (out_a.shape[0] < length) c.fail("out", "at least length = " + std::to_string(length) + " rows", out_a.describe());
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::gather_k(exec, ic, length, c.indices(pages_a), out_a.as<uint8_t>()); });
}

void gather_s(nb::handle cache, int64_t length, nb::handle page_ids, nb::handle out_s, int64_t page_size,
              nb::handle stream) {
  Call c("gather_s");
  const Array cache_a = c.require(cache, "cache");
  const Array pages_a = c.require(page_ids, "page_ids");
  const Array out_a = c.require(out_s, "out", true);  // the Python argument is `out`
  const nsa::IndexCache ic = index_cache(c, cache_a, page_size);
  if (length < 0) c.fail("length", ">= 0", std::to_string(length));
  check_page_ids(c, pages_a, length, page_size);
  if (scale_rows(c, out_a) < length)
    c.fail("out", "at least length = " + std::to_string(length) + " rows", out_a.describe());
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::gather_s(exec, ic, length, c.indices(pages_a), out_a.as<float>()); });
}

Prepared prepare_gather_k_and_s(nb::handle cache, nb::handle page_table, nb::handle seq_lens, nb::handle cu_seq_lens,
                                nb::handle out_k, nb::handle out_s, int64_t page_size) {
  Call c("gather_k_and_s");
  const Array cache_a = c.require(cache, "cache");
  const Array table_a = c.require(page_table, "page_table");
  const Array lens_a = c.optional(seq_lens, "seq_lens");
  const Array cu_a = c.optional(cu_seq_lens, "cu_seq_lens");
  const Array out_k_a = c.require(out_k, "out_k", true);
  const Array out_s_a = c.require(out_s, "out_s", true);
  const nsa::IndexCache ic = index_cache(c, cache_a, page_size);

  if (lens_a.present == cu_a.present)
    c.fail("seq_lens/cu_seq_lens", "exactly one of the two", lens_a.present ? "both" : "neither");
  nsa::PagedBatch batch;
  if (lens_a.present) {
    c.index_type(lens_a);
    batch.batch_size = c.vector(lens_a, 0, "[batch_size]");
    batch.seq_lens = c.indices(lens_a);
  } else {
    c.index_type(cu_a);
    batch.batch_size = c.vector(cu_a, 1, "[batch_size + 1]") - 1;
    batch.cu_seq_lens = c.indices(cu_a);
  }
  c.index_type(table_a);
  batch.table_ld = c.table(table_a, "[batch_size, pages_per_request]");
  batch.table_cols = table_a.shape[1];
  if (table_a.shape[0] < batch.batch_size)
    c.fail("page_table", "at least batch_size = " + std::to_string(batch.batch_size) + " rows", table_a.describe());
  batch.page_table = c.indices(table_a);

  c.dtype(out_k_a, {DType::kUint8, DType::kInt8}, "uint8");
  c.dense_rows(out_k_a, L::kHeadDim, "[capacity, 128]");
  const int64_t s_rows = scale_rows(c, out_s_a);
  // Rows past sum(seq_lens) are never written, so the smaller output bounds the call.
  const int64_t capacity = std::min(out_k_a.shape[0], s_rows);
  uint8_t* const k_out = out_k_a.as<uint8_t>();
  float* const s_out = out_s_a.as<float>();
  return Prepared(c, {cache_a, table_a, lens_a, cu_a, out_k_a, out_s_a},
                  [=](const nsa::Exec& exec) { nsa::gather_k_and_s(exec, ic, batch, k_out, s_out, capacity); });
}

void gather_k_and_s(nb::handle cache, nb::handle page_table, nb::handle seq_lens, nb::handle cu_seq_lens,
                    nb::handle out_k, nb::handle out_s, int64_t page_size, nb::handle stream) {
  prepare_gather_k_and_s(cache, page_table, seq_lens, cu_seq_lens, out_k, out_s, page_size).run(stream);
}

}  // namespace

void bind_index_cache(nb::module_& m) {
  m.def("quantize_and_store_k", &quantize_and_store_k, nb::arg("cache"), nb::arg("k"), nb::arg("slots"),
        nb::arg("mode"), nb::arg("page_size"), nb::arg("stream").none());
  m.def("store_k_and_s", &store_k_and_s, nb::arg("cache"), nb::arg("k"), nb::arg("scale"), nb::arg("slots"),
        nb::arg("page_size"), nb::arg("stream").none());
  m.def("gather_k", &gather_k, nb::arg("cache"), nb::arg("length"), nb::arg("page_ids"), nb::arg("out_k"),
        nb::arg("page_size"), nb::arg("stream").none());
  m.def("gather_s", &gather_s, nb::arg("cache"), nb::arg("length"), nb::arg("page_ids"), nb::arg("out_s"),
        nb::arg("page_size"), nb::arg("stream").none());
  m.def("prepare_gather_k_and_s", &prepare_gather_k_and_s, nb::arg("cache"), nb::arg("page_table"),
        nb::arg("seq_lens").none(), nb::arg("cu_seq_lens").none(), nb::arg("out_k"), nb::arg("out_s"),
        nb::arg("page_size"));
  m.def("gather_k_and_s", &gather_k_and_s, nb::arg("cache"), nb::arg("page_table"), nb::arg("seq_lens").none(),
        nb::arg("cu_seq_lens").none(), nb::arg("out_k"), nb::arg("out_s"), nb::arg("page_size"),
        nb::arg("stream").none());
}

}  // namespace nsa_py
