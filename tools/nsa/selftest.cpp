// nsa selftest: every op on every backend of this machine against the plain-
// loop reference (src/reference), on random cases, for a few seconds. Prints
// PASS / FAIL / SKIP per op and backend; exit code 0 only when nothing fails.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>

#include "buffer.h"
#include "commands.h"
#include "host_data.h"
#include "metadata_dests.h"
#include "nsa/index_cache.h"
#include "nsa/indexer.h"
#include "nsa/metadata.h"
#include "nsa/topk.h"
#include "reference/index_cache.h"
#include "reference/indexer.h"
#include "reference/metadata.h"
#include "reference/topk.h"

namespace nsa {
namespace cli {

using support::from_backend;
using support::random_bf16;
using support::random_bytes;
using support::random_ints;
using support::to_backend;

namespace {

using support::Buffer;
using L = IndexCacheLayout;

// A case that disagrees with the reference.
struct Mismatch : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void expect_same(const std::string& what, const std::vector<uint8_t>& got, const std::vector<uint8_t>& want) {
  if (got.size() != want.size())
    throw Mismatch(fmt::format("{}: {} bytes vs {} expected", what, got.size(), want.size()));
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i])
      throw Mismatch(
          fmt::format("{}: byte {} of {} is 0x{:02x}, reference 0x{:02x}", what, i, got.size(), got[i], want[i]));
}

int64_t pick(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

Exec exec_for(Backend b) { return b == Backend::kCpu ? Exec::cpu() : Exec::cuda(); }

// Tokens per page of a case: every supported size, 64 (the default) most often.
int64_t pick_page_size(std::mt19937_64& rng) {
  static const int64_t sizes[] = {16, 32, 64, 64, 64, 128, 256};
  return sizes[pick(rng, 0, 6)];
}

// Raw K rows of `dtype`: bf16 from the shared generator, fp16 as finite random
// bit patterns, fp32 as normal values times a random power of two per row.
std::vector<uint8_t> random_k(std::mt19937_64& rng, KDtype dtype, int64_t n, int64_t ld) {
  std::vector<uint8_t> bytes(static_cast<size_t>(n * ld * element_bytes(dtype)));
  if (dtype == KDtype::kBf16) {
    const auto v = random_bf16(rng, n, ld);
    std::memcpy(bytes.data(), v.data(), bytes.size());
  } else if (dtype == KDtype::kFp16) {
    for (size_t i = 0; i + 1 < bytes.size(); i += 2) {
      uint16_t h;
      do h = static_cast<uint16_t>(rng());
      while ((h & 0x7c00) == 0x7c00);
      std::memcpy(&bytes[i], &h, 2);
    }
  } else {
    std::normal_distribution<float> normal;
    for (int64_t t = 0; t < n; ++t) {
      const int e = static_cast<int>(pick(rng, -20, 20));
      for (int64_t d = 0; d < ld; ++d) {
        const float x = std::ldexp(normal(rng), e);
        std::memcpy(&bytes[static_cast<size_t>((t * ld + d) * 4)], &x, 4);
      }
    }
  }
  return bytes;
}

// Distinct random slots of a pool, every 7th replaced by -1 (padding) when asked.
std::vector<int64_t> random_slots(std::mt19937_64& rng, int64_t n, int64_t slot_count, bool padding) {
  std::vector<int64_t> all(static_cast<size_t>(slot_count));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int64_t> s(all.begin(), all.begin() + n);
  if (padding)
    for (int64_t t = 0; t < n; t += 7) s[t] = -1;
  return s;
}

// ------------------------------------------------------------------ index cache

void case_quantize_and_store(Backend b, std::mt19937_64& rng) {
  const int64_t P = pick_page_size(rng), pages = pick(rng, 1, 40), n = pick(rng, 0, std::min<int64_t>(pages * P, 300));
  const int64_t ld = 128 + 8 * pick(rng, 0, 8);
  const ScaleMode mode = static_cast<ScaleMode>(pick(rng, 0, 2));  // kFp32, kUe8m0, kFp32Divide
  const KDtype dtype = static_cast<KDtype>(pick(rng, 0, 2));       // kBf16, kFp16, kFp32
  auto pool = random_bytes(rng, static_cast<size_t>(pages * L::bytes_per_page(P)));
  const auto k = random_k(rng, dtype, n, ld);
  const auto slots = random_slots(rng, n, pages * P, pick(rng, 0, 1));
  Buffer pool_d = to_backend(b, pool), k_d = to_backend(b, k), slots_d = to_backend(b, slots);
  quantize_and_store_k(exec_for(b), {pool_d.as<uint8_t>(), pages, P}, k_d.data(), n, ld, slots_d.as<int64_t>(), mode,
                       dtype);
  support::synchronize(b);
  reference::quantize_and_store_k({pool.data(), pages, P}, k.data(), n, ld, slots.data(), mode, dtype);
  expect_same(fmt::format("page_size={} n={} ld={} mode={} k={}", P, n, ld, to_string(mode), to_string(dtype)),
              pool_d.to_host(), pool);
}

void case_store_k_and_s(Backend b, std::mt19937_64& rng) {
  const int64_t P = pick_page_size(rng), pages = pick(rng, 1, 40), n = pick(rng, 0, std::min<int64_t>(pages * P, 300));
  const int64_t ld = 128 + 16 * pick(rng, 0, 4);
  auto pool = random_bytes(rng, static_cast<size_t>(pages * L::bytes_per_page(P)));
  const auto k = random_bytes(rng, static_cast<size_t>(n * ld));
  std::vector<float> scale(n);
  std::uniform_real_distribution<float> mag(-20.0f, 5.0f);
  for (auto& s : scale) s = std::exp2(mag(rng));
  const auto slots = random_slots(rng, n, pages * P, pick(rng, 0, 1));
  Buffer pool_d = to_backend(b, pool), k_d = to_backend(b, k), s_d = to_backend(b, scale),
         slots_d = to_backend(b, slots);
  store_k_and_s(exec_for(b), {pool_d.as<uint8_t>(), pages, P}, k_d.as<uint8_t>(), n, ld, s_d.as<float>(),
                slots_d.as<int64_t>());
  support::synchronize(b);
  reference::store_k_and_s({pool.data(), pages, P}, k.data(), n, ld, scale.data(), slots.data());
  expect_same(fmt::format("page_size={} n={} ld={}", P, n, ld), pool_d.to_host(), pool);
}

// One sequence: random length, page ids in any order with repeats, int32 or int64.
void case_gather_one(Backend b, std::mt19937_64& rng, bool k_not_s) {
  const int64_t P = pick_page_size(rng), pages = pick(rng, 1, 30), length = pick(rng, 0, 2000);
  const int64_t n_ids = (length + P - 1) / P;
  const auto pool = random_bytes(rng, static_cast<size_t>(pages * L::bytes_per_page(P)));
  const bool wide = pick(rng, 0, 1);
  const auto ids64 = random_ints<int64_t>(rng, n_ids, 0, pages - 1);
  const std::vector<int32_t> ids32(ids64.begin(), ids64.end());
  Buffer pool_d = to_backend(b, pool);
  Buffer ids_d = wide ? to_backend(b, ids64) : to_backend(b, ids32);
  const Indices ids = wide ? Indices(ids_d.as<int64_t>()) : Indices(ids_d.as<int32_t>());
  const Indices host_ids = wide ? Indices(ids64.data()) : Indices(ids32.data());
  const size_t out_bytes = static_cast<size_t>(length) * (k_not_s ? 128 : 4);
  Buffer out(b, out_bytes);
  out.fill(0xA5);
  std::vector<uint8_t> want(out_bytes, 0xA5);
  if (k_not_s) {
    gather_k(exec_for(b), {pool_d.as<uint8_t>(), pages, P}, length, ids, out.as<uint8_t>());
    reference::gather_k({pool.data(), pages, P}, length, host_ids, want.data());
  } else {
    gather_s(exec_for(b), {pool_d.as<uint8_t>(), pages, P}, length, ids, out.as<float>());
    reference::gather_s({pool.data(), pages, P}, length, host_ids, reinterpret_cast<float*>(want.data()));
  }
  support::synchronize(b);
  expect_same(fmt::format("page_size={} length={} ids={}", P, length, wide ? "int64" : "int32"), out.to_host(), want);
}

// A ragged batch in either length form, int32 or int64 indices, a padded table row stride.
void case_gather_k_and_s(Backend b, std::mt19937_64& rng) {
  const int64_t P = pick_page_size(rng), bs = pick(rng, 1, 8), pages = pick(rng, 1, 40);
  const auto lens = random_ints<int64_t>(rng, bs, 0, 1000);
  int64_t cols = 1, total = 0;
  for (auto l : lens) {
    cols = std::max(cols, (l + P - 1) / P);
    total += l;
  }
  const int64_t ld = cols + pick(rng, 0, 3), capacity = total + pick(rng, 0, 70);
  const auto pool = random_bytes(rng, static_cast<size_t>(pages * L::bytes_per_page(P)));
  const auto table64 = random_ints<int64_t>(rng, bs * ld, 0, pages - 1);
  std::vector<int64_t> cu64(bs + 1, 0);
  for (int64_t i = 0; i < bs; ++i) cu64[i + 1] = cu64[i] + lens[i];
  const bool wide = pick(rng, 0, 1), cumulative = pick(rng, 0, 1);
  const std::vector<int32_t> table32(table64.begin(), table64.end()), lens32(lens.begin(), lens.end()),
      cu32(cu64.begin(), cu64.end());
  auto up = [&](const std::vector<int64_t>& v64, const std::vector<int32_t>& v32) {
    return wide ? to_backend(b, v64) : to_backend(b, v32);
  };
  auto view = [&](const Buffer& d) { return wide ? Indices(d.as<int64_t>()) : Indices(d.as<int32_t>()); };
  auto host_view = [&](const std::vector<int64_t>& v64, const std::vector<int32_t>& v32) {
    return wide ? Indices(v64.data()) : Indices(v32.data());
  };
  Buffer pool_d = to_backend(b, pool), table_d = up(table64, table32);
  Buffer lens_d = cumulative ? up(cu64, cu32) : up(lens, lens32);
  PagedBatch dev, host;
  dev.batch_size = host.batch_size = bs;
  dev.table_cols = host.table_cols = cols;
  dev.table_ld = host.table_ld = ld;
  dev.page_table = view(table_d);
  host.page_table = host_view(table64, table32);
  if (cumulative) {
    dev.cu_seq_lens = view(lens_d);
    host.cu_seq_lens = host_view(cu64, cu32);
  } else {
    dev.seq_lens = view(lens_d);
    host.seq_lens = host_view(lens, lens32);
  }
  Buffer out_k(b, capacity * 128), out_s(b, capacity * 4);
  out_k.fill(0xA5);
  out_s.fill(0xA5);
  std::vector<uint8_t> want_k(capacity * 128, 0xA5), want_s(capacity * 4, 0xA5);
  gather_k_and_s(exec_for(b), {pool_d.as<uint8_t>(), pages, P}, dev, out_k.as<uint8_t>(), out_s.as<float>(), capacity);
  reference::gather_k_and_s({pool.data(), pages, P}, host, want_k.data(), reinterpret_cast<float*>(want_s.data()));
  support::synchronize(b);
  const std::string what = fmt::format("page_size={} bs={} total={} {} {}", P, bs, total,
                                       cumulative ? "cu_seq_lens" : "seq_lens", wide ? "int64" : "int32");
  expect_same(what + " K", out_k.to_host(), want_k);
  expect_same(what + " scales", out_s.to_host(), want_s);
}

// ------------------------------------------------------------------ metadata

// Destination sets with random contents and random optional fields, on the backend and mirrored on the host.
struct Dests {
  support::MetadataDests m;

  Dests(Backend b, std::mt19937_64& rng, int64_t count, int64_t max_rows, int64_t pt_cols, int64_t rt_cols,
        int64_t tiles, bool expanded)
      : m(b, shapes(rng, count, max_rows, pt_cols, rt_cols, tiles, expanded), rng) {}
  const MetadataTargets& targets() const { return m.targets(); }

  static std::vector<support::MetadataDestShape> shapes(std::mt19937_64& rng, int64_t count, int64_t max_rows,
                                                        int64_t pt_cols, int64_t rt_cols, int64_t tiles,
                                                        bool expanded) {
    std::vector<support::MetadataDestShape> v;
    for (int64_t d = 0; d < count; ++d) {
      support::MetadataDestShape s;
      s.max_batch = s.max_rows = max_rows;
      s.page_table_1_cols = pt_cols;
      s.page_table_1_ld = pt_cols + pick(rng, 0, 5);
      s.real_page_table_cols = rt_cols;
      s.real_page_table_ld = rt_cols + pick(rng, 0, 2);
      s.flashmla_metadata_size = tiles;
      s.fields = (expanded ? metadata_field_bit(MetadataField::kSeqlensExpanded) : 0) |
                 (pick(rng, 0, 3) != 0 ? metadata_field_bit(MetadataField::kRealPageTable) : 0) |
                 (pick(rng, 0, 1) ? metadata_field_bit(MetadataField::kFlashmlaNumSplits) : 0) |
                 (pick(rng, 0, 1) ? metadata_field_bit(MetadataField::kFlashmlaMetadata) : 0) |
                 (pick(rng, 0, 1) ? metadata_field_bit(MetadataField::kPagedMqaSchedule) : 0);
      s.paged_mqa_num_sms = pick(rng, 0, 1) ? 132 : pick(rng, 1, 200);
      v.push_back(s);
    }
    return v;
  }

  void expect_matches_reference(const std::string& what) const {
    for (int64_t d = 0; d < m.count(); ++d)
      for (int f = 0; f < kMetadataFieldCount; ++f)
        if (m.present(d, f))
          expect_same(fmt::format("{} destination {} field {}", what, d, kMetadataFields[f].name), m.read(d, f),
                      m.mirror(d, f));
  }
};

ForwardMode random_mode(std::mt19937_64& rng) { return static_cast<ForwardMode>(pick(rng, 0, 2)); }

void case_build_metadata(Backend b, std::mt19937_64& rng) {
  const ForwardMode mode = random_mode(rng);
  const int64_t bs = pick(rng, 1, 40), n = pick(rng, 1, 8), page = pick(rng, 0, 1) ? 64 : 16;
  const int64_t topk = pick(rng, 0, 1) ? 2048 : pick(rng, 1, 300), context = pick(rng, 1, 3000);
  const int64_t width = context + n + pick(rng, 0, 10), pool_rows = bs + pick(rng, 0, 5);
  const auto r2t = random_ints<int32_t>(rng, pool_rows * width, 0, 1 << 24);
  const auto rpi = random_ints<int64_t>(rng, bs, 0, pool_rows - 1);
  const auto extend = random_ints<int32_t>(rng, bs, 0, n);
  std::vector<int64_t> seq = random_ints<int64_t>(rng, bs, 1, context);
  if (mode == ForwardMode::kDraftExtend)
    for (int64_t i = 0; i < bs; ++i) seq[i] = std::max<int64_t>(seq[i], extend[i]);
  const int64_t rows = mode == ForwardMode::kDecode ? bs : bs * n;
  const int64_t tiles = pick(rng, 1, 600);
  const auto splits = random_ints<int32_t>(rng, rows + 1, 0, 1 << 20),
             tile = random_ints<int32_t>(rng, tiles, 0, 1 << 20);

  Buffer r2t_d = to_backend(b, r2t), rpi_d = to_backend(b, rpi), seq_d = to_backend(b, seq),
         ext_d = to_backend(b, extend), splits_d = to_backend(b, splits), tile_d = to_backend(b, tile);
  MetadataConfig config{mode, bs, n, topk, page};
  config.paged_mqa_layout = pick(rng, 0, 3) == 0 ? PagedMqaLayout::kG1 : PagedMqaLayout::kG4;
  config.paged_mqa_clamp_min_len = pick(rng, 0, 1) != 0;
  MetadataInputs dev{Indices(seq_d.as<int64_t>()),
                     Indices(rpi_d.as<int64_t>()),
                     r2t_d.as<int32_t>(),
                     pool_rows,
                     width,
                     width,
                     Indices(),
                     splits_d.as<int32_t>(),
                     tile_d.as<int32_t>()};
  MetadataInputs host{Indices(seq.data()), Indices(rpi.data()), r2t.data(), pool_rows, width, width,
                      Indices(),           splits.data(),       tile.data()};
  dev.flashmla_num_splits_size = host.flashmla_num_splits_size = rows + 1;
  dev.flashmla_metadata_size = host.flashmla_metadata_size = tiles;
  if (mode == ForwardMode::kDraftExtend) {
    dev.extend_lens = Indices(ext_d.as<int32_t>());
    host.extend_lens = Indices(extend.data());
  }
  const int64_t count = pick(rng, 1, 3);
  Dests dests(b, rng, count, rows + pick(rng, 0, 3), width, (width + page - 1) / page, tiles,
              mode != ForwardMode::kDecode || pick(rng, 0, 1));
  build_metadata(exec_for(b), config, dev, dests.targets());
  support::synchronize(b);
  reference::build_metadata(config, host, dests.m.expected(), count);
  dests.expect_matches_reference(fmt::format("{} bs={} N={} P={} topk={}", to_string(mode), bs, n, page, topk));
}

// paged_mqa_schedule on its own: [B, N] lengths with a row stride, zeros and
// all-zero batches, both layouts, the clamp, every row of the output checked.
void case_paged_mqa_schedule(Backend b, std::mt19937_64& rng) {
  const int64_t bs = pick(rng, 0, 1) ? pick(rng, 0, 64) : pick(rng, 1, 5000), n = pick(rng, 1, 2);
  const int64_t ld = n + pick(rng, 0, 3), sms = pick(rng, 0, 1) ? 132 : pick(rng, 1, 200);
  auto lens = random_ints<int32_t>(rng, std::max<int64_t>(bs * ld, 1), 0, pick(rng, 0, 1) ? 600 : 200000);
  if (pick(rng, 0, 7) == 0) std::fill(lens.begin(), lens.end(), 0);
  PagedMqaScheduleArgs a;
  a.batch = bs;
  a.next_n = n;
  a.context_lens_ld = ld;
  a.num_sms = sms;
  a.layout = pick(rng, 0, 3) == 0 ? PagedMqaLayout::kG1 : PagedMqaLayout::kG4;
  a.clamp_min_len = pick(rng, 0, 1) != 0;
  const Buffer lens_d = to_backend(b, lens);
  Buffer out_d = to_backend(b, random_ints<int32_t>(rng, 2 * (sms + 1), INT32_MIN, INT32_MAX));
  a.context_lens = lens_d.as<int32_t>();
  a.schedule = out_d.as<int32_t>();
  paged_mqa_schedule(b == Backend::kCpu ? Exec::cpu() : Exec::cuda(), a);
  support::synchronize(b);
  std::vector<int32_t> last;
  for (int64_t r = 0; r < bs; ++r) last.push_back(lens[r * ld + n - 1]);
  const auto want = reference::paged_mqa_schedule(last, n, sms, a.layout, a.clamp_min_len);
  expect_same(fmt::format("bs={} next_n={} ld={} sms={} g1={} clamp={}", bs, n, ld, sms,
                          a.layout == PagedMqaLayout::kG1, a.clamp_min_len),
              out_d.to_host(),
              std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(want.data()),
                                   reinterpret_cast<const uint8_t*>(want.data() + want.size())));
}

void case_copy_metadata(Backend b, std::mt19937_64& rng) {
  const ForwardMode mode = random_mode(rng);
  const bool decode = mode == ForwardMode::kDecode;
  const int64_t bs = pick(rng, 1, 40), e = decode ? bs : pick(rng, 0, 4 * bs), cols = pick(rng, 1, 300);
  const int64_t rows = decode ? bs : e, rt_cols = pick(rng, 1, 8), tiles = pick(rng, 1, 300);
  const int64_t src_ld = cols + pick(rng, 0, 4);
  MetadataCopyShape shape{mode, bs, cols, cols, e};
  std::vector<std::vector<int32_t>> src = {random_ints<int32_t>(rng, bs, 0, 1 << 20),
                                           random_ints<int32_t>(rng, bs + 1, 0, 1 << 20),
                                           random_ints<int32_t>(rng, rows * src_ld, 0, 1 << 20),
                                           random_ints<int32_t>(rng, e, 0, 1 << 20),
                                           random_ints<int32_t>(rng, rows, 0, 1 << 20),
                                           random_ints<int32_t>(rng, rows + 1, 0, 1 << 20),
                                           random_ints<int32_t>(rng, rows * rt_cols, 0, 1 << 20),
                                           random_ints<int32_t>(rng, rows + 1, 0, 1 << 20),
                                           random_ints<int32_t>(rng, tiles, 0, 1 << 20)};
  std::vector<Buffer> src_d;
  for (const auto& v : src) src_d.push_back(to_backend(b, v));
  const bool real = pick(rng, 0, 1), splits = pick(rng, 0, 1), tile = pick(rng, 0, 1),
             expanded = !decode && pick(rng, 0, 3);
  auto sources = [&](bool device) {
    auto p = [&](int f) -> const int32_t* { return device ? src_d[f].as<int32_t>() : src[f].data(); };
    return MetadataSources{p(0),
                           p(1),
                           p(2),
                           src_ld,
                           expanded ? p(3) : nullptr,
                           p(4),
                           p(5),
                           real ? p(6) : nullptr,
                           rt_cols,
                           rt_cols,
                           splits ? p(7) : nullptr,
                           tile ? p(8) : nullptr,
                           tile ? tiles : 0};
  };
  const int64_t count = pick(rng, 1, 4);
  Dests dests(b, rng, count, std::max(bs, rows) + pick(rng, 0, 3), cols + pick(rng, 0, 4), rt_cols + pick(rng, 0, 2),
              tiles + pick(rng, 0, 4), !decode || pick(rng, 0, 1));
  copy_metadata(exec_for(b), shape, sources(true), dests.targets());
  support::synchronize(b);
  reference::copy_metadata(shape, sources(false), dests.m.expected(), count);
  dests.expect_matches_reference(fmt::format("{} bs={} E={} cols={}", to_string(mode), bs, e, cols));
}

// topk_transform: random shapes, lengths (some past K, some negative, some
// past the width), tie-heavy scores, every transform, MTP or per-row lengths,
// both orders. The valid prefix is compared as a set in order "any".
void case_topk_transform(Backend b, std::mt19937_64& rng) {
  TopkArgs a;
  a.rows = pick(rng, 1, 24);
  a.k = pick(rng, 0, 2) ? int64_t{512} << pick(rng, 0, 2) : pick(rng, 1, 2048);
  a.width = pick(rng, 1, 3 * a.k + 100);
  a.score_ld = a.width + pick(rng, 0, 5);
  a.score_type = pick(rng, 0, 3) ? ScoreType::kFloat32 : ScoreType::kBfloat16;
  a.order = pick(rng, 0, 1) ? TopkOrder::kAscending : TopkOrder::kAny;
  a.transform = static_cast<TopkTransform>(pick(rng, 0, 3));
  const int zero_pct = static_cast<int>(pick(rng, 0, 3)) * 33;  // 0, 33, 66 or 99% exact zeros
  std::vector<float> f(static_cast<size_t>(a.rows * a.score_ld));
  std::normal_distribution<float> normal;
  for (auto& x : f) x = pick(rng, 0, 99) < zero_pct ? 0.0f : normal(rng);
  std::vector<uint16_t> h(f.size());
  for (size_t i = 0; i < f.size(); ++i) {
    uint32_t u;
    std::memcpy(&u, &f[i], 4);
    h[i] = static_cast<uint16_t>(u >> 16);
  }
  const bool mtp = pick(rng, 0, 1);
  if (mtp) {
    a.length_form = TopkLengths::kPerRequest;
    a.rows_per_request = pick(rng, 1, 4);
  }
  const int64_t requests = (a.rows + a.rows_per_request - 1) / a.rows_per_request;
  auto lens = random_ints<int64_t>(rng, mtp ? requests : a.rows, -3, a.width + 3);
  std::vector<int64_t> starts, rtr, offsets;
  if (!mtp && pick(rng, 0, 1)) starts = random_ints<int64_t>(rng, a.rows, 0, a.width);
  if (pick(rng, 0, 1)) rtr = random_ints<int64_t>(rng, a.rows, 0, requests);  // may point past the table
  a.table_rows = requests;
  a.table_cols = a.transform == TopkTransform::kPaged64 ? (a.width + 63) / 64 : a.width;
  a.table_ld = a.table_cols + pick(rng, 0, 3);
  auto table = random_ints<int32_t>(rng, a.table_rows * a.table_ld, -1, 1 << 24);
  offsets = random_ints<int64_t>(rng, a.rows, 0, 1 << 30);
  const int64_t out_ld = a.k + pick(rng, 0, 4);
  const std::vector<int32_t> poison(static_cast<size_t>(a.rows * out_ld), -7);

  Buffer f_d = to_backend(b, f), h_d = to_backend(b, h), lens_d = to_backend(b, lens), starts_d = to_backend(b, starts),
         rtr_d = to_backend(b, rtr), table_d = to_backend(b, table), off_d = to_backend(b, offsets),
         out_d = to_backend(b, poison), raw_d = to_backend(b, poison);
  auto bind = [&](bool device) {
    TopkArgs x = a;
    const bool fp32 = a.score_type == ScoreType::kFloat32;
    x.scores = device ? (fp32 ? f_d.data() : h_d.data()) : (fp32 ? static_cast<const void*>(f.data()) : h.data());
    x.lengths = Indices(device ? lens_d.as<int64_t>() : lens.data());
    if (!starts.empty()) x.row_starts = Indices(device ? starts_d.as<int64_t>() : starts.data());
    if (!rtr.empty()) x.row_to_request = Indices(device ? rtr_d.as<int64_t>() : rtr.data());
    x.table = Indices(device ? table_d.as<int32_t>() : table.data());
    x.offsets = Indices(device ? off_d.as<int64_t>() : offsets.data());
    x.out_ld = x.out_raw_ld = out_ld;
    return x;
  };
  TopkArgs dev = bind(true);
  dev.out = out_d.as<int32_t>();
  dev.out_raw = raw_d.as<int32_t>();
  topk_transform(exec_for(b), dev);
  support::synchronize(b);
  std::vector<int32_t> want = poison, want_raw = poison;
  TopkArgs host = bind(false);
  host.out = want.data();
  host.out_raw = want_raw.data();
  reference::topk_transform(host);
  auto got = from_backend<int32_t>(out_d, want.size()), got_raw = from_backend<int32_t>(raw_d, want.size());
  if (a.order == TopkOrder::kAny) {  // compare sets: sort (raw, out) pairs of each row's first k slots
    for (auto* pair : {&got, &want}) {
      auto& out = *pair;
      auto& raw = pair == &got ? got_raw : want_raw;
      for (int64_t r = 0; r < a.rows; ++r) {
        std::vector<std::pair<int32_t, int32_t>> p;
        for (int64_t s = 0; s < a.k; ++s) p.emplace_back(raw[r * out_ld + s], out[r * out_ld + s]);
        std::sort(p.begin(), p.end());
        for (int64_t s = 0; s < a.k; ++s) std::tie(raw[r * out_ld + s], out[r * out_ld + s]) = p[s];
      }
    }
  }
  const std::string what =
      fmt::format("rows={} width={} k={} {} {} {} {}", a.rows, a.width, a.k, to_string(a.score_type),
                  to_string(a.length_form), to_string(a.transform), to_string(a.order));
  auto bytes = [](const std::vector<int32_t>& v) {
    std::vector<uint8_t> out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
  };
  expect_same(what + " out", bytes(got), bytes(want));
  expect_same(what + " out_raw", bytes(got_raw), bytes(want_raw));
}

// paged_mqa_logits: random batch, next_n, page size, lengths (some negative,
// some past the width), tables with padding and out-of-pool entries. The CPU
// backend must give the reference's bytes; CUDA (tensor cores) -inf at the
// same columns and calc_diff < 1e-3 per row against the fixed-order reference.
void case_paged_mqa_logits(Backend b, std::mt19937_64& rng) {
  constexpr int64_t kH = kIndexerHeads, kD = kIndexerHeadDim;
  PagedMqaLogitsArgs a;
  a.batch = pick(rng, 1, 4);
  a.next_n = pick(rng, 1, kIndexerMaxNextN);
  a.page_size = int64_t{4} << pick(rng, 0, 5);
  a.width = pick(rng, 1, 1500);
  a.logits_ld = a.width + pick(rng, 0, 5);
  a.table_cols = (a.width + a.page_size - 1) / a.page_size;
  a.table_ld = a.table_cols + pick(rng, 0, 3);
  const int64_t pages = a.batch * a.table_cols + 1, page_bytes = a.page_size * (kD + 4);
  a.cache.num_pages = pages;
  auto fp8 = [&](size_t n) {
    auto v = random_bytes(rng, n);
    for (auto& x : v) x = static_cast<uint8_t>((x & 0x7f) >= 0x70 ? x & 0xb7 : x);  // no NaN, modest range
    return v;
  };
  auto cache = fp8(static_cast<size_t>(pages * page_bytes));
  std::uniform_real_distribution<float> scale(1e-3f, 1e-2f);
  for (int64_t p = 0; p < pages; ++p)
    for (int64_t o = 0; o < a.page_size; ++o) {
      const float sc = scale(rng);
      std::memcpy(&cache[static_cast<size_t>(p * page_bytes + a.page_size * kD + o * 4)], &sc, 4);
    }
  const auto q = fp8(static_cast<size_t>(a.batch * a.next_n * kH * kD));
  std::vector<float> w(static_cast<size_t>(a.batch * a.next_n * kH));
  std::normal_distribution<float> normal(0.0f, 0.05f);
  for (auto& x : w) x = normal(rng);
  const auto lens = random_ints<int64_t>(rng, a.batch, -3, a.width + 20);
  auto table = random_ints<int32_t>(rng, a.batch * a.table_ld, -1, pages);  // -1 and `pages` are masked
  const std::vector<float> poison(static_cast<size_t>(a.batch * a.next_n * a.logits_ld), 7.0f);
  Buffer cache_d = to_backend(b, cache), q_d = to_backend(b, q), w_d = to_backend(b, w), lens_d = to_backend(b, lens),
         table_d = to_backend(b, table), out_d = to_backend(b, poison);
  PagedMqaLogitsArgs dev = a;
  dev.q = q_d.as<uint8_t>();
  dev.weights = w_d.as<float>();
  dev.cache.data = cache_d.as<uint8_t>();
  dev.context_lens = Indices(lens_d.as<int64_t>());
  dev.page_table = Indices(table_d.as<int32_t>());
  dev.logits = out_d.as<float>();
  paged_mqa_logits(exec_for(b), dev);
  std::vector<float> want = poison;
  PagedMqaLogitsArgs host = a;
  host.q = q.data();
  host.weights = w.data();
  host.cache.data = cache.data();
  host.context_lens = Indices(lens.data());
  host.page_table = Indices(table.data());
  host.logits = want.data();
  reference::paged_mqa_logits(host);
  const auto got = from_backend<float>(out_d, want.size());
  const std::string what = fmt::format("B={} N={} P={} width={}", a.batch, a.next_n, a.page_size, a.width);
  auto bytes = [](const std::vector<float>& v) {
    std::vector<uint8_t> out(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
    return out;
  };
  if (b == Backend::kCpu) return expect_same(what, bytes(got), bytes(want));
  for (int64_t r = 0; r < a.batch * a.next_n; ++r) {
    const float* g = &got[static_cast<size_t>(r * a.logits_ld)];
    const float* e = &want[static_cast<size_t>(r * a.logits_ld)];
    std::vector<double> ref(e, e + a.width);
    for (int64_t t = a.width; t < a.logits_ld; ++t)
      if (g[t] != 7.0f) throw Mismatch(fmt::format("{}: row {} column {} past the width was written", what, r, t));
    const double diff = reference::calc_diff(g, ref.data(), a.width);
    if (!(diff < 1e-3))
      throw Mismatch(fmt::format("{}: row {} calc_diff {} (or -inf at different columns)", what, r, diff));
  }
}

// ------------------------------------------------------------------ driver

struct Op {
  const char* name;
  std::function<void(Backend, std::mt19937_64&)> run_case;
};

const std::vector<Op>& all_ops() {
  static const std::vector<Op> ops = {
      {"quantize_and_store_k", case_quantize_and_store},
      {"store_k_and_s", case_store_k_and_s},
      {"gather_k", [](Backend b, std::mt19937_64& r) { case_gather_one(b, r, true); }},
      {"gather_s", [](Backend b, std::mt19937_64& r) { case_gather_one(b, r, false); }},
      {"gather_k_and_s", case_gather_k_and_s},
      {"build_metadata", case_build_metadata},
      {"copy_metadata", case_copy_metadata},
      {"paged_mqa_schedule", case_paged_mqa_schedule},
      {"topk_transform", case_topk_transform},
      {"paged_mqa_logits", case_paged_mqa_logits},
  };
  return ops;
}

}  // namespace

int run_selftest(const SelftestOptions& o) {
  const uint64_t seed = o.seed ? o.seed : std::random_device{}();
  const bool want_cpu = o.device != "cuda", want_cuda = o.device != "cpu";
  const bool have_cuda = support::cuda_device_available();
  std::string cuda_skip = !cuda_built() ? "CUDA backend not built" : "no CUDA device found";
  const auto& ops = all_ops();
  const int backends_run = (want_cpu ? 1 : 0) + (want_cuda && have_cuda ? 1 : 0);
  const double slice_s = o.seconds / std::max<double>(1.0, static_cast<double>(ops.size() * backends_run));
  fmt::print("nsa selftest: {} ops against the reference, random cases for ~{:.0f} s, seed {} (--seed to replay)\n",
             ops.size(), o.seconds, seed);

  int passed = 0, failed = 0, skipped = 0;
  for (Backend b : {Backend::kCpu, Backend::kCuda}) {
    const bool wanted = b == Backend::kCpu ? want_cpu : want_cuda;
    if (!wanted) continue;
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      if (b == Backend::kCuda && !have_cuda) {
        fmt::print("SKIP  {:<5} {:<22} ({})\n", to_string(b), op.name, cuda_skip);
        ++skipped;
        continue;
      }
      std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ull + i * 2 + (b == Backend::kCuda));
      const auto start = std::chrono::steady_clock::now();
      int cases = 0;
      std::string error;
      try {
        do {
          op.run_case(b, rng);
          ++cases;
        } while (cases < 3 ||
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < slice_s);
      } catch (const std::exception& e) {
        error = e.what();
      }
      if (error.empty()) {
        fmt::print("PASS  {:<5} {:<22} ({} random cases)\n", to_string(b), op.name, cases);
        ++passed;
      } else {
        fmt::print("FAIL  {:<5} {:<22} case {}: {}\n", to_string(b), op.name, cases + 1, error);
        ++failed;
      }
    }
  }
  fmt::print("selftest: {} passed, {} failed, {} skipped\n", passed, failed, skipped);
  return failed == 0 && passed > 0 ? kExitOk : kExitFailure;
}

}  // namespace cli
}  // namespace nsa
