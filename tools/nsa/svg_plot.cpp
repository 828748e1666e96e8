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

std::string value_label(double us) { return us >= 100 ? fmt::format("{:.0f}", us) : fmt::format("{:.1f}", us); }

void render_bars(std::string& svg, const BarChart& c, double ox, double oy) {
  constexpr double kLabel = 110;  // room for the category names left of the bars
  const double pw = kWidth - kLabel - kRight - 50, ph = kHeight - kTop - kBottom;
  double xmax = 0;
  for (const auto& s : c.series)
    for (double v : s.y) xmax = std::max(xmax, v);
  const auto [right, step] = nice_axis(xmax);
  const double x0 = ox + kLabel;
  auto px = [&](double v) { return x0 + v / right * pw; };
  auto fill = [](const Series& s) {
    return fmt::format("fill=\"{}\"{}", s.color, s.dashed ? " fill-opacity=\"0.45\"" : "");
  };
  const double group = ph / static_cast<double>(std::max<size_t>(c.categories.size(), 1));
  svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"15\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
                     x0 + pw / 2, oy + 24, escape(c.title));
  for (double v = 0; v <= right + step / 2; v += step) {  // vertical grid and x ticks
    svg += fmt::format("<line x1=\"{:.1f}\" y1=\"{}\" x2=\"{:.1f}\" y2=\"{}\" stroke=\"#ddd\"/>\n", px(v), oy + kTop,
                       px(v), oy + kTop + ph);
    svg += fmt::format("<text x=\"{:.1f}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n", px(v),
                       oy + kTop + ph + 16, tick_label(v));
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n", x0 + pw / 2,
                     oy + kHeight - 24, escape(c.x_label));
  for (size_t i = 0; i < c.categories.size(); ++i) {  // the non-zero bars of a category, packed and centred
    std::vector<size_t> shown;
    for (size_t k = 0; k < c.series.size(); ++k)
      if (i < c.series[k].y.size() && c.series[k].y[i] > 0) shown.push_back(k);
    const double bar = std::min(18.0, (group - 6) / static_cast<double>(std::max<size_t>(shown.size(), 1)));
    const double gy = oy + kTop + group * (static_cast<double>(i) + 0.5) - bar * static_cast<double>(shown.size()) / 2;
    svg += fmt::format("<text x=\"{}\" y=\"{:.1f}\" font-size=\"12\" text-anchor=\"end\">{}</text>\n", x0 - 6,
                       oy + kTop + group * (static_cast<double>(i) + 0.5) + 4, escape(c.categories[i]));
    for (size_t n = 0; n < shown.size(); ++n) {
      const Series& s = c.series[shown[n]];
      const double v = s.y[i], y = gy + bar * static_cast<double>(n);
      svg += fmt::format("<rect x=\"{}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" {}/>\n", x0, y,
                         std::max(px(v) - x0, 1.0), bar - 2, fill(s));
      svg += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"10\">{}</text>\n", px(v) + 3, y + bar - 5,
                         value_label(v));
    }
  }
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", x0,
                     oy + kTop, pw, ph);
  double lx = x0;  // legend: one line under the axis label
  for (const auto& s : c.series) {
    svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"10\" {}/>\n", lx, oy + kHeight - 13, fill(s));
    svg +=
        fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n", lx + 18, oy + kHeight - 4, escape(s.name));
    lx += 28 + 7.0 * static_cast<double>(s.name.size());
  }
}

}  // namespace

std::string render_svg(const std::vector<Chart>& charts, const std::string& heading,
                       const std::vector<BarChart>& bars) {
  const double w = kWidth * static_cast<double>(charts.size() + bars.size()), h = kHeight + kHeading;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      w, h);
  svg += fmt::format("<text x=\"{}\" y=\"20\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n", w / 2,
                     escape(heading));
  for (size_t i = 0; i < charts.size(); ++i)
    if (!charts[i].x.empty()) render_chart(svg, charts[i], kWidth * static_cast<double>(i), kHeading);
  for (size_t i = 0; i < bars.size(); ++i)
    render_bars(svg, bars[i], kWidth * static_cast<double>(charts.size() + i), kHeading);
  svg += "</svg>\n";
  return svg;
}

void write_step_plot(const std::string& path, const nlohmann::json& sweep, const nlohmann::json& parts, bool cuda,
                     const std::string& heading) {
  Chart time{cuda ? "Step GPU time (CUDA graph replay)" : "Step wall time (CPU backend)",
             "microseconds per step",
             {},
             "batch size",
             {}};
  Chart host{"Step host time (eager enqueue)", "microseconds per step", {}, "batch size", {}};
  Series tb{"baseline (upstream-style, unfused)", "#d62728", false, {}}, to{"ours (nsa)", "#1f77b4", false, {}};
  Series hb = tb, ho = to;
  Series fl{"cache read floor (at copy bandwidth)", "#7f7f7f", true, {}};
  double floor_max = 0;
  for (const auto& row : sweep) {
    time.x.push_back(row.at("batch").get<double>());
    tb.y.push_back(row.at("baseline_gpu_us").get<double>());
    to.y.push_back(row.at("ours_gpu_us").get<double>());
    hb.y.push_back(row.at("baseline_host_us").get<double>());
    ho.y.push_back(row.at("ours_host_us").get<double>());
    fl.y.push_back(row.value("floor_us", 0.0));
    floor_max = std::max(floor_max, fl.y.back());
  }
  host.x = time.x;
  time.series = {tb, to};
  if (floor_max > 0) time.series.push_back(fl);
  host.series = {hb, ho};
  std::vector<Chart> charts{time};
  if (cuda) charts.push_back(host);
  // The parts at the main batch: the baseline's passes as lighter bars under it.
  BarChart bars{"Parts of the step (the table's batch)",
                cuda ? "GPU microseconds per step" : "wall microseconds per step",
                {},
                {}};
  Series bb{"baseline", "#d62728", false, {}}, bp{"baseline passes", "#d62728", true, {}},
      bo{"ours", "#1f77b4", false, {}};
  for (const auto& part : parts) {
    const auto& paths = part.at("paths");
    bars.categories.push_back(part.at("name").get<std::string>());
    bb.y.push_back(paths.front().at("gpu_us").get<double>());
    bo.y.push_back(paths.back().at("gpu_us").get<double>());
    bp.y.push_back(0);
    for (const auto& piece : part.value("pieces", nlohmann::json::array())) {
      bars.categories.push_back(piece.at("role").get<std::string>());
      bb.y.push_back(0);
      bp.y.push_back(piece.at("gpu_us").get<double>());
      bo.y.push_back(0);
    }
  }
  bars.series = {bb, bp, bo};
  std::vector<BarChart> bar_charts;
  if (!parts.empty()) bar_charts.push_back(bars);
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write " + path);
  f << render_svg(charts, heading, bar_charts);
}

}  // namespace cli
}  // namespace nsa
