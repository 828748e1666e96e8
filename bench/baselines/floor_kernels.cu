#include "floor_kernels.h"

namespace nsa {
namespace baseline {

namespace {

constexpr int64_t kPageBytes = 8448;

// 128 threads per page: 4 x 16 B of K each, the first 64 also one scale.
__global__ void __launch_bounds__(128)
    page_gather_floor_kernel(const uint8_t* __restrict__ cache, const int32_t* __restrict__ ids, int64_t pages,
                             uint8_t* __restrict__ out_k, float* __restrict__ out_s) {
  for (int64_t i = blockIdx.x; i < pages; i += gridDim.x) {
    const int64_t page = __ldg(ids + i);
    const uint4* src = reinterpret_cast<const uint4*>(cache + page * kPageBytes);
    uint4 k[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) k[j] = __ldg(src + threadIdx.x + 128 * j);
    const float s = threadIdx.x < 64 ? __ldg(reinterpret_cast<const float*>(src + 512) + threadIdx.x) : 0.0f;
    uint4* dst = reinterpret_cast<uint4*>(out_k + i * 8192);
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[threadIdx.x + 128 * j] = k[j];
    if (threadIdx.x < 64) out_s[i * 64 + threadIdx.x] = s;
  }
}

// 256 threads per CTA of `columns` tokens: per 512 tokens a thread reads its
// 16 table entries, then issues its 16 K loads (and, on lanes with chunk 1,
// the 16 scales) before it uses any: the bytes in flight the memory system
// needs, which a load-use-load loop would not have.
__global__ void __launch_bounds__(256)
    paged_read_floor_kernel(const uint8_t* __restrict__ cache, const int32_t* __restrict__ table, int64_t table_ld,
                            const int32_t* __restrict__ lens, int64_t width, int64_t ctas_per_request, int64_t columns,
                            unsigned* sink) {
  constexpr int64_t kPage = 64;
  constexpr int kLoads = 16;  // 512 tokens x 8 chunks of 16 B / 256 threads
  const int64_t b = blockIdx.x / ctas_per_request, c0 = (blockIdx.x % ctas_per_request) * columns;
  // Visible tokens only, as the op: < min(L_b, width) (and the CTA's chunk).
  const int64_t end = min(min(c0 + columns, width), static_cast<int64_t>(__ldg(lens + b)));
  const int chunk = static_cast<int>(threadIdx.x) & 7;
  unsigned acc = 0;
  for (int64_t t0 = c0; t0 < end; t0 += kLoads * 256 / 8) {
    const uint8_t* token[kLoads];
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      const int64_t t = t0 + ((k * 256 + static_cast<int>(threadIdx.x)) >> 3);
      token[k] = t < end ? cache + static_cast<int64_t>(__ldg(table + b * table_ld + t / kPage)) * kPageBytes +
                               (t % kPage) * 128
                         : nullptr;
    }
    uint4 v[kLoads];
    unsigned scale[kLoads];
#pragma unroll
    for (int k = 0; k < kLoads; ++k) {
      // t0 is a multiple of 512, so the token's offset in its page is (32 k + threadIdx.x / 8) % 64.
      const int off = (k * 32 + (static_cast<int>(threadIdx.x) >> 3)) & (kPage - 1);
      v[k] = token[k] ? __ldg(reinterpret_cast<const uint4*>(token[k] + chunk * 16)) : make_uint4(0, 0, 0, 0);
      scale[k] = token[k] && chunk == 1
                     ? __ldg(reinterpret_cast<const unsigned*>(token[k] + (kPage - off) * 128 + off * 4))
                     : 0u;
    }
#pragma unroll
    for (int k = 0; k < kLoads; ++k) acc ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w ^ scale[k];
  }
  if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;  // keeps the loads; (almost) never stores
}

// Half a warp per token, like the library's store: 16 B in and 8 B out per lane.
__global__ void __launch_bounds__(256) store_floor_kernel(uint8_t* __restrict__ cache, const uint8_t* __restrict__ k,
                                                          int64_t n, const int64_t* __restrict__ slots) {
  const int sub = threadIdx.x & 15;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * 16;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * 16 + (threadIdx.x >> 4); t < n; t += stride) {
    const int64_t slot = __ldg(slots + t);
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(k + t * 256) + sub);
    uint8_t* page = cache + (slot >> 6) * kPageBytes;
    *reinterpret_cast<uint2*>(page + (slot & 63) * 128 + sub * 8) = make_uint2(v.x ^ v.y, v.z ^ v.w);
    if (sub == 0) *reinterpret_cast<uint32_t*>(page + 8192 + (slot & 63) * 4) = v.x;
  }
}

// One warp per (request, 128 columns): 4 columns per lane, as 4-byte
// accesses or (kVec16, rows 16-byte aligned) one 16-byte access where all 4
// exist, the width build_metadata uses on aligned rows.
template <bool kVec16>
__global__ void __launch_bounds__(256)
    page_table_floor_kernel(const int32_t* __restrict__ r2t, int64_t ld, const int32_t* __restrict__ rpi, int64_t bs,
                            int64_t q, int64_t max_cols, FloorTables dst, const int32_t* __restrict__ lens) {
  const int64_t per_request = (max_cols + 127) / 128;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * 8;
  const int lane = threadIdx.x & 31;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * 8 + (threadIdx.x >> 5); w < bs * per_request; w += warps) {
    const int64_t b = w / per_request;
    const int64_t cols = lens != nullptr && __ldg(lens + b) < max_cols ? __ldg(lens + b) : max_cols;
    if ((w - b * per_request) * 128 >= cols) continue;  // past the request's row
    const int64_t c = (w - b * per_request) * 128 + lane * 4;
    const int32_t* src = r2t + static_cast<int64_t>(__ldg(rpi + b)) * ld;
    const bool vec = kVec16 && c + 4 <= cols;
    int4 v = make_int4(0, 0, 0, 0);
    if (vec) {
      v = __ldg(reinterpret_cast<const int4*>(src + c));
    } else {
      if (c < cols) v.x = __ldg(src + c);
      if (c + 1 < cols) v.y = __ldg(src + c + 1);
      if (c + 2 < cols) v.z = __ldg(src + c + 2);
      if (c + 3 < cols) v.w = __ldg(src + c + 3);
    }
    for (int d = 0; d < dst.count; ++d) {
      for (int64_t j = 0; j < q; ++j) {
        int32_t* row = dst.table[d] + (b * q + j) * dst.ld[d];
        if (vec) {
          *reinterpret_cast<int4*>(row + c) = v;
        } else {
          if (c < cols) row[c] = v.x;
          if (c + 1 < cols) row[c + 1] = v.y;
          if (c + 2 < cols) row[c + 2] = v.z;
          if (c + 3 < cols) row[c + 3] = v.w;
        }
      }
    }
  }
}

int capped_grid(int64_t blocks, int num_sms, int per_sm) {
  const int64_t cap = static_cast<int64_t>(num_sms) * per_sm;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

}  // namespace

cudaError_t page_table_floor(const int32_t* req_to_token, int64_t req_to_token_ld, const int32_t* rpi, int64_t bs,
                             int64_t q, int64_t cols, const FloorTables& dst, int num_sms, nsa::cudaStream stream,
                             const int32_t* lens) {
  const int64_t items = bs * ((cols + 127) / 128);
  if (items == 0) return cudaSuccess;
  page_table_floor_kernel<false>
      <<<capped_grid((items + 7) / 8, num_sms, 8), 256, 0, static_cast<cudaStream_t>(stream)>>>(req_to_token,
                                                                                                req_to_token_ld, rpi,
                                                                                                bs, q, cols, dst, lens);
  return cudaGetLastError();
}

cudaError_t page_table_floor_vec16(const int32_t* req_to_token, int64_t req_to_token_ld, const int32_t* rpi, int64_t bs,
                                   int64_t q, int64_t cols, const FloorTables& dst, int num_sms, nsa::cudaStream stream,
                                   const int32_t* lens) {
  const auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  bool ok = aligned(req_to_token) && req_to_token_ld % 4 == 0;
  for (int d = 0; d < dst.count; ++d) ok = ok && aligned(dst.table[d]) && dst.ld[d] % 4 == 0;
  if (!ok) return cudaErrorInvalidValue;
  const int64_t items = bs * ((cols + 127) / 128);
  if (items == 0) return cudaSuccess;
  page_table_floor_kernel<true>
      <<<capped_grid((items + 7) / 8, num_sms, 8), 256, 0, static_cast<cudaStream_t>(stream)>>>(req_to_token,
                                                                                                req_to_token_ld, rpi,
                                                                                                bs, q, cols, dst, lens);
  return cudaGetLastError();
}

cudaError_t page_gather_floor(const uint8_t* cache, const int32_t* page_ids, int64_t pages, uint8_t* out_k,
                              float* out_s, int num_sms, nsa::cudaStream stream) {
  if (pages == 0) return cudaSuccess;
  page_gather_floor_kernel<<<capped_grid(pages, num_sms, 8), 128, 0, static_cast<cudaStream_t>(stream)>>>(cache,
                                                                                                          page_ids,
                                                                                                          pages, out_k,
                                                                                                          out_s);
  return cudaGetLastError();
}

cudaError_t paged_read_floor(const uint8_t* cache, const int32_t* table, int64_t table_ld, const int32_t* lens,
                             int64_t batch, int64_t width, int64_t columns, unsigned* sink, nsa::cudaStream stream) {
  if (batch == 0 || width == 0) return cudaSuccess;
  if (columns <= 0 || columns % 512 != 0) return cudaErrorInvalidValue;
  const int64_t ctas_per_request = (width + columns - 1) / columns;
  paged_read_floor_kernel<<<static_cast<unsigned>(batch * ctas_per_request), 256, 0,
                            static_cast<cudaStream_t>(stream)>>>(cache, table, table_ld, lens, width, ctas_per_request,
                                                                 columns, sink);
  return cudaGetLastError();
}

cudaError_t store_floor(uint8_t* cache, const uint8_t* k, int64_t n, const int64_t* slots, int num_sms,
                        nsa::cudaStream stream) {
  if (n == 0) return cudaSuccess;
  store_floor_kernel<<<capped_grid((n + 15) / 16, num_sms, 16), 256, 0, static_cast<cudaStream_t>(stream)>>>(cache, k,
                                                                                                             n, slots);
  return cudaGetLastError();
}

}  // namespace baseline
}  // namespace nsa
