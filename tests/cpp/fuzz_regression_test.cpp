// Regression tests for what the fuzzers (fuzz/) found. Each case is the
// smallest reproduction of one crash, as a plain test that runs in every
// build (the fuzzers only run in the clang fuzz build).
#include <cstring>

#include "nsa/index_cache.h"
#include "nsa/metadata.h"
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

// fuzz_copy_metadata: TARGET_VERIFY/DRAFT_EXTEND copy with E = 0 rows, where
// nsa_cu_seqlens_k is not needed and may be null. The CPU backend computes
// `src.nsa_cu_seqlens_k + 1` anyway (null + 4: undefined behaviour, flagged
// by clang's UBSan; harmless in practice because nothing is copied). The call
// must succeed and write only cache_seqlens and cu_seqlens_k[1..bs].
TEST(FuzzRegression, CopyMetadataZeroRowsWithNullCumulativeSource) {
  std::vector<int32_t> cache(4, -1), cu(5, -1), pt(4 * 8, -1), nsa(4, -1), nsa_cu(5, -1);
  MetadataBuffers dst;
  dst.cache_seqlens = cache.data();
  dst.cu_seqlens_k = cu.data();
  dst.page_table_1 = pt.data();
  dst.page_table_1_cols = dst.page_table_1_ld = 8;
  dst.nsa_cache_seqlens = nsa.data();
  dst.nsa_cu_seqlens_k = nsa_cu.data();
  dst.max_rows = 4;
  dst.max_batch = 4;
  MetadataBuffers ws;
  const MetadataTargets targets = upload_metadata_targets(Exec::cpu(), &dst, 1, &ws, sizeof ws);
  const int32_t src_cache[2] = {5, 6}, src_cu[3] = {0, 5, 11};
  MetadataSources src;
  src.cache_seqlens = src_cache;
  src.cu_seqlens_k = src_cu;
  for (ForwardMode mode : {ForwardMode::kTargetVerify, ForwardMode::kDraftExtend}) {
    const MetadataCopyShape shape{mode, 2, 0, 8, 0};  // E = 0: no rows
    EXPECT_NO_THROW(copy_metadata(Exec::cpu(), shape, src, targets));
  }
  EXPECT_EQ(cache, (std::vector<int32_t>{5, 6, -1, -1}));
  EXPECT_EQ(cu, (std::vector<int32_t>{-1, 5, 11, -1, -1}));
  EXPECT_EQ(nsa_cu, std::vector<int32_t>(5, -1));
  EXPECT_EQ(pt, std::vector<int32_t>(32, -1));
}

}  // namespace
}  // namespace test
}  // namespace nsa
