// Backend entry points of the index-cache ops. The public API (index_cache.cpp)
// validates every host-visible argument first; backends never allocate. The
// CPU backend also validates the device-resident values (slots, page ids,
// lengths) in a pre-pass and throws before writing anything; the CUDA backend
// does so in the kernels in checked mode only.
#pragma once

#include "nsa/index_cache.h"

namespace nsa {

namespace cpu {
void quantize_and_store_k(int threads, IndexCache cache, const void* k, int64_t n, int64_t k_ld, const int64_t* slots,
                          ScaleMode mode, KDtype k_dtype);
void store_k_and_s(int threads, IndexCache cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                   const int64_t* slots);
void gather_k(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k);
void gather_s(int threads, ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s);
void gather_k_and_s(int threads, ConstIndexCache cache, const PagedBatch& batch, uint8_t* out_k, float* out_s,
                    int64_t out_capacity);
}  // namespace cpu

// `checked` (device memory) non-null: validate device values and record violations there.
namespace cuda {
void quantize_and_store_k(cudaStream stream, DeviceError* checked, IndexCache cache, const void* k, int64_t n,
                          int64_t k_ld, const int64_t* slots, ScaleMode mode, KDtype k_dtype);
void store_k_and_s(cudaStream stream, DeviceError* checked, IndexCache cache, const uint8_t* k, int64_t n, int64_t k_ld,
                   const float* scale, const int64_t* slots);
void gather_k(cudaStream stream, DeviceError* checked, ConstIndexCache cache, int64_t length, Indices page_ids,
              uint8_t* out_k);
void gather_s(cudaStream stream, DeviceError* checked, ConstIndexCache cache, int64_t length, Indices page_ids,
              float* out_s);
void gather_k_and_s(cudaStream stream, DeviceError* checked, ConstIndexCache cache, const PagedBatch& batch,
                    uint8_t* out_k, float* out_s, int64_t out_capacity);
}  // namespace cuda

}  // namespace nsa
