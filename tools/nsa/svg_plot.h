// A small self-contained SVG line-chart writer for `nsa bench --plot`, so the
// CLI needs no Python or plotting library at run time.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace nsa {
namespace cli {

struct Series {
  std::string name;
  std::string color;
  bool dashed = false;
  std::vector<double> y;
};

struct Chart {
  std::string title;
  std::string y_label;
  std::vector<double> x;  // drawn on a log2 axis, one tick per point
  std::string x_label;
  std::vector<Series> series;
};

// Charts side by side in one SVG document.
std::string render_svg(const std::vector<Chart>& charts, const std::string& heading);

// The sweep of `nsa bench` (JSON rows: batch, baseline/ours GPU and host us) as one chart of
// step time (GPU, or wall time on the CPU backend) and, on CUDA, one of host time.
void write_step_plot(const std::string& path, const nlohmann::json& sweep, bool cuda, const std::string& heading);

}  // namespace cli
}  // namespace nsa
