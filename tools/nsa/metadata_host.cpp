#include "metadata_host.h"

#include <algorithm>

namespace nsa {
namespace cli {

namespace {
std::vector<int32_t> cumulative(const std::vector<int32_t>& x) {
  std::vector<int32_t> cu(x.size() + 1, 0);
  for (size_t i = 0; i < x.size(); ++i) cu[i + 1] = cu[i] + x[i];
  return cu;
}
}  // namespace

HostMetadata precompute_metadata(const MetadataProblem& p) {
  HostMetadata h;
  const int64_t bs = p.batch, n = p.draft_tokens;
  const bool verify = p.mode == ForwardMode::kTargetVerify;
  const int64_t draft = verify ? n : 0;

  int64_t max_seq = 0;
  for (int64_t b = 0; b < bs; ++b) max_seq = std::max(max_seq, p.seq_lens[b]);
  h.table_cols = max_seq + draft;  // max_len (DECODE) or max_seqlen_k
  h.real_cols = (h.table_cols + p.page_size - 1) / p.page_size;

  h.cache_seqlens.resize(bs);
  for (int64_t b = 0; b < bs; ++b) h.cache_seqlens[b] = static_cast<int32_t>(p.seq_lens[b] + draft);
  h.cu_seqlens_k = cumulative(h.cache_seqlens);

  // Rows: which request owns each query row, and the unclipped causal length of the row.
  std::vector<int64_t> owner;
  std::vector<int32_t> expanded;
  for (int64_t b = 0; b < bs; ++b) {
    const int64_t qo = p.mode == ForwardMode::kDecode ? 1 : verify ? n : p.extend_lens[b];
    const int64_t kv = h.cache_seqlens[b];
    for (int64_t j = 0; j < qo; ++j) {
      owner.push_back(b);
      expanded.push_back(static_cast<int32_t>(p.mode == ForwardMode::kDecode ? kv : kv - qo + 1 + j));
    }
  }
  h.rows = static_cast<int64_t>(owner.size());
  if (p.mode != ForwardMode::kDecode) h.seqlens_expanded = expanded;
  h.nsa_cache_seqlens.resize(h.rows);
  for (int64_t r = 0; r < h.rows; ++r)
    h.nsa_cache_seqlens[r] = static_cast<int32_t>(std::min<int64_t>(expanded[r], p.topk));
  h.nsa_cu_seqlens_k = cumulative(h.nsa_cache_seqlens);

  // page_table_1 = repeat_rows(req_to_token[rpi, :cols], rows per request); real table every P-th slot / P.
  const auto& r2t = *p.req_to_token;
  h.page_table_1.resize(static_cast<size_t>(h.rows * h.table_cols));
  h.real_page_table.resize(static_cast<size_t>(h.rows * h.real_cols));
  h.row_length.resize(h.rows);
  for (int64_t r = 0; r < h.rows; ++r) {
    const int64_t b = owner[r];
    const int32_t* src = r2t.data() + p.req_pool_indices[b] * p.req_to_token_cols;
    std::copy(src, src + h.table_cols, h.page_table_1.begin() + r * h.table_cols);
    for (int64_t c = 0; c < h.real_cols; ++c)
      h.real_page_table[r * h.real_cols + c] = static_cast<int32_t>(src[c * p.page_size] / p.page_size);
    h.row_length[r] = h.cache_seqlens[b];
  }

  h.shape.mode = p.mode;
  h.shape.batch_size = bs;
  h.shape.max_len = h.table_cols;  // read in DECODE only (upstream passes -1 otherwise)
  h.shape.max_seqlen_k = h.table_cols;
  h.shape.seqlens_expanded_size = h.rows;
  return h;
}

}  // namespace cli
}  // namespace nsa
