#include "fused_copy_baseline.h"

#include <algorithm>

namespace nsa {
namespace baseline {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;

// One flat field: dst[d][i + offset] = src[i + offset] for i < n.
struct FlatField {
  const int32_t* src;
  int32_t* dst[kFusedCopyMaxDests];
  int n;
  int offset;
};
// One table: dst[d][r * dst_ld[d] + c] = src[r * src_ld + c] for r < rows, c < cols.
struct TableField {
  const int32_t* src;
  int src_ld;
  int32_t* dst[kFusedCopyMaxDests];
  int dst_ld[kFusedCopyMaxDests];
  int rows, cols;
};

struct FusedCopyParams {
  FlatField cache, cu_k, expanded, nsa, nsa_cu, splits, tiles;
  TableField page_table, real_table;
};

template <int kDests>
__device__ __forceinline__ void copy_flat(const FlatField& f, int tid, int stride) {
  if (f.src == nullptr) return;
  for (int i = tid; i < f.n; i += stride) {
    const int32_t v = f.src[i + f.offset];
#pragma unroll
    for (int d = 0; d < kDests; ++d)
      if (f.dst[d] != nullptr) f.dst[d][i + f.offset] = v;
  }
}

template <int kDests>
__device__ __forceinline__ void copy_table(const TableField& f, int tid, int stride) {
  if (f.src == nullptr) return;
  const int n = f.rows * f.cols;
  for (int i = tid; i < n; i += stride) {
    const int r = i / f.cols, c = i % f.cols;
    const int32_t v = f.src[r * f.src_ld + c];
#pragma unroll
    for (int d = 0; d < kDests; ++d)
      if (f.dst[d] != nullptr) f.dst[d][r * f.dst_ld[d] + c] = v;
  }
}

// Field order of spec §6.2, one after another, no barrier (disjoint buffers).
template <int kDests>
__global__ void __launch_bounds__(kThreads) fused_copy_kernel(const __grid_constant__ FusedCopyParams p) {
  const int tid = blockIdx.x * kThreads + threadIdx.x;
  const int stride = gridDim.x * kThreads;
  copy_flat<kDests>(p.cache, tid, stride);
  copy_flat<kDests>(p.cu_k, tid, stride);
  copy_table<kDests>(p.page_table, tid, stride);
  copy_flat<kDests>(p.expanded, tid, stride);
  copy_flat<kDests>(p.nsa, tid, stride);
  copy_flat<kDests>(p.nsa_cu, tid, stride);
  copy_table<kDests>(p.real_table, tid, stride);
  copy_flat<kDests>(p.splits, tid, stride);
  copy_flat<kDests>(p.tiles, tid, stride);
}

bool fits_int32(int64_t v) { return v >= 0 && v <= INT32_MAX; }

}  // namespace

cudaError_t fused_copy_upstream_style(const MetadataCopyShape& shape, const MetadataSources& src,
                                      const MetadataBuffers* dsts, int count, nsa::cudaStream stream) {
  if (count < 1 || count > kFusedCopyMaxDests) return cudaErrorInvalidValue;
  const bool decode = shape.mode == ForwardMode::kDecode;
  const int64_t bs = shape.batch_size, n = decode ? bs : shape.seqlens_expanded_size;
  const int64_t rows = n, cols = decode ? shape.max_len : shape.max_seqlen_k;
  const int64_t rc = src.real_page_table_cols;
  bool ok = true;
  int64_t max_elements = 0;
  auto flat = [&](const int32_t* s, int32_t*(MetadataBuffers::*field), int64_t count_, int64_t offset) {
    FlatField f{};
    ok = ok && fits_int32(count_ + offset);
    if (s == nullptr || count_ <= 0) return f;
    f.src = s;
    for (int d = 0; d < count; ++d) f.dst[d] = dsts[d].*field;
    f.n = static_cast<int>(count_);
    f.offset = static_cast<int>(offset);
    max_elements = std::max(max_elements, count_);
    return f;
  };
  auto table = [&](const int32_t* s, int64_t s_ld, int32_t*(MetadataBuffers::*field), int64_t MetadataBuffers::*ld,
                   int64_t c) {
    TableField f{};
    if (s == nullptr || rows <= 0 || c <= 0) return f;
    f.src = s;
    f.src_ld = static_cast<int>(s_ld ? s_ld : c);
    ok = ok && fits_int32(rows * c) && fits_int32(rows * f.src_ld);
    for (int d = 0; d < count; ++d) {
      f.dst[d] = dsts[d].*field;
      f.dst_ld[d] = static_cast<int>(dsts[d].*ld);
      ok = ok && fits_int32(rows * (dsts[d].*ld));
    }
    f.rows = static_cast<int>(rows);
    f.cols = static_cast<int>(c);
    max_elements = std::max(max_elements, rows * c);
    return f;
  };
  FusedCopyParams p{};
  p.cache = flat(src.cache_seqlens, &MetadataBuffers::cache_seqlens, bs, 0);
  p.cu_k = flat(src.cu_seqlens_k, &MetadataBuffers::cu_seqlens_k, bs, 1);  // dst[0] untouched
  p.page_table = table(src.page_table_1, src.page_table_1_ld, &MetadataBuffers::page_table_1,
                       &MetadataBuffers::page_table_1_ld, cols);
  if (!decode) p.expanded = flat(src.seqlens_expanded, &MetadataBuffers::seqlens_expanded, n, 0);
  p.nsa = flat(src.nsa_cache_seqlens, &MetadataBuffers::nsa_cache_seqlens, n, 0);
  p.nsa_cu = flat(src.nsa_cu_seqlens_k, &MetadataBuffers::nsa_cu_seqlens_k, n, 1);
  p.real_table = table(src.real_page_table, src.real_page_table_ld, &MetadataBuffers::real_page_table,
                       &MetadataBuffers::real_page_table_ld, rc);
  p.splits = flat(src.flashmla_num_splits, &MetadataBuffers::flashmla_num_splits, n + 1, 0);
  p.tiles = flat(src.flashmla_metadata, &MetadataBuffers::flashmla_metadata, src.flashmla_metadata_size, 0);
  if (!ok) return cudaErrorInvalidValue;
  if (max_elements == 0) return cudaSuccess;
  const int grid = static_cast<int>(std::min<int64_t>((max_elements + kThreads - 1) / kThreads, kMaxBlocks));
  const auto s = static_cast<cudaStream_t>(stream);
  switch (count) {
    case 1: fused_copy_kernel<1><<<grid, kThreads, 0, s>>>(p); break;
    case 2: fused_copy_kernel<2><<<grid, kThreads, 0, s>>>(p); break;
    default: fused_copy_kernel<3><<<grid, kThreads, 0, s>>>(p); break;
  }
  return cudaGetLastError();
}

}  // namespace baseline
}  // namespace nsa
