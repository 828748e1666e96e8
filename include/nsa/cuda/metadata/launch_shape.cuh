// CTA size and grid size shared by the metadata kernels (build and copy).
#pragma once

#include <cstdint>

namespace nsa {
namespace kernels {

constexpr int kMetaThreads = 256;
constexpr int kMetaWarps = kMetaThreads / 32;

// One wave of resident CTAs at most (extra CTAs of the build kernel would only
// repeat the batch scan), never more CTAs than there are warp items. Small
// jobs get one item per CTA, so their stores spread over many SMs instead of
// queueing in one SM's store path.
inline int metadata_grid(int64_t max_items, int num_sms, int ctas_per_sm) {
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * ctas_per_sm;
  return static_cast<int>(max_items < 1 ? 1 : (max_items < cap ? max_items : cap));
}

}  // namespace kernels
}  // namespace nsa
