// CPU loop of the sort-based top-k baseline (topk_baseline.h, namespace cpu).
#include <algorithm>
#include <numeric>
#include <vector>

#include "nsa/detail/topk_math.h"
#include "topk_baseline.h"

namespace nsa {
namespace baseline {
namespace cpu {

void sort_topk(const TopkArgs& a) {
  const auto* scores = static_cast<const float*>(a.scores);
  std::vector<int32_t> order;
  for (int64_t r = 0; r < a.rows; ++r) {
    const detail::TopkWindow w = detail::topk_window(a, r);
    const float* row = scores + r * a.score_ld + w.start;
    order.resize(static_cast<size_t>(w.len));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [row](int32_t x, int32_t y) {
      return detail::topk_key(detail::float_bits(row[x])) > detail::topk_key(detail::float_bits(row[y]));
    });
    const int64_t q = detail::topk_request(a, r), valid = std::min(w.len, a.k);
    for (int64_t s = 0; s < a.k; ++s) {
      const int64_t x = s < valid ? order[static_cast<size_t>(s)] : -1;
      a.out[r * a.out_ld + s] = s < valid ? detail::topk_apply_transform(a, r, q, x) : -1;
      if (a.out_raw != nullptr) a.out_raw[r * a.out_raw_ld + s] = static_cast<int32_t>(x);
    }
  }
}

}  // namespace cpu
}  // namespace baseline
}  // namespace nsa
