// Regression tests for what the fuzzers (fuzz/) found. Each case is the
// smallest reproduction of one crash, as a plain test that runs in every
// build (the fuzzers only run in the clang fuzz build).
#include <cstring>

#include "nsa/index_cache.h"
#include "test_util.h"

namespace nsa {
namespace test {
namespace {

using L = IndexCacheLayout;

// fuzz_gather: an IndexType that is neither int32 nor int64 was not checked by
// the gathers; the CPU backend read the int32 page ids as int64 (heap overflow
// under ASan, a wild page id otherwise). Every index argument of the gathers
// must reject it before anything is read or written.
TEST(FuzzRegression, GatherRejectsInvalidIndexType) {
  std::vector<uint8_t> pool(2 * L::kBytesPerPage, 7);
  const ConstIndexCache cache(pool.data(), 2);
  const int32_t ids[2] = {1, 0};
  std::vector<uint8_t> out_k(128 * 100, kPoison);
  std::vector<float> out_s(100);
  std::memset(out_s.data(), kPoison, out_s.size() * 4);
  const auto k_before = out_k;
  const auto s_before = out_s;
  for (int bad : {0, 3, 5, 9}) {
    const Indices page_ids(ids, static_cast<IndexType>(bad));
    SCOPED_TRACE(::testing::Message() << "IndexType " << bad);
    EXPECT_THROW(gather_k(Exec::cpu(), cache, 100, page_ids, out_k.data()), Error);
    EXPECT_THROW(gather_s(Exec::cpu(), cache, 100, page_ids, out_s.data()), Error);

    const int32_t lens[2] = {70, 30}, cu[3] = {0, 70, 100};
    const int32_t table[4] = {1, 0, 0, 1};
    PagedBatch batch;
    batch.batch_size = 2;
    batch.table_cols = 2;
    batch.table_ld = 2;
    batch.seq_lens = Indices(lens, static_cast<IndexType>(bad));  // bad lengths
    batch.page_table = table;
    EXPECT_THROW(gather_k_and_s(Exec::cpu(), cache, batch, out_k.data(), out_s.data(), 100), Error);
    batch.seq_lens = Indices();
    batch.cu_seq_lens = Indices(cu, static_cast<IndexType>(bad));  // bad cumulative lengths
    EXPECT_THROW(gather_k_and_s(Exec::cpu(), cache, batch, out_k.data(), out_s.data(), 100), Error);
    batch.cu_seq_lens = cu;
    batch.page_table = Indices(table, static_cast<IndexType>(bad));  // bad page table
    EXPECT_THROW(gather_k_and_s(Exec::cpu(), cache, batch, out_k.data(), out_s.data(), 100), Error);
  }
  EXPECT_EQ(out_k, k_before);
  EXPECT_EQ(std::memcmp(out_s.data(), s_before.data(), out_s.size() * 4), 0);
}

}  // namespace
}  // namespace test
}  // namespace nsa
