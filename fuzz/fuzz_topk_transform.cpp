// libFuzzer target: topk_transform on the CPU against the reference.
// Fuzzed: rows, width, stride, k, raw score bits (NaN, inf, -0, ties), both
// length forms with garbage lengths, row starts, row-to-request maps past the
// table, every transform with negative / huge table entries and offsets,
// output strides, index types, null pointers, broken enums and the backend.
// The CPU backend writes ascending order in both order modes, as the
// reference does, so the comparison is bytewise (slots past k included).
#include "fuzz_input.h"
#include "nsa/topk.h"
#include "reference/topk.h"

using namespace nsa;
using namespace nsa::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const Where where = pick_exec(in);
  TopkArgs a;
  a.rows = maybe_below(in, in.in(0, 6), 0);
  a.width = maybe_below(in, in.in(0, 300), 0);
  a.score_ld = maybe_below(in, (a.width > 0 ? a.width : 0) + in.in(0, 3), a.width);
  a.k = in.rarely() ? static_cast<int64_t>(in.flag() ? 0 : kTopkMaxK + 1) : in.in(1, 40);
  a.score_type = in.rarely(32) ? static_cast<ScoreType>(7) : (in.flag() ? ScoreType::kBfloat16 : ScoreType::kFloat32);
  a.length_form =
      in.rarely(32) ? static_cast<TopkLengths>(5) : (in.flag() ? TopkLengths::kPerRequest : TopkLengths::kPerRow);
  a.rows_per_request = a.length_form == TopkLengths::kPerRequest ? maybe_below(in, in.in(1, 4), 1) : 1;
  a.transform = in.rarely(32) ? static_cast<TopkTransform>(9) : static_cast<TopkTransform>(in.byte() % 4);
  a.order = in.rarely(32) ? static_cast<TopkOrder>(4) : static_cast<TopkOrder>(in.byte() % 2);
  const int64_t rows = a.rows > 0 ? a.rows : 0;
  const int64_t ld = a.score_ld > 0 ? a.score_ld : 0;
  const int64_t n = a.rows_per_request > 0 ? a.rows_per_request : 1;
  const int64_t requests = (rows + n - 1) / n;

  // Scores: few distinct byte patterns give ties; raw input bytes give NaN/inf.
  std::vector<uint8_t> score_bytes = bytes_from(in, static_cast<size_t>(rows * ld * 4 + 4));
  if (in.flag())
    for (size_t i = 0; i < score_bytes.size(); ++i) score_bytes[i] &= static_cast<uint8_t>(i % 4 == 3 ? 0xC0 : 0x00);
  auto values = [&](int64_t count, int64_t lo, int64_t hi) {
    std::vector<int64_t> v(static_cast<size_t>(count));
    for (auto& x : v) x = in.rarely() ? (in.flag() ? INT64_MIN + in.byte() : INT64_MAX - in.byte()) : in.in(lo, hi);
    return v;
  };
  const IndexType lt = pick_index_type(in), st = pick_index_type(in), qt = pick_index_type(in),
                  tt = pick_index_type(in), ot = pick_index_type(in);
  const IndexArray lengths(lt, values(a.length_form == TopkLengths::kPerRequest ? requests : rows, -3, 320));
  const bool with_starts = a.length_form == TopkLengths::kPerRow ? in.flag() : in.rarely(32);
  const IndexArray starts(st, values(rows, -2, 300));
  const bool with_rtr = in.flag();
  const IndexArray rtr(qt, values(rows, -1, requests + 1));
  a.table_rows = maybe_below(in, requests + in.in(0, 1), 0);
  a.table_cols = maybe_below(in, in.in(0, 300), 0);
  a.table_ld = maybe_below(in, (a.table_cols > 0 ? a.table_cols : 0) + in.in(0, 2), a.table_cols);
  const int64_t table_elems = (a.table_rows > 0 ? a.table_rows : 0) * (a.table_ld > 0 ? a.table_ld : 0);
  const IndexArray table(tt, values(table_elems, -2, 1 << 26));
  const IndexArray offsets(ot, values(rows, -100, 1 << 30));
  const bool null_scores = in.rarely(32), null_lengths = in.rarely(32), null_table = in.rarely(32),
             null_offsets = in.rarely(32), null_out = in.rarely(32);
  a.out_ld = maybe_below(in, (a.k > 0 ? a.k : 0) + in.in(0, 3), a.k);
  const bool with_raw = in.flag();
  a.out_raw_ld = maybe_below(in, (a.k > 0 ? a.k : 0) + in.in(0, 3), a.k);

  a.scores = null_scores ? nullptr : score_bytes.data();
  a.lengths = lengths.view(null_lengths);
  if (with_starts) a.row_starts = starts.view();
  if (with_rtr) a.row_to_request = rtr.view();
  a.table = table.view(null_table);
  a.offsets = offsets.view(null_offsets);
  const int64_t out_elems = rows * (a.out_ld > 0 ? a.out_ld : 0),
                raw_elems = rows * (a.out_raw_ld > 0 ? a.out_raw_ld : 0);
  std::vector<int32_t> out(static_cast<size_t>(out_elems) + 1, -77), raw(static_cast<size_t>(raw_elems) + 1, -88);
  std::vector<int32_t> want = out, want_raw = raw;
  a.out = null_out ? nullptr : out.data();
  a.out_raw = with_raw ? raw.data() : nullptr;

  const bool enums_ok = (a.score_type == ScoreType::kFloat32 || a.score_type == ScoreType::kBfloat16) &&
                        (a.length_form == TopkLengths::kPerRow || a.length_form == TopkLengths::kPerRequest) &&
                        static_cast<int>(a.transform) >= 0 && static_cast<int>(a.transform) <= 3 &&
                        (a.order == TopkOrder::kAny || a.order == TopkOrder::kAscending);
  const bool tables = a.transform == TopkTransform::kPaged64 || a.transform == TopkTransform::kTokenTable;
  const bool index_types_ok = (rows == 0 || valid_index_type(lt)) && (!with_starts || valid_index_type(st)) &&
                              (!with_rtr || valid_index_type(qt)) &&
                              (!tables || a.table_rows == 0 || a.table_cols == 0 || valid_index_type(tt)) &&
                              (a.transform != TopkTransform::kRaggedOffset || valid_index_type(ot));
  const bool valid = where.backend_ok && enums_ok && a.rows >= 0 && a.k >= 1 && a.k <= kTopkMaxK && a.width >= 0 &&
                     a.score_ld >= a.width && (rows == 0 || a.width == 0 || !null_scores) &&
                     (rows == 0 || !null_lengths) &&
                     (a.length_form == TopkLengths::kPerRow ? a.rows_per_request == 1 : a.rows_per_request >= 1) &&
                     (!with_starts || a.length_form == TopkLengths::kPerRow) && index_types_ok &&
                     (!tables || (a.table_rows >= 0 && a.table_cols >= 0 && a.table_ld >= a.table_cols &&
                                  (a.table_rows == 0 || a.table_cols == 0 || !null_table))) &&
                     (a.transform != TopkTransform::kRaggedOffset || !null_offsets) && a.out_ld >= a.k &&
                     (rows == 0 || !null_out) && (!with_raw || a.out_raw_ld >= a.k);
  const bool ran = run_checked(valid, [&] { topk_transform(where.exec, a); });
  if (ran && rows > 0) {
    TopkArgs r = a;
    r.out = want.data();
    r.out_raw = with_raw ? want_raw.data() : nullptr;
    if (tables && (r.table_rows == 0 || r.table_cols == 0)) r.table_rows = r.table_cols = 0;
    reference::topk_transform(r);
  }
  expect_equal(out, want, "out");
  expect_equal(raw, want_raw, "out_raw");
  return 0;
}
