// CPU backend of paged_mqa_logits, (request, block of tokens) tasks split
// over threads. Per task: q of the request and the block's K decoded to fp32
// once; s_h as an fp64 dot product (exact: every fp8 product and their sum
// fit fp64), rounded once to fp32; then the head sum in the order of
// nsa/indexer.h. Bit-identical to the reference for any thread count.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/parallel.h"
#include "indexer_backends.h"
#include "nsa/detail/indexer_math.h"

namespace nsa {
namespace cpu {

namespace {

constexpr int64_t kBlockTokens = 256;
constexpr int64_t kH = kIndexerHeads, kD = kIndexerHeadDim;
constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

struct Fp8Table {
  float v[256];
  Fp8Table() {
    for (int c = 0; c < 256; ++c) v[c] = detail::e4m3_value(static_cast<uint8_t>(c));
  }
};
const Fp8Table& fp8_table() {
  static const Fp8Table table;
  return table;
}

// The fixed head sum of nsa/indexer.h over s[64] (already rounded to fp32).
float head_sum(const float* w, const float* s) {
  float group[4];
  for (int G = 0; G < 4; ++G) {
    float p[8];
    for (int g = 0; g < 8; ++g) {
      const int h = 16 * G + g;
      const float a = w[h] * (s[h] > 0.0f ? s[h] : 0.0f);
      const float b = w[h + 8] * (s[h + 8] > 0.0f ? s[h + 8] : 0.0f);
      p[g] = a + b;
    }
    group[G] = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
  }
  return (group[0] + group[1]) + (group[2] + group[3]);
}

// Exact dot product of two decoded fp8 vectors (4 independent fp64 chains;
// the order does not matter, every partial sum is exact).
float exact_dot(const float* q, const float* k) {
  double acc[4] = {0, 0, 0, 0};
  for (int64_t d = 0; d < kD; d += 4)
    for (int i = 0; i < 4; ++i) acc[i] += static_cast<double>(q[d + i] * k[d + i]);  // fp32 product is exact
  return static_cast<float>((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

struct Scratch {
  std::vector<float> q, k, scale;
  std::vector<uint8_t> ok;
  float s[kH];
};

void run_block(const PagedMqaLogitsArgs& a, int64_t b, int64_t t0, Scratch& sc) {
  const Fp8Table& fp8 = fp8_table();
  const int64_t n = a.next_n;
  const int64_t L = a.context_lens.at(b);
  const int64_t t1 = std::min(t0 + kBlockTokens, a.width);
  const int64_t max_len = detail::indexer_row_len(L, n, n - 1, a.width);  // the last row sees the most
  const int64_t load_end = std::min(t1, max_len);
  const int64_t page_bytes = a.page_size * (kD + 4);
  if (load_end > t0) {
    sc.q.resize(static_cast<size_t>(n * kH * kD));
    const uint8_t* q = a.q + b * n * kH * kD;
    for (int64_t i = 0; i < n * kH * kD; ++i) sc.q[static_cast<size_t>(i)] = fp8.v[q[i]];
    sc.k.resize(static_cast<size_t>(kBlockTokens * kD));
    sc.scale.resize(static_cast<size_t>(kBlockTokens));
    sc.ok.assign(static_cast<size_t>(kBlockTokens), 0);
    for (int64_t t = t0; t < load_end; ++t) {
      const int64_t col = t / a.page_size;
      if (col >= a.table_cols) continue;
      const int64_t page = a.page_table.at(b * a.table_ld + col);
      if (!detail::indexer_page_ok(page, a.cache.num_pages)) continue;
      const uint8_t* base = a.cache.data + page * page_bytes;
      const int64_t off = t % a.page_size;
      const size_t i = static_cast<size_t>(t - t0);
      for (int64_t d = 0; d < kD; ++d) sc.k[i * kD + static_cast<size_t>(d)] = fp8.v[base[off * kD + d]];
      std::memcpy(&sc.scale[i], base + a.page_size * kD + off * 4, 4);
      sc.ok[i] = 1;
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t r = b * n + j;
    const int64_t len = detail::indexer_row_len(L, n, j, a.width);
    const float* w = a.weights + r * kH;
    float* out = a.logits + r * a.logits_ld;
    for (int64_t t = t0; t < t1; ++t) {
      const size_t i = static_cast<size_t>(t - t0);
      if (t >= len || !sc.ok[i]) {
        out[t] = kMinusInf;
        continue;
      }
      const float* k = &sc.k[i * kD];
      for (int64_t h = 0; h < kH; ++h) sc.s[h] = exact_dot(&sc.q[static_cast<size_t>((j * kH + h) * kD)], k);
      out[t] = head_sum(w, sc.s) * sc.scale[i];
    }
  }
}

}  // namespace

void paged_mqa_logits(int threads, const PagedMqaLogitsArgs& a) {
  const int64_t blocks = (a.width + kBlockTokens - 1) / kBlockTokens;
  const int64_t tasks = a.batch * blocks;
  // Work estimate for the thread split: the dot products dominate.
  const double work = static_cast<double>(a.batch) * static_cast<double>(a.width) * a.next_n * kH * kD;
  parallel_for(tasks, threads, static_cast<int64_t>(std::min(4e18, work)), [&](int64_t begin, int64_t end) {
    Scratch sc;
    for (int64_t task = begin; task < end; ++task) run_block(a, task / blocks, (task % blocks) * kBlockTokens, sc);
  });
}

}  // namespace cpu
}  // namespace nsa
