// Timing harness shared by the benchmarks and `nsa bench`. GPU times come
// from CUDA events around CUDA-graph replays (many launches per graph, so
// launch gaps vanish) or around eager launch loops; host times from a steady
// clock around the calls (no sync inside the loop). Every figure is the
// median of several samples.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "nsa/common.h"

namespace nsa {
namespace support {

// L2 state of every GPU timing below. kWarm: calls run back to back, so a
// call's inputs may still be in L2 from the previous one (what a CUDA graph
// replaying the same small buffers sees). kCold: a >= 2x L2-sized buffer is
// written between timed calls (as NVBench does), and the GPU time of those
// writes, measured alone the same way, is subtracted. Host times are the same
// in both. The default is kWarm, or the NSA_BENCH_L2 environment variable
// ("cold"/"warm"); label every table with l2_label().
enum class L2Mode { kWarm, kCold };
void set_l2_mode(L2Mode mode);
L2Mode l2_mode();
const char* l2_label();  // "cold L2" / "warm L2"
// Parses "cold" / "warm"; false for anything else.
bool parse_l2_mode(const std::string& text, L2Mode& mode);

// The physical limits of this device, measured in the same run as the ops.
struct DeviceLimits {
  std::string device;
  int sm_count = 0;
  double copy_gbps = 0;              // large D2D cudaMemcpyAsync, bytes read + written per second
  double empty_kernel_graph_us = 0;  // GPU time per empty kernel inside a graph
  double empty_kernel_eager_us = 0;  // GPU time per eagerly launched empty kernel (events / count)
  double empty_launch_host_us = 0;   // host time of one eager <<<>>> launch of an empty kernel
};
DeviceLimits measure_device_limits();

using Launch = std::function<void(cudaStream)>;

// GPU microseconds per call of `launch` when captured `per_graph` times into
// one graph and replayed. `launch` must only enqueue work on the stream.
double graph_time_us(const Launch& launch, int per_graph = 20);

// Eager calls: host microseconds per call (enqueue cost) and GPU microseconds
// per call (events around the whole loop / iterations).
struct EagerTiming {
  double host_us = 0;
  double gpu_us = 0;
};
EagerTiming eager_time(const Launch& launch, int iters = 200);

// Host microseconds per call of `launch` and of an empty kernel launch,
// sampled alternately on the same stream (several interleaved samples each,
// medians): the two figures see the same machine state, so their ratio is
// stable even where the launch cost drifts across a run.
struct PairedHostTiming {
  double op_us = 0;
  double empty_us = 0;
};
PairedHostTiming paired_host_time(const Launch& launch, int iters = 200);

// GPU time of a plain contiguous device-to-device cudaMemcpyAsync of `bytes`,
// timed like graph_time_us (the "same bytes" copy baseline).
double copy_time_us(size_t bytes, int per_graph = 20);

// The same copy with a cold L2: the calls of one graph rotate over enough
// source / destination pairs that no call finds its bytes in the L2 (for
// sizes that fit it, copy_time_us copies out of the L2: the baseline of a
// kernel whose own calls read from HBM must not).
double copy_time_cold_us(size_t bytes);

// Wall-clock microseconds per call of a host function (median of samples).
double cpu_time_us(const std::function<void()>& fn, int min_iters = 3);

}  // namespace support
}  // namespace nsa
