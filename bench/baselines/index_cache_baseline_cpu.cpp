// CPU loops of the index-cache baselines (index_cache_baseline.h).
#include <cstring>

#include "index_cache_baseline.h"
#include "nsa/detail/quant.h"
#include "nsa/index_cache.h"

namespace nsa {
namespace baseline {
namespace cpu {

using L = IndexCacheLayout;

void quantize_k(const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0, uint8_t* k_fp8, float* scale) {
  for (int64_t t = 0; t < n; ++t) {
    const uint16_t* row = k + t * k_ld;
    float amax = 0.0f;
    for (int64_t d = 0; d < L::kHeadDim; ++d) {
      const float a = detail::finite_abs(detail::bf16_bits_to_float(row[d]));
      amax = a > amax ? a : amax;
    }
    const float s = detail::scale_from_amax(amax, ue8m0);
    const float inv = 1.0f / s;
    for (int64_t d = 0; d < L::kHeadDim; ++d)
      k_fp8[t * L::kHeadDim + d] = detail::float_to_e4m3_satfinite(detail::bf16_bits_to_float(row[d]) * inv);
    scale[t] = s;
  }
}

void set_k_and_s(uint8_t* cache, const uint8_t* k_fp8, const float* scale, const int64_t* slots, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    std::memcpy(cache + L::k_offset(slot), k_fp8 + t * L::kHeadDim, L::kHeadDim);
    std::memcpy(cache + L::scale_offset(slot), scale + t, sizeof(float));
  }
}

void gather_k_and_s_per_token(const uint8_t* cache, const int32_t* page_table, int64_t table_ld,
                              const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens, uint8_t* out_k,
                              float* out_s) {
  for (int64_t row = 0; row < total_tokens; ++row) {
    const int64_t b = request_of_row(cu_seq_lens, batch, row);
    const int64_t t = row - cu_seq_lens[b];
    const int64_t slot =
        static_cast<int64_t>(page_table[b * table_ld + t / L::kPageSize]) * L::kPageSize + t % L::kPageSize;
    std::memcpy(out_k + row * L::kHeadDim, cache + L::k_offset(slot), L::kHeadDim);
    std::memcpy(out_s + row, cache + L::scale_offset(slot), sizeof(float));
  }
}

}  // namespace cpu
}  // namespace baseline
}  // namespace nsa
