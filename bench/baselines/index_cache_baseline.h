// Upstream-style baselines of the index-cache ops, kept only to measure
// against (benchmarks and `nsa bench`); they are not part of the library.
// They mimic the shapes of today's upstream paths, not their code:
//   - gather: one CTA per output token (SGLang PR #13812 style), the request of
//     each token found by binary search over cu_seq_lens;
//   - store: quantize (act_quant) into a staging buffer, then SetKAndS: two launches.
// The CPU loops (namespace cpu, every build) have the same structure, single-
// threaded, so `nsa bench` measures the same path on the CPU backend.
#pragma once

#include <cstdint>

#include "nsa/common.h"
#include "nsa/detail/quant.h"  // NSA_HOST_DEVICE

namespace nsa {
namespace baseline {

// The request output row `row` of a request-major batch belongs to: the last
// b with cu_seq_lens[b] <= row, found by binary search for every token, as
// the upstream per-token gather does (host loop and kernel alike).
NSA_HOST_DEVICE int64_t request_of_row(const int64_t* cu_seq_lens, int64_t batch, int64_t row) {
  int64_t lo = 0, hi = batch - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu_seq_lens[mid] <= row) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

namespace cpu {

void quantize_k(const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0, uint8_t* k_fp8, float* scale);
void set_k_and_s(uint8_t* cache, const uint8_t* k_fp8, const float* scale, const int64_t* slots, int64_t n);
void gather_k_and_s_per_token(const uint8_t* cache, const int32_t* page_table, int64_t table_ld,
                              const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens, uint8_t* out_k,
                              float* out_s);

}  // namespace cpu
}  // namespace baseline
}  // namespace nsa

#if defined(__CUDACC__) || defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>

namespace nsa {
namespace baseline {

cudaError_t gather_k_and_s_per_token(const uint8_t* cache, const int32_t* page_table, int64_t table_ld,
                                     const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens, uint8_t* out_k,
                                     float* out_s, nsa::cudaStream stream);

cudaError_t quantize_k(const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0, uint8_t* k_fp8, float* scale,
                       nsa::cudaStream stream);

cudaError_t set_k_and_s(uint8_t* cache, const uint8_t* k_fp8, const float* scale, const int64_t* slots, int64_t n,
                        nsa::cudaStream stream);

}  // namespace baseline
}  // namespace nsa
#endif
