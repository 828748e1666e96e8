#include "index_cache_baseline.h"

#include "nsa/detail/quant.h"

namespace nsa {
namespace baseline {

namespace {

constexpr int64_t kPageBytes = 8448;

// One CTA (32 threads) per output token: 4 bytes of K per lane, lane 0 the scale.
__global__ void gather_per_token_kernel(const uint8_t* cache, const int32_t* table, int64_t ld, const int64_t* cu,
                                        int64_t batch, uint8_t* out_k, float* out_s) {
  const int64_t row = blockIdx.x;
  const int64_t b = request_of_row(cu, batch, row);
  const int64_t t = row - cu[b];
  const int64_t page = table[b * ld + t / 64];
  const uint8_t* src = cache + page * kPageBytes;
  reinterpret_cast<uint32_t*>(out_k + row * 128)[threadIdx.x] =
      reinterpret_cast<const uint32_t*>(src + (t % 64) * 128)[threadIdx.x];
  if (threadIdx.x == 0) out_s[row] = reinterpret_cast<const float*>(src + 8192)[t % 64];
}

// act_quant: one CTA of 128 threads per token, shared-memory amax.
__global__ void quantize_kernel(const uint16_t* k, int64_t ld, bool ue8m0, uint8_t* q, float* scale) {
  __shared__ float warp_max[4];
  const int64_t t = blockIdx.x;
  const float x = detail::bf16_bits_to_float(k[t * ld + threadIdx.x]);
  float a = detail::finite_abs(x);
  for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = a;
  __syncthreads();
  const float amax = fmaxf(fmaxf(warp_max[0], warp_max[1]), fmaxf(warp_max[2], warp_max[3]));
  const float s = detail::scale_from_amax(amax, ue8m0);
  q[t * 128 + threadIdx.x] = detail::quantize_e4m3(x, 1.0f / s);
  if (threadIdx.x == 0) scale[t] = s;
}

// SetKAndS: one CTA of 32 threads per token.
__global__ void set_k_and_s_kernel(uint8_t* cache, const uint8_t* q, const float* scale, const int64_t* slots) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) return;
  uint8_t* page = cache + (slot / 64) * kPageBytes;
  reinterpret_cast<uint32_t*>(page + (slot % 64) * 128)[threadIdx.x] =
      reinterpret_cast<const uint32_t*>(q + t * 128)[threadIdx.x];
  if (threadIdx.x == 0) reinterpret_cast<float*>(page + 8192)[slot % 64] = scale[t];
}

}  // namespace

cudaError_t gather_k_and_s_per_token(const uint8_t* cache, const int32_t* page_table, int64_t table_ld,
                                     const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens, uint8_t* out_k,
                                     float* out_s, nsa::cudaStream stream) {
  if (total_tokens == 0) return cudaSuccess;
  gather_per_token_kernel<<<static_cast<unsigned>(total_tokens), 32, 0, stream>>>(cache, page_table, table_ld,
                                                                                  cu_seq_lens, batch, out_k, out_s);
  return cudaGetLastError();
}

cudaError_t quantize_k(const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0, uint8_t* k_fp8, float* scale,
                       nsa::cudaStream stream) {
  if (n == 0) return cudaSuccess;
  quantize_kernel<<<static_cast<unsigned>(n), 128, 0, stream>>>(k, k_ld, ue8m0, k_fp8, scale);
  return cudaGetLastError();
}

cudaError_t set_k_and_s(uint8_t* cache, const uint8_t* k_fp8, const float* scale, const int64_t* slots, int64_t n,
                        nsa::cudaStream stream) {
  if (n == 0) return cudaSuccess;
  set_k_and_s_kernel<<<static_cast<unsigned>(n), 32, 0, stream>>>(cache, k_fp8, scale, slots);
  return cudaGetLastError();
}

}  // namespace baseline
}  // namespace nsa
