// Random host data and host<->backend transfers shared by the tests, benchmarks and the CLI.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "buffer.h"

namespace nsa {
namespace support {

inline std::vector<uint8_t> random_bytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i += 8) {
    const uint64_t r = rng();
    std::memcpy(v.data() + i, &r, std::min<size_t>(8, n - i));
  }
  return v;
}

// Random fp8 e4m3 bytes with the two NaN codes (0x7f, 0xff) replaced by 1.5.
inline std::vector<uint8_t> random_fp8(std::mt19937_64& rng, size_t n) {
  auto v = random_bytes(rng, n);
  for (auto& x : v)
    if ((x & 0x7f) == 0x7f) x = 0x3c;
  return v;
}

// `pages` random indexer-cache pages of 64 tokens (64 x 128 fp8 K bytes, then
// 64 fp32 scales): valid fp8 K, scales uniform in [0.001, 0.01).
inline std::vector<uint8_t> random_index_pages(std::mt19937_64& rng, int64_t pages) {
  constexpr int64_t kTokens = 64, kDim = 128, kPageBytes = kTokens * (kDim + 4);
  auto host = random_fp8(rng, static_cast<size_t>(pages * kPageBytes));
  std::uniform_real_distribution<float> scale(0.001f, 0.01f);
  for (int64_t p = 0; p < pages; ++p)
    for (int64_t o = 0; o < kTokens; ++o) {
      const float s = scale(rng);
      std::memcpy(&host[static_cast<size_t>(p * kPageBytes + kTokens * kDim + o * 4)], &s, 4);
    }
  return host;
}

template <class T>
std::vector<T> random_ints(std::mt19937_64& rng, size_t n, int64_t lo, int64_t hi) {
  std::uniform_int_distribution<int64_t> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(rng));
  return v;
}

// bf16 bits of normal values whose per-row magnitude spans many binades.
inline std::vector<uint16_t> random_bf16(std::mt19937_64& rng, int64_t rows, int64_t ld) {
  std::vector<uint16_t> v(static_cast<size_t>(rows * ld));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> log_mag(-12.0f, 12.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float mag = std::exp2(log_mag(rng));
    for (int64_t d = 0; d < ld; ++d) {
      const float f = normal(rng) * mag;
      uint32_t u;
      std::memcpy(&u, &f, 4);
      v[static_cast<size_t>(r * ld + d)] = static_cast<uint16_t>(u >> 16);
    }
  }
  return v;
}

template <class T>
Buffer to_backend(Backend b, const std::vector<T>& v) {
  Buffer buf(b, v.size() * sizeof(T));
  buf.upload(v);
  return buf;
}

template <class T>
std::vector<T> from_backend(const Buffer& buf, size_t count) {
  std::vector<T> v(count);
  buf.download(v.data(), count * sizeof(T));
  return v;
}

}  // namespace support
}  // namespace nsa
