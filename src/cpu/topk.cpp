// CPU backend of topk_transform, rows split over threads. Per row: the keys
// of the window (nsa/detail/topk_math.h), the K-th largest key T by
// nth_element, then one sweep in index order that takes every key > T and
// the first K - #(key > T) keys equal to T: the exact set with the
// smallest-index tie rule, written in ascending order. O(len) per row.
#include <algorithm>
#include <functional>
#include <vector>

#include "cpu/parallel.h"
#include "nsa/detail/topk_math.h"
#include "topk_backends.h"

namespace nsa {
namespace cpu {

namespace {

template <class ScoreT>
void select_row(const TopkArgs& a, int64_t r, std::vector<uint32_t>& keys, std::vector<uint32_t>& scratch) {
  const detail::TopkWindow w = detail::topk_window(a, r);
  const int64_t q = detail::topk_request(a, r);
  int32_t* out = a.out + r * a.out_ld;
  int32_t* raw = a.out_raw ? a.out_raw + r * a.out_raw_ld : nullptr;
  auto emit = [&](int64_t slot, int64_t x) {
    out[slot] = detail::topk_apply_transform(a, r, q, x);
    if (raw) raw[slot] = static_cast<int32_t>(x);
  };
  int64_t slot = 0;
  if (w.len <= a.k) {
    for (; slot < w.len; ++slot) emit(slot, slot);  // identity: scores not read
  } else {
    const ScoreT* row = static_cast<const ScoreT*>(a.scores) + r * a.score_ld + w.start;
    keys.resize(static_cast<size_t>(w.len));
    for (int64_t j = 0; j < w.len; ++j) keys[static_cast<size_t>(j)] = detail::topk_key(detail::topk_bits(row[j]));
    scratch = keys;
    std::nth_element(scratch.begin(), scratch.begin() + (a.k - 1), scratch.end(), std::greater<uint32_t>());
    const uint32_t threshold = scratch[static_cast<size_t>(a.k - 1)];
    int64_t above = 0;
    for (uint32_t key : keys) above += key > threshold;
    int64_t ties_left = a.k - above;
    for (int64_t j = 0; j < w.len; ++j) {
      const uint32_t key = keys[static_cast<size_t>(j)];
      if (key > threshold || (key == threshold && ties_left-- > 0)) emit(slot++, j);
    }
  }
  for (; slot < a.k; ++slot) {
    out[slot] = -1;
    if (raw) raw[slot] = -1;
  }
}

}  // namespace

void topk_transform(int threads, const TopkArgs& a) {
  // Memory traffic estimate for the thread split (saturating: only its size class matters).
  const double row_bytes = static_cast<double>(a.width) * (a.score_type == ScoreType::kFloat32 ? 4 : 2) + 8.0 * a.k;
  const int64_t bytes = static_cast<int64_t>(std::min(4e18, static_cast<double>(a.rows) * row_bytes));
  parallel_for(a.rows, threads, bytes, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> keys, scratch;
    for (int64_t r = begin; r < end; ++r) {
      if (a.score_type == ScoreType::kFloat32) select_row<float>(a, r, keys, scratch);
      else select_row<uint16_t>(a, r, keys, scratch);
    }
  });
}

}  // namespace cpu
}  // namespace nsa
