#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace nsa {
namespace cli {

Progress::Progress(int total_steps, bool enabled)
    : total_(std::max(total_steps, 1)), enabled_(enabled && isatty(fileno(stderr)) != 0) {}

Progress::~Progress() { done(); }

void Progress::step(const std::string& what) {
  current_ = std::min(current_ + 1, total_);
  if (!enabled_) return;
  constexpr int kBar = 20;
  const int filled = current_ * kBar / total_;
  std::fprintf(stderr, "\r\033[K[%.*s%*s] %d/%d %s", filled, "####################", kBar - filled, "", current_,
               total_, what.c_str());
  std::fflush(stderr);
  shown_ = true;
}

void Progress::done() {
  if (enabled_ && shown_) {
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  }
  shown_ = false;
}

}  // namespace cli
}  // namespace nsa
