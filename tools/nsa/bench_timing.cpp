#include <fmt/format.h>
#include <algorithm>
#include <cstring>

#include "bench_types.h"
#include "timing.h"

namespace nsa {
namespace cli {

PathTiming time_path(Backend backend, const Path& path, int per_graph, int iters) {
  PathTiming t;
  if (backend == Backend::kCpu) {
    t.gpu_us = t.host_us = support::cpu_time_us([&] { path.run(nullptr); }, std::max(1, std::min(iters, 3)));
    return t;
  }
#if defined(NSA_WITH_CUDA)
  t.gpu_us = support::graph_time_us(path.run, per_graph);
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
