// Building blocks of `nsa bench`: a scenario is a list of parts (metadata,
// per-layer store, gather), each done by several paths (the upstream-style
// baseline, optionally an intermediate path, and ours) over the same inputs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nsa/common.h"

namespace nsa {
namespace cli {

// One way of doing one part of a step. `run` enqueues the whole part on the
// stream (CUDA) or runs it (CPU; the stream is null). Every enqueued kernel or
// copy (CUDA) / library call or memcpy loop (CPU) is one launch.
struct Path {
  std::string role;   // "baseline", "fused copy", "ours": the key in JSON
  std::string label;  // what the path does, for the table
  int64_t launches = 0;
  std::function<void(cudaStream)> run;
};

struct Part {
  std::string name;
  std::string detail;
  double bytes = 0;         // essential bytes per step (read + written), the same for every path
  int per_graph = 10;       // part calls captured per CUDA graph
  std::vector<Path> paths;  // front(): the baseline, back(): ours
  // Passes of the baseline timed on their own (e.g. its logits, then its top-k):
  // rows of the table and JSON, not parts of the whole step.
  std::vector<Path> pieces;
};

// A prepared scenario: inputs and outputs allocated, paths ready to run.
class Scenario {
 public:
  virtual ~Scenario() = default;
  virtual std::vector<Part>& parts() = 0;
  // Runs every path once on poisoned outputs and compares ours (and any
  // intermediate path) with the baseline byte for byte; throws on a mismatch.
  virtual void verify() = 0;
  // Bytes per step that no implementation can avoid reading from memory (the
  // decode step: every visible cached indexer K + scale once per layer); 0: no floor.
  virtual double floor_bytes() const { return 0; }
};

struct PathTiming {
  double gpu_us = 0;   // CUDA: graph replay GPU time; CPU: wall time
  double host_us = 0;  // CUDA: eager enqueue time; CPU: wall time
};

// Times one path on the backend with the harness of support/timing.h.
PathTiming time_path(Backend backend, const Path& path, int per_graph, int iters);

// A verification failure (exit code 1).
class VerificationError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws VerificationError naming `what` and the first differing byte.
void expect_equal_bytes(const std::string& what, const void* ours, const void* baseline, size_t bytes);

}  // namespace cli
}  // namespace nsa
