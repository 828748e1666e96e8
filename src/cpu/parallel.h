// parallel_for for the CPU backend: splits [0, n) into contiguous chunks run
// on a process-wide pool of worker threads, started once (at the first call
// that needs them) and sized to the CPUs this process may use: its affinity
// mask (taskset, cpusets) and its cgroup CPU quota (container limits), not the
// machine's core count. Small jobs run inline: waking workers costs
// microseconds, more than copying a few hundred KiB.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <vector>

namespace nsa {
namespace cpu {

// CPUs this process may run on: the affinity mask, capped by the cgroup (v2 or
// v1) CPU quota rounded up; at least 1.
int available_cpus();

// Threads a job may use: `requested` when > 0, else available_cpus(); at most 64.
inline int resolve_threads(int requested) { return std::min(requested > 0 ? requested : available_cpus(), 64); }

// Runs task(i) for every i in [0, tasks) on the calling thread and up to
// tasks - 1 pool workers, and returns when all are done. A call made while the
// pool is busy (another thread's job, or a nested call) runs its tasks inline.
void run_tasks(int64_t tasks, const std::function<void(int64_t)>& task);

// fn(begin, end) is called on disjoint chunks covering [0, n). `work_bytes`
// is the job's total memory traffic; below ~1 MiB per thread it stays serial.
// An exception thrown by fn is rethrown here (the first one, by chunk order).
template <class Fn>
void parallel_for(int64_t n, int threads, int64_t work_bytes, Fn&& fn) {
  if (n <= 0) return;
  constexpr int64_t kMinBytesPerThread = int64_t{1} << 20;
  const int64_t t =
      std::min<int64_t>({int64_t{resolve_threads(threads)}, n, std::max<int64_t>(1, work_bytes / kMinBytesPerThread)});
  if (t <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<size_t>(t));
  const int64_t chunk = (n + t - 1) / t;
  run_tasks(t, [&](int64_t i) {
    try {
      const int64_t b = i * chunk, e = std::min(n, b + chunk);
      if (b < e) fn(b, e);
    } catch (...) {
      errors[static_cast<size_t>(i)] = std::current_exception();
    }
  });
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace cpu
}  // namespace nsa
