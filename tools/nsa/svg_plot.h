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

// Horizontal bars: one group per category, one bar per series (y[i]: category i), value printed.
struct BarChart {
  std::string title;
  std::string x_label;
  std::vector<std::string> categories;
  std::vector<Series> series;
};

// Charts side by side in one SVG document (line charts, then bar charts).
std::string render_svg(const std::vector<Chart>& charts, const std::string& heading,
                       const std::vector<BarChart>& bars = {});

// The sweep of `nsa bench` (JSON rows: batch, baseline/ours GPU and host us, floor us) as one
// chart of step time (GPU, or wall time on the CPU backend; with the floor when non-zero), on
// CUDA one of host time, and a bar chart of every part's time at the main batch (JSON `parts`).
void write_step_plot(const std::string& path, const nlohmann::json& sweep, const nlohmann::json& parts, bool cuda,
                     const std::string& heading);

}  // namespace cli
}  // namespace nsa
