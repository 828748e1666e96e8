// Metadata ops (build_metadata, copy_metadata) on every backend against the
// plain-loop reference (src/reference/metadata.cpp), bit-exact. Every
// destination buffer starts as random bytes and the reference works on a host
// copy of the same bytes, so comparing whole buffers also proves that element 0
// of the cumulative arrays (copy), columns past each row's length and rows
// past the live count were left untouched. Plus the spec §4.7 worked example,
// empty batches, every validation path and (CUDA) a captured graph replayed
// with fresh inputs. At the end, each in its own section: checked mode (CUDA
// planted violations, CPU rejections), determinism across threads and
// streams, and the fuzzers' regressions.
#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <numeric>

#include "determinism.h"
#include "metadata_dests.h"
#include "nsa/metadata.h"
#include "reference/metadata.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace test {

#if defined(NSA_WITH_CUDA)
// metadata_test_kernels.cu: out[0] = sum of v[0..n) (the graph's consumer kernel).
cudaError_t launch_checksum(const int32_t* v, int64_t n, long long* out, cudaStream_t stream);
#endif

namespace {

// ------------------------------------------------------------------------------------
// A destination set: one poisoned buffer per field on the backend, and the
// expected bytes on the host (same poison, then the reference's writes).
// ------------------------------------------------------------------------------------
struct DestSpec {
  int64_t max_rows = 0;
  int64_t max_batch = -1;  // per-request capacity; -1: max_rows
  int64_t batch() const { return max_batch < 0 ? max_rows : max_batch; }
  int64_t pt_cols = 0, pt_ld = 0;
  bool expanded = true, real = false, num_splits = false, tiles = false;
  int64_t rt_cols = 0, rt_ld = 0;
  int64_t tiles_size = 0;
  int64_t schedule_sms = 0;  // > 0: a paged_mqa_schedule for this many SMs
};

constexpr int field(MetadataField f) { return static_cast<int>(f); }
constexpr int kCache = field(MetadataField::kCacheSeqlens), kCuK = field(MetadataField::kCuSeqlensK),
              kPt = field(MetadataField::kPageTable1), kExpanded = field(MetadataField::kSeqlensExpanded),
              kNsa = field(MetadataField::kNsaCacheSeqlens), kNsaCu = field(MetadataField::kNsaCuSeqlensK),
              kReal = field(MetadataField::kRealPageTable);

support::MetadataDestShape dest_shape(const DestSpec& s) {
  support::MetadataDestShape m;
  m.max_batch = s.batch();
  m.max_rows = s.max_rows;
  m.page_table_1_cols = s.pt_cols;
  m.page_table_1_ld = s.pt_ld;
  m.real_page_table_cols = s.rt_cols;
  m.real_page_table_ld = s.rt_ld;
  m.flashmla_metadata_size = s.tiles_size;
  m.fields = (s.expanded ? metadata_field_bit(MetadataField::kSeqlensExpanded) : 0) |
             (s.real ? metadata_field_bit(MetadataField::kRealPageTable) : 0) |
             (s.num_splits ? metadata_field_bit(MetadataField::kFlashmlaNumSplits) : 0) |
             (s.tiles ? metadata_field_bit(MetadataField::kFlashmlaMetadata) : 0) |
             (s.schedule_sms > 0 ? metadata_field_bit(MetadataField::kPagedMqaSchedule) : 0);
  m.paged_mqa_num_sms = s.schedule_sms;
  return m;
}
std::vector<support::MetadataDestShape> dest_shapes(const std::vector<DestSpec>& specs) {
  std::vector<support::MetadataDestShape> v;
  for (const auto& s : specs) v.push_back(dest_shape(s));
  return v;
}

// All destinations of one call (random initial bytes, mirrored on the host) and their uploaded table.
struct DestSets {
  support::MetadataDests m;
  const MetadataTargets& targets;

  DestSets(Backend, const Exec& exec, const std::vector<DestSpec>& specs, std::mt19937_64& rng)
      : m(exec, dest_shapes(specs), rng), targets(m.targets()) {}
  void expect_matches() const {
    for (int64_t d = 0; d < m.count(); ++d) {
      for (int f = 0; f < kMetadataFieldCount; ++f) {
        if (!m.present(d, f)) continue;
        SCOPED_TRACE(::testing::Message() << "destination " << d << " field " << kMetadataFields[f].name);
        NSA_EXPECT_BYTES_EQ(m.read(d, f), m.mirror(d, f));
      }
    }
  }
};

// Keeps the destinations' page tables within ~48 MiB in all (host + device copies double it).
int64_t dests_within_budget(int64_t wanted, int64_t rows, int64_t ld) {
  const int64_t per = std::max<int64_t>(1, rows * ld * 4);
  return std::max<int64_t>(1, std::min<int64_t>(wanted, (int64_t{48} << 20) / per));
}

// ------------------------------------------------------------------------------------
// build_metadata cases.
// ------------------------------------------------------------------------------------
struct BuildCase {
  ForwardMode mode = ForwardMode::kDecode;
  int64_t N = 1;
  std::vector<int64_t> seq_lens, rpi, extend;
  int64_t pool_rows = 1, cols = 0, ld = 0;  // req_to_token
  int64_t num_dests = 1;
  bool optional = false;  // real page table, FlashMLA, seqlens_expanded in DECODE
  bool idx64 = false;     // int64 seq_lens / extend_lens and int32 rpi, or the other way round
  int64_t topk = 2048, page_size = 64;
  int64_t dest_extra_rows = 1;
  // DeepGEMM schedule: with `optional`, destinations get one for 132, 78 or
  // 1 SMs; schedule_sms > 0 gives every destination one for that many.
  int64_t schedule_sms = 0;
  PagedMqaLayout layout = PagedMqaLayout::kG4;
  bool clamp_min_len = false;
};

template <class T>
std::vector<T> narrow_to(const std::vector<int64_t>& v) {
  return std::vector<T>(v.begin(), v.end());
}
support::Buffer index_buffer(Backend b, const std::vector<int64_t>& v, bool is64) {
  return is64 ? to_backend(b, v) : to_backend(b, narrow_to<int32_t>(v));
}

void run_build_case(Backend b, const Exec& exec, std::mt19937_64& rng, const BuildCase& c) {
  const int64_t bs = static_cast<int64_t>(c.seq_lens.size());
  const int64_t R_cap = c.mode == ForwardMode::kDecode ? bs : bs * c.N;
  SCOPED_TRACE(::testing::Message() << "mode=" << to_string(c.mode) << " bs=" << bs << " N=" << c.N
                                    << " D=" << c.num_dests << " optional=" << c.optional << " idx64=" << c.idx64
                                    << " cols=" << c.cols << " ld=" << c.ld);
  // Inputs. Slots are non-negative; columns past `cols` in each row are junk that must never be read.
  std::vector<int32_t> table = random_ints<int32_t>(rng, static_cast<size_t>(c.pool_rows * c.ld), 0, (1 << 30));
  auto table_dev = to_backend(b, table);
  auto seq_dev = index_buffer(b, c.seq_lens, c.idx64);
  auto rpi_dev = index_buffer(b, c.rpi, !c.idx64);
  support::Buffer ext_dev;
  if (c.mode == ForwardMode::kDraftExtend) ext_dev = index_buffer(b, c.extend, c.idx64);
  const int64_t tiles_max = 64 + 8 * c.num_dests;
  auto splits = random_ints<int32_t>(rng, static_cast<size_t>(R_cap + 1), -5, 1000);
  auto tiles = random_ints<int32_t>(rng, static_cast<size_t>(tiles_max), -1000, 1000);
  auto splits_dev = to_backend(b, splits);
  auto tiles_dev = to_backend(b, tiles);

  // Destinations: row strides differ per destination and from the columns; some have spare rows.
  static const int64_t kLdExtra[] = {0, 4, 1, 7, 8, 3, 12, 5};
  const int64_t W = c.cols;
  const int64_t real_cols = (W + c.page_size - 1) / c.page_size;
  std::vector<DestSpec> specs;
  for (int64_t d = 0; d < c.num_dests; ++d) {
    DestSpec s;
    s.max_rows = R_cap + (d % 2) * c.dest_extra_rows;
    s.pt_cols = W;
    s.pt_ld = W + kLdExtra[d % 8];
    s.expanded = c.mode != ForwardMode::kDecode || (c.optional && d % 2 == 0);
    s.real = c.optional && d != 1;
    s.rt_cols = real_cols;
    s.rt_ld = real_cols + kLdExtra[(d + 3) % 8];
    s.num_splits = c.optional && d != 2;
    s.tiles = c.optional && d != 1;
    s.tiles_size = tiles_max - 8 * d;
    static const int64_t kSms[] = {132, 78, 0, 1};
    s.schedule_sms = c.schedule_sms > 0 ? c.schedule_sms : c.optional ? kSms[d % 4] : 0;
    specs.push_back(s);
  }
  DestSets sets(b, exec, specs, rng);

  MetadataConfig cfg;
  cfg.mode = c.mode;
  cfg.batch_size = bs;
  cfg.draft_tokens = c.N;
  cfg.topk = c.topk;
  cfg.page_size = c.page_size;
  cfg.paged_mqa_layout = c.layout;
  cfg.paged_mqa_clamp_min_len = c.clamp_min_len;
  MetadataInputs in;
  in.seq_lens = Indices(seq_dev.data(), c.idx64 ? IndexType::kInt64 : IndexType::kInt32);
  in.req_pool_indices = Indices(rpi_dev.data(), c.idx64 ? IndexType::kInt32 : IndexType::kInt64);
  if (c.mode == ForwardMode::kDraftExtend)
    in.extend_lens = Indices(ext_dev.data(), c.idx64 ? IndexType::kInt64 : IndexType::kInt32);
  in.req_to_token = table_dev.as<int32_t>();
  in.req_to_token_rows = c.pool_rows;
  in.req_to_token_cols = c.cols;
  in.req_to_token_ld = c.ld;
  if (c.optional) {
    in.flashmla_num_splits = splits_dev.as<int32_t>();
    in.flashmla_metadata = tiles_dev.as<int32_t>();
    in.flashmla_num_splits_size = static_cast<int64_t>(splits.size());
    in.flashmla_metadata_size = static_cast<int64_t>(tiles.size());
  }
  build_metadata(exec, cfg, in, sets.targets);
  support::synchronize(b);

  MetadataInputs host_in = in;
  const auto seq32 = narrow_to<int32_t>(c.seq_lens), rpi32 = narrow_to<int32_t>(c.rpi),
             ext32 = narrow_to<int32_t>(c.extend);
  host_in.seq_lens = c.idx64 ? Indices(c.seq_lens.data()) : Indices(seq32.data());
  host_in.req_pool_indices = c.idx64 ? Indices(rpi32.data()) : Indices(c.rpi.data());
  host_in.extend_lens = c.mode != ForwardMode::kDraftExtend ? Indices()
                        : c.idx64                           ? Indices(c.extend.data())
                                                            : Indices(ext32.data());
  host_in.req_to_token = table.data();
  host_in.flashmla_num_splits = c.optional ? splits.data() : nullptr;
  host_in.flashmla_metadata = c.optional ? tiles.data() : nullptr;
  reference::build_metadata(cfg, host_in, sets.m.expected(), c.num_dests);
  sets.expect_matches();
}

// Random lengths with the edges: 1 (padded graph rows, stale pool row 0), the
// top-k clamp (2047, 2048, 2049) and the maximum `max_len`.
BuildCase make_build_case(std::mt19937_64& rng, ForwardMode mode, int64_t bs, int64_t N, int64_t max_len,
                          bool aligned_ld) {
  BuildCase c;
  c.mode = mode;
  c.N = N;
  const int64_t draft = mode == ForwardMode::kTargetVerify ? N : 0;
  c.cols = max_len + draft;  // VERIFY needs seq_len + N <= W (spec §5.4)
  c.ld = aligned_ld ? (c.cols + 4) / 4 * 4 + 4 : c.cols + 3;
  c.pool_rows = bs + 3;
  const int64_t edges[] = {1, 2047, 2048, 2049, max_len, 2047 - N, 2049 - N, 63, 64, 65};
  std::uniform_int_distribution<int64_t> any_len(1, max_len), any_row(0, c.pool_rows - 1);
  const int64_t padded_from = bs - bs / 4;  // the last quarter are graph padding
  for (int64_t b = 0; b < bs; ++b) {
    int64_t len = any_len(rng);
    if (b < padded_from && b % 3 == 1) len = edges[static_cast<size_t>(b / 3) % 10];
    len = std::min(std::max<int64_t>(len, 1), max_len);
    int64_t row = any_row(rng);
    if (b >= padded_from && bs > 1) {
      len = 1;
      row = 0;  // stale but valid pool row
    }
    if (mode == ForwardMode::kDraftExtend && len > 1) len = std::max(len, N);  // seq_lens include the e_b new tokens
    c.seq_lens.push_back(len);
    c.rpi.push_back(row);
    if (mode == ForwardMode::kDraftExtend)
      c.extend.push_back(std::uniform_int_distribution<int64_t>(0, std::min(N, len))(rng));  // accept 0..N mixed
  }
  return c;
}

class MetadataTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { NSA_SKIP_WITHOUT_BACKEND(GetParam()); }
  Backend backend() const { return GetParam(); }
  Exec exec() const { return exec_for(GetParam()); }
};

const ForwardMode kModes[] = {ForwardMode::kDecode, ForwardMode::kTargetVerify, ForwardMode::kDraftExtend};

TEST_P(MetadataTest, BuildMatchesReferenceAllModes) {
  auto rng = make_rng(101);
  const int64_t kDests[] = {1, 2, 3, 5, 8};
  int64_t i = 0;
  for (ForwardMode mode : kModes) {
    // 32 / 33: the last chunk scanned by one warp or by the block; 288: a
    // second chunk of 32 requests added to the first chunk's totals.
    for (int64_t bs : {1, 2, 7, 32, 33, 64, 256, 288, 513}) {
      for (int64_t N : {1, 2, 4}) {
        const int64_t max_len = bs <= 7 ? 5000 : 2100;
        BuildCase c = make_build_case(rng, mode, bs, N, max_len, i % 2 == 0);
        const int64_t rows = mode == ForwardMode::kDecode ? bs : bs * N;
        c.num_dests = dests_within_budget(kDests[i % 5], rows + 1, c.cols + 12);
        c.optional = (i / 2) % 2 == 0;
        c.idx64 = (i / 3) % 2 == 1;
        run_build_case(backend(), exec(), rng, c);
        ++i;
      }
    }
  }
}

TEST_P(MetadataTest, BuildEveryDestinationCount) {
  auto rng = make_rng(102);
  for (ForwardMode mode : kModes) {
    for (int64_t D : {1, 2, 3, 5, 8, 17, 33}) {  // 33: past the 32 descriptors staged in shared memory
      BuildCase c = make_build_case(rng, mode, 7, 4, 2200, D % 2 == 0);
      c.num_dests = D;
      c.optional = D != 2;
      c.idx64 = D % 3 == 0;
      run_build_case(backend(), exec(), rng, c);
    }
  }
}

// The graph table width of DeepSeek-V3.2 (163840 + N), few rows, unaligned and aligned strides.
TEST_P(MetadataTest, BuildWidestTable) {
  auto rng = make_rng(103);
  const int64_t N = 4, max_len = 163840;
  for (ForwardMode mode : kModes) {
    for (bool aligned : {false, true}) {
      BuildCase c = make_build_case(rng, mode, 2, N, max_len, aligned);
      c.seq_lens = {max_len, 2049};
      if (mode == ForwardMode::kDraftExtend) c.extend = {N, 3};
      c.num_dests = 2;
      c.optional = true;
      c.idx64 = aligned;
      run_build_case(backend(), exec(), rng, c);
    }
  }
}

// Tables far wider than any row, as SGLang allocates its graph buffers: the
// CUDA chunk walk numbers each chunk's items from its widest live row, not
// from the width, and skips the items that were some warp's first item
// (several chunks at bs 300; at bs 600 the second chunk has no live row, so
// its walk has no item at all).
TEST_P(MetadataTest, BuildWideTableShortRows) {
  auto rng = make_rng(131);
  const int64_t N = 2, width = 20000;
  for (ForwardMode mode : kModes) {
    for (int64_t bs : {8, 64, 300, 600}) {
      BuildCase c = make_build_case(rng, mode, bs, N, 3000, true);
      c.cols = width;
      c.ld = bs == 64 ? width + 3 : width;  // unaligned and aligned rows
      if (bs == 600) {
        for (int64_t b = 256; b < 512; ++b) c.seq_lens[static_cast<size_t>(b)] = 0;
        if (mode == ForwardMode::kDraftExtend)
          for (int64_t b = 256; b < 512; ++b) c.extend[static_cast<size_t>(b)] = 0;
      }
      c.num_dests = 3;
      c.optional = bs != 8;
      c.idx64 = bs == 300;
      run_build_case(backend(), exec(), rng, c);
    }
  }
}

// Page sizes other than 64 (1: real table == page_table_1; 3: several page starts per 16-byte vector).
TEST_P(MetadataTest, BuildOtherPageSizesAndTopk) {
  auto rng = make_rng(104);
  for (int64_t P : {1, 2, 3, 16, 100}) {
    for (ForwardMode mode : kModes) {
      BuildCase c = make_build_case(rng, mode, 9, 3, 700, P % 2 == 0);
      c.page_size = P;
      c.topk = P == 3 ? 1 : 300;
      c.num_dests = 3;
      c.optional = true;
      run_build_case(backend(), exec(), rng, c);
    }
  }
}

TEST_P(MetadataTest, DraftExtendAcceptLengthsZeroToN) {
  auto rng = make_rng(105);
  for (int64_t N : {1, 2, 4, 8}) {
    BuildCase c = make_build_case(rng, ForwardMode::kDraftExtend, 40, N, 3000, true);
    for (int64_t b = 0; b < 40; ++b) c.extend[b] = std::min<int64_t>(b % (N + 1), c.seq_lens[b]);
    c.num_dests = 3;
    c.optional = true;
    run_build_case(backend(), exec(), rng, c);
    // No query row at all: only element 0 of the cumulative arrays, the per-request arrays and num_splits[0].
    for (auto& e : c.extend) e = 0;
    run_build_case(backend(), exec(), rng, c);
  }
}

// The DeepGEMM paged-MQA schedule (spec §10) against the reference, bit for
// bit, on the shapes that break schedulers: B % 32 == 0 and B = 4096 (the
// CUDA schedule CTA's tile loop), zero lengths, all-zero lengths with and
// without the clamp, fewer units than SMs, N = 2 (and N = 4, two atoms),
// both layouts. Every destination buffer starts as random bytes, so the
// whole-buffer comparison proves every row was written.
TEST_P(MetadataTest, PagedMqaScheduleMatchesReference) {
  auto rng = make_rng(140);
  int64_t i = 0;
  for (int64_t bs : {1, 2, 31, 32, 33, 64, 256, 1000, 4096}) {
    for (int64_t N : {1, 2, 4}) {
      if (N == 4 && bs > 256) continue;
      const ForwardMode mode = N == 1 ? ForwardMode::kDecode : ForwardMode::kDraftExtend;
      const int64_t max_len = bs >= 1000 ? 300 : 3000;
      BuildCase c = make_build_case(rng, mode, bs, N, max_len, i % 2 == 0);
      enum { kRandom, kZeros, kAllZero, kFewUnits } lens = static_cast<decltype(kRandom)>(i % 4);
      for (int64_t b = 0; b < bs; ++b) {
        int64_t& len = c.seq_lens[static_cast<size_t>(b)];
        if (lens == kZeros && b % 3 == 0) len = 0;
        if (lens == kAllZero) len = 0;
        if (lens == kFewUnits) len = b < 3 ? 1 + 128 * b : 0;  // 4 units (8 with 2 atoms): fewer than the SMs
        if (mode == ForwardMode::kDraftExtend) c.extend[static_cast<size_t>(b)] = std::min<int64_t>(len, N);
      }
      for (PagedMqaLayout layout : {PagedMqaLayout::kG4, PagedMqaLayout::kG1}) {
        for (int64_t sms : {132, 78, 1}) {
          c.layout = layout;
          c.schedule_sms = sms;
          c.clamp_min_len = lens == kAllZero ? sms != 78 : i % 5 == 0;
          c.num_dests = sms == 78 ? 2 : 1;
          c.optional = sms == 1;
          c.idx64 = sms == 132;
          run_build_case(backend(), exec(), rng, c);
        }
      }
      ++i;
    }
  }
  // More destinations than the CUDA schedule CTA stages in shared memory (32):
  // the rest are read where they are used. SM counts differ per destination
  // (132, 78, none, 1, ...); one tile of requests and two.
  for (int64_t bs : {40, 300}) {
    BuildCase c = make_build_case(rng, ForwardMode::kDecode, bs, 1, 300, bs == 40);
    c.num_dests = 35;
    c.optional = true;
    run_build_case(backend(), exec(), rng, c);
  }
  // TARGET_VERIFY: L_b = seq_lens + N, next_n = N.
  for (int64_t N : {1, 2}) {
    BuildCase c = make_build_case(rng, ForwardMode::kTargetVerify, 96, N, 1200, true);
    c.schedule_sms = 132;
    run_build_case(backend(), exec(), rng, c);
  }
}

// paged_mqa_schedule, the op on its own: [B, N] lengths with a row stride,
// column N - 1 read, every element of the output written (random initial
// bytes), batch 0 included.
TEST_P(MetadataTest, PagedMqaScheduleOpMatchesReference) {
  auto rng = make_rng(141);
  int64_t i = 0;
  for (int64_t bs : {0, 1, 2, 31, 32, 33, 64, 256, 1000, 4096}) {
    for (int64_t N : {1, 2}) {
      const int64_t ld = N + (i % 3);
      auto lens = random_ints<int32_t>(rng, static_cast<size_t>(std::max<int64_t>(bs * ld, 1)), -3, 70000);
      if (i % 4 == 1)
        for (int64_t b = 0; b < bs; ++b) lens[static_cast<size_t>(b * ld + N - 1)] = 0;  // all zero
      std::vector<int32_t> last;
      for (int64_t b = 0; b < bs; ++b) last.push_back(std::max(lens[static_cast<size_t>(b * ld + N - 1)], 0));
      for (int32_t& x : lens) x = std::max(x, 0);
      auto lens_dev = to_backend(backend(), lens);
      for (PagedMqaLayout layout : {PagedMqaLayout::kG4, PagedMqaLayout::kG1}) {
        for (int64_t sms : {1, 78, 132}) {
          for (bool clamp : {false, true}) {
            SCOPED_TRACE(::testing::Message() << "bs=" << bs << " N=" << N << " sms=" << sms << " clamp=" << clamp
                                              << " G" << (layout == PagedMqaLayout::kG1 ? 1 : 4));
            const auto poison = random_ints<int32_t>(rng, static_cast<size_t>(2 * (sms + 1)), INT32_MIN, INT32_MAX);
            auto out = to_backend(backend(), poison);
            PagedMqaScheduleArgs a;
            a.context_lens = lens_dev.as<int32_t>();
            a.batch = bs;
            a.next_n = N;
            a.context_lens_ld = ld;
            a.num_sms = sms;
            a.layout = layout;
            a.clamp_min_len = clamp;
            a.schedule = out.as<int32_t>();
            paged_mqa_schedule(exec(), a);
            support::synchronize(backend());
            EXPECT_EQ(support::from_backend<int32_t>(out, poison.size()),
                      reference::paged_mqa_schedule(last, N, sms, layout, clamp));
          }
        }
      }
      ++i;
    }
  }
}

TEST(MetadataValidation, PagedMqaScheduleArgumentsNameTheArgumentAndWriteNothing) {
  std::vector<int32_t> lens = {5, 300}, out(10, 7);
  PagedMqaScheduleArgs good;
  good.context_lens = lens.data();
  good.batch = 2;
  good.num_sms = 4;
  good.schedule = out.data();
  auto with = [&](auto mutate) {
    PagedMqaScheduleArgs a = good;
    mutate(a);
    return a;
  };
  const Exec cpu = Exec::cpu();
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.batch = -1; })); }, "args.batch");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.next_n = 0; })); }, "args.next_n");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.num_sms = 0; })); }, "args.num_sms");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.num_sms = int64_t{1} << 21; })); }, "args.num_sms");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.layout = static_cast<PagedMqaLayout>(5); })); },
                 "args.layout");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.context_lens_ld = -1; })); },
                 "args.context_lens_ld");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.context_lens = nullptr; })); },
                 "args.context_lens");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.schedule = nullptr; })); }, "args.schedule");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([&](auto& a) { a.schedule = lens.data(); })); }, "args.schedule");
  expect_invalid([&] { paged_mqa_schedule(cpu, with([](auto& a) { a.batch = int64_t{1} << 31; })); }, "args.batch");
  EXPECT_EQ(out, std::vector<int32_t>(10, 7));
  paged_mqa_schedule(cpu, good);  // u = [1, 2], T = 3, S = 4: G4 starts 0, 0, 1, 2
  EXPECT_EQ(out, (std::vector<int32_t>{0, 0, 0, 0, 1, 0, 1, 1, 2, 0}));
}

// The reference restates spec §10 literally; these rows are worked by hand.
TEST(MetadataReference, PagedMqaScheduleHandWorkedExamples) {
  using L = PagedMqaLayout;
  // u = [2, 0, 4, 1], T = 7, S = 4: q = 1, r = 3.
  // G4 starts i*q + max(0, i - 1) = 0, 1, 3, 5; G1 starts i*q + min(i, 3) = 0, 2, 4, 6, then T = 7.
  const std::vector<int32_t> lens = {300, 0, 1000, 1};
  EXPECT_EQ(reference::paged_mqa_schedule(lens, 1, 4, L::kG4, false),
            (std::vector<int32_t>{0, 0, 0, 1, 2, 1, 2, 3, 4, 0}));
  EXPECT_EQ(reference::paged_mqa_schedule(lens, 2, 4, L::kG4, false),  // N = 2: one atom, the same rows
            (std::vector<int32_t>{0, 0, 0, 1, 2, 1, 2, 3, 4, 0}));
  EXPECT_EQ(reference::paged_mqa_schedule(lens, 1, 4, L::kG1, false),
            (std::vector<int32_t>{0, 0, 2, 0, 2, 2, 3, 0, 4, 0}));
  // T = 1 < S = 4: G4 puts the idle SMs first (all start at (0, 0), the last one owns the unit);
  // G1 puts them last, at the end (B, 0).
  EXPECT_EQ(reference::paged_mqa_schedule({256, 0}, 1, 4, L::kG4, false),
            (std::vector<int32_t>{0, 0, 0, 0, 0, 0, 0, 0, 2, 0}));
  EXPECT_EQ(reference::paged_mqa_schedule({256, 0}, 1, 4, L::kG1, false),
            (std::vector<int32_t>{0, 0, 2, 0, 2, 0, 2, 0, 2, 0}));
  // All zero: every row is the sentinel (B, 0); clamped, every request has one unit.
  EXPECT_EQ(reference::paged_mqa_schedule({0, 0}, 1, 3, L::kG4, false), (std::vector<int32_t>{2, 0, 2, 0, 2, 0, 2, 0}));
  EXPECT_EQ(reference::paged_mqa_schedule({0, 0}, 1, 3, L::kG4, true), (std::vector<int32_t>{0, 0, 0, 0, 1, 0, 2, 0}));
  // N = 4: two atoms per request; unit 2 of request 0 is atom 1, split 0.
  EXPECT_EQ(reference::paged_mqa_schedule({300}, 4, 2, L::kG4, false), (std::vector<int32_t>{0, 0, 1, 0, 2, 0}));
  EXPECT_EQ(reference::paged_mqa_schedule({300}, 4, 2, L::kG1, false), (std::vector<int32_t>{0, 0, 0, 1, 1, 0}));
}

// docs/spec/metadata.md §4.7 (B = 2, seq_lens = [2100, 70], N = 4, TOPK = 2048, P = 64), checked against the table.
TEST_P(MetadataTest, SpecWorkedExample) {
  auto rng = make_rng(106);
  struct Expect {
    ForwardMode mode;
    std::vector<int32_t> cache, cu_k, expanded, nsa, nsa_cu;
    std::vector<int64_t> extend;
  };
  const std::vector<Expect> table = {
      {ForwardMode::kDecode, {2100, 70}, {0, 2100, 2170}, {2100, 70}, {2048, 70}, {0, 2048, 2118}, {}},
      {ForwardMode::kTargetVerify,
       {2104, 74},
       {0, 2104, 2178},
       {2101, 2102, 2103, 2104, 71, 72, 73, 74},
       {2048, 2048, 2048, 2048, 71, 72, 73, 74},
       {0, 2048, 4096, 6144, 8192, 8263, 8335, 8408, 8482},
       {}},
      {ForwardMode::kDraftExtend,
       {2100, 70},
       {0, 2100, 2170},
       {2099, 2100, 68, 69, 70},
       {2048, 2048, 68, 69, 70},
       {0, 2048, 4096, 4164, 4233, 4303},
       {2, 3}},
  };
  for (const auto& e : table) {
    SCOPED_TRACE(to_string(e.mode));
    const int64_t W = 2112, ld = 2116, rows = 8;
    std::vector<int32_t> req_to_token(static_cast<size_t>(3 * ld));
    for (size_t i = 0; i < req_to_token.size(); ++i) req_to_token[i] = static_cast<int32_t>(1000000 + i);
    std::vector<int32_t> seq = {2100, 70}, rpi = {2, 0}, ext(e.extend.begin(), e.extend.end());
    auto t_dev = to_backend(backend(), req_to_token);
    auto s_dev = to_backend(backend(), seq);
    auto r_dev = to_backend(backend(), rpi);
    auto e_dev = to_backend(backend(), ext.empty() ? std::vector<int32_t>{0} : ext);
    DestSpec spec;
    spec.max_rows = rows;
    spec.pt_cols = spec.pt_ld = W;
    spec.real = true;
    spec.rt_cols = spec.rt_ld = 34;
    DestSets sets(backend(), exec(), {spec}, rng);
    MetadataConfig cfg{e.mode, 2, 4, 2048, 64};
    MetadataInputs in;
    in.seq_lens = s_dev.as<int32_t>();
    in.req_pool_indices = r_dev.as<int32_t>();
    if (e.mode == ForwardMode::kDraftExtend) in.extend_lens = e_dev.as<int32_t>();
    in.req_to_token = t_dev.as<int32_t>();
    in.req_to_token_rows = 3;
    in.req_to_token_cols = W;
    in.req_to_token_ld = ld;
    build_metadata(exec(), cfg, in, sets.targets);
    support::synchronize(backend());

    auto ints = [&](int f, size_t n) {
      const auto bytes = sets.m.read(0, f);
      std::vector<int32_t> v(n);
      std::memcpy(v.data(), bytes.data(), n * 4);
      return v;
    };
    const size_t R = e.expanded.size();
    EXPECT_EQ(ints(kCache, 2), e.cache);
    EXPECT_EQ(ints(kCuK, 3), e.cu_k);
    EXPECT_EQ(ints(kExpanded, R), e.expanded);
    EXPECT_EQ(ints(kNsa, R), e.nsa);
    EXPECT_EQ(ints(kNsaCu, R + 1), e.nsa_cu);
    // page_table_1 rows: A (pool row 2) then B (pool row 0), repeated per query token, up to the row's length.
    const auto pt = ints(kPt, static_cast<size_t>(rows * W));
    const auto real = ints(kReal, static_cast<size_t>(rows * 34));
    const auto poison = sets.m.mirror(0, kPt);
    size_t r = 0;
    for (size_t b = 0; b < 2; ++b) {
      const int64_t q = e.mode == ForwardMode::kDecode ? 1 : e.mode == ForwardMode::kTargetVerify ? 4 : e.extend[b];
      const int64_t L = e.cache[b];
      for (int64_t j = 0; j < q; ++j, ++r) {
        const int32_t* src = req_to_token.data() + rpi[b] * ld;
        EXPECT_EQ(pt[r * W + 0], src[0]);
        EXPECT_EQ(pt[r * W + L - 1], src[L - 1]);
        int32_t untouched;
        std::memcpy(&untouched, poison.data() + (r * W + L) * 4, 4);
        EXPECT_EQ(pt[r * W + L], untouched) << "column L of row " << r << " must be untouched";
        const int64_t pages = (L + 63) / 64;
        EXPECT_EQ(pages, b == 0 ? 33 : 2);  // §4.7: 33 real_page_table columns for the long request
        for (int64_t p = 0; p < pages; ++p) EXPECT_EQ(real[r * 34 + p], src[p * 64] / 64);
      }
    }
    EXPECT_EQ(static_cast<int64_t>(r), static_cast<int64_t>(R));
  }
}

// ------------------------------------------------------------------------------------
// copy_metadata cases: random precomputed sources (the copy does not care what they mean).
// ------------------------------------------------------------------------------------
struct CopyCase {
  ForwardMode mode;
  int64_t bs, N, E, max_len, max_seqlen_k, W, num_dests;
  bool optional, strided_src;
};

void run_copy_case(Backend b, const Exec& exec, std::mt19937_64& rng, const CopyCase& c) {
  SCOPED_TRACE(::testing::Message() << "mode=" << to_string(c.mode) << " bs=" << c.bs << " E=" << c.E << " D="
                                    << c.num_dests << " optional=" << c.optional << " strided=" << c.strided_src);
  const bool decode = c.mode == ForwardMode::kDecode;
  const int64_t rows = decode ? c.bs : c.E, cols = decode ? c.max_len : c.max_seqlen_k;
  const int64_t pt_ld = c.strided_src ? cols + 5 : 0, pt_stride = pt_ld ? pt_ld : cols;
  const int64_t rc = (cols + 63) / 64, rt_ld = c.strided_src ? rc + 2 : 0, rt_stride = rt_ld ? rt_ld : rc;
  const int64_t tiles_size = 40 + 4 * c.num_dests;
  auto src_ints = [&](int64_t n) {
    return random_ints<int32_t>(rng, static_cast<size_t>(std::max<int64_t>(n, 1)), -100000, 100000);
  };
  auto cache = src_ints(c.bs), cu_k = src_ints(c.bs + 1), pt = src_ints(rows * pt_stride), expanded = src_ints(rows),
       nsa = src_ints(rows), nsa_cu = src_ints(rows + 1), real = src_ints(rows * rt_stride),
       splits = src_ints(rows + 1), tiles = src_ints(tiles_size);
  std::vector<support::Buffer> keep;
  auto dev = [&](const std::vector<int32_t>& v) {
    keep.push_back(to_backend(b, v));
    return keep.back().as<int32_t>();
  };
  MetadataSources s, hs;
  s.cache_seqlens = dev(cache);
  s.cu_seqlens_k = dev(cu_k);
  s.page_table_1 = dev(pt);
  s.page_table_1_ld = pt_ld;
  s.nsa_cache_seqlens = dev(nsa);
  s.nsa_cu_seqlens_k = dev(nsa_cu);
  if (c.optional) {
    s.seqlens_expanded = dev(expanded);
    s.real_page_table = dev(real);
    s.real_page_table_cols = rc;
    s.real_page_table_ld = rt_ld;
    s.flashmla_num_splits = dev(splits);
    s.flashmla_metadata = dev(tiles);
    s.flashmla_metadata_size = tiles_size;
  }
  hs = s;
  hs.cache_seqlens = cache.data();
  hs.cu_seqlens_k = cu_k.data();
  hs.page_table_1 = pt.data();
  hs.nsa_cache_seqlens = nsa.data();
  hs.nsa_cu_seqlens_k = nsa_cu.data();
  if (c.optional) {
    hs.seqlens_expanded = expanded.data();
    hs.real_page_table = real.data();
    hs.flashmla_num_splits = splits.data();
    hs.flashmla_metadata = tiles.data();
  }

  static const int64_t kLdExtra[] = {3, 0, 4, 1, 9, 2, 16, 7};
  const int64_t cap = decode ? c.bs : std::max(c.bs, c.bs * c.N);
  std::vector<DestSpec> specs;
  for (int64_t d = 0; d < c.num_dests; ++d) {
    DestSpec ds;
    ds.max_rows = cap + d % 2;
    ds.pt_cols = c.W;
    ds.pt_ld = c.W + kLdExtra[d % 8];
    ds.expanded = d != 1;  // optional in every mode for the copy
    ds.real = c.optional ? d != 2 : d % 2 == 0;
    ds.rt_cols = (c.W + 63) / 64;
    ds.rt_ld = ds.rt_cols + kLdExtra[(d + 5) % 8];
    ds.num_splits = d != 1;
    ds.tiles = d != 3;
    ds.tiles_size = tiles_size + d;
    specs.push_back(ds);
  }
  DestSets sets(b, exec, specs, rng);
  const MetadataCopyShape shape{c.mode, c.bs, c.max_len, c.max_seqlen_k, c.E};
  copy_metadata(exec, shape, s, sets.targets);
  support::synchronize(b);
  reference::copy_metadata(shape, hs, sets.m.expected(), c.num_dests);
  sets.expect_matches();
}

TEST_P(MetadataTest, CopyMatchesReferenceAllModes) {
  auto rng = make_rng(107);
  const int64_t kDests[] = {1, 2, 3, 5, 8};
  int64_t i = 0;
  for (ForwardMode mode : kModes) {
    for (int64_t bs : {1, 2, 7, 64, 256, 513}) {
      for (int64_t N : {1, 2, 4}) {
        const bool decode = mode == ForwardMode::kDecode;
        const int64_t W = bs <= 7 ? 4100 + N : 600 + N;
        const int64_t E = mode == ForwardMode::kTargetVerify ? bs * N
                          : decode                           ? bs
                                                             : std::uniform_int_distribution<int64_t>(0, bs * N)(rng);
        const int64_t max_len = std::uniform_int_distribution<int64_t>(1, W)(rng);
        const int64_t max_seqlen_k = i % 4 == 0 ? W : std::uniform_int_distribution<int64_t>(1, W)(rng);
        const int64_t rows = decode ? bs : bs * N;
        const int64_t D = dests_within_budget(kDests[i % 5], rows + 1, W + 16);
        run_copy_case(backend(), exec(), rng,
                      {mode, bs, N, E, max_len, max_seqlen_k, W, D, i % 2 == 0, (i / 2) % 2 == 0});
        ++i;
      }
    }
  }
}

TEST_P(MetadataTest, CopyWidestTableAndManyDestinations) {
  auto rng = make_rng(108);
  const int64_t W = 163840 + 4;
  run_copy_case(backend(), exec(), rng, {ForwardMode::kDecode, 3, 4, 3, W, 0, W, 3, true, true});
  run_copy_case(backend(), exec(), rng, {ForwardMode::kTargetVerify, 2, 4, 8, 0, W, W, 2, true, false});
  run_copy_case(backend(), exec(), rng, {ForwardMode::kDraftExtend, 2, 4, 5, 0, W - 1, W, 2, false, true});
  run_copy_case(backend(), exec(), rng, {ForwardMode::kDecode, 5, 1, 5, 333, 0, 400, 17, true, true});
  // Past the 32 descriptors staged in shared memory: the kernel reads them from global memory.
  run_copy_case(backend(), exec(), rng, {ForwardMode::kTargetVerify, 3, 2, 6, 0, 90, 100, 40, true, true});
}

TEST_P(MetadataTest, EmptyBatchWritesNothing) {
  auto rng = make_rng(109);
  DestSpec spec;
  spec.max_rows = 4;
  spec.pt_cols = spec.pt_ld = 16;
  DestSets sets(backend(), exec(), {spec}, rng);
  for (ForwardMode mode : kModes) {
    MetadataConfig cfg{mode, 0, 4, 2048, 64};
    build_metadata(exec(), cfg, MetadataInputs{}, sets.targets);  // null inputs are fine when bs = 0
    copy_metadata(exec(), MetadataCopyShape{mode, 0, 5, 5, 0}, MetadataSources{}, sets.targets);
  }
  support::synchronize(backend());
  sets.expect_matches();
}

// Finding 1 of issue 13: per-request arrays shorter than the per-row ones.
// cache_seqlens [4] and cu_seqlens_k [5] are exact-size allocations, so an
// unchecked bs = 16 call writes past their ends (ASan on the CPU build,
// compute-sanitizer memcheck on the GPU). max_batch bounds bs.
TEST_P(MetadataTest, BatchBeyondPerRequestCapacityIsRejected) {
  auto rng = make_rng(112);
  DestSpec spec;
  spec.max_rows = 16;
  spec.max_batch = 4;
  spec.pt_cols = spec.pt_ld = 8;
  DestSets sets(backend(), exec(), {spec}, rng);
  const std::vector<int32_t> seq(16, 3), rpi(16, 0), table(8, 5), src(16 * 8 + 1, 1);
  auto seq_dev = to_backend(backend(), seq), rpi_dev = to_backend(backend(), rpi);
  auto table_dev = to_backend(backend(), table), src_dev = to_backend(backend(), src);
  MetadataInputs in;
  in.seq_lens = seq_dev.as<int32_t>();
  in.req_pool_indices = rpi_dev.as<int32_t>();
  in.req_to_token = table_dev.as<int32_t>();
  in.req_to_token_rows = 1;
  in.req_to_token_cols = in.req_to_token_ld = 8;
  const int32_t* s = src_dev.as<int32_t>();
  const MetadataSources sources{s, s, s, 0, nullptr, s, s};
  expect_invalid(
      [&] {
        build_metadata(exec(), MetadataConfig{ForwardMode::kDecode, 16, 1, 2048, 64}, in, sets.targets);
      },
      "targets[0].max_batch");
  expect_invalid(
      [&] {
        build_metadata(exec(), MetadataConfig{ForwardMode::kTargetVerify, 5, 2, 2048, 64}, in, sets.targets);
      },
      "targets[0].max_batch");
  expect_invalid(
      [&] {
        copy_metadata(exec(), MetadataCopyShape{ForwardMode::kDecode, 16, 8, 0, 0}, sources, sets.targets);
      },
      "targets[0].max_batch");
  expect_invalid(
      [&] {
        copy_metadata(exec(), MetadataCopyShape{ForwardMode::kDraftExtend, 5, 0, 8, 3}, sources, sets.targets);
      },
      "targets[0].max_batch");
  support::synchronize(backend());
  sets.expect_matches();  // nothing written

  // bs = max_batch fits exactly.
  const MetadataConfig fits{ForwardMode::kTargetVerify, 4, 4, 2048, 64};
  build_metadata(exec(), fits, in, sets.targets);
  support::synchronize(backend());
  MetadataInputs host_in = in;
  host_in.seq_lens = seq.data();
  host_in.req_pool_indices = rpi.data();
  host_in.req_to_token = table.data();
  reference::build_metadata(fits, host_in, sets.m.expected(), 1);
  sets.expect_matches();
}

INSTANTIATE_TEST_SUITE_P(Backends, MetadataTest, ::testing::ValuesIn(all_backends()), backend_name);

// ------------------------------------ validation ------------------------------------

TEST(MetadataValidation, EveryCheckNamesItsArgumentAndWritesNothing) {
  auto rng = make_rng(110);
  const Exec cpu = Exec::cpu();
  DestSpec spec;
  spec.max_rows = 8;
  spec.pt_cols = spec.pt_ld = 32;
  spec.real = true;
  spec.rt_cols = spec.rt_ld = 2;
  spec.tiles = true;
  spec.tiles_size = 4;
  DestSets sets(Backend::kCpu, cpu, {spec, spec}, rng);
  std::vector<int32_t> seq = {5, 6}, rpi = {0, 1}, ext = {1, 2}, table(2 * 40, 7), src(512, 3);
  MetadataInputs in;
  in.seq_lens = seq.data();
  in.req_pool_indices = rpi.data();
  in.req_to_token = table.data();
  in.req_to_token_rows = 2;
  in.req_to_token_cols = 32;
  in.req_to_token_ld = 40;
  const MetadataConfig cfg{ForwardMode::kDecode, 2, 4, 2048, 64};

  auto with_cfg = [&](auto mutate) {
    MetadataConfig c = cfg;
    mutate(c);
    return c;
  };
  auto with_in = [&](auto mutate) {
    MetadataInputs i = in;
    mutate(i);
    return i;
  };
  auto build = [&](const MetadataConfig& c, const MetadataInputs& i) { build_metadata(cpu, c, i, sets.targets); };
  expect_invalid([&] { build(with_cfg([](auto& c) { c.mode = static_cast<ForwardMode>(3); }), in); }, "config.mode");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.batch_size = -1; }), in); }, "config.batch_size");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.draft_tokens = 0; }), in); }, "config.draft_tokens");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.topk = 0; }), in); }, "config.topk");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.topk = int64_t{1} << 31; }), in); }, "config.topk");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.page_size = 0; }), in); }, "config.page_size");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.paged_mqa_layout = static_cast<PagedMqaLayout>(2); }), in); },
                 "config.paged_mqa_layout");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.draft_tokens = int64_t{1} << 40; }), in); },
                 "config.draft_tokens");
  // Row capacity: 2 requests x N = 4 rows > max_rows = 8? No: 8 fits; 3 requests x 4 = 12 does not.
  expect_invalid(
      [&] {
        build(with_cfg([](auto& c) {
                c.mode = ForwardMode::kTargetVerify;
                c.batch_size = 3;
              }),
              in);
      },
      "targets[0].max_rows");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.batch_size = 9; }), in); }, "targets[0].max_batch");
  expect_invalid([&] { build(cfg, with_in([](auto& i) { i.seq_lens = Indices(); })); }, "inputs.seq_lens");
  expect_invalid(
      [&] { build(cfg, with_in([](auto& i) { i.seq_lens = Indices(i.seq_lens.data, static_cast<IndexType>(2)); })); },
      "inputs.seq_lens");
  expect_invalid([&] { build(cfg, with_in([](auto& i) { i.req_pool_indices = Indices(); })); },
                 "inputs.req_pool_indices");
  expect_invalid([&] { build(cfg, with_in([](auto& i) { i.req_to_token = nullptr; })); }, "inputs.req_to_token");
  expect_invalid([&] { build(cfg, with_in([](auto& i) { i.req_to_token_rows = 0; })); }, "inputs.req_to_token_rows");
  expect_invalid([&] { build(cfg, with_in([](auto& i) { i.req_to_token_cols = -1; })); }, "inputs.req_to_token_cols");
  expect_invalid([&] { build(cfg, with_in([](auto& i) { i.req_to_token_ld = 31; })); }, "inputs.req_to_token_ld");
  expect_invalid([&] { build(cfg, with_in([&](auto& i) { i.extend_lens = ext.data(); })); }, "inputs.extend_lens");
  expect_invalid([&] { build(with_cfg([](auto& c) { c.mode = ForwardMode::kDraftExtend; }), in); },
                 "inputs.extend_lens");

  // Destination descriptors, checked once, at upload.
  auto with_target = [&](int d, auto mutate) {
    std::vector<MetadataBuffers> views = {sets.m.device(0), sets.m.device(1)};
    mutate(views[d]);
    return views;
  };
  struct TargetCase {
    int d;
    std::function<void(MetadataBuffers&)> mutate;
    const char* arg;
  };
  const std::vector<TargetCase> target_cases = {
      {0, [](MetadataBuffers& t) { t.cache_seqlens = nullptr; }, "targets[0].cache_seqlens"},
      {1, [](MetadataBuffers& t) { t.cu_seqlens_k = nullptr; }, "targets[1].cu_seqlens_k"},
      {1, [](MetadataBuffers& t) { t.page_table_1 = nullptr; }, "targets[1].page_table_1"},
      {0, [](MetadataBuffers& t) { t.nsa_cache_seqlens = nullptr; }, "targets[0].nsa_cache_seqlens"},
      {1, [](MetadataBuffers& t) { t.nsa_cu_seqlens_k = nullptr; }, "targets[1].nsa_cu_seqlens_k"},
      {1, [](MetadataBuffers& t) { t.max_rows = -1; }, "targets[1].max_rows"},
      {0, [](MetadataBuffers& t) { t.max_batch = -1; }, "targets[0].max_batch"},
      {0, [](MetadataBuffers& t) { t.page_table_1_cols = -1; }, "targets[0].page_table_1_cols"},
      {1, [](MetadataBuffers& t) { t.page_table_1_ld = 31; }, "targets[1].page_table_1_ld"},
      {0, [](MetadataBuffers& t) { t.real_page_table_cols = -2; }, "targets[0].real_page_table_cols"},
      {1, [](MetadataBuffers& t) { t.real_page_table_ld = 1; }, "targets[1].real_page_table_ld"},
      {1, [](MetadataBuffers& t) { t.flashmla_metadata_size = -1; }, "targets[1].flashmla_metadata_size"},
      {1, [&](MetadataBuffers& t) { t.paged_mqa_schedule = table.data(); }, "targets[1].paged_mqa_num_sms"},
      {0,
       [&](MetadataBuffers& t) {
         t.paged_mqa_schedule = table.data();
         t.paged_mqa_num_sms = int64_t{1} << 40;
       },
       "targets[0].paged_mqa_num_sms"},
  };
  for (const auto& tc : target_cases) {
    auto views = with_target(tc.d, tc.mutate);
    support::Buffer ws(Backend::kCpu, metadata_targets_workspace_bytes(2));
    expect_invalid([&] { upload_metadata_targets(cpu, views.data(), 2, ws.data(), ws.bytes()); }, tc.arg);
  }
  {
    auto views = with_target(1, [](MetadataBuffers& t) { t.seqlens_expanded = nullptr; });
    support::Buffer ws(Backend::kCpu, metadata_targets_workspace_bytes(2));
    const MetadataTargets partial = upload_metadata_targets(cpu, views.data(), 2, ws.data(), ws.bytes());
    expect_invalid(
        [&] { build_metadata(cpu, with_cfg([](auto& c) { c.mode = ForwardMode::kTargetVerify; }), in, partial); },
        "targets[1].seqlens_expanded");
  }
  // The table itself: as returned by upload_metadata_targets, for this backend.
  auto with_table = [&](auto mutate) {
    MetadataTargets t = sets.targets;
    mutate(t);
    return t;
  };
  expect_invalid([&] { build_metadata(cpu, cfg, in, with_table([](auto& t) { t.count = 0; })); }, "targets.count");
  expect_invalid([&] { build_metadata(cpu, cfg, in, with_table([](auto& t) { t.table = nullptr; })); },
                 "targets.table");
  expect_invalid([&] { build_metadata(cpu, cfg, in, with_table([](auto& t) { t.host = nullptr; })); }, "targets");
  expect_invalid([&] { build_metadata(cpu, cfg, in, with_table([](auto& t) { t.count = 1; })); },
                 "upload_metadata_targets");
  expect_invalid(
      [&] {
        copy_metadata(cpu, MetadataCopyShape{ForwardMode::kDecode, 2, 4, 0, 0},
                      MetadataSources{src.data(), src.data(), src.data(), 0, nullptr, src.data(), src.data()},
                      with_table([](auto& t) { t.backend = Backend::kCuda; }));
      },
      "targets");
  // The summary names the destination that sets each bound.
  EXPECT_EQ(sets.targets.max_rows.value, 8);
  EXPECT_EQ(sets.targets.max_rows.index, 0);
  EXPECT_EQ(sets.targets.flashmla_metadata_max, 4);
  EXPECT_EQ(sets.targets.fields_all & metadata_field_bit(MetadataField::kRealPageTable),
            metadata_field_bit(MetadataField::kRealPageTable));
  EXPECT_EQ(sets.targets.fields_any & metadata_field_bit(MetadataField::kFlashmlaNumSplits), 0u);
  EXPECT_EQ(metadata_target(sets.targets, 1).page_table_1, sets.m.device(1).page_table_1);
  expect_invalid([&] { build_metadata(Exec{Backend::kCpu, nullptr, -1}, cfg, in, sets.targets); }, "cpu_threads");

  // upload_metadata_targets' own arguments.
  support::Buffer ws(Backend::kCpu, metadata_targets_workspace_bytes(2));
  expect_invalid([&] { upload_metadata_targets(cpu, &sets.m.device(0), 0, ws.data(), ws.bytes()); }, "count");
  expect_invalid([&] { upload_metadata_targets(cpu, nullptr, 2, ws.data(), ws.bytes()); }, "host");
  expect_invalid([&] { upload_metadata_targets(cpu, &sets.m.device(0), 2, nullptr, ws.bytes()); }, "workspace");
  expect_invalid([&] { upload_metadata_targets(cpu, &sets.m.device(0), 2, ws.as<uint8_t>() + 4, ws.bytes() - 8); },
                 "workspace");
  expect_invalid([&] { upload_metadata_targets(cpu, &sets.m.device(0), 2, ws.data(), ws.bytes() - 1); },
                 "workspace_bytes");

  // copy_metadata's shape and sources.
  const MetadataSources good_src{src.data(), src.data(), src.data(), 0, nullptr, src.data(), src.data()};
  const MetadataCopyShape good_shape{ForwardMode::kTargetVerify, 2, 0, 30, 8};
  auto copy = [&](const MetadataCopyShape& sh, const MetadataSources& s) { copy_metadata(cpu, sh, s, sets.targets); };
  auto with_shape = [&](auto mutate) {
    MetadataCopyShape sh = good_shape;
    mutate(sh);
    return sh;
  };
  auto with_src = [&](auto mutate) {
    MetadataSources s = good_src;
    mutate(s);
    return s;
  };
  expect_invalid([&] { copy(with_shape([](auto& s) { s.mode = static_cast<ForwardMode>(-1); }), good_src); },
                 "shape.mode");
  expect_invalid([&] { copy(with_shape([](auto& s) { s.batch_size = -1; }), good_src); }, "shape.batch_size");
  expect_invalid([&] { copy(with_shape([](auto& s) { s.max_len = -1; }), good_src); }, "shape.max_len");
  expect_invalid([&] { copy(with_shape([](auto& s) { s.max_seqlen_k = -1; }), good_src); }, "shape.max_seqlen_k");
  expect_invalid([&] { copy(with_shape([](auto& s) { s.seqlens_expanded_size = -1; }), good_src); },
                 "shape.seqlens_expanded_size");
  expect_invalid([&] { copy(with_shape([](auto& s) { s.seqlens_expanded_size = 9; }), good_src); },
                 "targets[0].max_rows");
  expect_invalid(
      [&] {
        copy(with_shape([](auto& s) {
               s.batch_size = 9;
               s.seqlens_expanded_size = 2;
             }),
             good_src);
      },
      "targets[0].max_batch");
  expect_invalid([&] { copy(with_shape([](auto& s) { s.max_seqlen_k = 33; }), good_src); },
                 "targets[0].page_table_1_cols");
  expect_invalid([&] { copy(good_shape, with_src([](auto& s) { s.cache_seqlens = nullptr; })); },
                 "sources.cache_seqlens");
  expect_invalid([&] { copy(good_shape, with_src([](auto& s) { s.cu_seqlens_k = nullptr; })); },
                 "sources.cu_seqlens_k");
  expect_invalid([&] { copy(good_shape, with_src([](auto& s) { s.page_table_1 = nullptr; })); },
                 "sources.page_table_1");
  expect_invalid([&] { copy(good_shape, with_src([](auto& s) { s.page_table_1_ld = 29; })); },
                 "sources.page_table_1_ld");
  expect_invalid([&] { copy(good_shape, with_src([](auto& s) { s.nsa_cache_seqlens = nullptr; })); },
                 "sources.nsa_cache_seqlens");
  expect_invalid([&] { copy(good_shape, with_src([](auto& s) { s.nsa_cu_seqlens_k = nullptr; })); },
                 "sources.nsa_cu_seqlens_k");
  expect_invalid(
      [&] {
        copy(good_shape, with_src([&](auto& s) {
               s.real_page_table = src.data();
               s.real_page_table_cols = -1;
             }));
      },
      "sources.real_page_table_cols");
  expect_invalid(
      [&] {
        copy(good_shape, with_src([&](auto& s) {
               s.real_page_table = src.data();
               s.real_page_table_cols = 2;
               s.real_page_table_ld = 1;
             }));
      },
      "sources.real_page_table_ld");
  expect_invalid(
      [&] {
        copy(good_shape, with_src([&](auto& s) {
               s.real_page_table = src.data();
               s.real_page_table_cols = 3;
             }));
      },
      "targets[0].real_page_table_cols");
  expect_invalid(
      [&] {
        copy(good_shape, with_src([&](auto& s) {
               s.flashmla_metadata = src.data();
               s.flashmla_metadata_size = -1;
             }));
      },
      "sources.flashmla_metadata_size");
  expect_invalid(
      [&] {
        copy(good_shape, with_src([&](auto& s) {
               s.flashmla_metadata = src.data();
               s.flashmla_metadata_size = 5;
             }));
      },
      "targets[0].flashmla_metadata_size");

  if (!cuda_built()) {
    expect_invalid([&] { build_metadata(Exec::cuda(), cfg, in, sets.targets); }, "cuda", ErrorCode::kUnsupported);
  } else {
    // Alignment is checked on the host, before any device access.
    auto views = with_target(0, [](MetadataBuffers& t) {
      t.page_table_1 = reinterpret_cast<int32_t*>(reinterpret_cast<uint8_t*>(t.page_table_1) + 2);
    });
    expect_invalid([&] { upload_metadata_targets(Exec::cuda(), views.data(), 2, ws.data(), ws.bytes()); },
                   "targets[0].page_table_1");
    expect_invalid(
        [&] {
          build_metadata(Exec::cuda(), cfg, with_in([&](auto& i) {
                           i.req_to_token =
                               reinterpret_cast<const int32_t*>(reinterpret_cast<const uint8_t*>(table.data()) + 1);
                         }),
                         with_table([](auto& t) { t.backend = Backend::kCuda; }));
        },
        "inputs.req_to_token");
  }
  // Nothing was written by any failed call.
  sets.expect_matches();

  // And a valid call still works after all that (the checks are not sticky).
  build_metadata(cpu, cfg, in, sets.targets);
  reference::build_metadata(cfg, in, sets.m.expected(), 2);
  sets.expect_matches();
}

// ------------------------------------ aliasing ------------------------------------
// Finding 8 of issue 13: a destination array overlapping an input, a source
// or another destination array is rejected before anything is written. All
// arrays are carved from one poisoned arena so they can be made to overlap.
class AliasArena {
 public:
  AliasArena() : arena_(4096, -77) {}
  int32_t* take(int64_t n) {
    int32_t* p = arena_.data() + used_;
    used_ += n + 3;  // a gap: adjacent arrays never touch
    return p;
  }
  bool untouched() const {
    return std::all_of(arena_.begin(), arena_.end(), [](int32_t v) { return v == -77; });
  }

 private:
  std::vector<int32_t> arena_;
  int64_t used_ = 0;
};

constexpr int64_t kAliasBs = 2, kAliasN = 2, kAliasRows = kAliasBs * kAliasN, kAliasW = 8;

MetadataBuffers alias_dest(AliasArena& a) {
  MetadataBuffers m;
  m.max_batch = kAliasBs;
  m.max_rows = kAliasRows;
  m.page_table_1_cols = m.page_table_1_ld = kAliasW;
  m.real_page_table_cols = m.real_page_table_ld = 1;
  m.flashmla_metadata_size = 8;
  m.paged_mqa_num_sms = 3;
  for (const auto& f : kMetadataFields) {
    MetadataBuffers shape = m;
    m.*f.pointer = a.take(metadata_field_elements(shape, f.extent));
  }
  return m;
}

MetadataTargets alias_upload(std::vector<MetadataBuffers> dests, std::vector<MetadataBuffers>& ws) {
  ws.resize(dests.size());
  return upload_metadata_targets(Exec::cpu(), dests.data(), static_cast<int64_t>(dests.size()), ws.data(),
                                 ws.size() * sizeof(MetadataBuffers));
}

struct AliasCase {
  const char* what;
  std::function<void(MetadataBuffers&, MetadataBuffers&)> alias;  // makes destination 0 or 1 overlap something
  const char* arg;
  const char* other;
  bool draft_extend = false;
};

// Uploads {d0, d1} with the case's alias and expects `op` to reject it, naming both arguments, writing nothing.
void expect_alias_rejected(const AliasCase& c, const MetadataBuffers& d0, const MetadataBuffers& d1,
                           const AliasArena& arena, const std::function<void(const MetadataTargets&)>& op) {
  SCOPED_TRACE(c.what);
  MetadataBuffers t = d0, u = d1;
  c.alias(t, u);
  std::vector<MetadataBuffers> ws;
  const MetadataTargets targets = alias_upload({t, u}, ws);
  try {
    op(targets);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::string("'") + c.arg + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::string("expected no overlap with '") + c.other + "'"), std::string::npos) << msg;
  }
  EXPECT_TRUE(arena.untouched());
}

TEST(MetadataAliasing, BuildRejectsEveryOverlapAndWritesNothing) {
  AliasArena a;
  int32_t* seq = a.take(kAliasBs);
  int32_t* rpi = a.take(kAliasBs);
  int32_t* ext = a.take(kAliasBs);
  int32_t* table = a.take(kAliasW);
  int32_t* splits = a.take(kAliasRows + 1);
  int32_t* tiles = a.take(8);
  const MetadataBuffers d0 = alias_dest(a), d1 = alias_dest(a);
  MetadataInputs in;
  in.seq_lens = seq;
  in.req_pool_indices = rpi;
  in.req_to_token = table;
  in.req_to_token_rows = 1;
  in.req_to_token_cols = in.req_to_token_ld = kAliasW;
  in.flashmla_num_splits = splits;
  in.flashmla_metadata = tiles;
  in.flashmla_num_splits_size = kAliasRows + 1;
  in.flashmla_metadata_size = 8;
  const MetadataConfig verify{ForwardMode::kTargetVerify, kAliasBs, kAliasN, 2048, 64};
  MetadataConfig extend = verify;
  extend.mode = ForwardMode::kDraftExtend;
  MetadataInputs ext_in = in;
  ext_in.extend_lens = ext;

  const std::vector<AliasCase> cases = {
      {"page table over req_to_token", [&](auto& t, auto&) { t.page_table_1 = table; }, "targets[0].page_table_1",
       "inputs.req_to_token"},
      {"cache_seqlens over seq_lens", [&](auto& t, auto&) { t.cache_seqlens = seq; }, "targets[0].cache_seqlens",
       "inputs.seq_lens"},
      {"nsa_cache_seqlens over req_pool_indices", [&](auto&, auto& u) { u.nsa_cache_seqlens = rpi; },
       "targets[1].nsa_cache_seqlens", "inputs.req_pool_indices"},
      {"seqlens_expanded over extend_lens", [&](auto& t, auto&) { t.seqlens_expanded = ext - 1; },
       "targets[0].seqlens_expanded", "inputs.extend_lens", true},
      {"num_splits over its source", [&](auto&, auto& u) { u.flashmla_num_splits = splits + 2; },
       "targets[1].flashmla_num_splits", "inputs.flashmla_num_splits"},
      {"tile table over its source", [&](auto& t, auto&) { t.flashmla_metadata = tiles; },
       "targets[0].flashmla_metadata", "inputs.flashmla_metadata"},
      {"two destinations sharing cu_seqlens_k", [&](auto& t, auto& u) { u.cu_seqlens_k = t.cu_seqlens_k; },
       "targets[1].cu_seqlens_k", "targets[0].cu_seqlens_k"},
      {"real page table inside page_table_1", [&](auto& t, auto&) { t.real_page_table = t.page_table_1 + 3; },
       "targets[0].real_page_table", "targets[0].page_table_1"},
      {"seqlens_expanded == cache_seqlens", [&](auto& t, auto&) { t.seqlens_expanded = t.cache_seqlens; },
       "targets[0].seqlens_expanded", "targets[0].cache_seqlens"},
      {"schedule over seq_lens", [&](auto&, auto& u) { u.paged_mqa_schedule = seq - 1; },
       "targets[1].paged_mqa_schedule", "inputs.seq_lens"},
      {"two destinations sharing a schedule",
       [&](auto& t, auto& u) { u.paged_mqa_schedule = t.paged_mqa_schedule + 7; }, "targets[1].paged_mqa_schedule",
       "targets[0].paged_mqa_schedule"},
  };
  for (const auto& c : cases) {
    expect_alias_rejected(c, d0, d1, a, [&](const MetadataTargets& targets) {
      build_metadata(Exec::cpu(), c.draft_extend ? extend : verify, c.draft_extend ? ext_in : in, targets);
    });
  }

  // DRAFT_EXTEND: num_splits must hold R + 1 = sum(e_b) + 1 values; the host
  // checks >= 1 (R is a device value), the CPU backend the exact count.
  std::vector<MetadataBuffers> ws;
  const MetadataTargets targets = alias_upload({d0, d1}, ws);
  MetadataInputs short_splits = ext_in;
  short_splits.flashmla_num_splits_size = 0;
  expect_invalid([&] { build_metadata(Exec::cpu(), extend, short_splits, targets); },
                 "inputs.flashmla_num_splits_size");
  std::vector<int32_t> seq_v = {5, 6}, rpi_v = {0, 0}, ext_v = {2, 1};  // R = 3: 4 values needed
  short_splits.seq_lens = seq_v.data();
  short_splits.req_pool_indices = rpi_v.data();
  short_splits.extend_lens = ext_v.data();
  short_splits.flashmla_num_splits_size = 3;
  expect_invalid([&] { build_metadata(Exec::cpu(), extend, short_splits, targets); },
                 "inputs.flashmla_num_splits_size");
  MetadataInputs short_tiles = in;
  short_tiles.flashmla_metadata_size = 7;
  expect_invalid([&] { build_metadata(Exec::cpu(), verify, short_tiles, targets); }, "inputs.flashmla_metadata_size");
  EXPECT_TRUE(a.untouched());
}

TEST(MetadataAliasing, CopyRejectsEveryOverlapAndWritesNothing) {
  AliasArena a;
  const MetadataBuffers src_set = alias_dest(a), d0 = alias_dest(a), d1 = alias_dest(a);
  MetadataSources s;
  s.cache_seqlens = src_set.cache_seqlens;
  s.cu_seqlens_k = src_set.cu_seqlens_k;
  s.page_table_1 = src_set.page_table_1;
  s.seqlens_expanded = src_set.seqlens_expanded;
  s.nsa_cache_seqlens = src_set.nsa_cache_seqlens;
  s.nsa_cu_seqlens_k = src_set.nsa_cu_seqlens_k;
  s.real_page_table = src_set.real_page_table;
  s.real_page_table_cols = 1;
  s.flashmla_num_splits = src_set.flashmla_num_splits;
  s.flashmla_metadata = src_set.flashmla_metadata;
  s.flashmla_metadata_size = 8;
  const MetadataCopyShape shape{ForwardMode::kTargetVerify, kAliasBs, 0, kAliasW, kAliasRows};

  const std::vector<AliasCase> cases = {
      {"copy onto its own source set", [&](auto& t, auto&) { t.cache_seqlens = src_set.cache_seqlens; },
       "targets[0].cache_seqlens", "sources.cache_seqlens"},
      {"page table rows over the source table",
       [&](auto&, auto& u) { u.page_table_1 = src_set.page_table_1 + kAliasW; }, "targets[1].page_table_1",
       "sources.page_table_1"},
      {"nsa_cu_seqlens_k over seqlens_expanded source",
       [&](auto& t, auto&) { t.nsa_cu_seqlens_k = src_set.seqlens_expanded - 2; }, "targets[0].nsa_cu_seqlens_k",
       "sources.seqlens_expanded"},
      {"two destinations sharing the real page table", [&](auto& t, auto& u) { u.real_page_table = t.real_page_table; },
       "targets[1].real_page_table", "targets[0].real_page_table"},
      {"tile table over num_splits", [&](auto& t, auto&) { t.flashmla_metadata = t.flashmla_num_splits + kAliasRows; },
       "targets[0].flashmla_metadata", "targets[0].flashmla_num_splits"},
  };
  for (const auto& c : cases)
    expect_alias_rejected(c, d0, d1, a,
                          [&](const MetadataTargets& targets) { copy_metadata(Exec::cpu(), shape, s, targets); });
  // Disjoint arrays still copy.
  src_set.cache_seqlens[1] = 5;
  std::vector<MetadataBuffers> ws;
  copy_metadata(Exec::cpu(), shape, s, alias_upload({d0, d1}, ws));
  EXPECT_EQ(d1.cache_seqlens[1], 5);
}

// Only what a call actually touches counts: inputs may share memory (both are
// only read), and an input may live in the part of a destination's capacity
// that this call does not write. Destinations are checked against each other
// at upload, and per call only when their capacities overlap.
TEST(MetadataAliasing, OnlyTheBytesACallTouchesCount) {
  std::vector<int32_t> arena(1024, -77);
  int64_t used = 0;
  const auto take = [&](int64_t n) {
    int32_t* p = arena.data() + used;
    used += n + 3;
    return p;
  };
  MetadataBuffers d;  // twice the rows the call writes
  d.max_batch = kAliasBs;
  d.max_rows = 2 * kAliasRows;
  d.page_table_1_cols = d.page_table_1_ld = kAliasW;
  for (const auto& f : kMetadataFields) {
    if (f.optional && f.extent != MetadataExtent::kRows) continue;
    MetadataBuffers shape = d;
    d.*f.pointer = take(metadata_field_elements(shape, f.extent));
  }
  // seq_lens and req_pool_indices are one array, in the unwritten half of nsa_cache_seqlens.
  int32_t* shared = d.nsa_cache_seqlens + kAliasRows;
  shared[0] = shared[1] = 1;  // request row 1, length 1
  int32_t* table = take(2 * kAliasW);
  std::iota(table, table + 2 * kAliasW, 100);
  MetadataInputs in;
  in.seq_lens = in.req_pool_indices = shared;
  in.req_to_token = table;
  in.req_to_token_rows = 2;
  in.req_to_token_cols = in.req_to_token_ld = kAliasW;
  const MetadataConfig verify{ForwardMode::kTargetVerify, kAliasBs, kAliasN, 2048, 64};
  std::vector<MetadataBuffers> ws;
  build_metadata(Exec::cpu(), verify, in, alias_upload({d}, ws));
  EXPECT_EQ(shared[0], 1);  // the inputs survive
  EXPECT_EQ(shared[1], 1);
  EXPECT_EQ(d.page_table_1[0], 100 + kAliasW);  // request row 1, token 0
  EXPECT_EQ(d.cache_seqlens[1], 1 + kAliasN);   // TARGET_VERIFY: seq_len + N

  // A second destination whose capacity overlaps the first one's unwritten
  // rows: accepted (each call checks its own ranges), rejected once a call
  // writes the shared bytes.
  MetadataBuffers e = d;
  e.nsa_cache_seqlens = take(2 * kAliasRows);
  e.cache_seqlens = take(kAliasBs);
  e.cu_seqlens_k = take(kAliasBs + 1);
  e.seqlens_expanded = take(2 * kAliasRows);
  e.nsa_cu_seqlens_k = take(2 * kAliasRows + 1);
  e.page_table_1 = d.page_table_1 + kAliasRows * kAliasW;  // rows 4..7 of d's table
  int32_t* fresh = take(kAliasBs);
  fresh[0] = fresh[1] = 1;
  in.seq_lens = in.req_pool_indices = fresh;
  const MetadataTargets both = alias_upload({d, e}, ws);
  build_metadata(Exec::cpu(), verify, in, both);
  EXPECT_EQ(e.page_table_1[0], 100 + kAliasW);
  const MetadataConfig wider{ForwardMode::kTargetVerify, kAliasBs, 2 * kAliasN, 2048, 64};  // 8 rows
  expect_invalid([&] { build_metadata(Exec::cpu(), wider, in, both); }, "targets[1].page_table_1");
}

TEST(MetadataNames, ForwardModeToString) {
  EXPECT_STREQ(to_string(ForwardMode::kDecode), "decode");
  EXPECT_STREQ(to_string(ForwardMode::kTargetVerify), "target_verify");
  EXPECT_STREQ(to_string(ForwardMode::kDraftExtend), "draft_extend");
  EXPECT_EQ(metadata_targets_workspace_bytes(3), 3 * sizeof(MetadataBuffers));
  EXPECT_EQ(metadata_targets_workspace_bytes(0), 0u);
}

// ------------------------------------------------------------------------------------
// CUDA graph: capture build_metadata + a consumer kernel once, replay >= 1000
// times with fresh inputs copied into the captured input buffers, and check
// every replay against the reference applied to a host mirror of the buffers.
// ------------------------------------------------------------------------------------
#if defined(NSA_WITH_CUDA)
#define NSA_TEST_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

TEST(MetadataCudaGraph, CaptureOnceReplayWithFreshInputs) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  const Backend b = Backend::kCuda;
  auto rng = make_rng(111);
  const int64_t bs = 24, N = 4, max_len = 2100, W = max_len + N, ld = W + 4, pool_rows = bs + 8, D = 2;
  const int kReplays = 1000;
  cudaStream_t stream = nullptr;
  NSA_TEST_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const Exec exec = Exec::cuda(stream);

  auto table = random_ints<int32_t>(rng, static_cast<size_t>(pool_rows * ld), 0, 1 << 30);
  auto table_dev = to_backend(b, table);
  support::Buffer seq_dev(b, bs * 8), rpi_dev(b, bs * 4), ext_dev(b, bs * 4), checksum_dev(b, 8);
  auto splits = random_ints<int32_t>(rng, static_cast<size_t>(bs * N + 1), 0, 100);
  auto tiles = random_ints<int32_t>(rng, 64, 0, 100);
  auto splits_dev = to_backend(b, splits);
  auto tiles_dev = to_backend(b, tiles);

  for (ForwardMode mode : kModes) {
    SCOPED_TRACE(to_string(mode));
    const int64_t R_cap = mode == ForwardMode::kDecode ? bs : bs * N;
    std::vector<DestSpec> specs(D);
    for (int64_t d = 0; d < D; ++d) {
      specs[d].max_rows = R_cap;
      specs[d].pt_cols = W;
      specs[d].pt_ld = W + 4 * d + d;
      specs[d].real = true;
      specs[d].rt_cols = specs[d].rt_ld = (W + 63) / 64 + d;
      specs[d].num_splits = specs[d].tiles = true;
      specs[d].tiles_size = 64;
      specs[d].schedule_sms = d == 0 ? 132 : 0;  // the schedule CTA replayed with fresh lengths
    }
    DestSets sets(b, exec, specs, rng);
    NSA_TEST_CUDA(cudaStreamSynchronize(stream));

    MetadataConfig cfg{mode, bs, N, 2048, 64};
    MetadataInputs in;
    in.seq_lens = seq_dev.as<int64_t>();
    in.req_pool_indices = rpi_dev.as<int32_t>();
    if (mode == ForwardMode::kDraftExtend) in.extend_lens = ext_dev.as<int32_t>();
    in.req_to_token = table_dev.as<int32_t>();
    in.req_to_token_rows = pool_rows;
    in.req_to_token_cols = W;
    in.req_to_token_ld = ld;
    in.flashmla_num_splits = splits_dev.as<int32_t>();
    in.flashmla_metadata = tiles_dev.as<int32_t>();
    in.flashmla_num_splits_size = static_cast<int64_t>(splits.size());
    in.flashmla_metadata_size = static_cast<int64_t>(tiles.size());

    cudaGraph_t graph = nullptr;
    cudaGraphExec_t graph_exec = nullptr;
    NSA_TEST_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    build_metadata(exec, cfg, in, sets.targets);
    NSA_TEST_CUDA(launch_checksum(sets.m.device(0).nsa_cu_seqlens_k, R_cap + 1, checksum_dev.as<long long>(), stream));
    NSA_TEST_CUDA(cudaStreamEndCapture(stream, &graph));
    NSA_TEST_CUDA(cudaGraphInstantiate(&graph_exec, graph, 0));

    int64_t failures = 0;
    for (int replay = 0; replay < kReplays && failures < 3; ++replay) {
      BuildCase c = make_build_case(rng, mode, bs, N, max_len, true);
      // A live batch smaller than the captured one: the tail is graph padding (length 1, stale pool row).
      const int64_t live = std::uniform_int_distribution<int64_t>(1, bs)(rng);
      for (int64_t r = live; r < bs; ++r) {
        c.seq_lens[r] = 1;
        if (mode == ForwardMode::kDraftExtend) c.extend[r] = std::min<int64_t>(c.extend[r], 1);
      }
      const auto rpi32 = narrow_to<int32_t>(c.rpi);
      const auto ext32 = mode == ForwardMode::kDraftExtend ? narrow_to<int32_t>(c.extend) : std::vector<int32_t>(bs, 0);
      NSA_TEST_CUDA(cudaMemcpyAsync(seq_dev.data(), c.seq_lens.data(), bs * 8, cudaMemcpyHostToDevice, stream));
      NSA_TEST_CUDA(cudaMemcpyAsync(rpi_dev.data(), rpi32.data(), bs * 4, cudaMemcpyHostToDevice, stream));
      NSA_TEST_CUDA(cudaMemcpyAsync(ext_dev.data(), ext32.data(), bs * 4, cudaMemcpyHostToDevice, stream));
      NSA_TEST_CUDA(cudaGraphLaunch(graph_exec, stream));
      NSA_TEST_CUDA(cudaStreamSynchronize(stream));

      MetadataInputs host_in = in;
      host_in.seq_lens = c.seq_lens.data();
      host_in.req_pool_indices = rpi32.data();
      if (mode == ForwardMode::kDraftExtend) host_in.extend_lens = ext32.data();
      host_in.req_to_token = table.data();
      host_in.flashmla_num_splits = splits.data();
      host_in.flashmla_metadata = tiles.data();
      reference::build_metadata(cfg, host_in, sets.m.expected(), D);

      bool ok = true;
      ok = ok && sets.m.matches();
      long long checksum = 0, expected = 0;
      checksum_dev.download(&checksum, 8);
      const auto& cu_bytes = sets.m.mirror(0, kNsaCu);
      for (int64_t i = 0; i <= R_cap; ++i) {
        int32_t v;
        std::memcpy(&v, cu_bytes.data() + i * 4, 4);
        expected += v;
      }
      ok = ok && checksum == expected;
      if (!ok) {
        ++failures;
        ADD_FAILURE() << "replay " << replay << " differs from the reference (checksum " << checksum << " vs "
                      << expected << ")";
        sets.expect_matches();
      }
    }
    NSA_TEST_CUDA(cudaGraphExecDestroy(graph_exec));
    NSA_TEST_CUDA(cudaGraphDestroy(graph));
  }
  NSA_TEST_CUDA(cudaStreamDestroy(stream));
}
#endif

// ====================================================================================
// Checked mode (CUDA; skips without a GPU): build_metadata records planted
// violations in the DeviceError, the offending request writes no page-table
// rows, and every other byte equals the reference. Valid inputs record nothing
// and give the unchecked bytes.
// ====================================================================================
namespace checked {

constexpr int64_t kW = 300;     // page_table_1 columns of the destination
constexpr int64_t kLd = 320;    // its row stride (room for a too-long row in the reference)
constexpr int64_t kRealLd = 8;  // real_page_table row stride (>= ceil(321 / 64))
constexpr int64_t kPoolRows = 6, kPoolCols = 400;

struct Case {
  ForwardMode mode;
  std::vector<int32_t> seq_lens, rpi, extend;
};

// Runs the case on CUDA in checked mode; `ref_case` is what the reference
// sees; `untouched_rows` are the query rows whose page tables must keep their
// poison. `real_cols` real_page_table columns (a smaller value caps valid
// lengths at 64x it).
void run_checked(const Case& got_case, const Case& ref_case, const std::vector<int64_t>& untouched_rows,
                 ArgId expected_arg, int64_t expected_row, int64_t expected_value, int64_t real_cols = kRealLd) {
  auto rng = make_rng(40);
  const int64_t bs = static_cast<int64_t>(got_case.seq_lens.size()), N = 4;
  const CheckedCuda chk;
  const Exec& exec = chk.exec;
  DestSpec spec;
  spec.max_rows = bs * N;
  spec.pt_cols = kW;
  spec.pt_ld = kLd;
  spec.real = true;
  spec.rt_cols = real_cols;
  spec.rt_ld = kRealLd;
  DestSets sets(Backend::kCuda, exec, {spec}, rng);  // random poison, mirrored on the host
  support::MetadataDests& dests = sets.m;
  // Negative slots too: real_page_table = slot / 64 must round like the reference (toward zero).
  const auto r2t = random_ints<int32_t>(rng, static_cast<size_t>(kPoolRows * kPoolCols), -(1 << 20), 1 << 20);

  auto seq = to_backend(Backend::kCuda, got_case.seq_lens), rpi = to_backend(Backend::kCuda, got_case.rpi),
       ext = to_backend(Backend::kCuda, got_case.extend.empty() ? std::vector<int32_t>(1) : got_case.extend),
       r2t_dev = to_backend(Backend::kCuda, r2t);
  MetadataConfig cfg{got_case.mode, bs, N};
  MetadataInputs in;
  in.seq_lens = seq.as<int32_t>();
  in.req_pool_indices = rpi.as<int32_t>();
  in.req_to_token = r2t_dev.as<int32_t>();
  in.req_to_token_rows = kPoolRows;
  in.req_to_token_cols = kPoolCols;
  in.req_to_token_ld = kPoolCols;
  if (got_case.mode == ForwardMode::kDraftExtend) in.extend_lens = ext.as<int32_t>();
  build_metadata(exec, cfg, in, sets.targets);
  const DeviceError e = read_device_error(exec);

  MetadataInputs hin = in;
  hin.seq_lens = ref_case.seq_lens.data();
  hin.req_pool_indices = ref_case.rpi.data();
  hin.req_to_token = r2t.data();
  if (ref_case.mode == ForwardMode::kDraftExtend) hin.extend_lens = ref_case.extend.data();
  // The reference may write a too-long row into the row's stride padding; those rows are restored below.
  const std::vector<uint8_t> poison_pt = dests.mirror(0, kPt), poison_real = dests.mirror(0, kReal);
  MetadataBuffers wide = dests.expected()[0];
  wide.page_table_1_cols = kLd;
  reference::build_metadata(cfg, hin, &wide, 1);
  for (int64_t r : untouched_rows) {
    std::memcpy(dests.mirror(0, kPt).data() + r * kLd * 4, poison_pt.data() + r * kLd * 4, kLd * 4);
    std::memcpy(dests.mirror(0, kReal).data() + r * kRealLd * 4, poison_real.data() + r * kRealLd * 4, kRealLd * 4);
  }
  sets.expect_matches();

  if (expected_arg == ArgId::kNone) {
    EXPECT_EQ(e.code, 0) << describe(e);
  } else {
    expect_device_error(e, OpId::kBuildMetadata, expected_arg, expected_row, expected_value);
    reset_device_error(exec);
    EXPECT_EQ(read_device_error(exec).code, 0);
  }
}
class MetadataChecked : public ::testing::Test {
 protected:
  void SetUp() override { NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda); }
};

TEST_F(MetadataChecked, ValidInputsRecordNothing_cuda) {
  const Case c{ForwardMode::kTargetVerify, {250, 1, 77}, {0, 5, 2}, {}};
  run_checked(c, c, {}, ArgId::kNone, 0, 0);
}

TEST_F(MetadataChecked, RequestRowOutOfRange_cuda) {
  const Case got{ForwardMode::kDecode, {250, 70, 9}, {0, 6, 2}, {}};  // rpi 6 >= 6 rows
  Case ref = got;
  ref.rpi[1] = 0;  // scalars do not depend on the row; its page-table rows stay untouched
  run_checked(got, ref, {1}, ArgId::kReqPoolIndices, 1, 6);
}

TEST_F(MetadataChecked, CacheLengthOverTableWidth_cuda) {
  const Case got{ForwardMode::kDecode, {250, static_cast<int32_t>(kW + 1), 9}, {0, 1, 2}, {}};
  run_checked(got, got, {1}, ArgId::kSeqLens, 1, kW + 1);
}

TEST_F(MetadataChecked, CacheLengthOverRealPageTable_cuda) {
  // 290 <= W columns, but ceil(290 / 64) = 5 pages > 4 real_page_table columns.
  const Case got{ForwardMode::kDecode, {250, 200, 290}, {0, 1, 2}, {}};
  run_checked(got, got, {2}, ArgId::kSeqLens, 2, 290, 4);
}

TEST_F(MetadataChecked, ExtendLengthOverDraftTokens_cuda) {
  const Case got{ForwardMode::kDraftExtend, {250, 70, 9}, {0, 1, 2}, {2, 5, 3}};  // e = 5 > N = 4
  Case ref = got;
  ref.extend[1] = 0;  // counted as 0 query rows: later requests move up, nothing of it is written
  run_checked(got, ref, {}, ArgId::kExtendLens, 1, 5);
}

// 300 requests: two chunks and 256-column items, so item CTAs walk the
// chunks; the violation sits in the second chunk, which only CTA 0 records.
Case many_requests(ForwardMode mode) {
  auto rng = make_rng(41);
  Case c{mode, {}, {}, {}};
  for (int b = 0; b < 300; ++b) {
    c.seq_lens.push_back(static_cast<int32_t>(5 + rng() % (kW - 8)));
    c.rpi.push_back(static_cast<int32_t>(rng() % kPoolRows));
    if (mode == ForwardMode::kDraftExtend) c.extend.push_back(static_cast<int32_t>(1 + rng() % 4));
  }
  return c;
}

TEST_F(MetadataChecked, RequestRowOutOfRangeInSecondChunk_cuda) {
  Case got = many_requests(ForwardMode::kDecode);
  got.rpi[290] = kPoolRows;
  Case ref = got;
  ref.rpi[290] = 0;
  run_checked(got, ref, {290}, ArgId::kReqPoolIndices, 290, kPoolRows);
}

TEST_F(MetadataChecked, ExtendLengthOverDraftTokensInSecondChunk_cuda) {
  Case got = many_requests(ForwardMode::kDraftExtend);
  got.extend[280] = 7;  // > N = 4
  Case ref = got;
  ref.extend[280] = 0;
  run_checked(got, ref, {}, ArgId::kExtendLens, 280, 7);
}

}  // namespace checked

// ====================================================================================
// Checked mode on the CPU (always validates): every planted build_metadata
// violation throws kInvalidArgument naming the argument and the value, and
// nothing is written.
// ====================================================================================
// A destination set of `rows` rows in host memory (page_table_1 and real_page_table widths given), poisoned.
support::MetadataDestShape cpu_dest(int64_t rows, int64_t pt_cols, int64_t real_cols) {
  support::MetadataDestShape s;
  s.max_batch = s.max_rows = rows;
  s.page_table_1_cols = pt_cols;
  s.real_page_table_cols = real_cols;
  s.fields = metadata_field_bit(MetadataField::kSeqlensExpanded) | metadata_field_bit(MetadataField::kRealPageTable);
  return s;
}

TEST(CheckedModeCpu, BuildMetadataRejectsEachViolationAndWritesNothing) {
  const int64_t N = 3;
  // Two destinations: the second has the narrower page_table_1 (40) and real_page_table (1 column of P = 64).
  const support::MetadataDests dests(Backend::kCpu, {cpu_dest(8 * N, 80, 2), cpu_dest(8 * N, 40, 1)}, kPoison);
  const Exec cpu = Exec::cpu();
  const MetadataTargets& targets = dests.targets();
  std::vector<int32_t> req_to_token(4 * 80, 9);
  std::vector<int32_t> seq = {10, 37, 0}, rpi = {3, 0, 1}, ext = {1, 3, 0};
  MetadataInputs in;
  in.seq_lens = seq.data();
  in.req_pool_indices = rpi.data();
  in.req_to_token = req_to_token.data();
  in.req_to_token_rows = 4;
  in.req_to_token_cols = 50;
  in.req_to_token_ld = 80;
  auto build = [&](ForwardMode mode, const MetadataInputs& i) {
    build_metadata(cpu, MetadataConfig{mode, 3, N, 2048, 64}, i, targets);
  };
  const std::string op = "build_metadata";

  seq = {10, 41, 0};  // over the narrow destination's 40 columns
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.seq_lens", "41 at request 1");
  seq = {10, 38, 0};  // + N = 41 in TARGET_VERIFY
  expect_rejected([&] { build(ForwardMode::kTargetVerify, in); }, op, "inputs.seq_lens (+ draft_tokens)",
                  "41 at request 1");
  seq = {10, -1, 0};
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.seq_lens", "-1 at request 1");
  seq = {10, 37, 0};
  in.req_to_token_cols = 30;  // cache length over the source rows
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.seq_lens", "37 at request 1");
  in.req_to_token_cols = 50;
  rpi = {3, 4, 1};
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.req_pool_indices", "4 at request 1");
  rpi = {3, 0, -1};  // checked even for an empty request
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.req_pool_indices", "-1 at request 2");
  rpi = {3, 0, 1};
  MetadataInputs ex = in;
  ex.extend_lens = ext.data();
  ext = {1, 4, 0};  // > N
  expect_rejected([&] { build(ForwardMode::kDraftExtend, ex); }, op, "inputs.extend_lens", "4 at request 1");
  ext = {-1, 3, 0};
  expect_rejected([&] { build(ForwardMode::kDraftExtend, ex); }, op, "inputs.extend_lens", "-1 at request 0");
  ext = {1, 3, 0};
  EXPECT_TRUE(dests.matches());  // both still poison

  // real_page_table: the narrow destination holds 1 page of 64 tokens; a 33-column page table holds 65.
  support::MetadataDestShape real_shape = cpu_dest(3, 70, 1);
  real_shape.page_table_1_ld = 80;
  const support::MetadataDests real_short(Backend::kCpu, {real_shape}, kPoison);
  const MetadataTargets& one = real_short.targets();
  seq = {10, 65, 0};
  MetadataInputs long_rows = in;
  long_rows.req_to_token_cols = 80;
  expect_rejected(
      [&] {
        build_metadata(cpu, MetadataConfig{ForwardMode::kDecode, 3, 1, 2048, 64}, long_rows, one);
      },
      op, "inputs.seq_lens", "65 at request 1 (2 pages)");
  EXPECT_TRUE(real_short.matches());

  seq = {10, 37, 0};  // valid: all three modes run
  build(ForwardMode::kDecode, in);
  build(ForwardMode::kTargetVerify, in);
  build(ForwardMode::kDraftExtend, ex);
  EXPECT_FALSE(dests.matches());
}

// ====================================================================================
// Determinism (determinism.h): two destination sets of random bytes, every
// optional field present; whole buffers compared across threads and streams.
// ====================================================================================
namespace determinism {

struct MetaDest {
  support::MetadataDestShape shape;
  uint64_t seed;  // of the initial bytes: every run starts from the same ones
};

MetaDest make_meta_dest(std::mt19937_64& rng, int64_t max_rows, int64_t pt_cols, int64_t rt_cols, int64_t tiles,
                        int64_t extra_ld) {
  MetaDest d{{}, rng()};
  d.shape.max_batch = d.shape.max_rows = max_rows;
  d.shape.page_table_1_cols = pt_cols;
  d.shape.page_table_1_ld = pt_cols + extra_ld;
  d.shape.real_page_table_cols = rt_cols;
  d.shape.real_page_table_ld = rt_cols + extra_ld;
  d.shape.flashmla_metadata_size = tiles;
  return d;
}

// Uploads the destinations, runs `op` with their table, returns every field.
Outputs run_with_dests(Backend b, const Exec& exec, const std::vector<MetaDest>& dests,
                       const std::function<void(const MetadataTargets&)>& op) {
  std::vector<support::MetadataDestShape> shapes;
  for (const auto& d : dests) shapes.push_back(d.shape);
  std::mt19937_64 rng(dests.empty() ? 0 : dests[0].seed);
  const support::MetadataDests m(exec, shapes, rng);
  fence(b);
  op(m.targets());
  fence(b);
  Outputs out;
  for (int64_t d = 0; d < m.count(); ++d)
    for (int f = 0; f < kMetadataFieldCount; ++f)
      if (m.present(d, f)) out.push_back(m.read(d, f));
  return out;
}

TEST_P(DeterminismTest, BuildMetadataAllModes) {
  auto rng = make_rng(505);
  const int64_t bs = 64, N = 3, max_len = 3000, W = max_len + N, rows_pool = bs + 5, table_ld = W + 7;
  const auto req_to_token = random_ints<int32_t>(rng, static_cast<size_t>(rows_pool * table_ld), 0, 1 << 30);
  auto seq = random_ints<int64_t>(rng, bs, 0, max_len);
  seq[0] = 0;
  seq[1] = 1;
  seq[2] = max_len;
  const auto rpi = random_ints<int32_t>(rng, bs, 0, rows_pool - 1);
  auto ext = random_ints<int32_t>(rng, bs, 0, N);
  for (int64_t b = 0; b < bs; ++b) ext[b] = static_cast<int32_t>(std::min<int64_t>(ext[b], seq[b]));
  const auto splits = random_ints<int32_t>(rng, static_cast<size_t>(bs * N + 1), 0, 99);
  const auto tiles = random_ints<int32_t>(rng, 80, 0, 99);
  for (ForwardMode mode : {ForwardMode::kDecode, ForwardMode::kTargetVerify, ForwardMode::kDraftExtend}) {
    SCOPED_TRACE(to_string(mode));
    const int64_t rows = mode == ForwardMode::kDecode ? bs : bs * N;
    const std::vector<MetaDest> dests = {make_meta_dest(rng, rows, W, (W + 63) / 64, 80, 0),
                                         make_meta_dest(rng, rows + 2, W + 5, (W + 63) / 64 + 1, 80,
                                                        3)};  // tiles: the source size
    expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
      auto table_dev = to_backend(b, req_to_token);
      auto seq_dev = to_backend(b, seq);
      auto rpi_dev = to_backend(b, rpi);
      auto ext_dev = to_backend(b, ext);
      auto splits_dev = to_backend(b, splits);
      auto tiles_dev = to_backend(b, tiles);
      MetadataInputs in;
      in.seq_lens = seq_dev.as<int64_t>();
      in.req_pool_indices = rpi_dev.as<int32_t>();
      if (mode == ForwardMode::kDraftExtend) in.extend_lens = ext_dev.as<int32_t>();
      in.req_to_token = table_dev.as<int32_t>();
      in.req_to_token_rows = rows_pool;
      in.req_to_token_cols = W;
      in.req_to_token_ld = table_ld;
      in.flashmla_num_splits = splits_dev.as<int32_t>();
      in.flashmla_metadata = tiles_dev.as<int32_t>();
      in.flashmla_num_splits_size = static_cast<int64_t>(splits.size());
      in.flashmla_metadata_size = static_cast<int64_t>(tiles.size());
      const MetadataConfig cfg{mode, bs, N, 2048, 64};
      return run_with_dests(b, exec, dests, [&](const MetadataTargets& t) { build_metadata(exec, cfg, in, t); });
    });
  }
}

TEST_P(DeterminismTest, CopyMetadataAllModes) {
  auto rng = make_rng(506);
  const int64_t bs = 48, E = 150, cols = 2500, rc = (cols + 63) / 64, tiles_n = 72;
  for (ForwardMode mode : {ForwardMode::kDecode, ForwardMode::kTargetVerify, ForwardMode::kDraftExtend}) {
    SCOPED_TRACE(to_string(mode));
    const bool decode = mode == ForwardMode::kDecode;
    const int64_t rows = decode ? bs : E, src_ld = cols + 2;
    const auto cache = random_ints<int32_t>(rng, bs, 0, 5000), cu = random_ints<int32_t>(rng, bs + 1, 0, 5000),
               pt = random_ints<int32_t>(rng, static_cast<size_t>(rows * src_ld), 0, 1 << 30),
               expanded = random_ints<int32_t>(rng, rows, 0, 5000), nsa = random_ints<int32_t>(rng, rows, 0, 2048),
               nsa_cu = random_ints<int32_t>(rng, rows + 1, 0, 1 << 20),
               real = random_ints<int32_t>(rng, static_cast<size_t>(rows * rc), 0, 1 << 20),
               splits = random_ints<int32_t>(rng, rows + 1, 0, 99), tiles = random_ints<int32_t>(rng, tiles_n, 0, 99);
    const int64_t cap = std::max(bs, rows);
    const std::vector<MetaDest> dests = {make_meta_dest(rng, cap, cols, rc, tiles_n, 0),
                                         make_meta_dest(rng, cap + 3, cols + 9, rc + 2, tiles_n + 8, 5)};
    expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
      std::vector<support::Buffer> keep;
      auto up = [&](const std::vector<int32_t>& v) {
        keep.push_back(to_backend(b, v));
        return static_cast<const int32_t*>(keep.back().as<int32_t>());
      };
      keep.reserve(9);
      MetadataSources s;
      s.cache_seqlens = up(cache);
      s.cu_seqlens_k = up(cu);
      s.page_table_1 = up(pt);
      s.page_table_1_ld = src_ld;
      s.seqlens_expanded = up(expanded);
      s.nsa_cache_seqlens = up(nsa);
      s.nsa_cu_seqlens_k = up(nsa_cu);
      s.real_page_table = up(real);
      s.real_page_table_cols = rc;
      s.flashmla_num_splits = up(splits);
      s.flashmla_metadata = up(tiles);
      s.flashmla_metadata_size = tiles_n;
      const MetadataCopyShape shape{mode, bs, decode ? cols : 0, decode ? 0 : cols, decode ? 0 : E};
      return run_with_dests(b, exec, dests, [&](const MetadataTargets& t) { copy_metadata(exec, shape, s, t); });
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, DeterminismTest, ::testing::ValuesIn(all_backends()), backend_name);

}  // namespace determinism

// ====================================================================================
// Fuzz regressions (fuzz/fuzz_copy_metadata.cpp): the smallest reproduction of
// each crash found, as a plain test that runs in every build.
// ====================================================================================

// TARGET_VERIFY/DRAFT_EXTEND copy with E = 0 rows, where nsa_cu_seqlens_k is
// not needed and may be null. The CPU backend computed
// `src.nsa_cu_seqlens_k + 1` anyway (null + 4: undefined behaviour, flagged by
// clang's UBSan; harmless in practice because nothing is copied). The call must
// succeed and write only cache_seqlens and cu_seqlens_k[1..bs].
TEST(FuzzRegression, CopyMetadataZeroRowsWithNullCumulativeSource) {
  support::MetadataDestShape dest;
  dest.max_batch = dest.max_rows = 4;
  dest.page_table_1_cols = 8;
  dest.fields = 0;                                                           // the mandatory fields only
  const support::MetadataDests dests(Backend::kCpu, {dest}, uint8_t{0xFF});  // every int32 -1
  const int32_t src_cache[2] = {5, 6}, src_cu[3] = {0, 5, 11};
  MetadataSources src;
  src.cache_seqlens = src_cache;
  src.cu_seqlens_k = src_cu;
  for (ForwardMode mode : {ForwardMode::kTargetVerify, ForwardMode::kDraftExtend}) {
    const MetadataCopyShape shape{mode, 2, 0, 8, 0};  // E = 0: no rows
    EXPECT_NO_THROW(copy_metadata(Exec::cpu(), shape, src, dests.targets()));
  }
  auto ints = [&](int f) { return support::from_backend<int32_t>(dests.buffer(0, f), dests.buffer(0, f).bytes() / 4); };
  EXPECT_EQ(ints(kCache), (std::vector<int32_t>{5, 6, -1, -1}));
  EXPECT_EQ(ints(kCuK), (std::vector<int32_t>{-1, 5, 11, -1, -1}));
  EXPECT_EQ(ints(kNsaCu), std::vector<int32_t>(5, -1));
  EXPECT_EQ(ints(kPt), std::vector<int32_t>(32, -1));
}

}  // namespace
}  // namespace test
}  // namespace nsa
