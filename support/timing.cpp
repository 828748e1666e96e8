// Host-side part of the timing harness (available in CPU-only builds).
#include <algorithm>
#include <chrono>
#include <vector>

#include "timing.h"

namespace nsa {
namespace support {

double cpu_time_us(const std::function<void()>& fn, int min_iters) {
  fn();  // warm-up
  std::vector<double> samples;
  for (int s = 0; s < 5; ++s) {
    int iters = 0;
    const auto t0 = std::chrono::steady_clock::now();
    auto t1 = t0;
    do {
      fn();
      ++iters;
      t1 = std::chrono::steady_clock::now();
    } while (iters < min_iters || std::chrono::duration<double>(t1 - t0).count() < 0.02);
    samples.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / iters);
  }
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

}  // namespace support
}  // namespace nsa
