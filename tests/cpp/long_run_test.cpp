// Long run (CUDA only; skips visibly without a GPU): build_metadata (two
// destination sets) followed by gather_k_and_s over the metadata it just
// wrote (lengths = cache_seqlens, pages = real_page_table), captured into ONE
// CUDA graph and replayed 100,000 times per mode (DECODE, TARGET_VERIFY).
//
// Before each replay the inputs (seq_lens, req_pool_indices) of one of K
// pre-generated sets are copied device-to-device into the captured input
// buffers, together with that set's expected hash; kernels captured after the
// ops hash what the replay wrote and count mismatches on the device, so every
// replay is checked without host work. Replays 0..9, every 1000th and the last
// 10 are also compared in full against the CPU reference.
//
// The sets cover live batches smaller than the captured one (padded rows of
// seq_len 1 with stale request rows), seq_len 0 and maximum lengths.
// NSA_LONG_RUN_REPLAYS overrides the replay count (e.g. 2000 under
// compute-sanitizer, which the GPU check does not run this test under: the
// name matches none of its filters on purpose).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "long_run_hash.h"
#include "metadata_dests.h"
#include "nsa/index_cache.h"
#include "nsa/metadata.h"
#include "reference/index_cache.h"
#include "reference/metadata.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace test {

#if defined(NSA_WITH_CUDA)
// long_run_test_kernels.cu: hash the replay's outputs, compare, count (captured).
cudaError_t launch_long_run_check(const LongRunView& v, unsigned long long* accum, const unsigned long long* expected,
                                  unsigned long long* counters, cudaStream_t stream);
#endif

namespace {

using L = IndexCacheLayout;

#if defined(NSA_WITH_CUDA)
#define NSA_LR_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

constexpr int64_t kBs = 8, kN = 3, kMaxLen = 250, kW = kMaxLen + kN, kPageSize = 64;
constexpr int64_t kRtCols = (kW + kPageSize - 1) / kPageSize, kPoolRows = 12, kTableLd = kW + 5, kPages = 48;
constexpr int64_t kSets = 64, kTopk = 100;  // topk below most lengths: the clamp is exercised

int64_t replay_count() {
  const char* env = std::getenv("NSA_LONG_RUN_REPLAYS");
  return env ? std::max<int64_t>(20, std::strtoll(env, nullptr, 10)) : 100000;
}

// The two destination sets (d = 0 or 1: different strides), every field but FlashMLA's.
std::vector<support::MetadataDestShape> dest_shapes(int64_t rows) {
  std::vector<support::MetadataDestShape> shapes(2);
  for (int d = 0; d < 2; ++d) {
    support::MetadataDestShape& s = shapes[static_cast<size_t>(d)];
    s.max_batch = kBs;
    s.max_rows = rows;
    s.page_table_1_cols = kW;
    s.page_table_1_ld = kW + 3 * d;
    s.real_page_table_cols = kRtCols;
    s.real_page_table_ld = kRtCols + d;
    s.fields = metadata_field_bit(MetadataField::kSeqlensExpanded) | metadata_field_bit(MetadataField::kRealPageTable);
  }
  return shapes;
}
constexpr uint8_t kStale = 0xF9;  // every destination byte before the first replay

// One input set and everything the reference says a replay with it writes
// (into the host mirrors of `dests`, whose own buffers stay unused).
struct Expected {
  std::vector<int32_t> seq, rpi;
  support::MetadataDests dests;
  std::vector<uint8_t> out_k;
  std::vector<float> out_s;
  unsigned long long hash = 0;
  explicit Expected(int64_t rows) : dests(Backend::kCpu, dest_shapes(rows), kStale) {}
};

LongRunView make_view(int64_t q, const MetadataBuffers& d0, const MetadataBuffers& d1, const void* out_k,
                      const void* out_s) {
  LongRunView v;
  v.bs = kBs;
  v.q = q;
  v.rows = kBs * q;
  v.pt_cols = kW;
  v.pt_ld = d0.page_table_1_ld;
  v.rt_ld = d0.real_page_table_ld;
  v.page_size = kPageSize;
  v.cache = d0.cache_seqlens;
  v.cu = d0.cu_seqlens_k;
  v.expanded = d0.seqlens_expanded;
  v.nsa = d0.nsa_cache_seqlens;
  v.nsa_cu = d0.nsa_cu_seqlens_k;
  v.page_table = d0.page_table_1;
  v.real = d0.real_page_table;
  v.other_nsa_cu = d1.nsa_cu_seqlens_k;
  v.out_k = static_cast<const uint32_t*>(out_k);
  v.out_s = static_cast<const uint32_t*>(out_s);
  return v;
}

// The gather reads the build's outputs: request b's pages are row b*q of real_page_table.
PagedBatch gather_batch(const MetadataBuffers& d0, int64_t q) {
  PagedBatch batch;
  batch.batch_size = kBs;
  batch.seq_lens = static_cast<const int32_t*>(d0.cache_seqlens);
  batch.page_table = static_cast<const int32_t*>(d0.real_page_table);
  batch.table_cols = kRtCols;
  batch.table_ld = q * d0.real_page_table_ld;
  return batch;
}

// Random inputs: a live prefix, then graph padding (seq_len 1, a stale but valid row).
void random_inputs(std::mt19937_64& rng, int set, std::vector<int32_t>& seq, std::vector<int32_t>& rpi) {
  seq = random_ints<int32_t>(rng, kBs, 0, kMaxLen);
  rpi = random_ints<int32_t>(rng, kBs, 0, kPoolRows - 1);
  if (set % 4 == 1) seq.assign(kBs, kMaxLen);  // every row at the maximum
  if (set % 4 == 2) seq[0] = 0, seq[1] = 1, seq[2] = kMaxLen;
  const int64_t live = std::uniform_int_distribution<int64_t>(1, kBs)(rng);
  for (int64_t b = live; b < kBs; ++b) seq[b] = 1;
}

void run_long(ForwardMode mode) {
  const Backend dev = Backend::kCuda;
  const int64_t q = mode == ForwardMode::kDecode ? 1 : kN, rows = kBs * q, capacity = kBs * kW;
  auto rng = make_rng(700 + static_cast<int>(mode));
  cudaStream_t stream = nullptr;
  NSA_LR_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const Exec exec = Exec::cuda(stream);

  // The cache and a page-aligned req_to_token: token t of a row lives in slot page*64 + t%64.
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  std::vector<int32_t> req_to_token(static_cast<size_t>(kPoolRows * kTableLd), -1);
  for (int64_t r = 0; r < kPoolRows; ++r)
    for (int64_t p = 0; p * kPageSize < kW; ++p) {
      const int32_t page = static_cast<int32_t>(rng() % kPages);
      for (int64_t t = p * kPageSize; t < std::min(kW, (p + 1) * kPageSize); ++t)
        req_to_token[r * kTableLd + t] = static_cast<int32_t>(page * kPageSize + t % kPageSize);
    }
  auto pool_dev = to_backend(dev, pool);
  auto table_dev = to_backend(dev, req_to_token);

  // Pre-generated input sets with their reference results and hashes.
  const MetadataConfig cfg{mode, kBs, kN, kTopk, kPageSize};
  std::vector<Expected> sets;
  sets.reserve(kSets);
  std::vector<int32_t> all_seq, all_rpi;
  std::vector<unsigned long long> all_hash;
  for (int s = 0; s < kSets; ++s) {
    sets.emplace_back(rows);
    Expected& e = sets.back();
    random_inputs(rng, s, e.seq, e.rpi);
    MetadataInputs in;
    in.seq_lens = e.seq.data();
    in.req_pool_indices = e.rpi.data();
    in.req_to_token = req_to_token.data();
    in.req_to_token_rows = kPoolRows;
    in.req_to_token_cols = kW;
    in.req_to_token_ld = kTableLd;
    const MetadataBuffers* host = e.dests.expected();
    reference::build_metadata(cfg, in, host, 2);
    e.out_k.assign(static_cast<size_t>(capacity * 128), 0);
    e.out_s.assign(static_cast<size_t>(capacity), 0.0f);
    reference::gather_k_and_s(ConstIndexCache(pool.data(), kPages), gather_batch(host[0], q), e.out_k.data(),
                              e.out_s.data());
    uint64_t h = 0;
    long_run_visit(make_view(q, host[0], host[1], e.out_k.data(), e.out_s.data()), 0, 1,
                   [&](uint64_t f, uint64_t i, uint32_t x) { h += long_run_mix(f, i, x); });
    e.hash = h;
    all_seq.insert(all_seq.end(), e.seq.begin(), e.seq.end());
    all_rpi.insert(all_rpi.end(), e.rpi.begin(), e.rpi.end());
    all_hash.push_back(h);
  }
  auto sets_seq = to_backend(dev, all_seq), sets_rpi = to_backend(dev, all_rpi), sets_hash = to_backend(dev, all_hash);

  // Captured buffers: inputs, two destination sets, gather outputs, check state.
  support::Buffer seq_dev(dev, kBs * 4), rpi_dev(dev, kBs * 4), expected_hash(dev, 8), accum(dev, 8), counters(dev, 24),
      out_k(dev, capacity * 128), out_s(dev, capacity * 4);
  const support::MetadataDests dests(exec, dest_shapes(rows), kStale);
  const MetadataBuffers dev_views[2] = {dests.device(0), dests.device(1)};
  accum.fill(0);
  counters.fill(0);
  out_k.fill(kPoison);
  out_s.fill(kPoison);
  MetadataInputs in;
  in.seq_lens = seq_dev.as<int32_t>();
  in.req_pool_indices = rpi_dev.as<int32_t>();
  in.req_to_token = table_dev.as<int32_t>();
  in.req_to_token_rows = kPoolRows;
  in.req_to_token_cols = kW;
  in.req_to_token_ld = kTableLd;
  support::synchronize(dev);
  NSA_LR_CUDA(cudaStreamSynchronize(stream));

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t graph_exec = nullptr;
  NSA_LR_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  build_metadata(exec, cfg, in, dests.targets());
  gather_k_and_s(exec, ConstIndexCache(pool_dev.as<uint8_t>(), kPages), gather_batch(dev_views[0], q),
                 out_k.as<uint8_t>(), out_s.as<float>(), capacity);
  NSA_LR_CUDA(launch_long_run_check(make_view(q, dev_views[0], dev_views[1], out_k.data(), out_s.data()),
                                    accum.as<unsigned long long>(), expected_hash.as<unsigned long long>(),
                                    counters.as<unsigned long long>(), stream));
  NSA_LR_CUDA(cudaStreamEndCapture(stream, &graph));
  NSA_LR_CUDA(cudaGraphInstantiate(&graph_exec, graph, 0));

  const int64_t replays = replay_count();
  int64_t full_checks = 0, full_failures = 0;
  uint64_t pick = rng();
  const auto start = std::chrono::steady_clock::now();
  for (int64_t r = 0; r < replays; ++r) {
    pick = pick * 6364136223846793005ull + 1442695040888963407ull;  // cheap host LCG
    const int64_t s = static_cast<int64_t>((pick >> 33) % kSets);
    NSA_LR_CUDA(
        cudaMemcpyAsync(seq_dev.data(), sets_seq.as<int32_t>() + s * kBs, kBs * 4, cudaMemcpyDeviceToDevice, stream));
    NSA_LR_CUDA(
        cudaMemcpyAsync(rpi_dev.data(), sets_rpi.as<int32_t>() + s * kBs, kBs * 4, cudaMemcpyDeviceToDevice, stream));
    NSA_LR_CUDA(cudaMemcpyAsync(expected_hash.data(), sets_hash.as<unsigned long long>() + s, 8,
                                cudaMemcpyDeviceToDevice, stream));
    NSA_LR_CUDA(cudaGraphLaunch(graph_exec, stream));
    const bool sampled = r < 10 || r % 1000 == 0 || r >= replays - 10;
    if (!sampled) continue;
    NSA_LR_CUDA(cudaStreamSynchronize(stream));
    ++full_checks;
    Expected& e = sets[static_cast<size_t>(s)];
    const MetadataBuffers* want = e.dests.expected();
    const int64_t total = want[0].cu_seqlens_k[kBs];
    bool ok = true;
    auto check = [&](const support::Buffer& buf, const void* want_bytes, size_t bytes, const char* what) {
      std::vector<uint8_t> got(bytes);
      buf.download(got.data(), bytes);
      if (std::memcmp(got.data(), want_bytes, bytes) != 0) {
        ok = false;
        ADD_FAILURE() << "replay " << r << " (set " << s << "): " << what << " differs from the reference";
      }
    };
    for (int d = 0; d < 2; ++d) {
      for (int f : {support::kCacheSeqlens, support::kCuSeqlensK, support::kSeqlensExpanded, support::kNsaCacheSeqlens,
                    support::kNsaCuSeqlensK})
        check(dests.buffer(d, f), e.dests.mirror(d, f).data(), e.dests.mirror(d, f).size(), kMetadataFields[f].name);
      // Page tables: every row's columns below its request's length (the rest is stale by contract).
      const auto pt = dests.read(d, support::kPageTable1), real = dests.read(d, support::kRealPageTable);
      const int64_t pt_ld = want[d].page_table_1_ld, rt_ld = want[d].real_page_table_ld;
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t len = want[0].cache_seqlens[row / q], pages = (len + kPageSize - 1) / kPageSize;
        if (std::memcmp(pt.data() + row * pt_ld * 4, want[d].page_table_1 + row * pt_ld, len * 4) != 0) ok = false;
        if (std::memcmp(real.data() + row * rt_ld * 4, want[d].real_page_table + row * rt_ld, pages * 4) != 0)
          ok = false;
      }
    }
    check(out_k, e.out_k.data(), static_cast<size_t>(total * 128), "gathered K");
    check(out_s, e.out_s.data(), static_cast<size_t>(total * 4), "gathered scales");
    if (!ok) {
      ADD_FAILURE() << "replay " << r << " (set " << s << ") differs from the reference";
      if (++full_failures >= 3) break;
    }
  }
  NSA_LR_CUDA(cudaStreamSynchronize(stream));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  unsigned long long c[3] = {0, 0, 0};
  counters.download(c, sizeof c);
  std::printf(
      "[ long run ] mode=%s replays=%lld device_checked=%llu device_mismatches=%llu full_checks=%lld "
      "full_failures=%lld time=%.2fs\n",
      to_string(mode), static_cast<long long>(replays), c[0], c[1], static_cast<long long>(full_checks),
      static_cast<long long>(full_failures), seconds);
  EXPECT_EQ(c[0], static_cast<unsigned long long>(replays)) << "replays the device check saw";
  EXPECT_EQ(c[1], 0u) << "replays whose hash differed; first at replay " << c[2];
  EXPECT_EQ(full_failures, 0);
  NSA_LR_CUDA(cudaGraphExecDestroy(graph_exec));
  NSA_LR_CUDA(cudaGraphDestroy(graph));
  NSA_LR_CUDA(cudaStreamDestroy(stream));
}
#endif

TEST(LongRunReplay, DecodeBuildAndGather100k_cuda) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
#if defined(NSA_WITH_CUDA)
  run_long(ForwardMode::kDecode);
#endif
}

TEST(LongRunReplay, TargetVerifyBuildAndGather100k_cuda) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
#if defined(NSA_WITH_CUDA)
  run_long(ForwardMode::kTargetVerify);
#endif
}

}  // namespace
}  // namespace test
}  // namespace nsa
