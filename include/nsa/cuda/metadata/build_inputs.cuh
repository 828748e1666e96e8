// Per-request inputs of build_metadata: loading, query rows, validation.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/cuda/checked.cuh"
#include "nsa/cuda/metadata/build_params.cuh"
#include "nsa/cuda/metadata/launch_shape.cuh"

namespace nsa {
namespace kernels {

// Index arrays come as int32 or int64; the flag is uniform across the grid.
__device__ __forceinline__ int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<int64_t>(__ldg(static_cast<const long long*>(p) + i))
              : static_cast<int64_t>(__ldg(static_cast<const int32_t*>(p) + i));
}

// Query rows of a request with extend length q: in checked mode an invalid
// length (outside [0, N]) counts as 0 rows (it is recorded, and none of its
// rows is written).
template <bool kChecked>
__device__ __forceinline__ int64_t query_rows(const BuildParams& p, int64_t q) {
  return kChecked && (q < 0 || q > p.draft_tokens) ? 0 : q;
}

// DRAFT_EXTEND: the query rows of requests [0, b), b < kMetaThreads, summed
// by one warp (all loads in flight at once, then one warp reduction).
template <bool kChecked>
__device__ __forceinline__ int64_t extend_rows_before(const BuildParams& p, int64_t b, int lane) {
  uint32_t part = 0;  // R <= INT32_MAX (validated): 32 bits hold every partial sum
#pragma unroll
  for (int k = 0; k < kMetaThreads / 32; ++k) {
    const int64_t i = lane + 32 * k;
    if (i < b) part += static_cast<uint32_t>(query_rows<kChecked>(p, load_index(p.extend_lens, p.extend_lens_64, i)));
  }
  return __reduce_add_sync(0xffffffffu, part);
}

// The inputs of one request as loaded (before any narrowing or validation).
struct RequestInputs {
  int64_t kv64 = 0;  // cache length: seq_lens (+ N in TARGET_VERIFY)
  int64_t q = 0;     // query rows
  int64_t rpi = 0;   // req_to_token row
};

// Query rows per request when the mode fixes them (DECODE 1, TARGET_VERIFY
// N); 0 in DRAFT_EXTEND, whose rows come from the extend lengths.
__device__ __forceinline__ int64_t static_rows(const BuildParams& p) {
  return p.mode == static_cast<int32_t>(ForwardMode::kDecode)         ? 1
         : p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify) ? p.draft_tokens
                                                                      : 0;
}

__device__ __forceinline__ RequestInputs load_request(const BuildParams& p, int64_t b) {
  const int64_t static_q = static_rows(p);
  const bool verify = p.mode == static_cast<int32_t>(ForwardMode::kTargetVerify);
  RequestInputs r;
  r.kv64 = load_index(p.seq_lens, p.seq_lens_64, b) + (verify ? p.draft_tokens : 0);
  r.q = static_q > 0 ? static_q : load_index(p.extend_lens, p.extend_lens_64, b);
  r.rpi = load_index(p.req_pool_indices, p.req_pool_indices_64, b);
  return r;
}

// Its page-table rows may be read and written (always, unchecked).
template <bool kChecked>
__device__ __forceinline__ bool table_ok(const BuildParams& p, const RequestInputs& r) {
  if constexpr (kChecked) return r.kv64 >= 0 && r.kv64 <= p.max_kv && r.rpi >= 0 && r.rpi < p.req_to_token_rows;
  else return true;
}

// Checked mode: records request b's invalid inputs (q: its query rows after
// query_rows, which differ from r.q when the extend length is invalid).
__device__ __forceinline__ void record_request_errors(const BuildParams& p, int64_t b, const RequestInputs& r,
                                                      int64_t q) {
  if (q != r.q) record_error(p.error, OpId::kBuildMetadata, ArgId::kExtendLens, b, r.q);
  if (r.kv64 < 0 || r.kv64 > p.max_kv)  // checked before the int32 narrowing
    record_error(p.error, OpId::kBuildMetadata, ArgId::kSeqLens, b, r.kv64);
  if (r.rpi < 0 || r.rpi >= p.req_to_token_rows)
    record_error(p.error, OpId::kBuildMetadata, ArgId::kReqPoolIndices, b, r.rpi);
}

}  // namespace kernels
}  // namespace nsa
