#include "svg_plot.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <stdexcept>

namespace nsa {
namespace cli {
namespace {

constexpr double kWidth = 600, kHeight = 380;                       // one chart
constexpr double kLeft = 70, kRight = 20, kTop = 40, kBottom = 60;  // plot margins
constexpr double kHeading = 30;

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else out += c;
  }
  return out;
}

// A "nice" upper bound and tick step (1, 2 or 5 times a power of ten) for [0, max].
std::pair<double, double> nice_axis(double max) {
  if (!(max > 0)) max = 1;
  const double raw = max / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / mag;
  const double step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
  return {std::ceil(max / step) * step, step};
}

std::string tick_label(double v) {
  if (v >= 1000) return fmt::format("{:.0f}", v);
  if (v >= 10 || v == std::floor(v)) return fmt::format("{:g}", v);
  return fmt::format("{:.2g}", v);
}

void render_chart(std::string& svg, const Chart& c, double ox, double oy) {
  const double pw = kWidth - kLeft - kRight, ph = kHeight - kTop - kBottom;
  double ymax = 0;
  for (const auto& s : c.series)
    for (double v : s.y) ymax = std::max(ymax, v);
  const auto [top, step] = nice_axis(ymax);
  const double lx0 = std::log2(c.x.front()), lx1 = std::log2(c.x.back());
  auto px = [&](double x) { return ox + kLeft + (lx1 > lx0 ? (std::log2(x) - lx0) / (lx1 - lx0) : 0.5) * pw; };
  auto py = [&](double y) { return oy + kTop + ph - y / top * ph; };

  svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"15\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
                     ox + kLeft + pw / 2, oy + 24, escape(c.title));
  for (double y = 0; y <= top + step / 2; y += step) {  // horizontal grid and y ticks
    svg += fmt::format("<line x1=\"{}\" y1=\"{:.1f}\" x2=\"{}\" y2=\"{:.1f}\" stroke=\"#ddd\"/>\n", ox + kLeft, py(y),
                       ox + kLeft + pw, py(y));
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n", ox + kLeft - 6,
                       py(y) + 4, tick_label(y));
  }
  for (double x : c.x)  // x ticks at the measured batch sizes
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{:g}</text>\n", px(x),
                       oy + kTop + ph + 16, x);
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", ox + kLeft,
                     oy + kTop, pw, ph);
  svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n", ox + kLeft + pw / 2,
                     oy + kHeight - 18, escape(c.x_label));
  svg += fmt::format(
      "<text transform=\"translate({},{}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n", ox + 16,
      oy + kTop + ph / 2, escape(c.y_label));
  int i = 0;
  for (const auto& s : c.series) {
    std::string points;
    for (size_t k = 0; k < s.y.size() && k < c.x.size(); ++k)
      points += fmt::format("{:.1f},{:.1f} ", px(c.x[k]), py(s.y[k]));
    svg += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{}/>\n", points, s.color,
                       s.dashed ? " stroke-dasharray=\"6,4\"" : "");
    for (size_t k = 0; k < s.y.size() && k < c.x.size(); ++k)
      svg +=
          fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(c.x[k]), py(s.y[k]), s.color);
    const double ly = oy + kTop + 14 + 16 * i++;  // legend, top left inside the plot
    svg += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"/>\n",
                       ox + kLeft + 10, ly - 4, ox + kLeft + 30, ly - 4, s.color);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n", ox + kLeft + 36, ly, escape(s.name));
  }
}

}  // namespace

std::string render_svg(const std::vector<Chart>& charts, const std::string& heading) {
  const double w = kWidth * static_cast<double>(charts.size()), h = kHeight + kHeading;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      w, h);
  svg += fmt::format("<text x=\"{}\" y=\"20\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n", w / 2,
                     escape(heading));
  for (size_t i = 0; i < charts.size(); ++i)
    if (!charts[i].x.empty()) render_chart(svg, charts[i], kWidth * static_cast<double>(i), kHeading);
  svg += "</svg>\n";
  return svg;
}

void write_step_plot(const std::string& path, const nlohmann::json& sweep, bool cuda, const std::string& heading) {
  Chart time{cuda ? "Step GPU time (CUDA graph replay)" : "Step wall time (CPU backend)",
             "microseconds per step",
             {},
             "batch size",
             {}};
  Chart host{"Step host time (eager enqueue)", "microseconds per step", {}, "batch size", {}};
  Series tb{"baseline (upstream-style, unfused)", "#d62728", false, {}}, to{"ours (nsa)", "#1f77b4", false, {}};
  Series hb = tb, ho = to;
  for (const auto& row : sweep) {
    time.x.push_back(row.at("batch").get<double>());
    tb.y.push_back(row.at("baseline_gpu_us").get<double>());
    to.y.push_back(row.at("ours_gpu_us").get<double>());
    hb.y.push_back(row.at("baseline_host_us").get<double>());
    ho.y.push_back(row.at("ours_host_us").get<double>());
  }
  host.x = time.x;
  time.series = {tb, to};
  host.series = {hb, ho};
  std::vector<Chart> charts{time};
  if (cuda) charts.push_back(host);
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write " + path);
  f << render_svg(charts, heading);
}

}  // namespace cli
}  // namespace nsa
