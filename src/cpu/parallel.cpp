// The CPU backend's worker pool (see parallel.h).
#include "cpu/parallel.h"

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#if defined(__linux__)
#include <sched.h>
#include <unistd.h>
#endif

namespace nsa {
namespace cpu {

namespace {

// ceil(quota / period) from the cgroup files, or 0 when there is no limit.
int cgroup_cpu_limit() {
  double quota = -1, period = 0;
  std::ifstream v2("/sys/fs/cgroup/cpu.max");  // "max 100000" or "200000 100000"
  std::string q;
  if (v2 >> q >> period) {
    if (q != "max") quota = std::stod(q);
  } else {
    std::ifstream v1q("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), v1p("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    if (!(v1q >> quota && v1p >> period)) return 0;
  }
  if (quota <= 0 || period <= 0) return 0;
  return static_cast<int>(std::ceil(quota / period));
}

int count_available_cpus() {
  int cpus = 0;
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
#endif
  if (cpus <= 0) cpus = static_cast<int>(std::thread::hardware_concurrency());
  const int quota = cgroup_cpu_limit();
  if (quota > 0) cpus = std::min(cpus, quota);
  return std::max(cpus, 1);
}

// Workers sleep on a condition variable between jobs. One job at a time: the
// job's tasks are claimed through an atomic counter by the workers and the
// caller, which then waits until every claimed task has finished.
class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) std::thread([this] { work(); }).detach();  // lives as long as the process
    workers_ = workers;
  }

  // False when the pool is running another job (the caller then runs inline).
  bool try_run(int64_t tasks, const std::function<void(int64_t)>& task) {
    bool idle = false;
    if (!busy_.compare_exchange_strong(idle, true, std::memory_order_acquire)) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      tasks_ = tasks;
      next_.store(0, std::memory_order_relaxed);
      done_ = 0;
      ++generation_;
    }
    wake_.notify_all();
    const int64_t mine = claim(task);
    std::unique_lock<std::mutex> lock(mutex_);
    done_ += mine;
    // Also wait for every worker that joined to leave claim(): the next job
    // resets the counter that a straggler would otherwise read.
    finished_.wait(lock, [&] { return done_ == tasks_ && active_ == 0; });
    task_ = nullptr;
    busy_.store(false, std::memory_order_release);
    return true;
  }

  int workers() const { return workers_; }

 private:
  int64_t claim(const std::function<void(int64_t)>& task) {
    int64_t ran = 0;
    for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < tasks_;
         i = next_.fetch_add(1, std::memory_order_relaxed)) {
      task(i);
      ++ran;
    }
    return ran;
  }

  void work() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen && task_ != nullptr; });
      seen = generation_;
      const std::function<void(int64_t)>& task = *task_;
      ++active_;
      lock.unlock();
      const int64_t ran = claim(task);
      lock.lock();
      done_ += ran;
      if (--active_ == 0 && done_ == tasks_) finished_.notify_all();
    }
  }

  std::atomic<bool> busy_{false};  // a job is running (a flag, not a mutex: a nested call comes from its owner)
  std::mutex mutex_;               // guards the fields below
  std::condition_variable wake_, finished_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t tasks_ = 0;
  int64_t done_ = 0;
  int active_ = 0;  // workers inside claim() for the current job
  uint64_t generation_ = 0;
  std::atomic<int64_t> next_{0};
  int workers_ = 0;
};

// One pool per process, created on first use with available_cpus() - 1
// workers (the caller is the last thread). A child after fork() has no worker
// threads, so it makes its own pool (the parent's object is left alone).
Pool& pool() {
  static std::mutex m;
  static Pool* p = nullptr;
#if defined(__linux__)
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(m);
  if (p == nullptr || owner != getpid()) {
    p = new Pool(std::min(available_cpus(), 64) - 1);  // never deleted: detached workers use it until exit
    owner = getpid();
  }
#else
  std::lock_guard<std::mutex> lock(m);
  if (p == nullptr) p = new Pool(std::min(available_cpus(), 64) - 1);
#endif
  return *p;
}

}  // namespace

int available_cpus() {
  static const int cpus = count_available_cpus();
  return cpus;
}

void run_tasks(int64_t tasks, const std::function<void(int64_t)>& task) {
  if (tasks > 1 && pool().workers() > 0 && pool().try_run(tasks, task)) return;
  for (int64_t i = 0; i < tasks; ++i) task(i);
}

}  // namespace cpu
}  // namespace nsa
