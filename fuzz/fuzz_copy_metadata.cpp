// libFuzzer target: upload_metadata_targets + copy_metadata on the CPU
// against the reference, all three modes, 1..3 destination sets.
// Fuzzed: mode, bs, max_len, max_seqlen_k, E, source strides and optional
// sources, every destination descriptor, null mandatory sources and the
// backend. Sources are sized exactly as the shape says (the caller's part).
#include <algorithm>

#include "fuzz_metadata.h"
#include "reference/metadata.h"

using namespace nsa;
using namespace nsa::fuzz;

namespace {
std::vector<int32_t> ints_from(Input& in, int64_t n) {
  std::vector<int32_t> v(static_cast<size_t>(std::max<int64_t>(n, 0)) + 1);
  const std::vector<uint8_t> b = bytes_from(in, v.size() * 4);
  copy_into(v.data(), b);
  return v;
}
int64_t at_least0(int64_t v) { return std::max<int64_t>(v, 0); }
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const Where where = pick_exec(in);
  MetadataCopyShape shape;
  shape.mode = static_cast<ForwardMode>(in.rarely(32) ? 3 + in.byte() % 2 : in.byte() % 3);
  const bool mode_ok = static_cast<int>(shape.mode) <= 2, decode = shape.mode == ForwardMode::kDecode;
  shape.batch_size = maybe_below(in, in.in(0, 5), 0);
  shape.max_len = maybe_below(in, in.in(0, 12), 0);
  shape.max_seqlen_k = maybe_below(in, in.in(0, 12), 0);
  shape.seqlens_expanded_size = maybe_below(in, in.in(0, 12), 0);
  const int64_t bs = at_least0(shape.batch_size);
  const int64_t rows = decode ? shape.batch_size : shape.seqlens_expanded_size;  // copy_rows
  const int64_t cols = decode ? shape.max_len : shape.max_seqlen_k;              // copy_page_cols
  const int64_t rows_a = at_least0(rows), cols_a = at_least0(cols);

  // Sources.
  MetadataSources src;
  const bool has_real = in.flag(), has_tiles = in.flag();
  src.page_table_1_ld = in.flag() ? 0 : maybe_below(in, cols_a + in.in(0, 2), cols);
  src.real_page_table_cols = maybe_below(in, in.in(0, 4), 0);
  src.real_page_table_ld =
      in.flag() ? 0 : maybe_below(in, at_least0(src.real_page_table_cols) + in.in(0, 2), src.real_page_table_cols);
  src.flashmla_metadata_size = maybe_below(in, in.in(0, 20), 0);
  const int64_t pt_ld = std::max(src.page_table_1_ld ? src.page_table_1_ld : cols_a, cols_a);
  const int64_t rt_cols = at_least0(src.real_page_table_cols);
  const int64_t rt_ld = std::max(src.real_page_table_ld ? src.real_page_table_ld : rt_cols, rt_cols);
  const auto cache = ints_from(in, bs), cu = ints_from(in, bs + 1), pt = ints_from(in, rows_a * pt_ld),
             expanded = ints_from(in, rows_a), nsa_cache = ints_from(in, rows_a), nsa_cu = ints_from(in, rows_a + 1),
             real = ints_from(in, rows_a * rt_ld), splits = ints_from(in, rows_a + 1),
             tiles = ints_from(in, src.flashmla_metadata_size);
  int null_source = in.rarely(16) ? in.byte() % 5 : -1;  // a mandatory source left null
  src.cache_seqlens = null_source == 0 ? nullptr : cache.data();
  src.cu_seqlens_k = null_source == 1 ? nullptr : cu.data();
  src.page_table_1 = null_source == 2 ? nullptr : pt.data();
  src.nsa_cache_seqlens = null_source == 3 ? nullptr : nsa_cache.data();
  src.nsa_cu_seqlens_k = null_source == 4 ? nullptr : nsa_cu.data();
  if (in.flag()) src.seqlens_expanded = expanded.data();
  if (has_real) src.real_page_table = real.data();
  if (in.flag()) src.flashmla_num_splits = splits.data();
  if (has_tiles) src.flashmla_metadata = tiles.data();

  // Destinations.
  std::vector<FuzzDest> dests;
  const int64_t count = in.in(1, 3);
  const int64_t need_rows = std::max(bs, rows_a);
  for (int64_t d = 0; d < count; ++d) {
    DestShape s;
    s.max_rows = maybe_below(in, need_rows + in.in(0, 2), need_rows);
    s.pt_cols = maybe_below(in, cols_a + in.in(0, 3), cols_a);
    s.pt_ld = maybe_below(in, at_least0(s.pt_cols) + in.in(0, 2), s.pt_cols);
    s.expanded = in.flag();
    s.real = in.flag();
    s.rt_cols = maybe_below(in, rt_cols + in.in(0, 2), rt_cols);
    s.rt_ld = maybe_below(in, at_least0(s.rt_cols) + in.in(0, 2), s.rt_cols);
    s.splits = in.flag();
    s.has_tiles = in.flag();
    s.tiles =
        maybe_below(in, at_least0(src.flashmla_metadata_size) + in.in(0, 3), at_least0(src.flashmla_metadata_size));
    s.null_field = pick_null_field(in);
    dests.emplace_back(in, s);
  }

  FuzzTargets t;
  if (!t.prepare(in, where, dests)) return 0;

  bool dests_ok = t.table_ok;
  for (const auto& d : dests) {
    const DestShape& s = d.shape();
    dests_ok = dests_ok && d.descriptor_valid() && s.max_rows >= shape.batch_size && s.max_rows >= rows &&
               s.pt_cols >= cols && (!has_real || !s.real || s.rt_cols >= src.real_page_table_cols) &&
               (!has_tiles || !s.has_tiles || s.tiles >= src.flashmla_metadata_size);
  }
  const bool any = shape.batch_size > 0;
  const bool sources_ok =
      (!any || (null_source != 0 && null_source != 1)) && (!(any && rows > 0 && cols > 0) || null_source != 2) &&
      (src.page_table_1_ld == 0 || src.page_table_1_ld >= cols) &&
      (!(any && rows > 0) || (null_source != 3 && null_source != 4)) &&
      (!has_real || (src.real_page_table_cols >= 0 &&
                     (src.real_page_table_ld == 0 || src.real_page_table_ld >= src.real_page_table_cols))) &&
      (!has_tiles || src.flashmla_metadata_size >= 0);
  const bool valid = where.backend_ok && mode_ok && shape.batch_size >= 0 && shape.max_len >= 0 &&
                     shape.max_seqlen_k >= 0 && shape.seqlens_expanded_size >= 0 && dests_ok && sources_ok;

  const bool ran = run_checked(valid, [&] { copy_metadata(where.exec, shape, src, t.targets); });
  if (ran) reference::copy_metadata(shape, src, t.expected_host.data(), count);
  for (const auto& d : dests) d.check_matches_expected();
  return 0;
}
