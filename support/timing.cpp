// Host-side part of the timing harness (available in CPU-only builds).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "timing.h"

namespace nsa {
namespace support {

namespace {
L2Mode initial_l2_mode() {
  const char* env = std::getenv("NSA_BENCH_L2");
  L2Mode mode = L2Mode::kWarm;
  if (env != nullptr && !parse_l2_mode(env, mode))
    std::fprintf(stderr, "NSA_BENCH_L2=%s: expected 'cold' or 'warm'; timing with a warm L2\n", env);
  return mode;
}
L2Mode g_l2_mode = initial_l2_mode();
}  // namespace

void set_l2_mode(L2Mode mode) { g_l2_mode = mode; }
L2Mode l2_mode() { return g_l2_mode; }
const char* l2_label() { return g_l2_mode == L2Mode::kCold ? "cold L2" : "warm L2"; }
bool parse_l2_mode(const std::string& text, L2Mode& mode) {
  if (text == "cold") mode = L2Mode::kCold;
  else if (text == "warm") mode = L2Mode::kWarm;
  else return false;
  return true;
}

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
