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

// The end of a CTA's visible tokens, as the op: < min(L_b, width) and the CTA's chunk.
__device__ __forceinline__ int64_t floor_end(const int32_t* lens, int64_t b, int64_t c0, int64_t columns,
                                             int64_t width) {
  return min(min(c0 + columns, width), static_cast<int64_t>(__ldg(lens + b)));
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
  const int64_t end = floor_end(lens, b, c0, columns, width);
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

// The same bytes as paged_read_floor_kernel, landed in shared memory, 512
// tokens per step with nothing else in flight, in dynamic shared memory sized
// so that two CTAs fit an SM (as the wgmma kernel at 512 columns): with
// cp.async (16-byte K copies, 4-byte scales, as the wgmma kernel issues
// them) or with bulk copies (one thread, a whole page's 8192 K and 256 scale
// bytes per copy, an mbarrier: the way a TMA pipeline loads).
constexpr int kAsyncFloorShared = 96 * 1024;
constexpr int kAsyncFloorScales = 512 * 128;  // offset of the scales in the shared buffer

__global__ void __launch_bounds__(256)
    paged_cp_async_floor_kernel(const uint8_t* __restrict__ cache, const int32_t* __restrict__ table, int64_t table_ld,
                                const int32_t* __restrict__ lens, int64_t width, int64_t ctas_per_request,
                                int64_t columns) {
  extern __shared__ __align__(128) uint8_t floor_smem[];
  const int64_t b = blockIdx.x / ctas_per_request, c0 = (blockIdx.x % ctas_per_request) * columns;
  const int64_t end = floor_end(lens, b, c0, columns, width);
  const int chunk = static_cast<int>(threadIdx.x) & 7;
  const unsigned base = static_cast<unsigned>(__cvta_generic_to_shared(floor_smem));
  for (int64_t t0 = c0; t0 < end; t0 += 512) {
    int64_t page[16];
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      const int64_t t = t0 + ((k * 256 + static_cast<int>(threadIdx.x)) >> 3);
      page[k] = t < end ? static_cast<int64_t>(__ldg(table + b * table_ld + t / 64)) : -1;
    }
#pragma unroll
    for (int k = 0; k < 16; ++k) {
      const int slot = (k * 256 + static_cast<int>(threadIdx.x)) >> 3, off = slot & 63;
      if (page[k] < 0) continue;
      const uint8_t* src = cache + page[k] * kPageBytes;
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(base + slot * 128 + chunk * 16),
                   "l"(src + off * 128 + chunk * 16)
                   : "memory");
      if (chunk == 1)
        asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(base + kAsyncFloorScales + slot * 4),
                     "l"(src + 8192 + off * 4)
                     : "memory");
    }
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
  }
}

__global__ void __launch_bounds__(256)
    paged_bulk_floor_kernel(const uint8_t* __restrict__ cache, const int32_t* __restrict__ table, int64_t table_ld,
                            const int32_t* __restrict__ lens, int64_t width, int64_t ctas_per_request,
                            int64_t columns) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) uint8_t floor_smem[];
  __shared__ __align__(8) uint64_t landed;
  const int64_t b = blockIdx.x / ctas_per_request, c0 = (blockIdx.x % ctas_per_request) * columns;
  const int64_t end = floor_end(lens, b, c0, columns, width);
  const unsigned base = static_cast<unsigned>(__cvta_generic_to_shared(floor_smem));
  const unsigned bar = static_cast<unsigned>(__cvta_generic_to_shared(&landed));
  if (threadIdx.x == 0) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  unsigned phase = 0;
  for (int64_t t0 = c0; t0 < end; t0 += 512) {
    if (threadIdx.x == 0) {
      // Whole pages holding a visible token (a TMA pipeline reads whole pages).
      const int pages = static_cast<int>((min(end - t0, int64_t{512}) + 63) / 64);
      int64_t page[8];
#pragma unroll
      for (int p = 0; p < 8; ++p)
        page[p] = p < pages ? static_cast<int64_t>(__ldg(table + b * table_ld + t0 / 64 + p)) : 0;
      asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(pages * (8192 + 256))
                   : "memory");
      for (int p = 0; p < pages; ++p) {
        const uint8_t* src = cache + page[p] * kPageBytes;
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 8192, [%2];\n" ::"r"(
                base + p * 8192),
            "l"(src), "r"(bar)
            : "memory");
        asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], 256, [%2];\n" ::"r"(
                         base + kAsyncFloorScales + p * 256),
                     "l"(src + 8192), "r"(bar)
                     : "memory");
      }
    }
    unsigned done = 0;
    do {
      asm volatile(
          "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(bar), "r"(phase)
          : "memory");
    } while (done == 0);
    phase ^= 1u;
    __syncthreads();  // the buffer is refilled next step
  }
#else
  __trap();  // the host launches it on compute 9.0 and later only
#endif
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

// CTAs per request of the paged floors: 0 with nothing to launch, -1 for
// columns that are not a positive multiple of 512.
int64_t paged_floor_ctas_per_request(int64_t batch, int64_t width, int64_t columns) {
  if (columns <= 0 || columns % 512 != 0) return -1;
  return batch == 0 || width == 0 ? 0 : (width + columns - 1) / columns;
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
  const int64_t ctas_per_request = paged_floor_ctas_per_request(batch, width, columns);
  if (ctas_per_request <= 0) return ctas_per_request == 0 ? cudaSuccess : cudaErrorInvalidValue;
  paged_read_floor_kernel<<<static_cast<unsigned>(batch * ctas_per_request), 256, 0,
                            static_cast<cudaStream_t>(stream)>>>(cache, table, table_ld, lens, width, ctas_per_request,
                                                                 columns, sink);
  return cudaGetLastError();
}

cudaError_t paged_async_floor(PagedAsyncFloor kind, const uint8_t* cache, const int32_t* table, int64_t table_ld,
                              const int32_t* lens, int64_t batch, int64_t width, int64_t columns,
                              nsa::cudaStream stream) {
  const int64_t ctas_per_request = paged_floor_ctas_per_request(batch, width, columns);
  if (ctas_per_request <= 0) return ctas_per_request == 0 ? cudaSuccess : cudaErrorInvalidValue;
  int device = 0, major = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (e != cudaSuccess) return e;
  if (kind == PagedAsyncFloor::kBulk && major < 9) return cudaErrorNotSupported;
  const auto kernel = kind == PagedAsyncFloor::kBulk ? paged_bulk_floor_kernel : paged_cp_async_floor_kernel;
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kAsyncFloorShared);
  if (e != cudaSuccess) return e;
  kernel<<<static_cast<unsigned>(batch * ctas_per_request), 256, kAsyncFloorShared,
           static_cast<cudaStream_t>(stream)>>>(cache, table, table_ld, lens, width, ctas_per_request, columns);
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
