// nsa bench: runs a scenario on one backend, verifies that our outputs equal
// the baseline's, times every path of every part and the whole step, and
// prints a table next to this machine's measured limits. Optional JSON and
// an SVG sweep over batch sizes.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "buffer.h"
#include "commands.h"
#include "nsa/version.h"
#include "output_file.h"
#include "progress.h"
#include "scenarios.h"
#include "svg_plot.h"
#include "timing.h"

namespace nsa {
namespace cli {
namespace {

using json = nlohmann::json;

struct Limits {
  std::string device;
  double copy_gbps = 0;
  std::string line;  // printed after the progress line is cleared
  json to_json;
};

Limits measure_limits(Backend backend) {
  Limits lim;
#if defined(NSA_WITH_CUDA)
  if (backend == Backend::kCuda) {
    const auto d = support::measure_device_limits();
    lim.device = fmt::format("{} ({} SMs)", d.device, d.sm_count);
    lim.copy_gbps = d.copy_gbps;
    lim.to_json = {{"device", d.device},
                   {"sm_count", d.sm_count},
                   {"copy_gbps", d.copy_gbps},
                   {"empty_kernel_graph_us", d.empty_kernel_graph_us},
                   {"empty_kernel_eager_us", d.empty_kernel_eager_us},
                   {"empty_launch_host_us", d.empty_launch_host_us}};
    lim.line = fmt::format(
        "limits: device-to-device copy {:.0f} GB/s (read + write); empty kernel {:.2f} us GPU in a graph, "
        "{:.2f} us GPU eager, {:.2f} us host per launch\n",
        d.copy_gbps, d.empty_kernel_graph_us, d.empty_kernel_eager_us, d.empty_launch_host_us);
    return lim;
  }
#endif
  (void)backend;  // CPU-only build: always the CPU limits
  // CPU: one-thread memcpy bandwidth of a buffer well beyond the caches.
  const size_t bytes = size_t{64} << 20;
  std::vector<uint8_t> a(bytes, 0x5a), b(bytes, 0);
  const double us = support::cpu_time_us([&] { std::copy(a.begin(), a.end(), b.begin()); }, 2);
  lim.device = "cpu";
  lim.copy_gbps = 2.0 * static_cast<double>(bytes) / us / 1e3;
  lim.to_json = {{"device", "cpu"}, {"copy_gbps", lim.copy_gbps}, {"copy_note", "one-thread memcpy, read + write"}};
  lim.line = fmt::format("limits: memcpy {:.1f} GB/s (one thread, read + write); no launches on the CPU backend\n",
                         lim.copy_gbps);
  return lim;
}

struct Measured {
  json parts = json::array();
  PathTiming step_baseline, step_ours;
  int64_t step_launches_baseline = 0, step_launches_ours = 0;
  double metadata_gpu_speedup = 0, metadata_host_speedup = 0;
  double floor_bytes = 0, floor_us = 0;  // the scenario's unavoidable reads at the copy bandwidth
};

// The time a read of `bytes` takes at the measured copy bandwidth (bytes read + written per second).
double floor_time_us(double bytes, const Limits& lim) { return bytes / lim.copy_gbps / 1e3; }

std::string fmt_us(double us) { return us >= 1000 ? fmt::format("{:.0f}", us) : fmt::format("{:.2f}", us); }

// Prepares, verifies and times one scenario. `full`: every path of every part and the table;
// otherwise only the whole step, baseline and ours (the sweep).
Measured measure(const ScenarioConfig& cfg, const BenchOptions& o, const Limits& lim, Progress& progress, bool full) {
  const bool cuda = cfg.backend == Backend::kCuda;
  progress.step(fmt::format("preparing inputs (batch {})", cfg.batch));
  std::unique_ptr<Scenario> s = o.scenario == "prefill" ? make_prefill_scenario(cfg) : make_decode_scenario(cfg);
  progress.step("verifying ours == baseline");
  s->verify();

  Measured m;
  auto& parts = s->parts();
  Path step_base{"baseline", "whole step", 0, nullptr}, step_ours{"ours", "whole step", 0, nullptr};
  double step_bytes = 0;
  for (auto& p : parts) {
    step_base.launches += p.paths.front().launches;
    step_ours.launches += p.paths.back().launches;
    step_bytes += p.bytes;
  }
  step_base.run = [&parts](cudaStream st) {
    for (auto& p : parts) p.paths.front().run(st);
  };
  step_ours.run = [&parts](cudaStream st) {
    for (auto& p : parts) p.paths.back().run(st);
  };

  struct Row {
    std::string part, label;
    int64_t launches;
    PathTiming t;
    double bytes;
    PathTiming base;
    bool piece = false;  // a pass of the baseline: no speed-up
  };
  auto path_json = [&](const Path& path, const PathTiming& t, double bytes, const PathTiming& base, bool piece) {
    const double gbps = bytes / t.gpu_us / 1e3;
    json j{{"role", path.role},
           {"label", path.label},
           {"launches", path.launches},
           {"gpu_us", t.gpu_us},
           {"host_us", t.host_us},
           {"gbps", gbps},
           {"fraction_of_copy_bw", gbps / lim.copy_gbps}};
    if (!piece) {
      j["speedup_gpu"] = base.gpu_us / t.gpu_us;
      j["speedup_host"] = base.host_us / t.host_us;
    }
    return j;
  };
  std::vector<Row> rows;
  if (full) {
    for (auto& p : parts) {
      json pj{{"name", p.name}, {"detail", p.detail}, {"bytes", p.bytes}, {"paths", json::array()}};
      PathTiming base{};
      for (auto& path : p.paths) {
        progress.step(fmt::format("timing {}: {}", p.name, path.role));
        const PathTiming t = time_path(cfg.backend, path, p.per_graph, o.iters);
        if (&path == &p.paths.front()) base = t;
        rows.push_back({p.name, fmt::format("{}: {}", path.role, path.label), path.launches, t, p.bytes, base});
        pj["paths"].push_back(path_json(path, t, p.bytes, base, false));
        if (p.name == "metadata" && path.role == "ours") {
          m.metadata_gpu_speedup = base.gpu_us / t.gpu_us;
          m.metadata_host_speedup = base.host_us / t.host_us;
        }
        // The baseline's passes, right after it (GB/s over the part's essential bytes).
        if (&path != &p.paths.front() || p.pieces.empty()) continue;
        pj["pieces"] = json::array();
        for (auto& piece : p.pieces) {
          progress.step(fmt::format("timing {}: {}", p.name, piece.role));
          const PathTiming pt = time_path(cfg.backend, piece, p.per_graph, o.iters);
          rows.push_back(
              {p.name, fmt::format("  {}: {}", piece.role, piece.label), piece.launches, pt, p.bytes, base, true});
          pj["pieces"].push_back(path_json(piece, pt, p.bytes, base, true));
        }
      }
      m.parts.push_back(pj);
    }
  }
  progress.step("timing whole step: baseline");
  m.step_baseline = time_path(cfg.backend, step_base, 1, o.iters);
  progress.step("timing whole step: ours");
  m.step_ours = time_path(cfg.backend, step_ours, 1, o.iters);
  m.step_launches_baseline = step_base.launches;
  m.step_launches_ours = step_ours.launches;
  m.floor_bytes = s->floor_bytes();
  m.floor_us = floor_time_us(m.floor_bytes, lim);
  if (!full) return m;

  rows.push_back({"step", "baseline: all parts", step_base.launches, m.step_baseline, step_bytes, m.step_baseline});
  rows.push_back({"step", "ours: all parts", step_ours.launches, m.step_ours, step_bytes, m.step_baseline});
  progress.done();

  // The table.
  fmt::print("\n{:<16} {:<62} {:>10} {:>10} {:>8} {:>9} {:>8} {:>8} {:>8}\n", "part", "path",
             cuda ? "GPU us" : "wall us", cuda ? "host us" : "", "launches", "GB/s", "of copy",
             cuda ? "GPU x" : "speed-up", cuda ? "host x" : "");
  std::string last;
  for (const auto& r : rows) {
    const double gbps = r.bytes / r.t.gpu_us / 1e3;
    const std::string gpu_x = r.piece ? "-" : fmt::format("{:.2f}x", r.base.gpu_us / r.t.gpu_us);
    const std::string host_x = !cuda ? "" : r.piece ? "-" : fmt::format("{:.2f}x", r.base.host_us / r.t.host_us);
    fmt::print("{:<16} {:<62} {:>10} {:>10} {:>8} {:>9.1f} {:>7.1f}% {:>8} {:>8}\n", r.part == last ? "" : r.part,
               r.label.substr(0, 62), fmt_us(r.t.gpu_us), cuda ? fmt_us(r.t.host_us) : "", r.launches, gbps,
               100.0 * gbps / lim.copy_gbps, gpu_x, host_x);
    last = r.part;
  }
  if (m.floor_bytes > 0)
    fmt::print("{:<16} {:<62} {:>10}\n", "floor", "indexer cache read (K + scales once per layer) at copy BW",
               fmt_us(m.floor_us));
  for (const auto& p : parts) fmt::print("  {}: {}\n", p.name, p.detail);
  return m;
}

// On the CPU backend the defaults are scaled down (an option given is always used as given):
// the decode step's indexer scores every cached token with 64 x 128 fp8 products per query row,
// about 3e9 products per second on two cores, so the full step (3.6e12 products) would take
// twenty minutes: decode runs batch 2, context 4096, 1 layer (2.4e8 products per step; 2048 < L_b
// so the top-k really selects); the prefill gather (about 1 GB of pools per step) 16 layers.
constexpr int64_t kCpuDecodeBatch = 2, kCpuDecodeContext = 4096, kCpuDecodeLayers = 1, kCpuPrefillLayers = 16;

// ", scaled down ...": the defaults this CPU run replaced, and the options giving the full sizes.
std::string scaled_note(const BenchOptions& o) {
  if (o.scenario == "prefill")
    return fmt::format(", scaled down from 61 to {} layers; --layers 61 for all", kCpuPrefillLayers);
  std::vector<std::string> from, to, full;
  auto add = [&](int64_t given, const char* name, int64_t def, int64_t cpu) {
    if (given > 0) return;
    from.push_back(fmt::format("{} {}", name, def));
    to.push_back(fmt::format("{}", cpu));
    full.push_back(fmt::format("--{} {}", name, def));
  };
  add(o.batch, "batch", 64, kCpuDecodeBatch);
  add(o.context, "context", 32768, kCpuDecodeContext);
  add(o.layers, "layers", 61, kCpuDecodeLayers);
  return fmt::format(", scaled down from {} to {}; {} for all", fmt::join(from, ", "), fmt::join(to, ", "),
                     fmt::join(full, " "));
}

ScenarioConfig make_config(const BenchOptions& o, Backend backend, bool& scaled) {
  ScenarioConfig c;
  c.backend = backend;
  c.cpu_threads = o.cpu_threads;
  c.seed = o.seed;
  c.draft_steps = o.draft_steps;
  c.draft_tokens = o.draft_tokens;
  const bool prefill = o.scenario == "prefill";
  const bool cpu = backend == Backend::kCpu;
  // Full DeepSeek-V3.2 sizes on CUDA; scaled defaults on the CPU backend (see above).
  const int64_t def_batch = prefill ? 8 : cpu ? kCpuDecodeBatch : 64;
  const int64_t def_context = prefill ? 16384 : cpu ? kCpuDecodeContext : 32768;
  const int64_t def_layers = !cpu ? 61 : prefill ? kCpuPrefillLayers : kCpuDecodeLayers;
  scaled = cpu && (o.layers < 0 || (!prefill && (o.batch < 0 || o.context < 0)));
  c.batch = o.batch > 0 ? o.batch : def_batch;
  c.context = o.context > 0 ? o.context : def_context;
  c.layers = o.layers > 0 ? o.layers : def_layers;
  return c;
}

std::vector<int64_t> sweep_batches(int64_t batch) {
  std::vector<int64_t> powers;
  for (int64_t b = 2; b <= 2 * batch; b *= 2) powers.push_back(b);
  if (powers.size() > 5) powers.erase(powers.begin(), powers.end() - 5);
  powers.insert(powers.begin(), 1);
  return powers;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int report(const ScenarioConfig& cfg, const BenchOptions& o, const Limits& lim, Progress& progress,
           const std::vector<int64_t>& batches, bool scaled);

}  // namespace

int run_bench(const BenchOptions& o) {
  if (!o.plot_path.empty() && !ends_with(o.plot_path, ".svg"))
    throw UsageError(
        fmt::format("--plot writes an SVG picture: give a file name ending in .svg (got '{}')", o.plot_path));
  if (o.scenario == "prefill" && (o.draft_steps != 3 || o.draft_tokens != 4))
    throw UsageError("--draft-steps/--draft-tokens apply to --scenario decode only");
  // Before the run, not after it: an unwritable path must not cost a whole benchmark.
  if (!o.json_path.empty()) support::check_writable(o.json_path, "--json");
  if (!o.plot_path.empty()) support::check_writable(o.plot_path, "--plot");
  support::L2Mode l2 = support::L2Mode::kWarm;
  support::parse_l2_mode(o.l2, l2);  // the CLI accepts only "warm" and "cold"
  support::set_l2_mode(l2);

  const bool gpu = support::cuda_device_available();
  if (o.device == "cuda" && !gpu) {
    fmt::print(stderr, "nsa bench: --device cuda: {}\n", support::cuda_unavailable_reason());
    return kExitFailure;
  }
  const Backend backend = (o.device == "cpu" || !gpu) ? Backend::kCpu : Backend::kCuda;
  bool scaled = false;
  const ScenarioConfig cfg = make_config(o, backend, scaled);
  const bool decode = o.scenario == "decode";

  // First line: what runs where.
  const std::string what =
      decode ? fmt::format(
                   "DeepSeek-V3.2 decode step: batch {}, context {}, {} layers, {} draft steps x {} draft tokens, "
                   "top-k {}, page {}",
                   cfg.batch, cfg.context, cfg.layers, cfg.draft_steps, cfg.draft_tokens, cfg.topk, cfg.page_size)
             : fmt::format("chunked-prefill K+S gather: {} requests x up to {} tokens, {} layers", cfg.batch,
                           cfg.context, cfg.layers);
  if (backend == Backend::kCuda) {
    fmt::print("nsa bench on CUDA ({}, {}): {}\n", support::cuda_device_name(), support::l2_label(), what);
  } else {
    fmt::print("nsa bench on the CPU backend ({}{}): {}\n", gpu ? "--device cpu" : support::cuda_unavailable_reason(),
               scaled ? scaled_note(o) : "", what);
  }
  fmt::print(
      "nsa {}; inputs random (seed {}), lengths uniform in [3/4 context, context]; "
      "outputs verified equal to the baseline before timing\n",
      NSA_VERSION_STRING, cfg.seed);

  const auto batches = o.plot_path.empty() ? std::vector<int64_t>{} : sweep_batches(cfg.batch);
  // limits + prepare + verify + each path (decode: 3 metadata + 2 store + 2 indexer + its 2 baseline passes;
  // prefill: 2) + 2 whole-step timings.
  const int steps = 3 + (decode ? 9 : 2) + 2 + static_cast<int>(batches.size()) * 4;
  Progress progress(steps, o.progress);
  progress.step("measuring this machine's limits");
  const Limits lim = measure_limits(backend);
  progress.done();
  fmt::print("{}", lim.line);
  std::fflush(stdout);

  try {
    return report(cfg, o, lim, progress, batches, scaled);
  } catch (const VerificationError& e) {
    progress.done();
    fmt::print(stderr, "nsa bench: {}\n", e.what());
    return kExitFailure;
  }
}

namespace {

int report(const ScenarioConfig& cfg, const BenchOptions& o, const Limits& lim, Progress& progress,
           const std::vector<int64_t>& batches, bool scaled) {
  const Backend backend = cfg.backend;
  const bool decode = o.scenario == "decode";
  const Measured m = measure(cfg, o, lim, progress, true);
  const double step_gpu_x = m.step_baseline.gpu_us / m.step_ours.gpu_us;
  const double step_host_x = m.step_baseline.host_us / m.step_ours.host_us;
  fmt::print("\nstep: ours {} us vs baseline {} us {} ({:.2f}x), {} vs {} launches\n", fmt_us(m.step_ours.gpu_us),
             fmt_us(m.step_baseline.gpu_us), backend == Backend::kCuda ? "GPU" : "wall", step_gpu_x,
             m.step_launches_ours, m.step_launches_baseline);
  json summary{{"step_gpu_speedup", step_gpu_x}, {"step_host_speedup", step_host_x}};
  if (decode) {
    // The step's figure of merit: its distance from the cache read no implementation can skip.
    const double ours_x = m.step_ours.gpu_us / m.floor_us, base_x = m.step_baseline.gpu_us / m.floor_us;
    fmt::print(
        "floor: the step reads {} of cached indexer K + scales (132 B per visible token per layer): "
        "{} us at the {} bandwidth measured above; ours {:.2f}x the floor, baseline {:.2f}x\n",
        m.floor_bytes >= 1e9 ? fmt::format("{:.2f} GB", m.floor_bytes / 1e9)
                             : fmt::format("{:.2f} MB", m.floor_bytes / 1e6),
        fmt_us(m.floor_us), backend == Backend::kCuda ? "copy" : "memcpy", ours_x, base_x);
    fmt::print("metadata (informational): speed-up of ours over the {} baseline: {:.2f}x {} time{}\n",
               backend == Backend::kCuda ? "unfused" : "per-field memcpy", m.metadata_gpu_speedup,
               backend == Backend::kCuda ? "GPU" : "wall",
               backend == Backend::kCuda ? fmt::format(", {:.2f}x host time", m.metadata_host_speedup) : "");
    summary["floor_bytes"] = m.floor_bytes;
    summary["floor_us"] = m.floor_us;
    summary["step_ours_over_floor"] = ours_x;
    summary["step_baseline_over_floor"] = base_x;
    summary["metadata_gpu_speedup"] = m.metadata_gpu_speedup;
    summary["metadata_host_speedup"] = m.metadata_host_speedup;
  }

  json sweep = json::array();
  if (!batches.empty()) {
    for (int64_t b : batches) {
      ScenarioConfig c = cfg;
      c.batch = b;
      const Measured p = measure(c, o, lim, progress, false);
      sweep.push_back({{"batch", b},
                       {"baseline_gpu_us", p.step_baseline.gpu_us},
                       {"ours_gpu_us", p.step_ours.gpu_us},
                       {"baseline_host_us", p.step_baseline.host_us},
                       {"ours_host_us", p.step_ours.host_us},
                       {"floor_us", p.floor_us}});
    }
    progress.done();
    write_step_plot(o.plot_path, sweep, m.parts, backend == Backend::kCuda,
                    fmt::format("nsa bench --scenario {} ({}), {}", o.scenario,
                                backend == Backend::kCuda ? support::cuda_device_name() : "CPU backend",
                                decode ? fmt::format("context {}, {} layers, S={} N={}", cfg.context, cfg.layers,
                                                     cfg.draft_steps, cfg.draft_tokens)
                                       : fmt::format("context {}, {} layers", cfg.context, cfg.layers)));
    fmt::print("wrote {} (step time vs batch size, batches {})\n", o.plot_path, fmt::join(batches, ", "));
  }

  if (!o.json_path.empty()) {
    json out{{"tool", "nsa bench"},
             {"version", NSA_VERSION_STRING},
             {"scenario", o.scenario},
             {"backend", to_string(backend)},
             {"device", lim.device},
             {"timing",
              backend == Backend::kCuda ? "cuda-graph replays (GPU), eager enqueue (host)" : "cpu wall clock"},
             {"l2", backend == Backend::kCuda ? support::l2_label() : "n/a"},
             {"scaled", scaled},
             {"config",
              {{"batch", cfg.batch},
               {"context", cfg.context},
               {"layers", cfg.layers},
               {"draft_steps", cfg.draft_steps},
               {"draft_tokens", cfg.draft_tokens},
               {"topk", cfg.topk},
               {"page_size", cfg.page_size},
               {"seed", cfg.seed},
               {"cpu_threads", cfg.cpu_threads}}},
             {"limits", lim.to_json},
             {"verified", true},
             {"parts", m.parts},
             {"step",
              {{"baseline_gpu_us", m.step_baseline.gpu_us},
               {"ours_gpu_us", m.step_ours.gpu_us},
               {"baseline_host_us", m.step_baseline.host_us},
               {"ours_host_us", m.step_ours.host_us},
               {"baseline_launches", m.step_launches_baseline},
               {"ours_launches", m.step_launches_ours},
               {"floor_bytes", m.floor_bytes},
               {"floor_us", m.floor_us}}},
             {"summary", summary},
             {"sweep", sweep}};
    std::ofstream f(o.json_path);
    if (!f) throw std::runtime_error("cannot write " + o.json_path);
    f << out.dump(2) << "\n";
    fmt::print("wrote {}\n", o.json_path);
  }
  return kExitOk;
}

}  // namespace
}  // namespace cli
}  // namespace nsa
