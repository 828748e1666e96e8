// parallel_for for the CPU backend: splits [0, n) into contiguous chunks over
// std::threads. Small jobs run inline, because starting threads costs tens of
// microseconds, more than copying a few hundred KiB.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace nsa {
namespace cpu {

inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(std::min(hw, 64u));
}

// fn(begin, end) is called on disjoint chunks covering [0, n). `work_bytes`
// is the job's total memory traffic; below ~1 MiB per thread it stays serial.
template <class Fn>
void parallel_for(int64_t n, int threads, int64_t work_bytes, Fn&& fn) {
  if (n <= 0) return;
  constexpr int64_t kMinBytesPerThread = int64_t{1} << 20;
  int64_t t = std::min<int64_t>({int64_t{resolve_threads(threads)}, n, std::max<int64_t>(1, work_bytes / kMinBytesPerThread)});
  if (t <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(t));
  pool.reserve(static_cast<size_t>(t - 1));
  const int64_t chunk = (n + t - 1) / t;
  auto run = [&](int64_t i) {
    try {
      const int64_t b = i * chunk, e = std::min(n, b + chunk);
      if (b < e) fn(b, e);
    } catch (...) {
      errors[static_cast<size_t>(i)] = std::current_exception();
    }
  };
  for (int64_t i = 1; i < t; ++i) pool.emplace_back(run, i);
  run(0);
  for (auto& th : pool) th.join();
  for (auto& e : errors) if (e) std::rethrow_exception(e);
}

}  // namespace cpu
}  // namespace nsa
