#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "bench_types.h"
#include "timing.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace cli {

#if defined(NSA_WITH_CUDA)
namespace {

// A path of this much GPU work per call (the decode step's indexer: tens of ms)
// gets its host time from single calls instead of eager_time's 45 back-to-back
// ones: those would cost seconds of GPU time per path, and one call already
// enqueues hundreds of launches, enough for a steady host figure.
constexpr double kHeavyPathGpuUs = 5000;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw Error(ErrorCode::kCudaError, fmt::format("nsa bench: {}: {}", what, cudaGetErrorString(e)));
}

// Host microseconds to enqueue one call on an idle stream: the median of 3 calls after a warm-up.
double single_call_host_us(const Path& path) {
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  std::vector<double> samples;
  try {
    for (int i = 0; i < 4; ++i) {
      check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      const auto t0 = std::chrono::steady_clock::now();
      path.run(reinterpret_cast<cudaStream>(stream));
      const auto t1 = std::chrono::steady_clock::now();
      if (i > 0) samples.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  } catch (...) {
    (void)cudaStreamDestroy(stream);
    throw;
  }
  check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

}  // namespace
#endif

PathTiming time_path(Backend backend, const Path& path, int per_graph, int iters) {
  PathTiming t;
  if (backend == Backend::kCpu) {
    t.gpu_us = t.host_us = support::cpu_time_us([&] { path.run(nullptr); }, std::max(1, std::min(iters, 3)));
    return t;
  }
#if defined(NSA_WITH_CUDA)
  t.gpu_us = support::graph_time_us(path.run, per_graph);
  if (t.gpu_us >= kHeavyPathGpuUs) {
    t.host_us = single_call_host_us(path);
    return t;
  }
  // Host time: keep the eager queue short (at most ~2000 enqueued ops per sample)
  // so the host does not stall on a full launch queue and report GPU time instead.
  const int64_t per_call = std::max<int64_t>(path.launches, 1);
  const int eager_iters = static_cast<int>(std::min<int64_t>(iters, std::max<int64_t>(5, 2000 / per_call)));
  t.host_us = support::eager_time(path.run, eager_iters).host_us;
#else
  (void)per_graph;
  throw Error(ErrorCode::kUnsupported, "this build has no CUDA backend");
#endif
  return t;
}

void expect_equal_bytes(const std::string& what, const void* ours, const void* baseline, size_t bytes) {
  const auto* a = static_cast<const uint8_t*>(ours);
  const auto* b = static_cast<const uint8_t*>(baseline);
  for (size_t i = 0; i < bytes; ++i) {
    if (a[i] != b[i])
      throw VerificationError(
          fmt::format("verification failed: {}: first differing byte at {} of {} (0x{:02x} vs baseline 0x{:02x})", what,
                      i, bytes, a[i], b[i]));
  }
}

}  // namespace cli
}  // namespace nsa
