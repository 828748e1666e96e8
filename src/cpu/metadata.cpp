// CPU backend of the metadata ops. build_metadata: one sequential pass over
// the batch writes the per-request and per-row scalars (the scans), then the
// page tables are copied per request with memcpy-sized row copies, split over
// threads when the bytes justify it. copy_metadata: one memcpy per row per
// field per destination. No scratch memory: a thread finds the first query
// row of its request range by re-walking the query counts (O(B)).
//
// build_metadata always validates the device-resident inputs (the
// preconditions listed in nsa/metadata.h) in a pre-pass over the batch and
// throws before writing anything. copy_metadata reads no index that addresses
// memory (every size is a host value checked by the public API), so it has no
// device values to validate.
#include <algorithm>
#include <cstring>
#include <limits>
#include <string>

#include "common/check.h"
#include "cpu/parallel.h"
#include "metadata_backends.h"
#include "nsa/detail/paged_mqa_schedule.h"

namespace nsa {
namespace cpu {

namespace {

int64_t load_index(Indices v, int64_t i) { return v.at(i); }

// Query rows of request b (DECODE 1, TARGET_VERIFY N, DRAFT_EXTEND e_b).
int64_t query_rows(const MetadataConfig& c, const MetadataInputs& in, int64_t b) {
  switch (c.mode) {
    case ForwardMode::kDecode: return 1;
    case ForwardMode::kTargetVerify: return c.draft_tokens;
    default: return load_index(in.extend_lens, b);
  }
}

// cache_seqlens of request b; int32 like the field it becomes.
int64_t kv_length(const MetadataConfig& c, const MetadataInputs& in, int64_t b) {
  const int64_t draft = c.mode == ForwardMode::kTargetVerify ? c.draft_tokens : 0;
  return static_cast<int32_t>(load_index(in.seq_lens, b) + draft);
}

void copy_ints(int32_t* dst, const int32_t* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(int32_t));
}

std::string at_request(int64_t value, int64_t b) { return std::to_string(value) + " at request " + std::to_string(b); }

// The preconditions of nsa/metadata.h on device values, O(bs) compares
// against the table's narrowest widths (the summary of the destinations).
// The cache length is checked as the 64-bit sum seq_lens[b] (+ N), before it
// is narrowed to the int32 field, so a length that would wrap is rejected too.
void validate_inputs(const MetadataConfig& c, const MetadataInputs& in, const MetadataTargets& targets) {
  const detail::ArgChecker chk("build_metadata");
  const MetadataBound& pt_cols = targets.page_table_1_cols;
  const MetadataBound& real_cols = targets.real_page_table_cols;  // index -1: no destination has the field
  const int64_t draft = c.mode == ForwardMode::kTargetVerify ? c.draft_tokens : 0;
  const char* len_arg = draft ? "inputs.seq_lens (+ draft_tokens)" : "inputs.seq_lens";
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  int64_t cu_k = 0, cu_nsa = 0, rows = 0;
  for (int64_t b = 0; b < c.batch_size; ++b) {
    const int64_t rpi = load_index(in.req_pool_indices, b);
    if (rpi < 0 || rpi >= in.req_to_token_rows)
      chk.fail("inputs.req_pool_indices",
               "rows in [0, req_to_token_rows) = [0, " + std::to_string(in.req_to_token_rows) + ")",
               at_request(rpi, b));
    int64_t q = 1;
    if (c.mode == ForwardMode::kDraftExtend) {
      q = load_index(in.extend_lens, b);
      if (q < 0 || q > c.draft_tokens)
        chk.fail("inputs.extend_lens", "lengths in [0, draft_tokens] = [0, " + std::to_string(c.draft_tokens) + "]",
                 at_request(q, b));
    } else if (c.mode == ForwardMode::kTargetVerify) {
      q = c.draft_tokens;
    }
    const int64_t kv = load_index(in.seq_lens, b) + draft;
    if (kv < 0 || kv > in.req_to_token_cols)
      chk.fail(len_arg, "cache lengths in [0, req_to_token_cols] = [0, " + std::to_string(in.req_to_token_cols) + "]",
               at_request(kv, b));
    if (kv > pt_cols.value)
      chk.fail(len_arg,
               "cache lengths <= targets[" + std::to_string(pt_cols.index) +
                   "].page_table_1_cols = " + std::to_string(pt_cols.value),
               at_request(kv, b));
    const int64_t pages = (kv + c.page_size - 1) / c.page_size;
    if (real_cols.index >= 0 && pages > real_cols.value)
      chk.fail(len_arg,
               "ceil(cache length / page_size) <= targets[" + std::to_string(real_cols.index) +
                   "].real_page_table_cols = " + std::to_string(real_cols.value),
               at_request(kv, b) + " (" + std::to_string(pages) + " pages)");
    rows += q;
    cu_k += kv;
    if (cu_k > kInt32Max)
      chk.fail(len_arg, "cumulative cache lengths (cu_seqlens_k) that fit in int32",
               std::to_string(cu_k) + " after request " + std::to_string(b));
    for (int64_t j = 0; j < q; ++j) cu_nsa += std::min(kv - q + 1 + j, c.topk);  // as pass 1 below sums them
    if (cu_nsa > kInt32Max)
      chk.fail(len_arg, "cumulative NSA lengths (nsa_cu_seqlens_k) that fit in int32",
               "more than " + std::to_string(kInt32Max) + " after request " + std::to_string(b));
  }
  // DRAFT_EXTEND: R = sum(e_b) is known only now (the public API checked the other modes).
  if (in.flashmla_num_splits && (targets.fields_any & metadata_field_bit(MetadataField::kFlashmlaNumSplits)) &&
      in.flashmla_num_splits_size < rows + 1)
    chk.fail("inputs.flashmla_num_splits_size", ">= R + 1 = " + std::to_string(rows + 1) + " (values copied)",
             std::to_string(in.flashmla_num_splits_size));
}

// DeepGEMM's paged-MQA schedule (spec §10) of `batch` requests whose lengths
// len_of(b) gives: one pass for the total units, then the requests and the
// SM starts walked together (both ascending), so each SM's row is decoded in
// O(1) without a prefix array.
template <class LenOf>
void write_paged_mqa_schedule(int64_t batch, LenOf len_of, int64_t next_n, PagedMqaLayout layout, bool clamp,
                              int32_t* out, int64_t sms) {
  const bool g1 = layout == PagedMqaLayout::kG1;
  const int64_t atoms = detail::paged_mqa_atoms(next_n, g1);
  int64_t units = 0;
  for (int64_t b = 0; b < batch; ++b) units += detail::paged_mqa_units(len_of(b), clamp);
  const detail::PagedMqaSplit split = detail::PagedMqaSplit::make(units * atoms, sms, g1);
  int64_t i = 0, first = 0;  // first: the request's first unit (times atoms)
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t u = detail::paged_mqa_units(len_of(b), clamp), end = first + u * atoms;
    for (; i < sms && split.start(i) < end; ++i)
      detail::paged_mqa_store_row(out, i, b, atoms, u, split.start(i) - first);
    first = end;
  }
  for (; i <= sms; ++i) {  // SMs starting past the last unit, and the sentinel: (B * A, 0)
    out[2 * i] = static_cast<int32_t>(batch * atoms);
    out[2 * i + 1] = 0;
  }
}

}  // namespace

void build_metadata(int threads, const MetadataConfig& c, const MetadataInputs& in, const MetadataTargets& targets) {
  validate_inputs(c, in, targets);
  const MetadataBuffers* dst = targets.table;
  const int64_t D = targets.count, bs = c.batch_size;

  // Pass 1: scalars and scans.
  int64_t row = 0, cu_k = 0, cu_nsa = 0, work_bytes = 0;
  for (int64_t d = 0; d < D; ++d) dst[d].cu_seqlens_k[0] = dst[d].nsa_cu_seqlens_k[0] = 0;
  for (int64_t b = 0; b < bs; ++b) {
    const int64_t kv = kv_length(c, in, b), q = query_rows(c, in, b);
    cu_k += kv;
    for (int64_t d = 0; d < D; ++d) {
      dst[d].cache_seqlens[b] = static_cast<int32_t>(kv);
      dst[d].cu_seqlens_k[b + 1] = static_cast<int32_t>(cu_k);
    }
    for (int64_t j = 0; j < q; ++j, ++row) {
      const int64_t expanded = kv - q + 1 + j;
      const int64_t clamped = std::min(expanded, c.topk);
      cu_nsa += clamped;
      for (int64_t d = 0; d < D; ++d) {
        if (dst[d].seqlens_expanded) dst[d].seqlens_expanded[row] = static_cast<int32_t>(expanded);
        dst[d].nsa_cache_seqlens[row] = static_cast<int32_t>(clamped);
        dst[d].nsa_cu_seqlens_k[row + 1] = static_cast<int32_t>(cu_nsa);
      }
    }
    if (q > 0 && kv > 0) work_bytes += kv * 4 * (1 + q * D);
  }
  const int64_t total_rows = row;

  // Pass 2: page tables, one source row read per request, written to its q rows of every destination.
  parallel_for(bs, threads, work_bytes, [&](int64_t begin, int64_t end) {
    int64_t r = 0;
    for (int64_t b = 0; b < begin; ++b) r += query_rows(c, in, b);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t kv = kv_length(c, in, b), q = query_rows(c, in, b);
      if (kv > 0 && q > 0) {
        const int32_t* src = in.req_to_token + load_index(in.req_pool_indices, b) * in.req_to_token_ld;
        const int64_t pages = (kv + c.page_size - 1) / c.page_size;
        for (int64_t d = 0; d < D; ++d) {
          for (int64_t j = 0; j < q; ++j) {
            copy_ints(dst[d].page_table_1 + (r + j) * dst[d].page_table_1_ld, src, kv);
            if (int32_t* real = dst[d].real_page_table) {
              int32_t* real_row = real + (r + j) * dst[d].real_page_table_ld;
              for (int64_t p = 0; p < pages; ++p)
                real_row[p] = static_cast<int32_t>(static_cast<int64_t>(src[p * c.page_size]) / c.page_size);
            }
          }
        }
      }
      r += q;
    }
  });

  // FlashMLA schedule, copied unchanged.
  for (int64_t d = 0; d < D; ++d) {
    if (in.flashmla_num_splits && dst[d].flashmla_num_splits)
      copy_ints(dst[d].flashmla_num_splits, in.flashmla_num_splits, total_rows + 1);
    if (in.flashmla_metadata && dst[d].flashmla_metadata)
      copy_ints(dst[d].flashmla_metadata, in.flashmla_metadata, dst[d].flashmla_metadata_size);
    if (dst[d].paged_mqa_schedule)  // one row per request, its cache length (spec §10.1)
      write_paged_mqa_schedule(
          bs, [&](int64_t b) { return kv_length(c, in, b); }, c.mode == ForwardMode::kDecode ? 1 : c.draft_tokens,
          c.paged_mqa_layout, c.paged_mqa_clamp_min_len, dst[d].paged_mqa_schedule, dst[d].paged_mqa_num_sms);
  }
}

void paged_mqa_schedule(const PagedMqaScheduleArgs& a) {
  const int64_t ld = a.context_lens_ld ? a.context_lens_ld : a.next_n;
  write_paged_mqa_schedule(
      a.batch, [&](int64_t b) { return int64_t{a.context_lens[b * ld + a.next_n - 1]}; }, a.next_n, a.layout,
      a.clamp_min_len, a.schedule, a.num_sms);
}

void copy_metadata(int threads, const MetadataCopyShape& s, const MetadataSources& src,
                   const MetadataTargets& targets) {
  const MetadataBuffers* dst = targets.table;
  const int64_t D = targets.count, bs = s.batch_size;
  const bool decode = s.mode == ForwardMode::kDecode;
  const int64_t rows = copy_rows(s), cols = copy_page_cols(s);
  const int64_t n = rows;  // per-row arrays: bs (DECODE) or E
  const int64_t pt_ld = src.page_table_1_ld ? src.page_table_1_ld : cols;
  const int64_t rc = src.real_page_table_cols;
  const int64_t rt_ld = src.real_page_table_ld ? src.real_page_table_ld : rc;

  for (int64_t d = 0; d < D; ++d) {
    const MetadataBuffers& t = dst[d];
    copy_ints(t.cache_seqlens, src.cache_seqlens, bs);
    // Element 0 of the cumulative arrays stays untouched (upstream). Offsets
    // are applied only when something is copied: with 0 rows a source may be null.
    if (bs > 0) copy_ints(t.cu_seqlens_k + 1, src.cu_seqlens_k + 1, bs);
    if (!decode && src.seqlens_expanded && t.seqlens_expanded) copy_ints(t.seqlens_expanded, src.seqlens_expanded, n);
    copy_ints(t.nsa_cache_seqlens, src.nsa_cache_seqlens, n);
    if (n > 0) copy_ints(t.nsa_cu_seqlens_k + 1, src.nsa_cu_seqlens_k + 1, n);
    if (src.flashmla_num_splits && t.flashmla_num_splits)
      copy_ints(t.flashmla_num_splits, src.flashmla_num_splits, n + 1);
    if (src.flashmla_metadata && t.flashmla_metadata)
      copy_ints(t.flashmla_metadata, src.flashmla_metadata, src.flashmla_metadata_size);
  }
  const int64_t row_bytes = (cols + (src.real_page_table ? rc : 0)) * 4 * (1 + D);
  parallel_for(rows, threads, rows * row_bytes, [&](int64_t begin, int64_t end) {
    for (int64_t d = 0; d < D; ++d) {
      const MetadataBuffers& t = dst[d];
      for (int64_t r = begin; r < end; ++r) {
        if (cols > 0) copy_ints(t.page_table_1 + r * t.page_table_1_ld, src.page_table_1 + r * pt_ld, cols);
        if (src.real_page_table && t.real_page_table)
          copy_ints(t.real_page_table + r * t.real_page_table_ld, src.real_page_table + r * rt_ld, rc);
      }
    }
  });
}

}  // namespace cpu
}  // namespace nsa
