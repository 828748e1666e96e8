// Reference of paged_mqa_logits (see indexer.h).
#include "reference/indexer.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "reference/index_cache.h"

namespace nsa {
namespace reference {

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// e4m3_to_float of every code (the decode is slow; the dot products are many).
double fp8(uint8_t code) {
  static const struct Table {
    double v[256];
    Table() {
      for (int c = 0; c < 256; ++c) v[c] = e4m3_to_float(static_cast<uint8_t>(c));
    }
  } table;
  return table.v[code];
}

int64_t row_len(const PagedMqaLogitsArgs& a, int64_t r) {
  const int64_t b = r / a.next_n, j = r % a.next_n;
  const int64_t len = a.context_lens.at(b) - a.next_n + 1 + j;
  if (len < 0) return 0;
  return len < a.width ? len : a.width;
}

// Address of token t of request b, or null when its page cannot be read.
const uint8_t* token_page(const PagedMqaLogitsArgs& a, int64_t b, int64_t t) {
  const int64_t col = t / a.page_size;
  if (col >= a.table_cols) return nullptr;
  const int64_t page = a.page_table.at(b * a.table_ld + col);
  if (page < 0 || page >= a.cache.num_pages) return nullptr;
  return a.cache.data + page * a.page_size * (kIndexerHeadDim + 4);
}

float token_scale(const PagedMqaLogitsArgs& a, const uint8_t* page, int64_t t) {
  float s;
  std::memcpy(&s, page + a.page_size * kIndexerHeadDim + (t % a.page_size) * 4, 4);
  return s;
}

// sum_d q[r, h, d] * k[d] in fp64: every fp8 product and the sum of 128 of
// them are exact there, so this is the exact dot product, in any order.
double head_dot(const PagedMqaLogitsArgs& a, int64_t r, int64_t h, const uint8_t* k) {
  const uint8_t* q = a.q + (r * kIndexerHeads + h) * kIndexerHeadDim;
  double s = 0;
  for (int64_t d = 0; d < kIndexerHeadDim; ++d) s += fp8(q[d]) * fp8(k[d]);
  return s;
}

}  // namespace

float paged_mqa_logit(const PagedMqaLogitsArgs& a, int64_t r, int64_t t) {
  const int64_t b = r / a.next_n;
  const uint8_t* page = token_page(a, b, t);
  if (page == nullptr) return kMinusInf;
  const uint8_t* k = page + (t % a.page_size) * kIndexerHeadDim;
  const float* w = a.weights + r * kIndexerHeads;
  float term[kIndexerHeads];
  for (int64_t h = 0; h < kIndexerHeads; ++h) {
    const float s = static_cast<float>(head_dot(a, r, h, k));
    const float relu = s > 0.0f ? s : 0.0f;
    term[h] = w[h] * relu;
  }
  // Head sum: 4 groups of 16 heads; lane g of a group pairs heads g and g+8;
  // the 8 lanes by a balanced tree; the groups by a balanced tree.
  float group[4];
  for (int G = 0; G < 4; ++G) {
    float p[8];
    for (int g = 0; g < 8; ++g) p[g] = term[16 * G + g] + term[16 * G + g + 8];
    group[G] = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
  }
  const float sum = (group[0] + group[1]) + (group[2] + group[3]);
  return sum * token_scale(a, page, t);
}

double paged_mqa_logit_dequantized(const PagedMqaLogitsArgs& a, int64_t r, int64_t t) {
  const int64_t b = r / a.next_n;
  const uint8_t* page = token_page(a, b, t);
  if (page == nullptr) return -std::numeric_limits<double>::infinity();
  const uint8_t* k = page + (t % a.page_size) * kIndexerHeadDim;
  const double scale = token_scale(a, page, t);
  double sum = 0;
  for (int64_t h = 0; h < kIndexerHeads; ++h) {
    const uint8_t* q = a.q + (r * kIndexerHeads + h) * kIndexerHeadDim;
    double s = 0;
    for (int64_t d = 0; d < kIndexerHeadDim; ++d) s += fp8(q[d]) * (fp8(k[d]) * scale);
    sum += static_cast<double>(a.weights[r * kIndexerHeads + h]) * (s > 0 ? s : 0.0);
  }
  return sum;
}

double paged_mqa_logit_magnitude(const PagedMqaLogitsArgs& a, int64_t r, int64_t t) {
  const int64_t b = r / a.next_n;
  const uint8_t* page = token_page(a, b, t);
  if (page == nullptr) return 0;
  const uint8_t* k = page + (t % a.page_size) * kIndexerHeadDim;
  const double scale = std::fabs(token_scale(a, page, t));
  double sum = 0;
  for (int64_t h = 0; h < kIndexerHeads; ++h) {
    const uint8_t* q = a.q + (r * kIndexerHeads + h) * kIndexerHeadDim;
    double s = 0;
    for (int64_t d = 0; d < kIndexerHeadDim; ++d) s += std::fabs(fp8(q[d]) * fp8(k[d]));
    sum += std::fabs(static_cast<double>(a.weights[r * kIndexerHeads + h])) * s * scale;
  }
  return sum;
}

void paged_mqa_logits(const PagedMqaLogitsArgs& a) {
  for (int64_t r = 0; r < a.batch * a.next_n; ++r) {
    const int64_t len = row_len(a, r);
    float* out = a.logits + r * a.logits_ld;
    for (int64_t t = 0; t < a.width; ++t) out[t] = t < len ? paged_mqa_logit(a, r, t) : kMinusInf;
  }
}

double calc_diff(const float* x, const double* y, int64_t n) {
  double xy = 0, xx_yy = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool xinf = std::isinf(x[i]) && x[i] < 0, yinf = std::isinf(y[i]) && y[i] < 0;
    if (xinf != yinf) return 1.0;
    if (xinf) continue;
    const double xv = x[i];
    xy += xv * y[i];
    xx_yy += xv * xv + y[i] * y[i];
  }
  return xx_yy == 0 ? 0.0 : 1.0 - 2.0 * xy / xx_yy;
}

}  // namespace reference
}  // namespace nsa
