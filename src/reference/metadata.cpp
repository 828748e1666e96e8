#include "reference/metadata.h"

#include <algorithm>

namespace nsa {
namespace reference {

std::vector<int32_t> cu(const std::vector<int32_t>& x) {
  std::vector<int32_t> out(1, 0);
  int64_t sum = 0;
  for (int32_t v : x) {
    sum += v;
    out.push_back(static_cast<int32_t>(sum));
  }
  return out;
}

std::vector<int32_t> clamp_topk(const std::vector<int32_t>& x, int64_t topk) {
  std::vector<int32_t> out;
  for (int32_t v : x) out.push_back(static_cast<int32_t>(std::min<int64_t>(v, topk)));
  return out;
}

std::vector<int32_t> expand(const std::vector<int32_t>& qo, const std::vector<int32_t>& kv) {
  std::vector<int32_t> out;
  for (size_t b = 0; b < qo.size(); ++b)
    for (int64_t j = 0; j < qo[b]; ++j) out.push_back(static_cast<int32_t>(int64_t{kv[b]} - qo[b] + 1 + j));
  return out;
}

std::vector<int32_t> paged_mqa_schedule(const std::vector<int32_t>& lens, int64_t next_n, int64_t num_sms,
                                        PagedMqaLayout layout, bool clamp_min_len) {
  const bool g1 = layout == PagedMqaLayout::kG1;
  const int64_t B = static_cast<int64_t>(lens.size()), S = num_sms;
  // Step 1: units u_b = ceil(L_b / 256) and their inclusive prefix U_b.
  std::vector<int64_t> u, U;
  int64_t sum = 0;
  for (int32_t len : lens) {
    const int64_t L = clamp_min_len ? std::max<int64_t>(len, 1) : std::max<int64_t>(len, 0);
    u.push_back((L + 255) / 256);
    sum += u.back();
    U.push_back(sum);
  }
  // Step 2: next_n atoms (G4: ceil(N / 2) for N >= 2; G1: none).
  const int64_t A = g1 ? 1 : (next_n >= 2 ? (next_n + 1) / 2 : 1);
  const int64_t T = sum * A;
  // Step 3: q units per SM, the r left over to the last SMs (G4) or the first ones (G1).
  const int64_t q = T / S, r = T % S;
  std::vector<int32_t> out;
  for (int64_t i = 0; i <= S; ++i) {
    const int64_t s = g1 ? i * q + std::min(i, r) : i * q + std::max<int64_t>(0, i - (S - r));
    // Step 4: the first request b whose U_b * A > s.
    int64_t b = 0;
    while (b < B && U[b] * A <= s) ++b;
    const int64_t before = b == 0 ? 0 : U[b - 1] * A;
    if (b == B || (!g1 && i == S)) {  // past every unit; G4's sentinel (step 5) is explicit
      out.push_back(static_cast<int32_t>(B * A));
      out.push_back(static_cast<int32_t>(g1 ? s - before : 0));
    } else {
      out.push_back(static_cast<int32_t>(b * A + (s - before) / u[b]));
      out.push_back(static_cast<int32_t>((s - before) % u[b]));
    }
  }
  return out;
}

void build_metadata(const MetadataConfig& c, const MetadataInputs& in, const MetadataBuffers* targets, int64_t count) {
  const int64_t bs = c.batch_size;
  if (bs == 0) return;
  const int64_t draft = c.mode == ForwardMode::kTargetVerify ? c.draft_tokens : 0;  // §4.1

  std::vector<int32_t> cache_seqlens, qo;
  for (int64_t b = 0; b < bs; ++b) {
    cache_seqlens.push_back(static_cast<int32_t>(in.seq_lens.at(b) + draft));
    if (c.mode == ForwardMode::kDecode) qo.push_back(1);                                                // §4.2
    else if (c.mode == ForwardMode::kTargetVerify) qo.push_back(static_cast<int32_t>(c.draft_tokens));  // §4.3
    else qo.push_back(static_cast<int32_t>(in.extend_lens.at(b)));                                      // §4.4
  }
  const std::vector<int32_t> cu_seqlens_k = cu(cache_seqlens);
  const std::vector<int32_t> expanded = expand(qo, cache_seqlens);  // DECODE: equals cache_seqlens
  const std::vector<int32_t> nsa_cache = clamp_topk(expanded, c.topk);
  const std::vector<int32_t> nsa_cu = cu(nsa_cache);

  // page_table_1 = repeat_rows(req_to_token[rpi, :L], qo) with L = the row's
  // request's cache_seqlens (§5.6: each row only up to its own length).
  struct Row {
    const int32_t* src;
    int64_t len;
  };
  std::vector<Row> page_rows;
  for (int64_t b = 0; b < bs; ++b)
    for (int32_t j = 0; j < qo[b]; ++j)
      page_rows.push_back({in.req_to_token + in.req_pool_indices.at(b) * in.req_to_token_ld, cache_seqlens[b]});
  const int64_t R = static_cast<int64_t>(page_rows.size());

  for (int64_t d = 0; d < count; ++d) {
    const MetadataBuffers& t = targets[d];
    for (int64_t b = 0; b < bs; ++b) t.cache_seqlens[b] = cache_seqlens[b];
    for (int64_t i = 0; i <= bs; ++i) t.cu_seqlens_k[i] = cu_seqlens_k[i];
    for (int64_t r = 0; r < R; ++r) {
      if (t.seqlens_expanded) t.seqlens_expanded[r] = expanded[r];
      t.nsa_cache_seqlens[r] = nsa_cache[r];
    }
    for (int64_t i = 0; i <= R; ++i) t.nsa_cu_seqlens_k[i] = nsa_cu[i];
    for (int64_t r = 0; r < R; ++r) {
      int32_t* row = t.page_table_1 + r * t.page_table_1_ld;
      for (int64_t col = 0; col < page_rows[r].len; ++col) row[col] = page_rows[r].src[col];
      if (t.real_page_table) {  // real[r, p] = page_table_1[r, p*P] / P, p < ceil(L/P)
        int32_t* real = t.real_page_table + r * t.real_page_table_ld;
        for (int64_t p = 0; p * c.page_size < page_rows[r].len; ++p)
          real[p] = static_cast<int32_t>(int64_t{row[p * c.page_size]} / c.page_size);
      }
    }
    if (in.flashmla_num_splits && t.flashmla_num_splits)
      for (int64_t i = 0; i <= R; ++i) t.flashmla_num_splits[i] = in.flashmla_num_splits[i];
    if (in.flashmla_metadata && t.flashmla_metadata)
      for (int64_t i = 0; i < t.flashmla_metadata_size; ++i) t.flashmla_metadata[i] = in.flashmla_metadata[i];
    if (t.paged_mqa_schedule) {  // §10: one row per request, its cache length, next_n = q_b
      const int64_t next_n = c.mode == ForwardMode::kDecode ? 1 : c.draft_tokens;
      const std::vector<int32_t> schedule =
          paged_mqa_schedule(cache_seqlens, next_n, t.paged_mqa_num_sms, c.paged_mqa_layout, c.paged_mqa_clamp_min_len);
      for (size_t i = 0; i < schedule.size(); ++i) t.paged_mqa_schedule[i] = schedule[i];
    }
  }
}

namespace {
void copy_flat(int32_t* dst, const int32_t* src, int64_t first, int64_t end) {
  for (int64_t i = first; i < end; ++i) dst[i] = src[i];
}
void copy_rows(int32_t* dst, int64_t dst_ld, const int32_t* src, int64_t src_ld, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t col = 0; col < cols; ++col) dst[r * dst_ld + col] = src[r * src_ld + col];
}
}  // namespace

void copy_metadata(const MetadataCopyShape& s, const MetadataSources& src, const MetadataBuffers* targets,
                   int64_t count) {
  const int64_t bs = s.batch_size;
  if (bs == 0) return;
  const bool decode = s.mode == ForwardMode::kDecode;
  const int64_t n = decode ? bs : s.seqlens_expanded_size;  // rows of the per-row arrays and tables
  const int64_t cols = decode ? s.max_len : s.max_seqlen_k;
  const int64_t rc = src.real_page_table_cols;
  for (int64_t d = 0; d < count; ++d) {
    const MetadataBuffers& t = targets[d];
    copy_flat(t.cache_seqlens, src.cache_seqlens, 0, bs);           // 1
    copy_flat(t.cu_seqlens_k, src.cu_seqlens_k, 1, bs + 1);         // 2: dst[0] untouched
    copy_rows(t.page_table_1, t.page_table_1_ld, src.page_table_1,  // 3
              src.page_table_1_ld ? src.page_table_1_ld : cols, n, cols);
    if (!decode && src.seqlens_expanded && t.seqlens_expanded)  // 4
      copy_flat(t.seqlens_expanded, src.seqlens_expanded, 0, n);
    copy_flat(t.nsa_cache_seqlens, src.nsa_cache_seqlens, 0, n);    // 5
    copy_flat(t.nsa_cu_seqlens_k, src.nsa_cu_seqlens_k, 1, n + 1);  // 6: dst[0] untouched
    if (src.real_page_table && t.real_page_table)                   // 7
      copy_rows(t.real_page_table, t.real_page_table_ld, src.real_page_table,
                src.real_page_table_ld ? src.real_page_table_ld : rc, n, rc);
    if (src.flashmla_num_splits && t.flashmla_num_splits)  // 8: from index 0
      copy_flat(t.flashmla_num_splits, src.flashmla_num_splits, 0, n + 1);
    if (src.flashmla_metadata && t.flashmla_metadata)  // 9
      copy_flat(t.flashmla_metadata, src.flashmla_metadata, 0, src.flashmla_metadata_size);
  }
}

}  // namespace reference
}  // namespace nsa
