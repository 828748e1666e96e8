// CUDA backend of the metadata ops: parameter packing onto the header-only
// kernels in nsa/cuda/metadata.cuh, launch-status check, nothing else. Host
// bounds come from the table's summary (MetadataTargets), O(1).
#include "cuda/cuda_check.h"
#include "metadata_backends.h"
#include "nsa/cuda/metadata.cuh"

namespace nsa {
namespace cuda {

namespace k = ::nsa::kernels;

void upload_metadata_targets(cudaStream stream, const MetadataBuffers* host, int64_t count, void* workspace) {
  NSA_CUDA_CHECK(cudaMemcpyAsync(workspace, host, static_cast<size_t>(count) * sizeof(MetadataBuffers),
                                 cudaMemcpyHostToDevice, stream));
}

void build_metadata(cudaStream stream, DeviceError* checked, const MetadataConfig& c, const MetadataInputs& in,
                    const MetadataTargets& targets) {
  k::BuildParams p{};
  p.seq_lens = in.seq_lens.data;
  p.req_pool_indices = in.req_pool_indices.data;
  p.extend_lens = in.extend_lens.data;
  p.seq_lens_64 = in.seq_lens.type == IndexType::kInt64;
  p.req_pool_indices_64 = in.req_pool_indices.type == IndexType::kInt64;
  p.extend_lens_64 = in.extend_lens.type == IndexType::kInt64;
  p.mode = static_cast<int32_t>(c.mode);
  p.req_to_token = in.req_to_token;
  p.req_to_token_ld = in.req_to_token_ld;
  p.batch = c.batch_size;
  p.draft_tokens = c.draft_tokens;
  p.topk = c.topk;
  p.page_size = c.page_size;
  p.page_shift = -1;
  for (int shift = 0; shift < 62; ++shift)
    if ((int64_t{1} << shift) == c.page_size) p.page_shift = shift;
  p.req_to_token_rows = in.req_to_token_rows;
  // A row may not be longer than its source row, any destination's
  // page_table_1 row, or P times any real_page_table row (checked mode
  // verifies it; both kernels size their page-table items from it).
  p.max_kv = in.req_to_token_cols;
  if (targets.page_table_1_cols.value < p.max_kv) p.max_kv = targets.page_table_1_cols.value;
  const int64_t real_cols = targets.real_page_table_cols.value;
  if (targets.real_page_table_cols.index >= 0 && real_cols <= INT64_MAX / c.page_size &&
      real_cols * c.page_size < p.max_kv)
    p.max_kv = real_cols * c.page_size;
  p.error = checked;
  p.flashmla_num_splits = in.flashmla_num_splits;
  p.flashmla_metadata = in.flashmla_metadata;
  p.flashmla_metadata_max = targets.flashmla_metadata_max;
  p.schedule_cta = (targets.fields_any & metadata_field_bit(MetadataField::kPagedMqaSchedule)) != 0 ? 1 : 0;
  p.paged_mqa_g1 = c.paged_mqa_layout == PagedMqaLayout::kG1;
  p.paged_mqa_clamp_min_len = c.paged_mqa_clamp_min_len;
  p.paged_mqa_atoms = detail::paged_mqa_atoms(c.mode == ForwardMode::kDecode ? 1 : c.draft_tokens, p.paged_mqa_g1);
  p.targets = targets.table;
  p.num_targets = targets.count;
  NSA_CUDA_CHECK(k::invoke_build_metadata(p, current_device_sm_count(), stream));
}

void paged_mqa_schedule(cudaStream stream, const PagedMqaScheduleArgs& a) {
  k::ScheduleJob j{};
  j.lens = a.context_lens;
  j.lens_ld = a.context_lens_ld ? a.context_lens_ld : a.next_n;
  j.lens_column = a.next_n - 1;
  j.batch = a.batch;
  j.g1 = a.layout == PagedMqaLayout::kG1;
  j.atoms = detail::paged_mqa_atoms(a.next_n, j.g1);
  j.clamp_min_len = a.clamp_min_len;
  j.out = a.schedule;
  j.sms = a.num_sms;
  NSA_CUDA_CHECK(k::invoke_paged_mqa_schedule(j, stream));
}

void copy_metadata(cudaStream stream, const MetadataCopyShape& s, const MetadataSources& src,
                   const MetadataTargets& targets) {
  using F = k::MetaField;
  const int64_t bs = s.batch_size;
  const int64_t rows = copy_rows(s), cols = copy_page_cols(s);
  const int64_t n = rows;  // per-row arrays: bs (DECODE) or E
  const int64_t rc = src.real_page_table_cols;
  k::CopyParams p{};
  // Field order = spec §6.2; small fields first so their warps start early.
  k::add_copy_job(p, F::kCacheSeqlens, src.cache_seqlens, 0, 1, bs, 0);
  k::add_copy_job(p, F::kCuSeqlensK, src.cu_seqlens_k, 0, 1, bs, 1);  // dst[0] untouched (upstream)
  if (s.mode != ForwardMode::kDecode) k::add_copy_job(p, F::kSeqlensExpanded, src.seqlens_expanded, 0, 1, n, 0);
  k::add_copy_job(p, F::kNsaCacheSeqlens, src.nsa_cache_seqlens, 0, 1, n, 0);
  k::add_copy_job(p, F::kNsaCuSeqlensK, src.nsa_cu_seqlens_k, 0, 1, n, 1);
  k::add_copy_job(p, F::kFlashmlaNumSplits, src.flashmla_num_splits, 0, 1, n + 1, 0);  // from index 0
  k::add_copy_job(p, F::kFlashmlaMetadata, src.flashmla_metadata, 0, 1, src.flashmla_metadata_size, 0);
  k::add_copy_job(p, F::kPageTable1, src.page_table_1, src.page_table_1_ld ? src.page_table_1_ld : cols, rows, cols, 0);
  k::add_copy_job(p, F::kRealPageTable, src.real_page_table, src.real_page_table_ld ? src.real_page_table_ld : rc, rows,
                  rc, 0);
  p.targets = targets.table;
  p.num_targets = targets.count;
  NSA_CUDA_CHECK(k::invoke_copy_metadata(p, current_device_sm_count(), stream));
}

}  // namespace cuda
}  // namespace nsa
