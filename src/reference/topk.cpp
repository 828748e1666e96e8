#include "reference/topk.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace nsa {
namespace reference {

namespace {

int64_t at(const Indices& v, int64_t i) {
  if (v.type == IndexType::kInt32) return static_cast<const int32_t*>(v.data)[i];
  return static_cast<const int64_t*>(v.data)[i];
}

float as_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Score j of row r as fp32 bits (bf16 widened).
uint32_t score_bits(const TopkArgs& a, int64_t r, int64_t j) {
  const int64_t e = r * a.score_ld + j;
  if (a.score_type == ScoreType::kBfloat16)
    return static_cast<uint32_t>(static_cast<const uint16_t*>(a.scores)[e]) << 16;
  uint32_t u;
  std::memcpy(&u, static_cast<const float*>(a.scores) + e, 4);
  return u;
}

// The visible window of row r, as the spec states it.
void window(const TopkArgs& a, int64_t r, int64_t& start, int64_t& len) {
  start = 0;
  if (a.length_form == TopkLengths::kPerRequest) {
    const int64_t n = a.rows_per_request;
    const int64_t b = r / n, j = r % n;
    const int64_t hidden = n - 1 - j;  // row j sees all but the last n - 1 - j tokens
    const int64_t L = at(a.lengths, b);
    len = L > hidden ? L - hidden : 0;  // max(0, L - n + 1 + j), without overflow at any int64 L
  } else {
    len = std::max<int64_t>(0, at(a.lengths, r));
    if (a.row_starts.data) start = std::min(std::max<int64_t>(0, at(a.row_starts, r)), a.width);
  }
  len = std::min(len, a.width - start);
}

int32_t transform(const TopkArgs& a, int64_t r, int64_t x) {
  const int64_t int32_max = std::numeric_limits<int32_t>::max();
  int64_t q = a.length_form == TopkLengths::kPerRequest ? r / a.rows_per_request : r;
  if (a.row_to_request.data) q = at(a.row_to_request, r);
  int64_t v = -1;
  switch (a.transform) {
    case TopkTransform::kRaw: v = x; break;
    case TopkTransform::kRaggedOffset: {
      const int64_t off = at(a.offsets, r);
      v = off > int32_max ? -1 : off + x;
      break;
    }
    case TopkTransform::kPaged64:
      if (q >= 0 && q < a.table_rows && x / 64 < a.table_cols) {
        const int64_t page = at(a.table, q * a.table_ld + x / 64);
        v = page < 0 || page > int32_max / 64 ? -1 : page * 64 + x % 64;
      }
      break;
    case TopkTransform::kTokenTable:
      if (q >= 0 && q < a.table_rows && x < a.table_cols) v = at(a.table, q * a.table_ld + x);
      break;
  }
  return v < 0 || v > int32_max ? -1 : static_cast<int32_t>(v);
}

}  // namespace

bool topk_score_above(uint32_t a_bits, uint32_t b_bits) {
  const float a = as_float(a_bits), b = as_float(b_bits);
  const bool a_nan = std::isnan(a), b_nan = std::isnan(b);
  if (!a_nan && !b_nan) return a > b;  // -0 == +0 here
  // Rank classes: -NaN (0) < every non-NaN (1) < +NaN (2).
  const int ca = a_nan ? (std::signbit(a) ? 0 : 2) : 1, cb = b_nan ? (std::signbit(b) ? 0 : 2) : 1;
  if (ca != cb) return ca > cb;
  // Both NaN of one sign: by bit pattern, in the direction of the sign.
  return ca == 2 ? a_bits > b_bits : a_bits < b_bits;
}

std::vector<int64_t> topk_row(const TopkArgs& a, int64_t r) {
  int64_t start = 0, len = 0;
  window(a, r, start, len);
  std::vector<int64_t> idx(static_cast<size_t>(len));
  for (int64_t j = 0; j < len; ++j) idx[static_cast<size_t>(j)] = j;
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t x, int64_t y) {
    return topk_score_above(score_bits(a, r, start + x), score_bits(a, r, start + y));
  });
  idx.resize(static_cast<size_t>(std::min(len, a.k)));
  std::sort(idx.begin(), idx.end());
  return idx;
}

void topk_transform(const TopkArgs& a) {
  for (int64_t r = 0; r < a.rows; ++r) {
    const std::vector<int64_t> sel = topk_row(a, r);
    for (int64_t s = 0; s < a.k; ++s) {
      const bool valid = s < static_cast<int64_t>(sel.size());
      const int64_t x = valid ? sel[static_cast<size_t>(s)] : -1;
      a.out[r * a.out_ld + s] = valid ? transform(a, r, x) : -1;
      if (a.out_raw) a.out_raw[r * a.out_raw_ld + s] = static_cast<int32_t>(x);
    }
  }
}

}  // namespace reference
}  // namespace nsa
