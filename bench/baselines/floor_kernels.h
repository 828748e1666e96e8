// Floor kernels: the least work an op of the index cache can do on the same
// bytes, measured next to the op so a benchmark can say how far it is from
// what its memory pattern allows (not only from a contiguous copy). They are
// not implementations of the ops (no lengths, no quantization).
//   - page_gather_floor: full pages only; page id, then its 8192 K and 256
//     scale bytes, stored to consecutive rows. Two dependent memory round
//     trips and the page-scattered reads every paged gather has.
//   - store_floor: per token, its slot and 256 input bytes are loaded, and 128
//     + 4 bytes are stored at the slot: the round trip of a store without the
//     amax reduction and the conversion.
//   - paged_read_floor: the read of paged_mqa_logits alone: every visible
//     token's 128 K and 4 scale bytes (token < min(L_b, width)) through the page table,
//     with 16-byte loads all issued before any is used, nothing written (a
//     sink that is never stored in practice keeps the loads).
//   - page_table_floor: the page-table part of build_metadata alone: per
//     (request, 128 columns), the request's req_to_token row index, then its
//     columns, stored into q rows of every destination page table. No scalar
//     fields, no real_page_table, no scan. page_table_floor_vec16 does the
//     same with 16-byte accesses (rows 16-byte aligned), as the build does on
//     aligned rows; a benchmark takes the faster of the two as its floor.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "nsa/common.h"

namespace nsa {
namespace baseline {

// page_ids: [pages] flat (the batch's pages in output order); out_k [pages * 64, 128], out_s [pages * 64].
cudaError_t page_gather_floor(const uint8_t* cache, const int32_t* page_ids, int64_t pages, uint8_t* out_k,
                              float* out_s, int num_sms, nsa::cudaStream stream);

// CTAs of `columns` tokens (a multiple of 512) of request b = cta / ctas_per_request,
// ctas_per_request = ceil(width / columns); tokens < min(lens[b], width) are read; 64-token
// pages; table [batch, >= ceil(width / 64)] with row stride table_ld, every entry a valid page
// (not checked: the benches' tables); lens [batch]; sink [batch * ctas_per_request] (never read).
cudaError_t paged_read_floor(const uint8_t* cache, const int32_t* table, int64_t table_ld, const int32_t* lens,
                             int64_t batch, int64_t width, int64_t columns, unsigned* sink, nsa::cudaStream stream);

// paged_read_floor's bytes landed in shared memory, 512 tokens per step,
// two CTAs per SM (the wgmma kernel's occupancy at 512 columns): kCpAsync
// with the wgmma kernel's cp.async copies, kBulk with one bulk copy per page
// for K and one for its scales (whole pages; compute 9.0 and later, else
// cudaErrorNotSupported). No sink: the copies cannot be optimised away.
enum class PagedAsyncFloor { kCpAsync, kBulk };
cudaError_t paged_async_floor(PagedAsyncFloor kind, const uint8_t* cache, const int32_t* table, int64_t table_ld,
                              const int32_t* lens, int64_t batch, int64_t width, int64_t columns,
                              nsa::cudaStream stream);

// k: [n, 128] bf16 rows (as bytes, 256 each); slots: [n], all valid.
cudaError_t store_floor(uint8_t* cache, const uint8_t* k, int64_t n, const int64_t* slots, int num_sms,
                        nsa::cudaStream stream);

// Destination page tables of page_table_floor (passed by value).
struct FloorTables {
  static constexpr int kMax = 8;
  int32_t* table[kMax] = {};
  int64_t ld[kMax] = {};
  int count = 0;
};

// Rows [b * q, (b + 1) * q) of every table get columns [0, cols) of
// req_to_token row rpi[b]; lens (optional, device [bs]) shortens request b's
// columns to min(lens[b], cols).
cudaError_t page_table_floor(const int32_t* req_to_token, int64_t req_to_token_ld, const int32_t* rpi, int64_t bs,
                             int64_t q, int64_t cols, const FloorTables& dst, int num_sms, nsa::cudaStream stream,
                             const int32_t* lens = nullptr);
// The same with 16-byte accesses; cudaErrorInvalidValue unless req_to_token
// and every table are 16-byte aligned with strides that are multiples of 4.
cudaError_t page_table_floor_vec16(const int32_t* req_to_token, int64_t req_to_token_ld, const int32_t* rpi, int64_t bs,
                                   int64_t q, int64_t cols, const FloorTables& dst, int num_sms, nsa::cudaStream stream,
                                   const int32_t* lens = nullptr);

}  // namespace baseline
}  // namespace nsa
