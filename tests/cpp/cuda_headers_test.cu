// The header-only kernels of include/nsa/cuda/ are usable from another
// translation unit than the library's own (the library includes them too):
// this file only links if every kernel in them is ODR-safe (templates or
// inline), and it runs two launchers directly. It also checks the header's
// small arithmetic helpers against plain C++ operators, and every launch shape
// of the stores against the reference.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "buffer.h"
#include "nsa/cuda/index_cache.cuh"
#include "nsa/cuda/indexer.cuh"
#include "nsa/cuda/indexer_wgmma.cuh"
#include "nsa/cuda/indexer_wgmma_persistent.cuh"
#include "nsa/cuda/metadata.cuh"
#include "nsa/cuda/topk.cuh"
#include "nsa/indexer.h"
#include "nsa/topk.h"
#include "reference/index_cache.h"
#include "test_util.h"

namespace nsa {
namespace test {
namespace {

TEST(CudaHeaders, LaunchersUsableFromAnotherTranslationUnit_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  support::Buffer pool(Backend::kCuda, 8448), out(Backend::kCuda, 8448);
  pool.fill(0x3c);
  out.fill(0x00);  // poisoned: the launcher must write the K bytes and nothing past them
  std::vector<int32_t> ids = {0};
  support::Buffer ids_dev(Backend::kCuda, 4);
  ids_dev.upload(ids);
  kernels::GatherParams<int32_t, int64_t> p{
      pool.as<uint8_t>(), ids_dev.as<int32_t>(), 1, 1, nullptr, 64, 1, out.as<uint8_t>(), nullptr};
  ASSERT_EQ((kernels::invoke_paged_gather<kernels::LengthForm::kHost, true, false>(p, 1, 1, nullptr)), cudaSuccess);
  kernels::CopyParams cp{};
  ASSERT_EQ(kernels::invoke_copy_metadata(cp, 1, nullptr), cudaSuccess);  // no jobs: no launch
  support::synchronize(Backend::kCuda);
  const auto bytes = out.to_host();
  for (int i = 0; i < 8448; ++i) ASSERT_EQ(bytes[i], i < 8192 ? 0x3c : 0x00) << i;
}

// Every store launch shape that bench/index_cache_bench --store-sweep times,
// through the launchers the library uses (choose_store_launch picks one of
// them), bit-exact against the reference: a change of the pick needs no new
// test. num_sms = 1 makes each CTA walk many grid-stride iterations; 132 gives
// grids capped by the work instead of the wave. K rows with NaN and Inf
// planted, 16-byte aligned rows and unaligned ones (element loads).
template <class Shape>
void expect_store_shape_matches_reference(std::mt19937_64& rng) {
  SCOPED_TRACE(::testing::Message() << Shape::kLanes << "x" << Shape::kUnroll << "/" << Shape::kThreads
                                    << (Shape::kNanFastPath ? "" : " nanfix"));
  const int64_t n = 3001, pages = n / 32 + 3;
  const uint16_t specials[] = {0x7fc0, 0xffc0, 0x7f81, 0x7f80, 0xff80};  // bf16 +-NaN, sNaN, +-Inf
  std::vector<int64_t> slots(static_cast<size_t>(pages * 64));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(static_cast<size_t>(n));
  for (int64_t t = 5; t < n; t += 11) slots[static_cast<size_t>(t)] = -1;  // padding
  support::Buffer slots_dev = to_backend(Backend::kCuda, slots);
  for (int64_t ld : {128, 131}) {
    auto k = random_bf16(rng, n, ld);
    for (int64_t t = 0; t < n; t += 5) k[static_cast<size_t>(t * ld + (t * 7) % 128)] = specials[(t / 5) % 5];
    const auto k8 = random_bytes(rng, static_cast<size_t>(n * ld));
    std::vector<float> scale(static_cast<size_t>(n));
    for (auto& x : scale) x = std::uniform_real_distribution<float>(1e-7f, 10.0f)(rng);
    support::Buffer k_dev = to_backend(Backend::kCuda, k), k8_dev = to_backend(Backend::kCuda, k8),
                    scale_dev = to_backend(Backend::kCuda, scale);
    for (int num_sms : {1, 132}) {
      for (int divisor : {1, 4}) {
        SCOPED_TRACE(::testing::Message() << "ld=" << ld << " num_sms=" << num_sms << " wave/" << divisor);
        const kernels::StoreGrid grid{divisor};
        auto launch = [&](const auto& l) { l(Shape{}, grid); };
        for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kFp32Divide, ScaleMode::kUe8m0}) {
          auto pool = random_bytes(rng, static_cast<size_t>(pages * 8448));
          support::Buffer pool_dev = to_backend(Backend::kCuda, pool);
          kernels::with_quantize_store_launch<64, KDtype::kBf16>(pool_dev.as<uint8_t>(), k_dev.data(), n, ld,
                                                                 slots_dev.as<int64_t>(), mode, num_sms, nullptr, {},
                                                                 launch);
          ASSERT_EQ(cudaGetLastError(), cudaSuccess);
          reference::quantize_and_store_k({pool.data(), pages}, k.data(), n, ld, slots.data(), mode);
          NSA_EXPECT_BYTES_EQ(pool_dev.to_host(), pool);
        }
        auto pool = random_bytes(rng, static_cast<size_t>(pages * 8448));
        support::Buffer pool_dev = to_backend(Backend::kCuda, pool);
        kernels::with_store_k_and_s_launch<64>(pool_dev.as<uint8_t>(), k8_dev.as<uint8_t>(), n, ld,
                                               scale_dev.as<float>(), slots_dev.as<int64_t>(), num_sms, nullptr, {},
                                               launch);
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        reference::store_k_and_s({pool.data(), pages}, k8.data(), n, ld, scale.data(), slots.data());
        NSA_EXPECT_BYTES_EQ(pool_dev.to_host(), pool);
      }
    }
  }
}

TEST(CudaHeaders, EveryStoreShapeAndGridMatchesReference_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  auto rng = make_rng(40);
  using kernels::StoreShape;
  expect_store_shape_matches_reference<StoreShape<16, 1>>(rng);
  expect_store_shape_matches_reference<StoreShape<16, 2>>(rng);
  expect_store_shape_matches_reference<StoreShape<8, 1>>(rng);
  expect_store_shape_matches_reference<StoreShape<8, 2>>(rng);
  expect_store_shape_matches_reference<StoreShape<8, 4>>(rng);
  expect_store_shape_matches_reference<StoreShape<16, 1, 128>>(rng);
  expect_store_shape_matches_reference<StoreShape<8, 2, 128>>(rng);
  expect_store_shape_matches_reference<StoreShape<16, 1, 512>>(rng);
  expect_store_shape_matches_reference<StoreShape<8, 2, 512>>(rng);
  expect_store_shape_matches_reference<StoreShape<16, 1, 256, false>>(rng);
  expect_store_shape_matches_reference<StoreShape<8, 4, 256, false>>(rng);
}

// (divisor, numerator) pairs for kernels::FastDivisor, whose contract is
// 1 <= d < 2^31 and n < 2^31: every small divisor, powers of two and their
// neighbours, random ones; numerators at 0, around multiples of d, at the top
// of the range, and random.
std::vector<std::pair<uint32_t, uint32_t>> fast_divisor_cases() {
  constexpr uint32_t kMaxN = 0x7fffffffu;
  std::mt19937 rng(20261123);
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 300; ++d) divisors.push_back(d);
  for (int s = 1; s < 31; ++s)
    for (int64_t delta : {-1, 0, 1}) divisors.push_back(static_cast<uint32_t>((int64_t{1} << s) + delta));
  divisors.push_back(kMaxN);
  for (int i = 0; i < 200; ++i) divisors.push_back(1 + rng() % kMaxN);
  std::vector<std::pair<uint32_t, uint32_t>> cases;
  for (uint32_t d : divisors) {
    for (uint32_t n : {0u, 1u, d - 1, d, d + 1, kMaxN, kMaxN - 1, kMaxN - d + 1}) cases.push_back({d, n & kMaxN});
    for (uint32_t m : {2u, 3u, 1000u, kMaxN / d}) {
      const uint64_t base = static_cast<uint64_t>(m) * d;
      for (int64_t delta : {-1, 0, 1}) {
        const int64_t n = static_cast<int64_t>(base) + delta;
        if (n >= 0 && n <= kMaxN) cases.push_back({d, static_cast<uint32_t>(n)});
      }
    }
    for (int i = 0; i < 40; ++i) cases.push_back({d, static_cast<uint32_t>(rng() % (uint64_t{kMaxN} + 1))});
  }
  return cases;
}

TEST(FastDivisor, MatchesIntegerDivisionOnHost) {
  for (const auto& [d, n] : fast_divisor_cases())
    ASSERT_EQ(kernels::FastDivisor::make(d).div(n), n / d) << "n=" << n << " d=" << d;
}

// The launch-shape choices made on the host from shapes alone (no device
// needed for these): the wgmma logits kernel's N = 1 instance and default
// chunk, and topk's one-CTA rule for rows up to 32K wide.
// The N = 1 wgmma kernel's three-CTA instance runs from two rounds of it up.
TEST(LaunchShapes, WgmmaThreeCtaInstanceFromTwoRoundsUp) {
  const int64_t resident3 = 396;                         // 132 SMs x 3 CTAs
  EXPECT_TRUE(kernels::wg_large_grid(4096, resident3));  // 64 x 32K in 512 columns: faster with three
  EXPECT_TRUE(kernels::wg_large_grid(1024, resident3));  // 64 x 32K in 2048 columns: faster with three
  EXPECT_TRUE(kernels::wg_large_grid(792, resident3));
  EXPECT_FALSE(kernels::wg_large_grid(791, resident3));
  EXPECT_FALSE(kernels::wg_large_grid(512, resident3));  // 8 x 32K in 512 columns: slower with three
  EXPECT_FALSE(kernels::wg_large_grid(256, resident3));  // 1 x 128K in 512 columns: slower with three
}

TEST(LaunchShapes, WgmmaDefaultChunkIsLongWhereHalfAWaveRemains) {
  PagedMqaLogitsArgs a;
  const int64_t resident = 264;  // 132 SMs x 2 CTAs
  auto chunk = [&](int64_t batch, int64_t width) {
    a.batch = batch;
    a.width = width;
    return kernels::wg_default_chunk_columns(a, resident);
  };
  EXPECT_EQ(chunk(64, 32768), 1024);  // 2048 CTAs of 1024 columns
  EXPECT_EQ(chunk(8, 32768), 1024);   // 256 CTAs: >= half of 264
  EXPECT_EQ(chunk(4, 32768), 512);    // 128 CTAs: < 132
  EXPECT_EQ(chunk(1, 131072), 512);   // 128 CTAs
  EXPECT_EQ(chunk(8, 4096), 512);     // 32 CTAs
  EXPECT_EQ(chunk(33, 4096), 1024);   // 132 CTAs: exactly half
  EXPECT_EQ(chunk(1, 1), 512);
}

// (Without a device that runs clusters every row gets one CTA whatever its
// width, so this can only fail on one: the GPU check's sm_90 run.)
TEST(LaunchShapes, TopkRowsUpTo32KNeverSplit) {
  for (int64_t rows : {1, 8, 64})
    for (int64_t width : {1, 2048, 8192, 16384, 16385, 32768}) {
      EXPECT_EQ(kernels::topk_choose_cluster<float>(rows, width), 1) << rows << " x " << width;
      EXPECT_EQ(kernels::topk_choose_cluster<uint16_t>(rows, width), 1) << rows << " x " << width;
    }
}

// The other side of the boundary: where clusters run, one wider row is split.
TEST(LaunchShapes, TopkWiderFewRowsSplitWhereClustersRun_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  if (kernels::topk_cluster_capacity<float>(2) == 0)
    GTEST_SKIP() << "this device or build runs no thread-block clusters (sm_90 and later): not run";
  EXPECT_GT(kernels::topk_choose_cluster<float>(1, 32769), 1);
  EXPECT_GT(kernels::topk_choose_cluster<float>(1, 131072), 1);
}

// As build_metadata uses it: made on the host, divided on the device.
__global__ void fast_divide_kernel(const kernels::FastDivisor* d, const uint32_t* n, int count, uint32_t* out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < count) out[i] = d[i].div(n[i]);
}

TEST(FastDivisor, MatchesIntegerDivisionOnDevice_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  const auto cases = fast_divisor_cases();
  std::vector<kernels::FastDivisor> d;
  std::vector<uint32_t> n;
  for (const auto& c : cases) {
    d.push_back(kernels::FastDivisor::make(c.first));
    n.push_back(c.second);
  }
  const int count = static_cast<int>(cases.size());
  support::Buffer d_dev(Backend::kCuda, count * sizeof(kernels::FastDivisor)), n_dev(Backend::kCuda, count * 4),
      out(Backend::kCuda, count * 4);
  d_dev.upload(d);
  n_dev.upload(n);
  out.fill(0xff);
  fast_divide_kernel<<<(count + 255) / 256, 256>>>(d_dev.as<kernels::FastDivisor>(), n_dev.as<uint32_t>(), count,
                                                   out.as<uint32_t>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  support::synchronize(Backend::kCuda);
  std::vector<uint32_t> q(count);
  out.download(q.data(), count * 4);
  for (int i = 0; i < count; ++i) ASSERT_EQ(q[i], n[i] / cases[i].first) << "n=" << n[i] << " d=" << cases[i].first;
}

// As build_metadata's chunk walk uses it: made on the device (__clz for the
// shift) from a divisor known only there. Same quotients, and the same
// multiplier and shift as the host's make.
__global__ void fast_divisor_made_on_device_kernel(const uint32_t* d, const uint32_t* n, int count, uint32_t* out,
                                                   kernels::FastDivisor* made) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= count) return;
  made[i] = kernels::FastDivisor::make(d[i]);
  out[i] = made[i].div(n[i]);
}

TEST(FastDivisor, MadeOnDeviceMatchesHost_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  const auto cases = fast_divisor_cases();
  std::vector<uint32_t> d, n;
  for (const auto& c : cases) {
    d.push_back(c.first);
    n.push_back(c.second);
  }
  const int count = static_cast<int>(cases.size());
  support::Buffer d_dev(Backend::kCuda, count * 4), n_dev(Backend::kCuda, count * 4), out(Backend::kCuda, count * 4),
      made(Backend::kCuda, count * sizeof(kernels::FastDivisor));
  d_dev.upload(d);
  n_dev.upload(n);
  out.fill(0xff);
  made.fill(0xff);
  fast_divisor_made_on_device_kernel<<<(count + 255) / 256, 256>>>(d_dev.as<uint32_t>(), n_dev.as<uint32_t>(), count,
                                                                   out.as<uint32_t>(), made.as<kernels::FastDivisor>());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  support::synchronize(Backend::kCuda);
  std::vector<uint32_t> q(count);
  std::vector<kernels::FastDivisor> f(count);
  out.download(q.data(), count * 4);
  made.download(f.data(), count * sizeof(kernels::FastDivisor));
  for (int i = 0; i < count; ++i) {
    const kernels::FastDivisor host = kernels::FastDivisor::make(d[i]);
    ASSERT_EQ(q[i], n[i] / d[i]) << "n=" << n[i] << " d=" << d[i];
    ASSERT_EQ(f[i].multiplier, host.multiplier) << "d=" << d[i];
    ASSERT_EQ(f[i].shift, host.shift) << "d=" << d[i];
  }
}

// topk_transform's launcher from this translation unit: the same bytes as
// the CPU backend. The library's launch runs first (one row: a cluster of 16
// CTAs on sm_90 where the device fits one), then this unit's launcher, with
// the size chosen and forced: each unit has its own instance of the kernel
// and must prepare it itself (before the fix, the library's query was cached
// for all and this unit's 16-CTA launch failed with "cluster
// misconfiguration"). The only top-k test of this binary, so the library's
// call is the first top-k call of the process.
TEST(CudaHeaders, TopkLauncherAfterTheLibrarysOwnLaunch_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  // Wider than 32K scores: narrower rows get one CTA.
  constexpr int64_t kWidth = 40000, kK = 512;
  std::vector<float> scores(kWidth);
  std::mt19937 rng(7);
  for (auto& x : scores) x = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng);
  if (kernels::topk_cluster_capacity<float>(16) > 0)  // so that the test cannot silently stop covering clusters
    EXPECT_GT(kernels::topk_choose_cluster<float>(1, kWidth), 1) << "the library's launch must use a cluster here";
  std::vector<int32_t> lengths = {kWidth}, want(kK), got(kK);
  support::Buffer s_dev(Backend::kCuda, kWidth * 4), l_dev(Backend::kCuda, 4), o_dev(Backend::kCuda, kK * 4);
  s_dev.upload(scores);
  l_dev.upload(lengths);
  TopkArgs a;
  a.scores = scores.data();
  a.rows = 1;
  a.width = a.score_ld = kWidth;
  a.k = kK;
  a.lengths = lengths.data();
  a.out = want.data();
  a.out_ld = kK;
  a.order = TopkOrder::kAscending;
  topk_transform(Exec::cpu(), a);
  a.scores = s_dev.data();
  a.lengths = l_dev.as<int32_t>();
  a.out = o_dev.as<int32_t>();
  auto expect_written = [&](const char* what) {
    support::synchronize(Backend::kCuda);
    o_dev.download(got.data(), kK * 4);
    EXPECT_EQ(got, want) << what;
    o_dev.fill(0xff);
  };
  o_dev.fill(0xff);                 // poisoned before every run
  topk_transform(Exec::cuda(), a);  // the library's instance, prepared and cached by the library
  expect_written("library");
  ASSERT_EQ(kernels::invoke_topk_transform(a, nullptr), cudaSuccess);  // this unit's, size chosen
  expect_written("this unit, chosen size");
  for (int cluster : {16, 8, 4, 2, 1}) {
    if (cluster > 1 && kernels::topk_cluster_capacity<float>(cluster) == 0) continue;
    ASSERT_EQ(kernels::invoke_topk_transform(a, nullptr, cluster), cudaSuccess) << cluster << " CTAs per row";
    expect_written("this unit, forced size");
  }
}

// paged_mqa_logits' launchers (mma.sync, wgmma and its persistent schedule)
// from this translation unit: the library's bytes for the same kernel, named
// (fixed reduction order), -inf past the length.
TEST(CudaHeaders, PagedMqaLogitsLauncherUsableFromAnotherTranslationUnit_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  constexpr int64_t kWidth = 700, kPages = 11;
  std::mt19937 rng(6);
  std::vector<uint8_t> cache(kPages * 8448), q(64 * 128);
  for (auto& x : cache) x = static_cast<uint8_t>(std::uniform_int_distribution<int>(0, 0x6f)(rng));
  for (auto& x : q) x = static_cast<uint8_t>(std::uniform_int_distribution<int>(0, 0xef)(rng) & 0xef);
  for (int64_t p = 0; p < kPages; ++p)
    for (int64_t o = 0; o < 64; ++o) {
      const float s = 0.01f;
      std::memcpy(&cache[p * 8448 + 8192 + o * 4], &s, 4);
    }
  std::vector<float> w(64, 0.02f);
  std::vector<int32_t> lens = {650}, table(kPages);
  for (int64_t i = 0; i < kPages; ++i) table[i] = static_cast<int32_t>(kPages - 1 - i);
  support::Buffer c_dev(Backend::kCuda, cache.size()), q_dev(Backend::kCuda, q.size()), w_dev(Backend::kCuda, 256),
      l_dev(Backend::kCuda, 4), t_dev(Backend::kCuda, kPages * 4), lib(Backend::kCuda, kWidth * 4),
      hdr(Backend::kCuda, kWidth * 4);
  c_dev.upload(cache);
  q_dev.upload(q);
  w_dev.upload(w);
  l_dev.upload(lens);
  t_dev.upload(table);
  PagedMqaLogitsArgs a;
  a.q = q_dev.as<uint8_t>();
  a.weights = w_dev.as<float>();
  a.batch = 1;
  a.cache = ConstIndexCache(c_dev.as<uint8_t>(), kPages);
  a.context_lens = l_dev.as<int32_t>();
  a.page_table = t_dev.as<int32_t>();
  a.table_cols = a.table_ld = kPages;
  a.logits = lib.as<float>();
  a.width = a.logits_ld = kWidth;
  a.kernel = MqaLogitsKernel::kMmaSync;  // (kAuto picks the wgmma kernel on compute 9.0)
  paged_mqa_logits(Exec::cuda(), a);
  a.logits = hdr.as<float>();
  ASSERT_EQ(kernels::invoke_paged_mqa_logits(a, nullptr), cudaSuccess);
  support::synchronize(Backend::kCuda);
  EXPECT_EQ(hdr.to_host(), lib.to_host());
  std::vector<float> got(kWidth);
  hdr.download(got.data(), kWidth * 4);
  EXPECT_TRUE(std::isinf(got[650]) && got[650] < 0);
  EXPECT_FALSE(std::isinf(got[649]));

  // The wgmma launchers: the library's kWgmma (kWgmmaPersistent) bytes
  // where the device runs them (compute 9.0, sm_90a build),
  // cudaErrorNotSupported elsewhere.
  const cudaError_t avail = kernels::mqa_wgmma_available();
  if (avail == cudaErrorNotSupported) {
    EXPECT_EQ(kernels::invoke_paged_mqa_logits_wgmma(a, nullptr), cudaErrorNotSupported);
    EXPECT_EQ(kernels::invoke_paged_mqa_logits_wgmma_persistent(a, nullptr), cudaErrorNotSupported);
    // On compute 9.0 an sm_90a build must run it: say which image the runtime picked.
    int device = 0;
    cudaDeviceProp prop{};
    ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
    ASSERT_EQ(cudaGetDeviceProperties(&prop, device), cudaSuccess);
    cudaFuncAttributes fa{};
    ASSERT_EQ(cudaFuncGetAttributes(&fa, kernels::paged_mqa_logits_wgmma_kernel<1>), cudaSuccess);
    EXPECT_FALSE(prop.major == 9 && prop.minor == 0)
        << "compute 9.0 device, wgmma kernel image binaryVersion " << fa.binaryVersion << " ptxVersion "
        << fa.ptxVersion << " (90 and 90 expected from an sm_90a build)";
    return;
  }
  ASSERT_EQ(avail, cudaSuccess);
  a.kernel = MqaLogitsKernel::kWgmma;
  a.logits = lib.as<float>();
  paged_mqa_logits(Exec::cuda(), a);
  a.logits = hdr.as<float>();
  ASSERT_EQ(kernels::invoke_paged_mqa_logits_wgmma(a, nullptr), cudaSuccess);
  support::synchronize(Backend::kCuda);
  EXPECT_EQ(hdr.to_host(), lib.to_host());
  hdr.download(got.data(), kWidth * 4);
  EXPECT_TRUE(std::isinf(got[650]) && got[650] < 0);
  EXPECT_FALSE(std::isinf(got[649]));

  // The persistent launcher: the library's kWgmmaPersistent bytes, which are kWgmma's.
  const std::vector<uint8_t> wgmma_bytes = lib.to_host();
  lib.fill(0xff);  // poisoned: both runs below must write every column
  hdr.fill(0xff);
  a.kernel = MqaLogitsKernel::kWgmmaPersistent;
  a.logits = lib.as<float>();
  paged_mqa_logits(Exec::cuda(), a);
  a.logits = hdr.as<float>();
  ASSERT_EQ(kernels::invoke_paged_mqa_logits_wgmma_persistent(a, nullptr), cudaSuccess);
  support::synchronize(Backend::kCuda);
  EXPECT_EQ(hdr.to_host(), lib.to_host());
  EXPECT_EQ(lib.to_host(), wgmma_bytes);
}

}  // namespace
}  // namespace test
}  // namespace nsa
