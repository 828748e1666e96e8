// Upstream-style baseline of the metadata copies, kept only to measure
// against (`nsa bench`): SGLang before its fused copy (PR #17554) precomputed
// the fields once per step (PR #14781) and then copied every field into every
// backend's captured buffers with its own copy: one cudaMemcpyAsync per 1-D
// field and one cudaMemcpy2DAsync per page table, per destination.
//
// The field list is the one of docs/spec/metadata.md §6.2 (same elements as
// nsa::copy_metadata writes). The plan is plain C++ so the CPU backend of
// `nsa bench` replays the same copies with std::memcpy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "nsa/metadata.h"

namespace nsa {
namespace baseline {

// One copy: `rows` rows of `width` bytes; row r from src + r*src_pitch to dst + r*dst_pitch.
struct FieldCopy {
  void* dst = nullptr;
  size_t dst_pitch = 0;
  const void* src = nullptr;
  size_t src_pitch = 0;
  size_t width = 0;
  size_t rows = 1;
};

// The copies of docs/spec/metadata.md §6.2 for one destination, in upstream order. Absent optional
// fields (null source or destination) are skipped; empty copies are dropped.
inline std::vector<FieldCopy> metadata_field_copies(const MetadataCopyShape& shape, const MetadataSources& src,
                                                    const MetadataBuffers& dst) {
  const bool decode = shape.mode == ForwardMode::kDecode;
  const int64_t bs = shape.batch_size;
  const int64_t n = decode ? bs : shape.seqlens_expanded_size;  // per-row element count
  const int64_t rows = decode ? bs : shape.seqlens_expanded_size;
  const int64_t cols = decode ? shape.max_len : shape.max_seqlen_k;
  const size_t i4 = sizeof(int32_t);
  std::vector<FieldCopy> out;
  auto flat = [&](void* d, const void* s, int64_t count) {
    if (d && s && count > 0) out.push_back({d, 0, s, 0, static_cast<size_t>(count) * i4, 1});
  };
  auto table = [&](void* d, int64_t d_ld, const void* s, int64_t s_ld, int64_t r, int64_t c) {
    if (d && s && r > 0 && c > 0)
      out.push_back({d, static_cast<size_t>(d_ld) * i4, s, static_cast<size_t>(s_ld) * i4, static_cast<size_t>(c) * i4,
                     static_cast<size_t>(r)});
  };
  flat(dst.cache_seqlens, src.cache_seqlens, bs);
  flat(dst.cu_seqlens_k + 1, src.cu_seqlens_k + 1, bs);
  table(dst.page_table_1, dst.page_table_1_ld, src.page_table_1, src.page_table_1_ld ? src.page_table_1_ld : cols, rows,
        cols);
  if (!decode) flat(dst.seqlens_expanded, src.seqlens_expanded, n);
  flat(dst.nsa_cache_seqlens, src.nsa_cache_seqlens, n);
  flat(dst.nsa_cu_seqlens_k + 1, src.nsa_cu_seqlens_k + 1, n);
  table(dst.real_page_table, dst.real_page_table_ld, src.real_page_table,
        src.real_page_table_ld ? src.real_page_table_ld : src.real_page_table_cols, rows, src.real_page_table_cols);
  flat(dst.flashmla_num_splits, src.flashmla_num_splits, n + 1);
  flat(dst.flashmla_metadata, src.flashmla_metadata, src.flashmla_metadata_size);
  return out;
}

}  // namespace baseline
}  // namespace nsa

#if defined(__CUDACC__) || defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>

namespace nsa {
namespace baseline {

// Enqueues the copies of metadata_field_copies for each of `count` destinations on `stream`
// (cudaMemcpyAsync for one row, cudaMemcpy2DAsync for a table). `copies`, when given,
// receives the number of copies enqueued (the launches of this path).
cudaError_t copy_metadata_per_field(const MetadataCopyShape& shape, const MetadataSources& src,
                                    const MetadataBuffers* dsts, int64_t count, nsa::cudaStream stream,
                                    int64_t* copies = nullptr);

}  // namespace baseline
}  // namespace nsa
#endif
