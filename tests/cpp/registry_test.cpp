// The op registry (nsa/detail/ops.def): the enumerator values are part of the
// DeviceError layout the kernels write, and the names are what messages and
// Python users see, so both are pinned here by hand, not re-derived from the
// list. A CPU-only build's CUDA entry points refuse with the op's name.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "backends.h"
#include "metadata_backends.h"
#include "nsa/common.h"

namespace nsa {
namespace test {
namespace {

TEST(Registry, OpIdsAndNamesAreStable) {
  const std::pair<OpId, const char*> ops[] = {
      {OpId::kQuantizeAndStoreK, "quantize_and_store_k"},
      {OpId::kStoreKAndS, "store_k_and_s"},
      {OpId::kGatherK, "gather_k"},
      {OpId::kGatherS, "gather_s"},
      {OpId::kGatherKAndS, "gather_k_and_s"},
      {OpId::kBuildMetadata, "build_metadata"},
      {OpId::kCopyMetadata, "copy_metadata"},
  };
  EXPECT_EQ(static_cast<int32_t>(OpId::kNone), 0);
  for (size_t i = 0; i < std::size(ops); ++i) {
    EXPECT_EQ(static_cast<int32_t>(ops[i].first), static_cast<int32_t>(i + 1)) << ops[i].second;
    EXPECT_STREQ(to_string(ops[i].first), ops[i].second);
  }
  EXPECT_STREQ(to_string(OpId::kNone), "unknown op");
  EXPECT_STREQ(to_string(static_cast<OpId>(std::size(ops) + 1)), "unknown op");
}

TEST(Registry, ArgIdsAndNamesAreStable) {
  const std::pair<ArgId, const char*> args[] = {
      {ArgId::kSlots, "slots"},
      {ArgId::kPageIds, "page_ids"},
      {ArgId::kPageTable, "page_table"},
      {ArgId::kSeqLens, "seq_lens"},
      {ArgId::kCuSeqLens, "cu_seq_lens"},
      {ArgId::kOutCapacity, "out_capacity"},
      {ArgId::kReqPoolIndices, "req_pool_indices"},
      {ArgId::kExtendLens, "extend_lens"},
  };
  EXPECT_EQ(static_cast<int32_t>(ArgId::kNone), 0);
  for (size_t i = 0; i < std::size(args); ++i) {
    EXPECT_EQ(static_cast<int32_t>(args[i].first), static_cast<int32_t>(i + 1)) << args[i].second;
    EXPECT_STREQ(to_string(args[i].first), args[i].second);
  }
  EXPECT_STREQ(to_string(static_cast<ArgId>(-1)), "unknown argument");
}

TEST(Registry, DescribeNamesOpArgumentRowAndValue) {
  DeviceError e;
  EXPECT_EQ(describe(e), "no error");
  e.code = 1;
  e.op = static_cast<int32_t>(OpId::kGatherKAndS);
  e.arg = static_cast<int32_t>(ArgId::kPageTable);
  e.row = 17;
  e.value = 99999;
  EXPECT_EQ(describe(e), "gather_k_and_s: argument 'page_table' at row 17: invalid value 99999");
}

// Without the CUDA backend the public API refuses Backend::kCuda, and the
// generated backend stubs behind it refuse too, naming the op.
void expect_unsupported(const std::function<void()>& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "ran on a build without CUDA: " << message;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kUnsupported) << e.what();
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(Registry, CpuOnlyBuildRefusesCuda) {
  if (cuda_built()) GTEST_SKIP() << "this build has the CUDA backend";
  std::vector<uint8_t> pool(IndexCacheLayout::kBytesPerPage);
  std::vector<uint8_t> out(IndexCacheLayout::kHeadDim);
  const int32_t page = 0;
  const ConstIndexCache cache{pool.data(), 1};
  expect_unsupported([&] { gather_k(Exec::cuda(), cache, 1, &page, out.data()); },
                     "nsa::gather_k: backend 'cuda' requested but this build has no CUDA backend");
  expect_unsupported([&] { cuda::gather_k(nullptr, nullptr, cache, 1, &page, out.data()); },
                     "nsa::gather_k: this build has no CUDA backend");
  expect_unsupported([&] { cuda::copy_metadata(nullptr, {}, {}, {}); },
                     "nsa::copy_metadata: this build has no CUDA backend");
  expect_unsupported([&] { cuda::upload_metadata_targets(nullptr, nullptr, 0, nullptr); },
                     "nsa::upload_metadata_targets: this build has no CUDA backend");
}

}  // namespace
}  // namespace test
}  // namespace nsa
