// libFuzzer target: upload_metadata_targets + build_metadata on the CPU
// against the reference, all three modes, 1..3 destination sets.
// Fuzzed: mode, batch size, draft tokens, topk, page size, every destination
// descriptor (capacities, columns, strides, optional fields, a missing
// mandatory field), req_to_token's shape, index element types, null inputs,
// the FlashMLA sources and the backend. Device values are generated inside
// their preconditions: lengths fit every destination's columns and
// req_to_token's row, request rows exist, 0 <= e_b <= N.
#include <algorithm>
#include <climits>

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
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const Where where = pick_exec(in);
  MetadataConfig config;
  config.mode = static_cast<ForwardMode>(in.rarely(32) ? 3 + in.byte() % 2 : in.byte() % 3);
  const bool mode_ok = static_cast<int>(config.mode) <= 2;
  const bool verify = config.mode == ForwardMode::kTargetVerify, extend = config.mode == ForwardMode::kDraftExtend;
  config.batch_size = maybe_below(in, in.in(0, 5), 0);
  config.draft_tokens = maybe_below(in, in.in(1, 4), 1);
  if (in.rarely(32)) config.draft_tokens = INT32_MAX - in.byte();  // rows overflow int32 unless bs == 0
  config.topk = maybe_below(in, in.flag() ? in.in(1, 48) : 2048, 1);
  config.page_size = maybe_below(in, in.in(1, 70), 1);
  config.paged_mqa_layout = static_cast<PagedMqaLayout>(in.rarely(32) ? 2 + in.byte() % 2 : in.byte() % 2);
  config.paged_mqa_clamp_min_len = in.flag();
  const bool layout_ok = static_cast<int>(config.paged_mqa_layout) <= 1;
  const int64_t bs = std::max<int64_t>(config.batch_size, 0);
  const bool small_n = config.draft_tokens >= 1 && config.draft_tokens <= 4;
  const int64_t n = small_n ? config.draft_tokens : 0;  // what buffers are sized for
  const int64_t draft = verify ? n : 0;
  const int64_t rows_needed = extend || verify ? bs * n : bs;
  const int64_t page = std::max<int64_t>(config.page_size, 1);

  // Destinations.
  std::vector<FuzzDest> dests;
  const int64_t count = in.in(1, 3);
  for (int64_t d = 0; d < count; ++d) {
    DestShape s;
    s.max_rows = maybe_below(in, rows_needed + in.in(0, 2), rows_needed);
    s.pt_cols = maybe_below(in, draft + in.in(0, 40), 0);
    s.pt_ld = maybe_below(in, std::max<int64_t>(s.pt_cols, 0) + in.in(0, 3), s.pt_cols);
    s.expanded = config.mode == ForwardMode::kDecode ? in.flag() : !in.rarely(32);
    s.real = in.flag();
    const int64_t real_cols = (std::max<int64_t>(s.pt_cols, 0) + page - 1) / page;
    s.rt_cols = maybe_below(in, real_cols + in.in(0, 1), 0);
    s.rt_ld = maybe_below(in, std::max<int64_t>(s.rt_cols, 0) + in.in(0, 2), s.rt_cols);
    s.splits = in.flag();
    s.has_tiles = in.flag();
    s.tiles = maybe_below(in, in.in(0, 20), 0);
    s.schedule = in.flag();
    s.sms = in.rarely(32) ? kMaxSms + 1 + in.byte()
                          : maybe_below(in, in.in(1, 140), 1);  // too many, or too few  // too many SMs, or too few
    s.null_field = pick_null_field(in);
    dests.emplace_back(in, s);
  }

  // Inputs.
  MetadataInputs inputs;
  const int64_t table_rows = maybe_below(in, in.in(1, 4), 1), table_cols = maybe_below(in, draft + in.in(0, 40), 0);
  const int64_t table_ld = maybe_below(in, std::max<int64_t>(table_cols, 0) + in.in(0, 3), table_cols);
  const std::vector<int32_t> req_to_token =
      ints_from(in, std::max<int64_t>(table_rows, 0) * std::max(table_ld, table_cols));
  int64_t max_kv = std::max<int64_t>(table_cols, 0);  // longest cache_seqlens every buffer can hold
  for (const auto& d : dests) {
    max_kv = std::min(max_kv, std::max<int64_t>(d.shape().pt_cols, 0));
    if (d.shape().real) max_kv = std::min(max_kv, std::max<int64_t>(d.shape().rt_cols, 0) * page);
  }
  std::vector<int64_t> seq(static_cast<size_t>(bs)), rpi(seq.size()), ext(seq.size());
  int64_t rows = 0;  // query rows R
  for (size_t b = 0; b < seq.size(); ++b) {
    const uint8_t kind = in.byte();
    int64_t kv = max_kv >= draft ? in.in(draft, max_kv) : draft;
    if (kind % 4 == 0) kv = std::min(max_kv, draft + 1);  // a padded graph row: seq_len 1
    if (kind % 4 == 1) kv = std::max(max_kv, draft);      // the longest row that fits
    if (kind % 8 == 2) kv = draft;                        // seq_len 0
    seq[b] = kv - draft;
    rpi[b] = in.byte() % std::max<int64_t>(table_rows, 1);
    ext[b] = in.in(0, n);
    rows += extend ? ext[b] : verify ? n : 1;
  }
  const IndexType seq_type = pick_index_type(in), rpi_type = pick_index_type(in), ext_type = pick_index_type(in);
  const IndexArray seq_a(seq_type, seq), rpi_a(rpi_type, rpi), ext_a(ext_type, ext);
  const bool null_seq = in.rarely(64), null_rpi = in.rarely(64), null_table = in.rarely(64);
  const bool pass_ext = extend ? !in.rarely(64) : in.rarely(64);
  inputs.seq_lens = seq_a.view(null_seq);
  inputs.req_pool_indices = rpi_a.view(null_rpi);
  if (pass_ext) inputs.extend_lens = ext_a.view();
  inputs.req_to_token = null_table ? nullptr : req_to_token.data();
  inputs.req_to_token_rows = table_rows;
  inputs.req_to_token_cols = table_cols;
  inputs.req_to_token_ld = table_ld;
  int64_t max_tiles = 0;
  for (const auto& d : dests) max_tiles = std::max(max_tiles, d.shape().tiles);
  const std::vector<int32_t> splits_src = ints_from(in, rows + 1), tiles_src = ints_from(in, max_tiles);
  if (in.flag()) inputs.flashmla_num_splits = splits_src.data();
  if (in.flag()) inputs.flashmla_metadata = tiles_src.data();
  inputs.flashmla_num_splits_size = rows + 1;
  inputs.flashmla_metadata_size = max_tiles;

  FuzzTargets t;
  if (!t.prepare(in, where, dests)) return 0;

  bool dests_ok = t.table_ok;
  const bool rows_fit = config.batch_size <= 0 || config.draft_tokens <= INT32_MAX / config.batch_size;
  // Rows every destination must hold (only meaningful when the shape itself is valid).
  const bool shape_ok = rows_fit && config.batch_size >= 0 && config.draft_tokens >= 1;
  const int64_t capacity_rows = !shape_ok                             ? 0
                                : config.mode == ForwardMode::kDecode ? config.batch_size
                                                                      : config.batch_size * config.draft_tokens;
  for (const auto& d : dests)
    dests_ok = dests_ok && d.descriptor_valid() && d.shape().max_rows >= capacity_rows &&
               (config.mode == ForwardMode::kDecode || d.shape().expanded);
  const bool valid = where.backend_ok && mode_ok && layout_ok && config.batch_size >= 0 && config.draft_tokens >= 1 &&
                     config.topk >= 1 && config.page_size >= 1 && rows_fit && dests_ok && table_rows >= 0 &&
                     table_cols >= 0 && table_ld >= table_cols && (extend || !pass_ext) &&
                     (config.batch_size == 0 ||
                      (!null_seq && valid_index_type(seq_type) && !null_rpi && valid_index_type(rpi_type) &&
                       (!extend || (pass_ext && valid_index_type(ext_type))) && !null_table && table_rows >= 1));

  const bool ran = run_checked(valid, [&] { build_metadata(where.exec, config, inputs, t.targets); });
  if (ran) reference::build_metadata(config, inputs, t.expected_host.data(), count);
  for (const auto& d : dests) d.check_matches_expected();
  return 0;
}
