// Determinism: every op, given identical inputs, writes bit-identical output
// buffers on every run, whatever the CPU thread count (1, 4, the default) and
// whichever CUDA stream it is enqueued on (the legacy default stream or a
// created non-blocking one). Whole buffers are compared, poison included, so
// a byte written on one run and not on another also shows. Slots are
// distinct: with repeated slots which row wins is unspecified (spec), so
// that case is not a determinism promise.
#include <algorithm>
#include <cstring>
#include <functional>
#include <numeric>

#include "metadata_dests.h"
#include "nsa/index_cache.h"
#include "nsa/metadata.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace test {
namespace {

using L = IndexCacheLayout;
using Outputs = std::vector<std::vector<uint8_t>>;
// Runs one op on fresh buffers built from fixed host inputs; returns its outputs.
using Op = std::function<Outputs(Backend, const Exec&)>;

// The ways an op may be run on `b`. CUDA: the legacy default stream and a
// created non-blocking stream (owned by this object).
class Execs {
 public:
  explicit Execs(Backend b) {
    if (b == Backend::kCpu) {
      list_ = {Exec::cpu(1), Exec::cpu(4), Exec::cpu()};
      names_ = {"cpu(1)", "cpu(4)", "cpu(default)"};
      return;
    }
#if defined(NSA_WITH_CUDA)
    if (cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) != cudaSuccess) stream_ = nullptr;
    list_ = {Exec::cuda(), Exec::cuda(stream_)};
    names_ = {"cuda(default stream)", "cuda(non-blocking stream)"};
#endif
  }
  ~Execs() {
#if defined(NSA_WITH_CUDA)
    if (stream_) (void)cudaStreamDestroy(stream_);
#endif
  }
  Execs(const Execs&) = delete;
  Execs& operator=(const Execs&) = delete;
  const std::vector<Exec>& list() const { return list_; }
  const std::string& name(size_t i) const { return names_[i]; }

 private:
  std::vector<Exec> list_;
  std::vector<std::string> names_;
#if defined(NSA_WITH_CUDA)
  cudaStream_t stream_ = nullptr;
#endif
};

// Every exec, three times each (interleaved), must reproduce the first run.
void expect_deterministic(Backend b, const Op& op) {
  Execs execs(b);
  Outputs first;
  bool have_first = false;
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (size_t e = 0; e < execs.list().size(); ++e) {
      SCOPED_TRACE(::testing::Message() << execs.name(e) << ", run " << repeat);
      Outputs out = op(b, execs.list()[e]);
      if (!have_first) {
        first = std::move(out);
        have_first = true;
        continue;
      }
      ASSERT_EQ(out.size(), first.size());
      for (size_t i = 0; i < out.size(); ++i) {
        SCOPED_TRACE(::testing::Message() << "output " << i);
        NSA_EXPECT_BYTES_EQ(out[i], first[i]);
      }
    }
  }
}

// Make sure the buffers written with synchronous copies are visible to a
// kernel on a non-blocking stream, and the kernel is done before we read.
void fence(Backend b) { support::synchronize(b); }

// Sizes chosen so the CPU backend really splits the work over 4 threads
// (parallel_for keeps jobs under ~1 MiB per thread serial).
constexpr int64_t kPages = 300, kTokens = 16384;

// Distinct slots in [0, kPages*64), every 9th one -1 (padding).
std::vector<int64_t> distinct_slots(std::mt19937_64& rng, int64_t n) {
  std::vector<int64_t> all(static_cast<size_t>(kPages * L::kPageSize));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; t += 9) all[static_cast<size_t>(t)] = -1;
  return all;
}

class DeterminismTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { NSA_SKIP_WITHOUT_BACKEND(GetParam()); }
};

TEST_P(DeterminismTest, QuantizeAndStoreK) {
  auto rng = make_rng(501);
  const int64_t ld = 136;
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto k_bytes = random_bytes(rng, kTokens * ld * 2);  // random bf16 bits: NaN, Inf, subnormals included
  std::vector<uint16_t> k(static_cast<size_t>(kTokens * ld));
  std::memcpy(k.data(), k_bytes.data(), k_bytes.size());
  const auto slots = distinct_slots(rng, kTokens);
  for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kUe8m0}) {
    SCOPED_TRACE(to_string(mode));
    expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
      auto cache = to_backend(b, pool);
      auto k_dev = to_backend(b, k);
      auto slots_dev = to_backend(b, slots);
      fence(b);
      quantize_and_store_k(exec, {cache.as<uint8_t>(), kPages}, k_dev.as<uint16_t>(), kTokens, ld,
                           slots_dev.as<int64_t>(), mode);
      fence(b);
      return Outputs{cache.to_host()};
    });
  }
}

TEST_P(DeterminismTest, StoreKAndS) {
  auto rng = make_rng(502);
  const int64_t ld = 144;
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto k = random_bytes(rng, kTokens * ld);
  const auto scale = random_bytes(rng, kTokens * 4);
  const auto slots = distinct_slots(rng, kTokens);
  expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
    auto cache = to_backend(b, pool);
    auto k_dev = to_backend(b, k);
    auto s_dev = to_backend(b, scale);
    auto slots_dev = to_backend(b, slots);
    fence(b);
    store_k_and_s(exec, {cache.as<uint8_t>(), kPages}, k_dev.as<uint8_t>(), kTokens, ld, s_dev.as<float>(),
                  slots_dev.as<int64_t>());
    fence(b);
    return Outputs{cache.to_host()};
  });
}

TEST_P(DeterminismTest, GatherKAndGatherS) {
  auto rng = make_rng(503);
  const int64_t length = 2 * kTokens + 37;  // a partial last page
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto ids = random_ints<int32_t>(rng, static_cast<size_t>((length + 63) / 64), 0, kPages - 1);  // repeats too
  expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
    auto cache = to_backend(b, pool);
    auto ids_dev = to_backend(b, ids);
    support::Buffer out_k(b, length * 128 + 64), out_s(b, length * 4 + 64);
    out_k.fill(kPoison);
    out_s.fill(kPoison);
    fence(b);
    const ConstIndexCache view(cache.as<uint8_t>(), kPages);
    gather_k(exec, view, length, ids_dev.as<int32_t>(), out_k.as<uint8_t>());
    gather_s(exec, view, length, ids_dev.as<int32_t>(), out_s.as<float>());
    fence(b);
    return Outputs{out_k.to_host(), out_s.to_host()};
  });
}

TEST_P(DeterminismTest, GatherKAndSBatch) {
  auto rng = make_rng(504);
  const int64_t bs = 37, cols = 24, ld = cols + 3;
  std::vector<int64_t> lens = random_ints<int64_t>(rng, bs, 0, 64 * cols);
  lens[0] = 0;
  lens[1] = 1;
  lens[2] = 64 * cols;
  std::vector<int64_t> cu(1, 0);
  for (int64_t l : lens) cu.push_back(cu.back() + l);
  const int64_t capacity = cu.back() + 100;
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto table = random_ints<int64_t>(rng, static_cast<size_t>(bs * ld), 0, kPages - 1);
  for (bool cumulative : {false, true}) {
    SCOPED_TRACE(cumulative ? "cu_seq_lens" : "seq_lens");
    expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
      auto cache = to_backend(b, pool);
      auto lens_dev = to_backend(b, cumulative ? cu : lens);
      auto table_dev = to_backend(b, table);
      support::Buffer out_k(b, capacity * 128), out_s(b, capacity * 4);
      out_k.fill(kPoison);
      out_s.fill(kPoison);
      fence(b);
      PagedBatch batch;
      batch.batch_size = bs;
      if (cumulative) batch.cu_seq_lens = lens_dev.as<int64_t>();
      else batch.seq_lens = lens_dev.as<int64_t>();
      batch.page_table = table_dev.as<int64_t>();
      batch.table_cols = cols;
      batch.table_ld = ld;
      gather_k_and_s(exec, ConstIndexCache(cache.as<uint8_t>(), kPages), batch, out_k.as<uint8_t>(), out_s.as<float>(),
                     capacity);
      fence(b);
      return Outputs{out_k.to_host(), out_s.to_host()};
    });
  }
}

// ------------------------------------------------------------------------------------
// Metadata: two destination sets of random bytes, every optional field present.
// ------------------------------------------------------------------------------------
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

}  // namespace
}  // namespace test
}  // namespace nsa
