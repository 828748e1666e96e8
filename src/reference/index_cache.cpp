#include "reference/index_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace nsa {
namespace reference {

namespace {
constexpr int64_t kDim = 128;

// A page of P tokens: P * 128 K bytes, then P * 4 scale bytes.
int64_t k_byte(int64_t P, int64_t slot, int64_t d) { return (slot / P) * (P * 132) + (slot % P) * kDim + d; }
int64_t scale_byte(int64_t P, int64_t slot) { return (slot / P) * (P * 132) + P * kDim + (slot % P) * 4; }

float bf16_to_float(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
float fp16_to_float(uint16_t h) {
  const int sign = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  float mag;
  if (e == 31) mag = m ? NAN : INFINITY;
  else if (e == 0) mag = std::ldexp(static_cast<float>(m), -24);
  else mag = std::ldexp(static_cast<float>(1024 + m), e - 25);
  return sign ? -mag : mag;
}

float element(const void* k, int64_t i, KDtype dtype) {
  if (dtype == KDtype::kFp32) return static_cast<const float*>(k)[i];
  const uint16_t bits = static_cast<const uint16_t*>(k)[i];
  return dtype == KDtype::kBf16 ? bf16_to_float(bits) : fp16_to_float(bits);
}
}  // namespace

float e4m3_to_float(uint8_t code) {
  const int sign = code >> 7, e = (code >> 3) & 15, m = code & 7;
  if (e == 15 && m == 7) return NAN;
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return sign ? -mag : mag;
}

uint8_t float_to_e4m3(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  if (std::isnan(x)) return sign | 0x7f;
  const float a = std::fabs(x);
  if (a >= 448.0f) return sign | 0x7e;
  // Codes 0..126 are increasing in value; find the last one with value <= a.
  static const std::vector<float> values = [] {
    std::vector<float> v;
    for (int c = 0; c <= 126; ++c) v.push_back(e4m3_to_float(static_cast<uint8_t>(c)));
    return v;
  }();
  const int lo = static_cast<int>(std::upper_bound(values.begin(), values.end(), a) - values.begin()) - 1;
  const int hi = lo + 1;  // a < 448 = values[126], so lo <= 125
  const double below = static_cast<double>(a) - values[lo];
  const double above = static_cast<double>(values[hi]) - a;
  int best = lo;
  if (above < below || (above == below && (hi % 2 == 0))) best = hi;
  return sign | static_cast<uint8_t>(best);
}

float quant_scale(float amax, ScaleMode mode) {
  const float plain = std::fmax(amax, 1e-4f) / 448.0f;
  if (mode != ScaleMode::kUe8m0) return plain;
  int e = 0;
  const float m = std::frexp(plain, &e);  // plain = m * 2^e, m in [0.5, 1)
  return m == 0.5f ? plain : std::ldexp(1.0f, e);
}

void quantize_and_store_k(IndexCache cache, const void* k, int64_t n, int64_t k_ld, const int64_t* slots,
                          ScaleMode mode, KDtype dtype) {
  const int64_t P = cache.page_size;
  for (int64_t t = 0; t < n; ++t) {
    if (slots[t] < 0) continue;
    float amax = 0.0f;
    for (int64_t d = 0; d < kDim; ++d) {
      const float v = element(k, t * k_ld + d, dtype);
      if (std::isfinite(v)) amax = std::fmax(amax, std::fabs(v));
    }
    const float s = quant_scale(amax, mode);
    const float inv = 1.0f / s;
    for (int64_t d = 0; d < kDim; ++d) {
      const float v = element(k, t * k_ld + d, dtype);
      const float q = mode == ScaleMode::kFp32Divide ? v / s : v * inv;
      // NaN keeps its sign (spec'd behaviour); don't let the arithmetic decide.
      cache.data[k_byte(P, slots[t], d)] = float_to_e4m3(std::isnan(v) ? v : q);
    }
    std::memcpy(cache.data + scale_byte(P, slots[t]), &s, 4);
  }
}

void store_k_and_s(IndexCache cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                   const int64_t* slots) {
  for (int64_t t = 0; t < n; ++t) {
    if (slots[t] < 0) continue;
    for (int64_t d = 0; d < kDim; ++d) cache.data[k_byte(cache.page_size, slots[t], d)] = k[t * k_ld + d];
    std::memcpy(cache.data + scale_byte(cache.page_size, slots[t]), scale + t, 4);
  }
}

void gather_k(ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k) {
  for (int64_t t = 0; t < length; ++t) {
    const int64_t P = cache.page_size, slot = page_ids.at(t / P) * P + t % P;
    for (int64_t d = 0; d < kDim; ++d) out_k[t * kDim + d] = cache.data[k_byte(P, slot, d)];
  }
}

void gather_s(ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s) {
  for (int64_t t = 0; t < length; ++t) {
    const int64_t P = cache.page_size, slot = page_ids.at(t / P) * P + t % P;
    std::memcpy(out_s + t, cache.data + scale_byte(P, slot), 4);
  }
}

void gather_k_and_s(ConstIndexCache cache, const PagedBatch& b, uint8_t* out_k, float* out_s) {
  int64_t row = 0;
  for (int64_t r = 0; r < b.batch_size; ++r) {
    const int64_t len = b.cu_seq_lens ? b.cu_seq_lens.at(r + 1) - b.cu_seq_lens.at(r) : b.seq_lens.at(r);
    for (int64_t t = 0; t < len; ++t, ++row) {
      const int64_t P = cache.page_size, slot = b.page_table.at(r * b.table_ld + t / P) * P + t % P;
      for (int64_t d = 0; d < kDim; ++d) out_k[row * kDim + d] = cache.data[k_byte(P, slot, d)];
      std::memcpy(out_s + row, cache.data + scale_byte(P, slot), 4);
    }
  }
}

}  // namespace reference
}  // namespace nsa
