// The part every micro benchmark shares: `[--json FILE] [--quick]` (plus the
// benchmark's own on/off flags), a visible
// skip without a CUDA device, the device limits measured and printed first
// (copy bandwidth, empty kernel), errors as exit code 1, the JSON report.
#pragma once

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "buffer.h"
#include "output_file.h"
#include "timing.h"

namespace nsa {
namespace bench {

// An on/off option of one benchmark: `name` on the command line sets *value.
struct Flag {
  const char* name;
  bool* value;
};

// body(quick, limits, report): prints its tables and appends to report["results"].
inline int run(const char* name, int argc, char** argv,
               const std::function<void(bool, const support::DeviceLimits&, nlohmann::json&)>& body,
               const std::vector<Flag>& flags = {}) {
  std::string json_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    support::L2Mode l2 = support::l2_mode();
    const auto flag = std::find_if(flags.begin(), flags.end(), [&](const Flag& f) { return a == f.name; });
    if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (a == "--quick") quick = true;
    else if (a == "--l2" && i + 1 < argc && support::parse_l2_mode(argv[++i], l2)) support::set_l2_mode(l2);
    else if (flag != flags.end()) *flag->value = true;
    else {
      std::string extra;
      for (const Flag& f : flags) extra += fmt::format(" [{}]", f.name);
      fmt::print(stderr, "usage: {} [--json FILE] [--quick] [--l2 cold|warm]{}\n", argv[0], extra);
      return 2;
    }
  }
  if (!support::cuda_device_available()) {
    fmt::print("{}: {}; this benchmark measures the CUDA backend only. Skipped.\n", name,
               support::cuda_unavailable_reason());
    return 0;
  }
  try {
    if (!json_path.empty()) support::check_writable(json_path, "--json");
    const auto lim = support::measure_device_limits();
    fmt::print("device: {} ({} SMs)\n", lim.device, lim.sm_count);
    fmt::print(
        "limits: D2D copy {:.0f} GB/s (read+write), empty kernel {:.2f} us in a graph, {:.2f} us eager GPU, "
        "{:.2f} us host per launch\n",
        lim.copy_gbps, lim.empty_kernel_graph_us, lim.empty_kernel_eager_us, lim.empty_launch_host_us);
    fmt::print("GPU times below: {} (--l2 cold|warm)\n\n", support::l2_label());
    nlohmann::json report{{"device", lim.device},
                          {"l2", support::l2_label()},
                          {"sm_count", lim.sm_count},
                          {"copy_gbps", lim.copy_gbps},
                          {"empty_kernel_graph_us", lim.empty_kernel_graph_us},
                          {"empty_kernel_eager_us", lim.empty_kernel_eager_us},
                          {"empty_launch_host_us", lim.empty_launch_host_us},
                          {"results", nlohmann::json::array()}};
    body(quick, lim, report);
    if (!json_path.empty()) {
      std::ofstream(json_path) << report.dump(2) << "\n";
      fmt::print("\nwrote {}\n", json_path);
    }
    // Failures a body recorded while timing the rest (its JSON is written):
    // the bench still fails.
    if (report.contains("failures") && !report["failures"].empty()) {
      for (const auto& f : report["failures"]) fmt::print(stderr, "{}: FAILED: {}\n", name, f.get<std::string>());
      return 1;
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: {}\n", name, e.what());
    return 1;
  }
  return 0;
}

}  // namespace bench
}  // namespace nsa
