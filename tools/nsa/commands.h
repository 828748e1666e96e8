// The subcommands of `nsa` and their options. main.cpp parses the command
// line (CLI11) into these structs; each run_* returns the process exit code.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace nsa {
namespace cli {

// Exit codes of every subcommand.
constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;  // runtime failure: a FAIL, a mismatch, a CUDA error
constexpr int kExitUsage = 2;    // bad arguments

// Thrown for argument combinations CLI11 cannot check by itself; main maps it to exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct BenchOptions {
  std::string scenario = "decode";  // decode | prefill
  std::string device = "auto";      // auto | cpu | cuda
  // Sizes; -1 = the scenario default (scaled down on the CPU backend).
  int64_t batch = -1;
  int64_t context = -1;
  int64_t layers = -1;
  int64_t draft_steps = 3;
  int64_t draft_tokens = 4;
  int iters = 200;  // eager calls per host-time sample (CUDA)
  int cpu_threads = 0;
  uint64_t seed = 20250101;
  std::string json_path;
  std::string plot_path;
  std::string l2 = "warm";  // warm | cold: L2 state of the GPU timings (support/timing.h)
  bool progress = true;
};

struct SelftestOptions {
  double seconds = 3.0;        // total time budget over all ops and backends
  std::string device = "all";  // all | cpu | cuda
  uint64_t seed = 0;           // 0 = random (printed)
};

int run_info();
int run_selftest(const SelftestOptions& options);
int run_bench(const BenchOptions& options);

}  // namespace cli
}  // namespace nsa
