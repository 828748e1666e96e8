#include "timing.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <utility>
#include <vector>

namespace nsa {
namespace support {

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(ErrorCode::kCudaError, std::string("timing: ") + what + ": " + cudaGetErrorString(err));
}

__global__ void empty_kernel() {}

// The reference launch every host and GPU figure is compared with.
void launch_empty_kernel(cudaStream s) {
  empty_kernel<<<1, 32, 0, s>>>();
  check(cudaGetLastError(), "empty kernel launch");
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

constexpr int kSamples = 7;
constexpr double kSampleTargetUs = 4000.0;  // aim for ~4 ms of GPU work per sample

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { (void)cudaStreamDestroy(s); }
};

struct Events {
  cudaEvent_t a = nullptr, b = nullptr;
  Events() {
    check(cudaEventCreate(&a), "cudaEventCreate");
    check(cudaEventCreate(&b), "cudaEventCreate");
  }
  ~Events() {
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
  }
  double elapsed_us() {
    check(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    return ms * 1000.0;
  }
};

struct Graph {
  cudaGraphExec_t exec = nullptr;
  Graph(const Launch& launch, int per_graph, cudaStream_t s) {
    cudaGraph_t g = nullptr;
    check(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    try {
      for (int i = 0; i < per_graph; ++i) launch(reinterpret_cast<cudaStream>(s));
    } catch (...) {
      (void)cudaStreamEndCapture(s, &g);
      if (g) (void)cudaGraphDestroy(g);
      throw;
    }
    check(cudaStreamEndCapture(s, &g), "cudaStreamEndCapture");
    check(cudaGraphInstantiate(&exec, g, 0), "cudaGraphInstantiate");
    (void)cudaGraphDestroy(g);
  }
  ~Graph() {
    if (exec) (void)cudaGraphExecDestroy(exec);
  }
};

// Cold-L2 mode: writes a buffer of twice the current device's L2 (allocated
// on first use, one per device, kept until exit), evicting every line an
// earlier call left there.
// The timing functions call it before any stream capture begins: a
// cudaMalloc is not allowed while a stream is capturing.
std::pair<void*, size_t>& flush_buffer() {
  static std::vector<std::pair<void*, size_t>> buffers;  // by device
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  if (buffers.size() <= static_cast<size_t>(device)) buffers.resize(device + 1, {nullptr, 0});
  auto& [buffer, bytes] = buffers[device];
  if (buffer == nullptr) {
    int l2 = 0;
    check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute(L2 size)");
    bytes = 2 * static_cast<size_t>(std::max(l2, 1 << 20));
    check(cudaMalloc(&buffer, bytes), "cudaMalloc(L2 flush buffer)");
  }
  return buffers[device];
}

void flush_l2(cudaStream s) {
  const auto& [buffer, bytes] = flush_buffer();
  check(cudaMemsetAsync(buffer, 0x3c, bytes, reinterpret_cast<cudaStream_t>(s)), "cudaMemsetAsync(L2 flush)");
}

// `launch` preceded by an L2 flush; the flush alone is timed the same way and subtracted.
Launch with_flush(const Launch& launch) {
  return [launch](cudaStream s) {
    flush_l2(s);
    launch(s);
  };
}

double graph_time_warm_us(const Launch& launch, int per_graph);
EagerTiming eager_time_warm(const Launch& launch, int iters);

}  // namespace

double graph_time_us(const Launch& launch, int per_graph) {
  if (l2_mode() == L2Mode::kWarm) return graph_time_warm_us(launch, per_graph);
  flush_buffer();  // allocated now, not inside the capture
  return std::max(graph_time_warm_us(with_flush(launch), per_graph) - graph_time_warm_us(flush_l2, per_graph), 0.0);
}

EagerTiming eager_time(const Launch& launch, int iters) {
  EagerTiming t = eager_time_warm(launch, iters);
  if (l2_mode() == L2Mode::kCold) {
    flush_buffer();
    t.gpu_us =
        std::max(eager_time_warm(with_flush(launch), iters).gpu_us - eager_time_warm(flush_l2, iters).gpu_us, 0.0);
  }
  return t;
}

namespace {

double graph_time_warm_us(const Launch& launch, int per_graph) {
  Stream stream;
  Graph graph(launch, per_graph, stream.s);
  Events ev;
  // Warm up and estimate, then size each sample to ~kSampleTargetUs.
  check(cudaGraphLaunch(graph.exec, stream.s), "cudaGraphLaunch");
  check(cudaEventRecord(ev.a, stream.s), "cudaEventRecord");
  check(cudaGraphLaunch(graph.exec, stream.s), "cudaGraphLaunch");
  check(cudaEventRecord(ev.b, stream.s), "cudaEventRecord");
  const double once = std::max(ev.elapsed_us(), 1.0);
  const int replays = static_cast<int>(std::clamp(kSampleTargetUs / once, 2.0, 2000.0));
  std::vector<double> samples;
  for (int s = 0; s < kSamples; ++s) {
    check(cudaEventRecord(ev.a, stream.s), "cudaEventRecord");
    for (int r = 0; r < replays; ++r) check(cudaGraphLaunch(graph.exec, stream.s), "cudaGraphLaunch");
    check(cudaEventRecord(ev.b, stream.s), "cudaEventRecord");
    samples.push_back(ev.elapsed_us() / (static_cast<double>(replays) * per_graph));
  }
  check(cudaGetLastError(), "graph replay");
  return median(samples);
}

EagerTiming eager_time_warm(const Launch& launch, int iters) {
  Stream stream;
  Events ev;
  const auto s = reinterpret_cast<cudaStream>(stream.s);
  for (int i = 0; i < 10; ++i) launch(s);  // warm-up
  check(cudaStreamSynchronize(stream.s), "cudaStreamSynchronize");
  std::vector<double> host, gpu;
  for (int k = 0; k < kSamples; ++k) {
    check(cudaEventRecord(ev.a, stream.s), "cudaEventRecord");
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) launch(s);
    const auto t1 = std::chrono::steady_clock::now();
    check(cudaEventRecord(ev.b, stream.s), "cudaEventRecord");
    gpu.push_back(ev.elapsed_us() / iters);
    host.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / iters);
  }
  check(cudaGetLastError(), "eager launches");
  return {median(host), median(gpu)};
}

}  // namespace

PairedHostTiming paired_host_time(const Launch& launch, int iters) {
  Stream stream;
  const auto s = reinterpret_cast<cudaStream>(stream.s);
  const Launch empty = launch_empty_kernel;
  auto host_us = [&](const Launch& f) {
    check(cudaStreamSynchronize(stream.s), "cudaStreamSynchronize");  // every sample starts from an idle stream
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) f(s);
    const auto t1 = std::chrono::steady_clock::now();
    return std::chrono::duration<double, std::micro>(t1 - t0).count() / iters;
  };
  for (int i = 0; i < 10; ++i) {  // warm-up
    launch(s);
    empty(s);
  }
  std::vector<double> op, base;
  for (int k = 0; k < 2 * kSamples + 1; ++k) {
    op.push_back(host_us(launch));
    base.push_back(host_us(empty));
  }
  check(cudaStreamSynchronize(stream.s), "cudaStreamSynchronize");
  return {median(op), median(base)};
}

double copy_time_us(size_t bytes, int per_graph) {
  void *src = nullptr, *dst = nullptr;
  check(cudaMalloc(&src, std::max<size_t>(bytes, 16)), "cudaMalloc");
  check(cudaMalloc(&dst, std::max<size_t>(bytes, 16)), "cudaMalloc");
  check(cudaMemset(src, 0x5a, std::max<size_t>(bytes, 16)), "cudaMemset");
  double us = 0;
  try {
    us = graph_time_us(
        [&](cudaStream s) { check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s), "cudaMemcpyAsync"); },
        per_graph);
  } catch (...) {
    (void)cudaFree(src);
    (void)cudaFree(dst);
    throw;
  }
  check(cudaFree(src), "cudaFree");
  check(cudaFree(dst), "cudaFree");
  return us;
}

double copy_time_cold_us(size_t bytes) {
  bytes = std::max<size_t>(bytes, 16);
  int device = 0, l2 = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), "cudaDeviceGetAttribute(L2 size)");
  // A call's pair is touched again `pairs` calls later, after the other
  // pairs' 2 * bytes * (pairs - 1) have passed through the L2: at least 3x
  // its size (at most 4096 pairs: tiny copies are latency, not bytes). Past
  // 4x the L2 a copy cannot hit it anyway.
  const size_t l2_bytes = static_cast<size_t>(std::max(l2, 1 << 20));
  const size_t wanted = (3 * l2_bytes + 2 * bytes - 1) / (2 * bytes) + 1;
  const size_t pairs = bytes >= 4 * l2_bytes ? 1 : std::clamp<size_t>(wanted, 2, 4096);
  std::vector<void*> buffers;
  auto free_all = [&] {
    for (void* p : buffers) (void)cudaFree(p);
  };
  double us = 0;
  try {
    for (size_t i = 0; i < 2 * pairs; ++i) {
      void* p = nullptr;
      check(cudaMalloc(&p, bytes), "cudaMalloc");
      buffers.push_back(p);
      check(cudaMemset(p, 0x5a, bytes), "cudaMemset");
    }
    size_t call = 0;
    const int per_graph = static_cast<int>(std::max<size_t>(pairs, 20) / pairs * pairs);
    us = graph_time_warm_us(
        [&](cudaStream s) {
          const size_t k = call++ % pairs;
          check(cudaMemcpyAsync(buffers[2 * k + 1], buffers[2 * k], bytes, cudaMemcpyDeviceToDevice,
                                reinterpret_cast<cudaStream_t>(s)),
                "cudaMemcpyAsync");
        },
        per_graph);
  } catch (...) {
    free_all();
    throw;
  }
  free_all();
  return us;
}

DeviceLimits measure_device_limits() {
  DeviceLimits lim;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  lim.device = prop.name;
  lim.sm_count = prop.multiProcessorCount;
  const size_t big = size_t{1} << 30;  // 1 GiB each way: far beyond L2
  lim.copy_gbps = 2.0 * static_cast<double>(big) / (copy_time_us(big, 2) * 1e3);
  const Launch empty = launch_empty_kernel;
  // The launch limits do not depend on L2: measured warm in either mode.
  lim.empty_kernel_graph_us = graph_time_warm_us(empty, 100);
  const EagerTiming eager = eager_time_warm(empty, 1000);
  lim.empty_kernel_eager_us = eager.gpu_us;
  lim.empty_launch_host_us = eager.host_us;
  return lim;
}

}  // namespace support
}  // namespace nsa
