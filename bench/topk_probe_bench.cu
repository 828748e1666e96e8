// Where topk_transform's time goes (not a test: the input to the next change
// of the kernel). On an H200 (5882a69, whose histogram used __match_any_sync),
// one CTA per row took 17.4 us for 1 x 8K and a 16-CTA cluster 18.4 us with
// 512 keys per CTA, against a 1.9 us read floor.
//
// This program compiles its own copy of the kernels of nsa/cuda/topk.cuh
// with NSA_TOPK_PROBE_MARK defined: thread 0 of every CTA records clock64()
// at each phase boundary (right after a CTA barrier) into a device buffer.
// It is built four times, once per histogram aggregation NSA_TOPK_HIST_ADD
// (topk_probe_{uniform,match,leader,plain}_bench: the library's, __match_any_sync
// groups, the first counted lane's group, none), so the same run shows what the
// aggregation costs. Each binary launches its own kernels directly
// (never the library's launcher, whose inline host code may be the
// library's copy) and checks every row's set against the library's
// topk_transform on the same inputs before timing.
//
// Per case and CTA count per row: GPU us per call as CUDA-graph replays with
// each call on its own copy of the scores (copies spanning 256 MB, or 4096
// copies of short rows: far beyond the L2, as topk_bench; no marks recorded),
// then the phases of CTA 0 in two eager calls on fresh copies: right after a
// 512 MB memset (L2 holds neither the scores nor the kernel's code) and right
// after that (code cached, scores not). Every phase ends at a CTA barrier
// but the last, "transform": thread 0's own output slots.
//
//   topk_probe_<variant>_bench [--json FILE] [--quick]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// The marks: [CTA][kMarks] clock64 values, 0 where a phase was not reached.
// The kernel's start and the marks pointer are read into registers by
// NSA_TOPK_PROBE_BEGIN, so no stamp waits for a load (a stall of warp 0
// would hold every later barrier and move the whole timeline).
constexpr int kMarks = 10;
__device__ long long* g_topk_marks = nullptr;
struct TopkProbe {
  long long* marks;
  long long start;
};
__device__ __forceinline__ TopkProbe topk_probe_begin() { return {g_topk_marks, clock64()}; }
__device__ __forceinline__ void topk_probe_mark(const TopkProbe& probe, int phase) {
  if (threadIdx.x != 0) return;
  const long long now = clock64();
  if (probe.marks == nullptr) return;
  long long* const cta = probe.marks + static_cast<int64_t>(blockIdx.x) * kMarks;
  cta[0] = probe.start;
  cta[phase] = now;
}
#define NSA_TOPK_PROBE_BEGIN() const TopkProbe topk_probe = ::topk_probe_begin()
#define NSA_TOPK_PROBE_MARK(phase) ::topk_probe_mark(topk_probe, phase)

#include "bench_main.h"
#include "buffer.h"
#include "host_data.h"
#include "nsa/cuda/topk.cuh"
#include "nsa/topk.h"
#include "timing.h"

using nsa::support::Buffer;
using json = nlohmann::json;

namespace {

#if NSA_TOPK_HIST_ADD == 1
constexpr const char* kVariant = "match: lanes sharing a bin (__match_any_sync) add together";
#elif NSA_TOPK_HIST_ADD == 2
constexpr const char* kVariant = "leader: lanes in the first counted lane's bin add together, the rest one atomic each";
#elif NSA_TOPK_HIST_ADD == 3
constexpr const char* kVariant = "plain: one shared add per key, no aggregation";
#else
constexpr const char* kVariant =
    "uniform: one atomic adds 32 when a warp's keys share a bin, else one per key (the library's)";
#endif

constexpr size_t kRotationBytes = size_t{256} << 20;
// What each mark ends (mark 0 is the kernel's start).
constexpr std::array<const char*, kMarks> kPhase = {"",      "clear",  "pass1", "cand",    "pass2",
                                                    "pass3", "counts", "slots", "compact", "transform"};

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// This binary's kernels, launched as the library's launcher would.
cudaError_t launch(const nsa::TopkArgs& a, int cluster, cudaStream_t stream) {
  using namespace nsa::kernels;
  constexpr auto kPerRow = topk_transform_kernel<float, false>;
  constexpr auto kSplit = topk_transform_kernel<float, true>;
  if (cluster == 1) {
    const cudaError_t e = allow_dynamic_shared_memory<kPerRow>(kTopkSharedBytes);
    if (e != cudaSuccess) return e;
    kPerRow<<<dim3(static_cast<unsigned>(a.rows)), kTopkThreads, kTopkSharedBytes, stream>>>(a);
    return cudaGetLastError();
  }
  if (topk_cluster_capacity_of<kSplit>(cluster) == 0) return cudaErrorInvalidValue;
  const TopkClusterLaunch config(cluster, static_cast<unsigned>(a.rows * cluster), stream);
  return cudaLaunchKernelEx(&config.config, kSplit, a);
}

struct Case {
  std::string name;
  int64_t rows;
  int64_t len;
  bool zeros99;
  std::vector<int> clusters;
};

// Phase durations of CTA 0 in microseconds at the given SM clock; a phase not
// reached is folded into the next one reached.
json phases_of(const std::vector<long long>& marks, double mhz) {
  json p = json::object();
  long long last = marks[0];
  for (int m = 1; m < kMarks; ++m) {
    if (marks[m] == 0) continue;
    p[kPhase[m]] = static_cast<double>(marks[m] - last) / mhz;
    last = marks[m];
  }
  p["total"] = static_cast<double>(last - marks[0]) / mhz;
  return p;
}

std::string phases_line(const json& p) {
  std::string s;
  for (int m = 1; m < kMarks; ++m)
    if (p.contains(kPhase[m])) s += fmt::format(" {} {:.2f}", kPhase[m], p[kPhase[m]].get<double>());
  return s;
}

json probe_case(const Case& c, std::mt19937_64& rng, double mhz, std::vector<std::string>& failures) {
  const int64_t ld = (c.len + 255) / 256 * 256, k = 2048;
  std::vector<float> host(static_cast<size_t>(c.rows * ld));
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::uniform_int_distribution<int> pct(0, 99);
  for (auto& x : host) x = c.zeros99 ? (pct(rng) == 0 ? 1.0f - u(rng) : 0.0f) : 1.0f - u(rng);
  const size_t bytes = host.size() * 4;
  const int64_t copies = std::clamp<int64_t>(static_cast<int64_t>((kRotationBytes + bytes - 1) / bytes), 4, 4096);
  Buffer scores(nsa::Backend::kCuda, copies * bytes);
  scores.upload(host);
  for (int64_t i = 1; i < copies; ++i)
    cuda_check(cudaMemcpy(scores.as<uint8_t>() + i * bytes, scores.data(), bytes, cudaMemcpyDeviceToDevice),
               "replicate scores");
  const int64_t cols = (c.len + 63) / 64;
  std::vector<int32_t> pages(static_cast<size_t>(c.rows * cols));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), rng);
  auto lengths = nsa::support::to_backend(nsa::Backend::kCuda, std::vector<int32_t>(c.rows, int32_t(c.len)));
  auto table = nsa::support::to_backend(nsa::Backend::kCuda, pages);
  Buffer out(nsa::Backend::kCuda, c.rows * k * 4), raw(nsa::Backend::kCuda, c.rows * k * 4);
  Buffer lib_out(nsa::Backend::kCuda, c.rows * k * 4), lib_raw(nsa::Backend::kCuda, c.rows * k * 4);

  nsa::TopkArgs a;
  a.scores = scores.data();
  a.rows = c.rows;
  a.width = c.len;
  a.score_ld = ld;
  a.k = k;
  a.lengths = nsa::Indices(lengths.as<int32_t>());
  a.transform = nsa::TopkTransform::kPaged64;
  a.table = nsa::Indices(table.as<int32_t>());
  a.table_rows = c.rows;
  a.table_cols = cols;
  a.table_ld = cols;
  a.out = lib_out.as<int32_t>();
  a.out_ld = k;
  a.out_raw = lib_raw.as<int32_t>();
  a.out_raw_ld = k;
  nsa::topk_transform(nsa::Exec::cuda(nullptr), a);
  const auto want = nsa::support::from_backend<int32_t>(lib_raw, c.rows * k);
  const auto want_out = nsa::support::from_backend<int32_t>(lib_out, c.rows * k);
  a.out = out.as<int32_t>();
  a.out_raw = raw.as<int32_t>();

  const int max_ctas = static_cast<int>(c.rows) * *std::max_element(c.clusters.begin(), c.clusters.end());
  Buffer marks(nsa::Backend::kCuda, static_cast<size_t>(max_ctas) * kMarks * 8);
  Buffer flush(nsa::Backend::kCuda, size_t{512} << 20);
  // The marks are recorded in the eager calls only: the timed replays run the
  // kernel as the library does (the hook's pointer is null: no stores).
  auto record_marks = [&](bool on) {
    long long* p = on ? marks.as<long long>() : nullptr;
    cuda_check(cudaMemcpyToSymbol(g_topk_marks, &p, sizeof(p)), "set the marks buffer");
  };

  json result = {{"case", c.name}, {"rows", c.rows}, {"len", c.len}, {"by_cluster", json::object()}};
  for (int cluster : c.clusters) {
    const std::string label = fmt::format("{} CTAs", cluster);
    auto on_copy = [&](int64_t i) {
      nsa::TopkArgs x = a;
      x.scores = scores.as<uint8_t>() + (i % copies) * bytes;
      return x;
    };
    // Same sets as the library's, on every row (order may differ only where
    // the library's own order is unspecified: compare sorted).
    const cudaError_t launched = launch(a, cluster, nullptr);
    if (launched != cudaSuccess) {
      (void)cudaGetLastError();
      failures.push_back(fmt::format("{}, {}: launch failed: {}", c.name, label, cudaGetErrorString(launched)));
      continue;
    }
    cuda_check(cudaDeviceSynchronize(), "probe kernel");
    auto got = nsa::support::from_backend<int32_t>(raw, c.rows * k);
    auto got_out = nsa::support::from_backend<int32_t>(out, c.rows * k);
    auto exp = want, exp_out = want_out;
    for (int64_t r = 0; r < c.rows; ++r) {
      for (auto* v : {&got, &exp, &got_out, &exp_out}) std::sort(v->begin() + r * k, v->begin() + (r + 1) * k);
    }
    if (got != exp || got_out != exp_out) {
      failures.push_back(fmt::format("{}, {}: not the library's sets", c.name, label));
      continue;
    }

    // One replay calls every copy once (a graph replays the pointers it captured).
    record_marks(false);
    const int per_graph = static_cast<int>(std::max<int64_t>(copies, 20) / copies * copies);
    int64_t call = 0;
    const double us = nsa::support::graph_time_us(
        [&](nsa::cudaStream s) {
          cuda_check(launch(on_copy(call++), cluster, static_cast<cudaStream_t>(s)), "probe launch");
        },
        per_graph);
    // Two eager calls, each on a copy not read since a memset that evicts
    // the L2 (scores and code): the first right after it, the second after
    // the first (its code cached, its scores not).
    record_marks(true);
    json eager = json::object();
    for (const char* when : {"cold", "code_warm"}) {
      if (std::string(when) == "cold") cuda_check(cudaMemset(flush.data(), int(call & 0xff), flush.bytes()), "flush");
      cuda_check(cudaMemset(marks.data(), 0, marks.bytes()), "clear marks");
      cuda_check(launch(on_copy(call++), cluster, nullptr), "probe launch");
      cuda_check(cudaDeviceSynchronize(), "probe kernel");
      const auto m = nsa::support::from_backend<long long>(marks, kMarks);
      eager[when] = phases_of(m, mhz);
    }
    result["by_cluster"][std::to_string(cluster)] = {{"graph_us", us}, {"phases_us", eager}};
    fmt::print("{:<22} {:>9} {:>9.2f}   cold {:>6.2f}:{}\n", c.name, label, us, eager["cold"]["total"].get<double>(),
               phases_line(eager["cold"]));
    fmt::print("{:<22} {:>9} {:>9}   warm {:>6.2f}:{}\n", "", "", "", eager["code_warm"]["total"].get<double>(),
               phases_line(eager["code_warm"]));
  }
  record_marks(false);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  return nsa::bench::run("topk_probe_bench", argc, argv,
                         [](bool quick, const nsa::support::DeviceLimits&, json& report) {
                           int device = 0, khz = 0;
                           cuda_check(cudaGetDevice(&device), "cudaGetDevice");
                           cuda_check(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, device), "clock rate");
                           const double mhz = khz / 1000.0;
                           fmt::print("topk_transform phases (fp32, K=2048, paged-64 transform); histogram: {}\n",
                                      kVariant);
                           fmt::print(
                               "graph us: GPU us per call, CUDA-graph replays, each call on its own copy of the "
                               "scores\ncold / warm: one eager call's phases in CTA 0 (us at the {:.0f} MHz peak "
                               "clock), after a 512 MB memset / right after that call\n\n",
                               mhz);
                           fmt::print("{:<22} {:>9} {:>9}\n", "case", "per row", "graph us");
                           std::vector<Case> cases = {
                               {"1 x 8K", 1, 8192, false, {1, 16}},
                               {"1 x 32K", 1, 32768, false, {1, 16}},
                               {"1 x 128K", 1, 131072, false, {1, 16}},
                               {"64 x 32K", 64, 32768, false, {1, 2}},
                               // Slices past the cache (the bitmap route, the row read twice).
                               {"64 x 128K", 64, 131072, false, {2}},
                               {"256 x 128K", 256, 131072, false, {1}},
                               {"8 x 32K, 99% zeros", 8, 32768, true, {1, 8}},
                               {"64 x 2048 (identity)", 64, 2048, false, {1}},
                           };
                           if (quick) cases.resize(1);
                           std::mt19937_64 rng(20251204);
                           std::vector<std::string> failures;
                           report["histogram"] = kVariant;
                           report["sm_clock_mhz"] = mhz;
                           for (const Case& c : cases) report["results"].push_back(probe_case(c, rng, mhz, failures));
                           report["failures"] = failures;
                         });
}
