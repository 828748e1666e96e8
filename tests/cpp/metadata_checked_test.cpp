// build_metadata in checked mode on CUDA: planted violations are recorded in
// the DeviceError, the offending request writes no page-table rows, and every
// other byte equals the reference. Valid inputs record nothing and give the
// unchecked bytes.
#include <cstring>

#include "nsa/metadata.h"
#include "reference/metadata.h"
#include "test_util.h"

namespace nsa {
namespace test {
namespace {

constexpr int64_t kW = 300;     // page_table_1 columns of the destination
constexpr int64_t kLd = 320;    // its row stride (room for a too-long row in the reference)
constexpr int64_t kRealLd = 8;  // real_page_table row stride (>= ceil(321 / 64))
constexpr int64_t kPoolRows = 6, kPoolCols = 400;

// One destination set as one poisoned byte image (host) + device copy.
struct Dest {
  int64_t max_rows;
  int64_t real_cols = kRealLd;  // real_page_table columns (a smaller value caps valid lengths at 64x it)
  std::vector<uint8_t> host;
  support::Buffer dev;
  // Offsets (in int32) of each field inside the image.
  int64_t o_cache, o_cu, o_pt, o_exp, o_nsa, o_nsacu, o_real;
  Dest(int64_t rows, std::mt19937_64& rng) : max_rows(rows) {
    int64_t at = 0;
    auto take = [&](int64_t n) {
      const int64_t o = at;
      at += n;
      return o;
    };
    o_cache = take(rows);
    o_cu = take(rows + 1);
    o_pt = take(rows * kLd);
    o_exp = take(rows);
    o_nsa = take(rows);
    o_nsacu = take(rows + 1);
    o_real = take(rows * kRealLd);
    host = random_bytes(rng, static_cast<size_t>(at * 4));
    dev = to_backend(Backend::kCuda, host);
  }
  MetadataBuffers view(int32_t* base) const {
    MetadataBuffers b;
    b.cache_seqlens = base + o_cache;
    b.cu_seqlens_k = base + o_cu;
    b.page_table_1 = base + o_pt;
    b.page_table_1_cols = kW;
    b.page_table_1_ld = kLd;
    b.seqlens_expanded = base + o_exp;
    b.nsa_cache_seqlens = base + o_nsa;
    b.nsa_cu_seqlens_k = base + o_nsacu;
    b.real_page_table = base + o_real;
    b.real_page_table_cols = real_cols;
    b.real_page_table_ld = kRealLd;
    b.max_rows = max_rows;
    b.max_batch = max_rows;
    return b;
  }
  // Restores the poison of query row `r` in both page tables of `expected`.
  void untouched_row(std::vector<uint8_t>& expected, int64_t r) const {
    for (int64_t o : {o_pt + r * kLd, o_real + r * kRealLd}) {
      const int64_t n = o == o_pt + r * kLd ? kLd : kRealLd;
      std::memcpy(expected.data() + o * 4, host.data() + o * 4, static_cast<size_t>(n * 4));
    }
  }
};

struct Case {
  ForwardMode mode;
  std::vector<int32_t> seq_lens, rpi, extend;
};

// Runs the case on CUDA in checked mode; `expected_inputs` is what the
// reference sees; `untouched_rows` are the query rows whose page tables must keep their poison.
void run_checked(const Case& got_case, const Case& ref_case, const std::vector<int64_t>& untouched_rows,
                 ArgId expected_arg, int64_t expected_row, int64_t expected_value, int64_t real_cols = kRealLd) {
  auto rng = make_rng(40);
  const int64_t bs = static_cast<int64_t>(got_case.seq_lens.size()), N = 4;
  Dest dest(bs * N, rng);
  dest.real_cols = real_cols;
  // Negative slots too: real_page_table = slot / 64 must round like the reference (toward zero).
  const auto r2t = random_ints<int32_t>(rng, static_cast<size_t>(kPoolRows * kPoolCols), -(1 << 20), 1 << 20);

  support::Buffer err(Backend::kCuda, sizeof(DeviceError));
  const Exec exec = Exec::cuda().with_checks(err.as<DeviceError>());
  reset_device_error(exec);
  MetadataBuffers dev_view = dest.view(dest.dev.as<int32_t>());
  support::Buffer ws(Backend::kCuda, metadata_targets_workspace_bytes(1));
  const auto targets = upload_metadata_targets(exec, &dev_view, 1, ws.data(), ws.bytes());

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
  build_metadata(exec, cfg, in, targets);
  const DeviceError e = read_device_error(exec);

  std::vector<uint8_t> expected = dest.host;
  MetadataBuffers host_view = dest.view(reinterpret_cast<int32_t*>(expected.data()));
  MetadataInputs hin = in;
  hin.seq_lens = ref_case.seq_lens.data();
  hin.req_pool_indices = ref_case.rpi.data();
  hin.req_to_token = r2t.data();
  if (ref_case.mode == ForwardMode::kDraftExtend) hin.extend_lens = ref_case.extend.data();
  // The reference may write a too-long row into the row's stride padding; those rows are restored below.
  MetadataBuffers wide = host_view;
  wide.page_table_1_cols = kLd;
  reference::build_metadata(cfg, hin, &wide, 1);
  for (int64_t r : untouched_rows) dest.untouched_row(expected, r);
  NSA_EXPECT_BYTES_EQ(dest.dev.to_host(), expected);

  if (expected_arg == ArgId::kNone) {
    EXPECT_EQ(e.code, 0) << describe(e);
  } else {
    EXPECT_EQ(e.code, 1);
    EXPECT_EQ(e.op, static_cast<int32_t>(OpId::kBuildMetadata)) << describe(e);
    EXPECT_EQ(e.arg, static_cast<int32_t>(expected_arg)) << describe(e);
    EXPECT_EQ(e.row, expected_row) << describe(e);
    EXPECT_EQ(e.value, expected_value) << describe(e);
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

}  // namespace
}  // namespace test
}  // namespace nsa
