// The CPU backend's worker pool (src/cpu/parallel.h): every index is visited
// exactly once for any size and thread count, exceptions reach the caller,
// and concurrent or nested callers (which run inline) get the same results.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cpu/parallel.h"

namespace nsa {
namespace cpu {
namespace {

constexpr int64_t kBig = int64_t{1} << 30;  // work_bytes large enough to use every thread

void expect_each_index_once(int64_t n, int threads) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  parallel_for(n, threads, kBig, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "n " << n << " i " << i;
}

TEST(Parallel, AvailableCpusIsPositiveAndBounded) {
  EXPECT_GE(available_cpus(), 1);
  EXPECT_LE(resolve_threads(0), 64);
  EXPECT_EQ(resolve_threads(3), 3);
}

TEST(Parallel, EachIndexOnceForAnySizeAndThreadCount) {
  for (int threads : {0, 1, 2, 3, 7, 64})
    for (int64_t n : {1, 2, 3, 63, 64, 65, 1000, 65537}) expect_each_index_once(n, threads);
}

TEST(Parallel, SmallJobsRunInline) {
  const auto caller = std::this_thread::get_id();
  bool inline_only = true;
  parallel_for(1000, 8, 100,
               [&](int64_t, int64_t) { inline_only = inline_only && std::this_thread::get_id() == caller; });
  EXPECT_TRUE(inline_only);
}

TEST(Parallel, ExceptionsReachTheCaller) {
  EXPECT_THROW(parallel_for(100, 4, kBig,
                            [](int64_t b, int64_t) {
                              if (b > 0) throw std::runtime_error("chunk failed");
                            }),
               std::runtime_error);
  expect_each_index_once(1000, 4);  // the pool still works afterwards
}

TEST(Parallel, ConcurrentAndNestedCallers) {
  std::vector<std::thread> callers;
  std::atomic<int> failures{0};
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int r = 0; r < 50; ++r) {
        std::atomic<int64_t> sum{0};
        parallel_for(257, 4, kBig, [&](int64_t b, int64_t e) {
          // A nested call while the pool is busy runs inline.
          parallel_for(e - b, 2, kBig, [&](int64_t nb, int64_t ne) { sum.fetch_add(ne - nb); });
        });
        if (sum.load() != 257) failures.fetch_add(1);
      }
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace cpu
}  // namespace nsa
