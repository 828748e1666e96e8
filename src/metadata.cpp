// Public API of the metadata ops: validate every host-visible argument
// (nothing is written when a check fails), then hand over to one backend.
// upload_metadata_targets validates the destination descriptors once and
// summarises them (smallest capacities and widths, which optional fields
// exist); a call checks its shape against that summary in O(1) comparisons:
// no driver query, no allocation (strings are built only when a check fails),
// so the host cost of a call stays close to that of an empty kernel launch.
#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/overlap.h"
#include "metadata_backends.h"
#include "nsa/detail/paged_mqa_schedule.h"

namespace nsa {

const char* to_string(ForwardMode mode) {
  switch (mode) {
    case ForwardMode::kDecode: return "decode";
    case ForwardMode::kTargetVerify: return "target_verify";
    case ForwardMode::kDraftExtend: return "draft_extend";
  }
  return "invalid";
}

size_t metadata_targets_workspace_bytes(int64_t count) {
  return count > 0 ? static_cast<size_t>(count) * sizeof(MetadataBuffers) : 0;
}

namespace {

using detail::ArgChecker;

bool valid_mode(ForwardMode m) {
  return m == ForwardMode::kDecode || m == ForwardMode::kTargetVerify || m == ForwardMode::kDraftExtend;
}

void check_mode(const ArgChecker& c, ForwardMode m, const char* arg) {
  if (!valid_mode(m))
    c.fail(arg, "0 (decode), 1 (target_verify) or 2 (draft_extend)", std::to_string(static_cast<int>(m)));
}

// Names like "targets[2].page_table_1"; built only on failure.
std::string target_arg(int64_t d, const char* field) { return "targets[" + std::to_string(d) + "]." + field; }
void target_not_null(const ArgChecker& c, const void* p, int64_t d, const char* field) {
  if (p == nullptr) c.fail(target_arg(d, field).c_str(), "a non-null pointer", "nullptr");
}
void target_at_least(const ArgChecker& c, int64_t v, int64_t min, int64_t d, const char* field) {
  if (v < min) c.fail(target_arg(d, field).c_str(), ">= " + std::to_string(min), std::to_string(v));
}
// cache_seqlens holds max_batch values and cu_seqlens_k max_batch + 1.
void target_holds_batch(const ArgChecker& c, int64_t max_batch, int64_t bs, int64_t d) {
  if (max_batch < bs)
    c.fail(target_arg(d, "max_batch").c_str(),
           ">= batch size = " + std::to_string(bs) + " (cache_seqlens holds max_batch, cu_seqlens_k max_batch + 1)",
           std::to_string(max_batch));
}
void target_aligned4(const ArgChecker& c, const void* p, int64_t d, const char* field) {
  if (reinterpret_cast<uintptr_t>(p) % 4 != 0) c.aligned(p, 4, target_arg(d, field).c_str());
}

// SMs of a paged-MQA schedule: far above any GPU, small enough for int32 row math.
constexpr int64_t kMaxPagedMqaSms = int64_t{1} << 20;

// Shape-independent checks of one destination descriptor.
void check_descriptor(const ArgChecker& c, const Exec& exec, const MetadataBuffers& t, int64_t d) {
  target_not_null(c, t.cache_seqlens, d, "cache_seqlens");
  target_not_null(c, t.cu_seqlens_k, d, "cu_seqlens_k");
  target_not_null(c, t.page_table_1, d, "page_table_1");
  target_not_null(c, t.nsa_cache_seqlens, d, "nsa_cache_seqlens");
  target_not_null(c, t.nsa_cu_seqlens_k, d, "nsa_cu_seqlens_k");
  target_at_least(c, t.max_rows, 0, d, "max_rows");
  target_at_least(c, t.max_batch, 0, d, "max_batch");
  target_at_least(c, t.page_table_1_cols, 0, d, "page_table_1_cols");
  target_at_least(c, t.page_table_1_ld, t.page_table_1_cols, d, "page_table_1_ld");
  c.product_fits(t.max_rows, t.page_table_1_ld, target_arg(d, "page_table_1_ld").c_str(), "max_rows * ld within int64");
  if (t.real_page_table != nullptr) {
    target_at_least(c, t.real_page_table_cols, 0, d, "real_page_table_cols");
    target_at_least(c, t.real_page_table_ld, t.real_page_table_cols, d, "real_page_table_ld");
    c.product_fits(t.max_rows, t.real_page_table_ld, target_arg(d, "real_page_table_ld").c_str(),
                   "max_rows * ld within int64");
  }
  if (t.flashmla_metadata != nullptr) target_at_least(c, t.flashmla_metadata_size, 0, d, "flashmla_metadata_size");
  if (t.paged_mqa_schedule != nullptr) {
    target_at_least(c, t.paged_mqa_num_sms, 1, d, "paged_mqa_num_sms");
    if (t.paged_mqa_num_sms > kMaxPagedMqaSms)
      c.fail(target_arg(d, "paged_mqa_num_sms").c_str(), "<= " + std::to_string(kMaxPagedMqaSms),
             std::to_string(t.paged_mqa_num_sms));
  }
  if (exec.backend == Backend::kCuda) {  // int32 stores need 4-byte alignment on the device
    target_aligned4(c, t.cache_seqlens, d, "cache_seqlens");
    target_aligned4(c, t.cu_seqlens_k, d, "cu_seqlens_k");
    target_aligned4(c, t.page_table_1, d, "page_table_1");
    target_aligned4(c, t.seqlens_expanded, d, "seqlens_expanded");
    target_aligned4(c, t.nsa_cache_seqlens, d, "nsa_cache_seqlens");
    target_aligned4(c, t.nsa_cu_seqlens_k, d, "nsa_cu_seqlens_k");
    target_aligned4(c, t.real_page_table, d, "real_page_table");
    target_aligned4(c, t.flashmla_num_splits, d, "flashmla_num_splits");
    target_aligned4(c, t.flashmla_metadata, d, "flashmla_metadata");
    target_aligned4(c, t.paged_mqa_schedule, d, "paged_mqa_schedule");
  }
}

// A table returned by upload_metadata_targets for this backend.
void check_targets_table(const ArgChecker& c, const Exec& exec, const MetadataTargets& targets) {
  c.at_least(targets.count, 1, "targets.count");
  c.not_null(targets.table, "targets.table");
  if (!targets.host || static_cast<int64_t>(targets.host->descriptors.size()) != targets.count)
    c.fail("targets", "a table returned by upload_metadata_targets", "a table built by hand");
  if (targets.backend != exec.backend)
    c.fail("targets", std::string("a table uploaded for exec.backend = ") + to_string(exec.backend),
           std::string("one uploaded for ") + to_string(targets.backend));
}

// `bound` (the smallest over the destinations) >= `need`, naming the destination that sets it.
void bound_at_least(const ArgChecker& c, const MetadataBound& bound, int64_t need, const char* field) {
  if (bound.index >= 0) target_at_least(c, bound.value, need, bound.index, field);
}

// Lowers `bound` to `value` of destination d when smaller (or the first).
void lower(MetadataBound& bound, int64_t value, int64_t d) {
  if (bound.index < 0 || value < bound.value) bound = MetadataBound{value, d};
}

// The summary every call is checked against, from validated descriptors.
void summarise(MetadataTargets& t, const MetadataBuffers* host, int64_t count) {
  for (int64_t d = 0; d < count; ++d) {
    const MetadataBuffers& b = host[d];
    lower(t.max_batch, b.max_batch, d);
    lower(t.max_rows, b.max_rows, d);
    lower(t.page_table_1_cols, b.page_table_1_cols, d);
    if (b.real_page_table != nullptr) lower(t.real_page_table_cols, b.real_page_table_cols, d);
    if (b.flashmla_metadata != nullptr) {
      lower(t.flashmla_metadata_size, b.flashmla_metadata_size, d);
      t.flashmla_metadata_max = std::max(t.flashmla_metadata_max, b.flashmla_metadata_size);
    }
    uint32_t present = 0;
    for (int f = 0; f < kMetadataFieldCount; ++f)
      if (b.*kMetadataFields[f].pointer != nullptr) present |= 1u << f;
    t.fields_all = d == 0 ? present : t.fields_all & present;
    t.fields_any |= present;
    if (b.seqlens_expanded == nullptr && t.first_without_seqlens_expanded < 0) t.first_without_seqlens_expanded = d;
  }
}

void check_source(const ArgChecker& c, const Exec& exec, const int32_t* p, bool needed, const char* arg) {
  if (needed) c.not_null(p, arg);
  if (p != nullptr && exec.backend == Backend::kCuda) c.aligned(p, 4, arg);
}

// ---------------------------------------------------------------------------
// What a call reads and writes must not overlap (finding 8). Destinations are
// checked against each other once, at upload (full capacities); a call lists
// its inputs and, only when one of them may touch a destination (or the
// destinations were not disjoint), the byte ranges it writes, following the
// call's shape, bounded by the arrays' capacities. The error then names the
// destination argument and the input it overlaps.
// ---------------------------------------------------------------------------
using Host = detail::MetadataTargetsHost;

uintptr_t span_end(const void* p, uint64_t bytes) {  // saturating at the top of the address space
  const uintptr_t begin = reinterpret_cast<uintptr_t>(p);
  return bytes > UINTPTR_MAX - begin ? UINTPTR_MAX : begin + static_cast<uintptr_t>(bytes);
}

// The full-capacity spans of every present field, sorted; whether disjoint.
void index_spans(Host& host) {
  // Capacities this large (no real buffer has them) could overflow the
  // extents below: such tables always take the exact per-call check.
  constexpr int64_t kHuge = std::numeric_limits<int64_t>::max() / 8;
  for (const MetadataBuffers& b : host.descriptors)
    if (b.max_batch > kHuge || b.max_rows > kHuge) return;  // spans_disjoint stays false
  for (const MetadataBuffers& b : host.descriptors)
    for (const MetadataFieldInfo& f : kMetadataFields) {
      const int32_t* p = b.*f.pointer;
      if (p == nullptr) continue;  // an absent field's sizes were not checked (and mean nothing)
      const int64_t n = metadata_field_elements(b, f.extent);  // products checked by check_descriptor
      if (n > 0) {
        const uint64_t bytes = static_cast<uint64_t>(n) > UINT64_MAX / 4 ? UINT64_MAX : 4 * static_cast<uint64_t>(n);
        host.spans.push_back({reinterpret_cast<uintptr_t>(p), span_end(p, bytes)});
      }
    }
  std::sort(host.spans.begin(), host.spans.end(),
            [](const Host::Span& a, const Host::Span& b) { return a.begin < b.begin; });
  host.spans_disjoint = true;
  for (size_t i = 1; i < host.spans.size(); ++i)
    if (host.spans[i].begin < host.spans[i - 1].end) host.spans_disjoint = false;
}

// Whether [p, p + bytes) shares a byte with a destination span (disjoint
// spans: their ends are sorted too).
bool touches_destination(const Host& host, const detail::ByteRange& r) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(r.begin);
  const auto first = std::upper_bound(host.spans.begin(), host.spans.end(), begin,
                                      [](uintptr_t v, const Host::Span& s) { return v < s.end; });
  return first != host.spans.end() && first->begin < span_end(r.begin, r.bytes);
}

class CallRanges {
 public:
  explicit CallRanges(const Host& host) : host_(host) {}
  // Inputs are added first, then `needs_writes()` says whether the written
  // ranges must be listed and checked too.
  bool needs_writes() {
    inputs_ = count_;
    if (!host_.spans_disjoint) return true;
    for (size_t i = 0; i < inputs_; ++i)
      if (touches_destination(host_, ranges_[i])) return true;
    return false;
  }
  void reserve(size_t capacity) {
    if (capacity <= kInline) return;
    heap_.assign(ranges_, ranges_ + count_);
    heap_.resize(capacity);
    ranges_ = heap_.data();
  }
  void add(const void* p, int64_t bytes, const char* name) {
    if (p == nullptr || bytes <= 0) return;
    const bool written = count_ >= inputs_;  // added after needs_writes()
    ranges_[count_++] = detail::ByteRange{p, static_cast<uint64_t>(bytes), name, written};
  }
  // Counts come from the caller (absent fields may carry any value): the
  // products saturate instead of overflowing.
  void ints(const void* p, int64_t count, const char* name) { elements(p, count, 4, name); }
  void indices(Indices v, int64_t count, const char* name) {
    elements(v.data, count, static_cast<int64_t>(v.type), name);
  }
  // `rows` rows of `cols` int32 with a row stride of `ld`.
  void table(const void* p, int64_t rows, int64_t ld, int64_t cols, const char* name) {
    if (p == nullptr || rows <= 0 || cols <= 0) return;  // an absent table's sizes mean nothing
    const bool huge = ld > 0 && rows - 1 > (kMaxCount - cols) / ld;
    ints(p, huge ? kMaxCount : (rows - 1) * ld + cols, name);
  }
  void check(const ArgChecker& c) const { detail::check_no_overlap(c, ranges_, count_); }

 private:
  static constexpr int64_t kMaxCount = std::numeric_limits<int64_t>::max() / 8;
  void elements(const void* p, int64_t count, int64_t size, const char* name) {
    if (p != nullptr && count > 0) add(p, std::min(count, kMaxCount) * size, name);
  }
  static constexpr size_t kInline = 9 + kMetadataFieldCount * 8;  // no allocation up to 8 destinations
  const Host& host_;
  detail::ByteRange inline_[kInline];
  std::vector<detail::ByteRange> heap_;
  detail::ByteRange* ranges_ = inline_;
  size_t count_ = 0;
  size_t inputs_ = SIZE_MAX;  // ranges added before needs_writes() are read
};

using F = MetadataField;

void check_build_overlap(const ArgChecker& c, const MetadataConfig& cfg, const MetadataInputs& in,
                         const MetadataTargets& targets, int64_t rows) {
  const int64_t bs = cfg.batch_size;
  const bool splits = in.flashmla_num_splits != nullptr, tiles = in.flashmla_metadata != nullptr;
  const Host& host = *targets.host;
  CallRanges r(host);
  r.indices(in.seq_lens, bs, "inputs.seq_lens");
  r.indices(in.req_pool_indices, bs, "inputs.req_pool_indices");
  if (cfg.mode == ForwardMode::kDraftExtend) r.indices(in.extend_lens, bs, "inputs.extend_lens");
  r.table(in.req_to_token, in.req_to_token_rows, in.req_to_token_ld, in.req_to_token_cols, "inputs.req_to_token");
  r.ints(in.flashmla_num_splits, in.flashmla_num_splits_size, "inputs.flashmla_num_splits");
  r.ints(in.flashmla_metadata, in.flashmla_metadata_size, "inputs.flashmla_metadata");
  if (!r.needs_writes()) return;
  r.reserve(6 + static_cast<size_t>(kMetadataFieldCount * targets.count));
  // A row is never longer than its req_to_token row (checked on the device values).
  const int64_t pages = in.req_to_token_cols / cfg.page_size + (in.req_to_token_cols % cfg.page_size != 0);
  for (int64_t d = 0; d < targets.count; ++d) {
    const MetadataBuffers& b = host.descriptors[static_cast<size_t>(d)];
    r.ints(b.cache_seqlens, bs, host.name(d, F::kCacheSeqlens));
    r.ints(b.cu_seqlens_k, bs + 1, host.name(d, F::kCuSeqlensK));
    r.table(b.page_table_1, rows, b.page_table_1_ld, std::min(b.page_table_1_cols, in.req_to_token_cols),
            host.name(d, F::kPageTable1));
    r.ints(b.seqlens_expanded, rows, host.name(d, F::kSeqlensExpanded));
    r.ints(b.nsa_cache_seqlens, rows, host.name(d, F::kNsaCacheSeqlens));
    r.ints(b.nsa_cu_seqlens_k, rows + 1, host.name(d, F::kNsaCuSeqlensK));
    r.table(b.real_page_table, rows, b.real_page_table_ld, std::min(b.real_page_table_cols, pages),
            host.name(d, F::kRealPageTable));
    if (splits) r.ints(b.flashmla_num_splits, rows + 1, host.name(d, F::kFlashmlaNumSplits));
    if (tiles) r.ints(b.flashmla_metadata, b.flashmla_metadata_size, host.name(d, F::kFlashmlaMetadata));
    r.ints(b.paged_mqa_schedule, metadata_field_elements(b, MetadataExtent::kPagedMqaSms),
           host.name(d, F::kPagedMqaSchedule));
  }
  r.check(c);
}

void check_copy_overlap(const ArgChecker& c, const MetadataCopyShape& shape, const MetadataSources& s,
                        const MetadataTargets& targets) {
  const int64_t bs = shape.batch_size, rows = copy_rows(shape), cols = copy_page_cols(shape);
  const bool decode = shape.mode == ForwardMode::kDecode;
  const int64_t rc = s.real_page_table_cols;
  const Host& host = *targets.host;
  CallRanges r(host);
  r.ints(s.cache_seqlens, bs, "sources.cache_seqlens");
  r.ints(s.cu_seqlens_k, bs + 1, "sources.cu_seqlens_k");
  r.table(s.page_table_1, rows, s.page_table_1_ld ? s.page_table_1_ld : cols, cols, "sources.page_table_1");
  if (!decode) r.ints(s.seqlens_expanded, rows, "sources.seqlens_expanded");
  r.ints(s.nsa_cache_seqlens, rows, "sources.nsa_cache_seqlens");
  r.ints(s.nsa_cu_seqlens_k, rows + 1, "sources.nsa_cu_seqlens_k");
  r.table(s.real_page_table, rows, s.real_page_table_ld ? s.real_page_table_ld : rc, rc, "sources.real_page_table");
  r.ints(s.flashmla_num_splits, rows + 1, "sources.flashmla_num_splits");
  r.ints(s.flashmla_metadata, s.flashmla_metadata_size, "sources.flashmla_metadata");
  if (!r.needs_writes()) return;
  r.reserve(9 + static_cast<size_t>(kMetadataFieldCount * targets.count));
  for (int64_t d = 0; d < targets.count; ++d) {
    const MetadataBuffers& b = host.descriptors[static_cast<size_t>(d)];
    r.ints(b.cache_seqlens, bs, host.name(d, F::kCacheSeqlens));
    r.ints(b.cu_seqlens_k + 1, bs, host.name(d, F::kCuSeqlensK));  // element 0 untouched
    r.table(b.page_table_1, rows, b.page_table_1_ld, cols, host.name(d, F::kPageTable1));
    if (!decode && s.seqlens_expanded) r.ints(b.seqlens_expanded, rows, host.name(d, F::kSeqlensExpanded));
    r.ints(b.nsa_cache_seqlens, rows, host.name(d, F::kNsaCacheSeqlens));
    r.ints(b.nsa_cu_seqlens_k + 1, rows, host.name(d, F::kNsaCuSeqlensK));
    if (s.real_page_table) r.table(b.real_page_table, rows, b.real_page_table_ld, rc, host.name(d, F::kRealPageTable));
    if (s.flashmla_num_splits) r.ints(b.flashmla_num_splits, rows + 1, host.name(d, F::kFlashmlaNumSplits));
    if (s.flashmla_metadata) r.ints(b.flashmla_metadata, s.flashmla_metadata_size, host.name(d, F::kFlashmlaMetadata));
  }
  r.check(c);
}

}  // namespace

MetadataTargets upload_metadata_targets(const Exec& exec, const MetadataBuffers* host, int64_t count, void* workspace,
                                        size_t workspace_bytes) {
  const ArgChecker c("upload_metadata_targets");
  detail::require_backend(c, exec);
  c.at_least(count, 1, "count");
  c.not_null(host, "host");
  for (int64_t d = 0; d < count; ++d) check_descriptor(c, exec, host[d], d);
  c.not_null(workspace, "workspace");
  c.aligned(workspace, alignof(MetadataBuffers), "workspace");
  const size_t needed = metadata_targets_workspace_bytes(count);
  if (workspace_bytes < needed)
    c.fail("workspace_bytes", ">= " + std::to_string(needed), std::to_string(workspace_bytes));
  MetadataTargets t;
  t.table = static_cast<const MetadataBuffers*>(workspace);
  t.count = count;
  t.backend = exec.backend;
  summarise(t, host, count);
  auto state = std::make_shared<detail::MetadataTargetsHost>();
  state->descriptors.assign(host, host + count);
  for (int64_t d = 0; d < count; ++d)
    for (int f = 0; f < kMetadataFieldCount; ++f) state->names.push_back(target_arg(d, kMetadataFields[f].name));
  index_spans(*state);
  t.host = std::move(state);
  if (exec.backend == Backend::kCpu) std::memcpy(workspace, host, needed);
  else cuda::upload_metadata_targets(exec.stream, host, count, workspace);
  return t;
}

const MetadataBuffers& metadata_target(const MetadataTargets& targets, int64_t d) {
  const ArgChecker c("metadata_target");
  if (!targets.host) c.fail("targets", "a table returned by upload_metadata_targets", "a table built by hand");
  const int64_t count = static_cast<int64_t>(targets.host->descriptors.size());
  if (d < 0 || d >= count) c.fail("d", "an index in [0, " + std::to_string(count) + ")", std::to_string(d));
  return targets.host->descriptors[static_cast<size_t>(d)];
}

void build_metadata(const Exec& exec, const MetadataConfig& config, const MetadataInputs& inputs,
                    const MetadataTargets& targets) {
  const ArgChecker c("build_metadata");
  detail::require_backend(c, exec);
  check_mode(c, config.mode, "config.mode");
  c.at_least(config.batch_size, 0, "config.batch_size");
  c.at_least(config.draft_tokens, 1, "config.draft_tokens");
  c.at_least(config.topk, 1, "config.topk");
  if (config.topk > std::numeric_limits<int32_t>::max())  // min(expanded, topk) is an int32 output
    c.fail("config.topk", "<= 2147483647 (nsa_cache_seqlens is int32)", std::to_string(config.topk));
  c.at_least(config.page_size, 1, "config.page_size");
  if (config.batch_size > 0 && config.draft_tokens > std::numeric_limits<int32_t>::max() / config.batch_size)
    c.fail("config.draft_tokens", "batch_size * draft_tokens rows that fit in int32",
           std::to_string(config.draft_tokens));
  const bool extend = config.mode == ForwardMode::kDraftExtend;
  const int64_t rows = metadata_row_capacity(config);

  check_targets_table(c, exec, targets);
  target_holds_batch(c, targets.max_batch.value, config.batch_size, targets.max_batch.index);
  bound_at_least(c, targets.max_rows, rows, "max_rows");
  if (config.mode != ForwardMode::kDecode && targets.first_without_seqlens_expanded >= 0)
    target_not_null(c, nullptr, targets.first_without_seqlens_expanded, "seqlens_expanded");
  if (config.paged_mqa_layout != PagedMqaLayout::kG4 && config.paged_mqa_layout != PagedMqaLayout::kG1)
    c.fail("config.paged_mqa_layout", "0 (G4) or 1 (G1)", std::to_string(static_cast<int>(config.paged_mqa_layout)));

  c.at_least(inputs.req_to_token_rows, 0, "inputs.req_to_token_rows");
  c.at_least(inputs.req_to_token_cols, 0, "inputs.req_to_token_cols");
  c.at_least(inputs.req_to_token_ld, inputs.req_to_token_cols, "inputs.req_to_token_ld");
  c.product_fits(inputs.req_to_token_rows, inputs.req_to_token_ld, "inputs.req_to_token_ld",
                 "req_to_token_rows * req_to_token_ld within int64");
  if (!extend && inputs.extend_lens)
    c.fail("inputs.extend_lens", "nullptr outside draft_extend", std::string("a pointer in ") + to_string(config.mode));
  if (config.batch_size > 0) {
    c.indices(exec, inputs.seq_lens, "inputs.seq_lens");
    c.indices(exec, inputs.req_pool_indices, "inputs.req_pool_indices");
    if (extend) c.indices(exec, inputs.extend_lens, "inputs.extend_lens");
    c.not_null(inputs.req_to_token, "inputs.req_to_token");
    c.at_least(inputs.req_to_token_rows, 1, "inputs.req_to_token_rows");
    if (exec.backend == Backend::kCuda) c.aligned(inputs.req_to_token, 4, "inputs.req_to_token");
  }
  check_source(c, exec, inputs.flashmla_num_splits, false, "inputs.flashmla_num_splits");
  check_source(c, exec, inputs.flashmla_metadata, false, "inputs.flashmla_metadata");
  // FlashMLA sources are read only into destinations that have the field.
  if (inputs.flashmla_num_splits && (targets.fields_any & metadata_field_bit(F::kFlashmlaNumSplits))) {
    const int64_t need = extend ? 1 : rows + 1;  // DRAFT_EXTEND: R is a device value (the CPU backend checks it)
    if (inputs.flashmla_num_splits_size < need)
      c.fail("inputs.flashmla_num_splits_size", ">= R + 1 = " + std::to_string(need) + " (values copied)",
             std::to_string(inputs.flashmla_num_splits_size));
  }
  if (inputs.flashmla_metadata && (targets.fields_any & metadata_field_bit(F::kFlashmlaMetadata)) &&
      inputs.flashmla_metadata_size < targets.flashmla_metadata_max)
    c.fail("inputs.flashmla_metadata_size",
           ">= " + std::to_string(targets.flashmla_metadata_max) +
               " (the largest destination's flashmla_metadata_size)",
           std::to_string(inputs.flashmla_metadata_size));

  if (config.batch_size == 0) return;  // empty batch: nothing written, no launch
  check_build_overlap(c, config, inputs, targets, rows);
  if (exec.backend == Backend::kCpu) cpu::build_metadata(exec.cpu_threads, config, inputs, targets);
  else cuda::build_metadata(exec.stream, exec.checked, config, inputs, targets);
}

void paged_mqa_schedule(const Exec& exec, const PagedMqaScheduleArgs& a) {
  const ArgChecker c("paged_mqa_schedule");
  detail::require_backend(c, exec);
  c.at_least(a.batch, 0, "args.batch");
  c.at_least(a.next_n, 1, "args.next_n");
  c.at_least(a.num_sms, 1, "args.num_sms");
  if (a.num_sms > kMaxPagedMqaSms)
    c.fail("args.num_sms", "<= " + std::to_string(kMaxPagedMqaSms), std::to_string(a.num_sms));
  if (a.layout != PagedMqaLayout::kG4 && a.layout != PagedMqaLayout::kG1)
    c.fail("args.layout", "0 (G4) or 1 (G1)", std::to_string(static_cast<int>(a.layout)));
  const int64_t ld = a.context_lens_ld ? a.context_lens_ld : a.next_n;
  c.at_least(ld, a.next_n, "args.context_lens_ld");
  const int64_t atoms = detail::paged_mqa_atoms(a.next_n, a.layout == PagedMqaLayout::kG1);
  if (a.batch > 0 && atoms > std::numeric_limits<int32_t>::max() / a.batch)
    c.fail("args.batch", "batch * next_n atoms that fit in int32 (the schedule's q_atom_idx)", std::to_string(a.batch));
  c.product_fits(a.batch, ld, "args.context_lens_ld", "batch * context_lens_ld within int64");
  if (a.batch > 0) check_source(c, exec, a.context_lens, true, "args.context_lens");
  check_source(c, exec, a.schedule, true, "args.schedule");
  if (a.batch > 0) {
    const uint64_t lens_ints = static_cast<uint64_t>((a.batch - 1) * ld + a.next_n);  // <= batch * ld: fits
    const uint64_t lens_bytes = lens_ints > UINT64_MAX / 4 ? UINT64_MAX : lens_ints * 4;
    const detail::ByteRange ranges[] = {{a.context_lens, lens_bytes, "args.context_lens", false},
                                        {a.schedule, static_cast<uint64_t>(2 * (a.num_sms + 1) * 4), "args.schedule"}};
    detail::check_no_overlap(c, ranges, 2);
  }
  if (exec.backend == Backend::kCpu) cpu::paged_mqa_schedule(a);
  else cuda::paged_mqa_schedule(exec.stream, a);
}

void copy_metadata(const Exec& exec, const MetadataCopyShape& shape, const MetadataSources& sources,
                   const MetadataTargets& targets) {
  const ArgChecker c("copy_metadata");
  detail::require_backend(c, exec);
  check_mode(c, shape.mode, "shape.mode");
  c.at_least(shape.batch_size, 0, "shape.batch_size");
  c.at_least(shape.max_len, 0, "shape.max_len");
  c.at_least(shape.max_seqlen_k, 0, "shape.max_seqlen_k");
  c.at_least(shape.seqlens_expanded_size, 0, "shape.seqlens_expanded_size");
  const int64_t rows = copy_rows(shape);
  const int64_t cols = copy_page_cols(shape);
  const bool has_real = sources.real_page_table != nullptr;
  const bool has_tiles = sources.flashmla_metadata != nullptr;

  check_targets_table(c, exec, targets);
  target_holds_batch(c, targets.max_batch.value, shape.batch_size, targets.max_batch.index);
  bound_at_least(c, targets.max_rows, rows, "max_rows");
  bound_at_least(c, targets.page_table_1_cols, cols, "page_table_1_cols");
  if (has_real) bound_at_least(c, targets.real_page_table_cols, sources.real_page_table_cols, "real_page_table_cols");
  if (has_tiles)
    bound_at_least(c, targets.flashmla_metadata_size, sources.flashmla_metadata_size, "flashmla_metadata_size");

  const bool any = shape.batch_size > 0;
  check_source(c, exec, sources.cache_seqlens, any, "sources.cache_seqlens");
  check_source(c, exec, sources.cu_seqlens_k, any, "sources.cu_seqlens_k");
  check_source(c, exec, sources.page_table_1, any && rows > 0 && cols > 0, "sources.page_table_1");
  if (sources.page_table_1_ld != 0) c.at_least(sources.page_table_1_ld, cols, "sources.page_table_1_ld");
  check_source(c, exec, sources.seqlens_expanded, false, "sources.seqlens_expanded");
  check_source(c, exec, sources.nsa_cache_seqlens, any && rows > 0, "sources.nsa_cache_seqlens");
  check_source(c, exec, sources.nsa_cu_seqlens_k, any && rows > 0, "sources.nsa_cu_seqlens_k");
  check_source(c, exec, sources.real_page_table, false, "sources.real_page_table");
  if (has_real) {
    c.at_least(sources.real_page_table_cols, 0, "sources.real_page_table_cols");
    if (sources.real_page_table_ld != 0)
      c.at_least(sources.real_page_table_ld, sources.real_page_table_cols, "sources.real_page_table_ld");
  }
  check_source(c, exec, sources.flashmla_num_splits, false, "sources.flashmla_num_splits");
  check_source(c, exec, sources.flashmla_metadata, false, "sources.flashmla_metadata");
  if (has_tiles) c.at_least(sources.flashmla_metadata_size, 0, "sources.flashmla_metadata_size");

  if (shape.batch_size == 0) return;  // empty batch: nothing written, no launch
  check_copy_overlap(c, shape, sources, targets);
  if (exec.backend == Backend::kCpu) cpu::copy_metadata(exec.cpu_threads, shape, sources, targets);
  else cuda::copy_metadata(exec.stream, shape, sources, targets);
}

}  // namespace nsa
