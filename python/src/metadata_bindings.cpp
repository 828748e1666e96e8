// Bindings of the metadata ops (include/nsa/metadata.h): conversion of
// Python arrays and dicts to the library's descriptors; every check of the
// call itself is the library's.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <algorithm>
#include <deque>
#include <limits>
#include <memory>
#include <vector>

#include "arrays.h"
#include "nsa/metadata.h"

namespace nsa_py {

namespace {

// One uploaded destination table. The Python MetadataTargets object owns this
// handle, the workspace and the destination tensors, so every pointer in the
// table stays valid while the handle lives.
struct MetadataTargetsHandle {
  nsa::MetadataTargets targets;
  DeviceKind device = DeviceKind::kCpu;
  int device_id = 0;

  int64_t count() const { return targets.count; }
};

// Keys of a destination dict: the fields of nsa/metadata.h plus two optional capacity limits.
const std::vector<const char*>& destination_keys() {
  static const std::vector<const char*> keys = [] {
    std::vector<const char*> k;
    for (const auto& f : nsa::kMetadataFields) k.push_back(f.name);
    k.push_back("max_rows");
    k.push_back("max_batch");
    return k;
  }();
  return keys;
}
// Keys of a copy's sources dict: the same field names but paged_mqa_schedule,
// which build_metadata computes and copy_metadata never writes.
const std::vector<const char*>& source_keys() {
  static const std::vector<const char*> keys = [] {
    std::vector<const char*> k;
    for (const auto& f : nsa::kMetadataFields)
      if (f.pointer != &nsa::MetadataBuffers::paged_mqa_schedule) k.push_back(f.name);
    return k;
  }();
  return keys;
}

// Fetches fields of a dict by name, keeping the argument names ("destinations[1].page_table_1")
// alive for the messages of the call.
class Fields {
 public:
  Fields(Call& c, nb::dict d, std::string prefix) : c_(c), d_(std::move(d)), prefix_(std::move(prefix)) {}

  void only(const std::vector<const char*>& known) {
    for (auto item : d_) {
      const std::string key = nb::cast<std::string>(nb::str(item.first));
      if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return key == k; }) ==
          std::end(known)) {
        std::string list;
        for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        c_.fail(name(key.c_str()), "one of the fields " + list, "an unknown field");
      }
    }
  }
  Array get(const char* field, bool required, bool writable) {
    nb::handle v = d_.contains(field) ? nb::handle(d_[field]) : nb::none();
    return required ? c_.require(v, name(field), writable) : c_.optional(v, name(field), writable);
  }
  bool has(const char* field) { return d_.contains(field) && !nb::handle(d_[field]).is_none(); }
  nb::handle raw(const char* field) { return d_[field]; }
  const char* name(const char* field) {
    names_.push_back(prefix_ + field);
    return names_.back().c_str();
  }

 private:
  Call& c_;
  nb::dict d_;
  std::string prefix_;
  std::deque<std::string> names_;
};

int32_t* int32_data(const Call& c, const Array& a) {
  if (!a.present) return nullptr;
  c.dtype(a, {DType::kInt32}, "int32");
  return a.as<int32_t>();
}

int64_t int32_vector(const Call& c, const Array& a, int64_t min_len, const char* shape) {
  int32_data(c, a);
  return c.vector(a, min_len, shape);
}

void int32_flat(const Call& c, const Array& a) {
  int32_data(c, a);
  if (!a.contiguous()) c.fail(a.name, "a contiguous array", a.describe());
}

// An int32 [num_sms + 1, 2] contiguous schedule array (paged_mqa_schedule): its num_sms.
int64_t schedule_sms(const Call& c, const Array& a) {
  int32_flat(c, a);
  if (a.ndim != 2 || a.shape[1] != 2 || a.shape[0] < 2)
    c.fail(a.name, "an int32 array [num_sms + 1, 2] with num_sms >= 1", a.describe());
  return a.shape[0] - 1;
}

// An optional int entry ("max_rows", "max_batch") that lowers a capacity the arrays imply.
int64_t capacity_entry(const Call& c, Fields& f, const char* key, int64_t limit, const char* what) {
  int64_t requested = 0;
  if (!nb::try_cast(f.raw(key), requested, false) || requested < 0 || requested > limit)
    c.fail(f.name(key), "an int in [0, " + std::to_string(limit) + "] (" + what + ")",
           nb::cast<std::string>(nb::repr(f.raw(key))));
  return requested;
}

MetadataTargetsHandle* upload(nb::list destinations, nb::handle workspace, nb::handle stream) {
  Call c("MetadataTargets");
  auto handle = std::make_unique<MetadataTargetsHandle>();
  std::vector<nsa::MetadataBuffers> host;
  const int64_t count = static_cast<int64_t>(nb::len(destinations));
  if (count < 1) c.fail("destinations", "at least one destination dict", "an empty list");
  std::deque<Fields> all;  // keeps argument names alive until the call ends
  for (int64_t i = 0; i < count; ++i) {
    const std::string prefix = "destinations[" + std::to_string(i) + "].";
    nb::handle item = destinations[static_cast<size_t>(i)];
    if (!nb::isinstance<nb::dict>(item)) c.fail("destinations", "a list of dicts", "an item that is not a dict");
    Fields& f = all.emplace_back(c, nb::borrow<nb::dict>(item), prefix);
    f.only(destination_keys());
    // Capacities are the smallest the arrays allow, per extent (nsa::kMetadataFields).
    nsa::MetadataBuffers b;
    int64_t max_rows = std::numeric_limits<int64_t>::max(), max_batch = max_rows;
    for (const auto& field : nsa::kMetadataFields) {
      const Array a = f.get(field.name, !field.optional, true);
      if (!a.present) continue;
      b.*field.pointer = int32_data(c, a);
      switch (field.extent) {
        case nsa::MetadataExtent::kBatch: max_batch = std::min(max_batch, c.vector(a, 0, "[max_batch]")); break;
        case nsa::MetadataExtent::kBatchPlusOne:
          max_batch = std::min(max_batch, c.vector(a, 1, "[max_batch + 1]") - 1);
          break;
        case nsa::MetadataExtent::kRows: max_rows = std::min(max_rows, c.vector(a, 0, "[max_rows]")); break;
        case nsa::MetadataExtent::kRowsPlusOne:
          max_rows = std::min(max_rows, c.vector(a, 1, "[max_rows + 1]") - 1);
          break;
        case nsa::MetadataExtent::kPageTable1:
          b.page_table_1_ld = c.table(a, "[max_rows, width]");
          b.page_table_1_cols = a.shape[1];
          max_rows = std::min(max_rows, a.shape[0]);
          break;
        case nsa::MetadataExtent::kRealPageTable:
          b.real_page_table_ld = c.table(a, "[max_rows, pages]");
          b.real_page_table_cols = a.shape[1];
          max_rows = std::min(max_rows, a.shape[0]);
          break;
        case nsa::MetadataExtent::kFlashmlaTiles:
          int32_flat(c, a);
          b.flashmla_metadata_size = a.numel();
          break;
        case nsa::MetadataExtent::kPagedMqaSms: b.paged_mqa_num_sms = schedule_sms(c, a); break;
      }
    }
    if (f.has("max_batch")) max_batch = capacity_entry(c, f, "max_batch", max_batch, "the smallest batch capacity");
    b.max_batch = max_batch;
    if (f.has("max_rows")) max_rows = capacity_entry(c, f, "max_rows", max_rows, "the smallest row capacity");
    b.max_rows = max_rows;
    host.push_back(b);
  }
  const Array ws = c.require(workspace, "workspace", true);
  if (!ws.contiguous()) c.fail("workspace", "a contiguous array", ws.describe());
  const size_t need = nsa::metadata_targets_workspace_bytes(count);
  const size_t have = static_cast<size_t>(ws.numel()) * static_cast<size_t>(ws.keep_rw.itemsize());
  if (have < need) c.fail("workspace", "at least " + std::to_string(need) + " bytes", std::to_string(have) + " bytes");
  const nsa::Exec exec = c.exec(stream);
  handle->device = c.on_cuda() ? DeviceKind::kCuda : DeviceKind::kCpu;
  handle->device_id = c.device_id();
  DeviceGuard guard(c);
  handle->targets = nsa::upload_metadata_targets(exec, host.data(), count, ws.data, have);
  return handle.release();
}

// The Call's device must be the one the targets live on.
void same_device_as_targets(Call& c, const MetadataTargetsHandle& t, const Array& any_input) {
  const bool same =
      any_input.device == t.device && (t.device == DeviceKind::kCpu || any_input.device_id == t.device_id);
  if (!same) {
    const std::string where = t.device == DeviceKind::kCuda ? "cuda:" + std::to_string(t.device_id) : "cpu";
    c.fail(any_input.name, "an array on " + where + " like the targets", any_input.describe());
  }
}

nsa::ForwardMode forward_mode(const Call& c, int mode) {
  if (mode < 0 || mode > 2) c.fail("mode", "0 (decode), 1 (target_verify) or 2 (draft_extend)", std::to_string(mode));
  return static_cast<nsa::ForwardMode>(mode);
}

// The layout value as the library takes it (the library checks its range).
nsa::PagedMqaLayout paged_mqa_layout(int layout) { return static_cast<nsa::PagedMqaLayout>(layout); }

Prepared prepare_build_metadata(MetadataTargetsHandle& t, int mode, int64_t draft_tokens, int64_t topk,
                                int64_t page_size, nb::handle seq_lens, nb::handle req_pool_indices,
                                nb::handle req_to_token, nb::handle extend_lens, nb::handle flashmla_num_splits,
                                nb::handle flashmla_metadata, int layout, bool clamp_min_len) {
  Call c("build_metadata");
  nsa::MetadataConfig config;
  config.mode = forward_mode(c, mode);
  config.paged_mqa_layout = paged_mqa_layout(layout);
  config.paged_mqa_clamp_min_len = clamp_min_len;
  config.draft_tokens = draft_tokens;
  config.topk = topk;
  config.page_size = page_size;
  const Array lens = c.require(seq_lens, "seq_lens");
  const Array rpi = c.require(req_pool_indices, "req_pool_indices");
  const Array r2t = c.require(req_to_token, "req_to_token");
  const Array ext = c.optional(extend_lens, "extend_lens");
  const Array splits = c.optional(flashmla_num_splits, "flashmla_num_splits");
  const Array meta = c.optional(flashmla_metadata, "flashmla_metadata");
  same_device_as_targets(c, t, lens);

  nsa::MetadataInputs in;
  c.index_type(lens);
  config.batch_size = c.vector(lens, 0, "[batch_size]");
  const int64_t bs = config.batch_size;
  in.seq_lens = c.indices(lens);
  c.index_type(rpi);
  c.vector(rpi, bs, "[batch_size]", true);
  in.req_pool_indices = c.indices(rpi);
  c.dtype(r2t, {DType::kInt32}, "int32");
  in.req_to_token = r2t.as<int32_t>();
  in.req_to_token_ld = c.table(r2t, "[pool_rows, row_width]");
  in.req_to_token_rows = r2t.shape[0];
  in.req_to_token_cols = r2t.shape[1];
  if (config.mode == nsa::ForwardMode::kDraftExtend && !ext.present)
    c.fail("extend_lens", "an array [batch_size] in draft_extend mode", "None");
  if (ext.present) {
    c.index_type(ext);
    c.vector(ext, bs, "[batch_size]", true);
    in.extend_lens = c.indices(ext);
  }
  // Lengths only: the library checks them against the call (R + 1, the largest tile table).
  if (splits.present) {
    in.flashmla_num_splits_size = int32_vector(c, splits, 0, "[rows + 1]");
    in.flashmla_num_splits = splits.as<int32_t>();
  }
  if (meta.present) {
    int32_flat(c, meta);
    in.flashmla_metadata = meta.as<int32_t>();
    in.flashmla_metadata_size = meta.numel();
  }
  // The handle lives as long as its Python object, which the lambda holds.
  const nb::object owner = nb::find(&t);
  const MetadataTargetsHandle* const handle = &t;
  return Prepared(c, {lens, rpi, r2t, ext, splits, meta}, [=](const nsa::Exec& exec) {
    (void)owner;
    nsa::build_metadata(exec, config, in, handle->targets);
  });
}

void build_metadata(MetadataTargetsHandle& t, int mode, int64_t draft_tokens, int64_t topk, int64_t page_size,
                    nb::handle seq_lens, nb::handle req_pool_indices, nb::handle req_to_token, nb::handle extend_lens,
                    nb::handle flashmla_num_splits, nb::handle flashmla_metadata, int layout, bool clamp_min_len,
                    nb::handle stream) {
  prepare_build_metadata(t, mode, draft_tokens, topk, page_size, seq_lens, req_pool_indices, req_to_token, extend_lens,
                         flashmla_num_splits, flashmla_metadata, layout, clamp_min_len)
      .run(stream);
}

// context_lens: int32 [batch] (next_n 1) or [batch, next_n] with unit column
// stride and any row stride; out: int32 [num_sms + 1, 2], contiguous.
void paged_mqa_schedule(nb::handle context_lens, nb::handle out, int layout, bool clamp_min_len, nb::handle stream) {
  Call c("paged_mqa_schedule");
  const Array lens = c.require(context_lens, "context_lens");
  const Array sched = c.require(out, "out", true);
  c.dtype(lens, {DType::kInt32}, "int32");
  nsa::PagedMqaScheduleArgs a;
  if (lens.ndim == 1) {
    a.batch = c.vector(lens, 0, "[batch] or [batch, next_n]");
  } else {
    a.context_lens_ld = c.table(lens, "[batch, next_n]");
    a.batch = lens.shape[0];
    a.next_n = lens.shape[1];
    if (a.next_n < 1) c.fail(lens.name, "[batch, next_n] with next_n >= 1", lens.describe());
  }
  a.context_lens = lens.as<int32_t>();
  a.num_sms = schedule_sms(c, sched);
  a.schedule = sched.as<int32_t>();
  a.layout = paged_mqa_layout(layout);
  a.clamp_min_len = clamp_min_len;
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::paged_mqa_schedule(exec, a); });
}

void copy_metadata(MetadataTargetsHandle& t, int mode, int64_t bs, int64_t max_len, int64_t max_seqlen_k,
                   int64_t seqlens_expanded_size, nb::dict sources, nb::handle stream) {
  Call c("copy_metadata");
  nsa::MetadataCopyShape shape;
  shape.mode = forward_mode(c, mode);
  shape.batch_size = bs;
  shape.max_len = max_len;
  shape.max_seqlen_k = max_seqlen_k;
  shape.seqlens_expanded_size = seqlens_expanded_size;
  for (auto [v, name] : {std::pair{bs, "bs"},
                         {max_len, "max_len"},
                         {max_seqlen_k, "max_seqlen_k"},
                         {seqlens_expanded_size, "seqlens_expanded_size"}})
    if (v < 0) c.fail(name, ">= 0", std::to_string(v));
  const bool decode = shape.mode == nsa::ForwardMode::kDecode;
  const int64_t rows = decode ? bs : seqlens_expanded_size;
  const int64_t cols = decode ? max_len : max_seqlen_k;

  // Unknown keys (typos) are errors; the lookup below ignores them otherwise.
  if (nb::len(sources) > 0) {
    size_t known = 0;
    for (const char* k : source_keys()) known += sources.contains(k) ? 1 : 0;
    if (known != nb::len(sources)) Fields(c, sources, "sources.").only(source_keys());
  }
  const auto source = [&](const char* field, const char* arg, bool required) {
    nb::handle v = sources.contains(field) ? nb::handle(sources[field]) : nb::none();
    return required ? c.require(v, arg) : c.optional(v, arg);
  };
  const Array cache_seqlens = source("cache_seqlens", "sources.cache_seqlens", true);
  const Array cu_seqlens_k = source("cu_seqlens_k", "sources.cu_seqlens_k", true);
  const Array page_table_1 = source("page_table_1", "sources.page_table_1", true);
  const Array seqlens_expanded = source("seqlens_expanded", "sources.seqlens_expanded", false);
  const Array nsa_cache_seqlens = source("nsa_cache_seqlens", "sources.nsa_cache_seqlens", true);
  const Array nsa_cu_seqlens_k = source("nsa_cu_seqlens_k", "sources.nsa_cu_seqlens_k", true);
  const Array real_page_table = source("real_page_table", "sources.real_page_table", false);
  const Array num_splits = source("flashmla_num_splits", "sources.flashmla_num_splits", false);
  const Array fm_metadata = source("flashmla_metadata", "sources.flashmla_metadata", false);
  same_device_as_targets(c, t, cache_seqlens);

  nsa::MetadataSources s;
  int32_vector(c, cache_seqlens, bs, "[bs]");
  s.cache_seqlens = cache_seqlens.as<int32_t>();
  int32_vector(c, cu_seqlens_k, bs + 1, "[bs + 1]");
  s.cu_seqlens_k = cu_seqlens_k.as<int32_t>();
  int32_data(c, page_table_1);
  s.page_table_1_ld = c.table(page_table_1, "[rows, >= columns copied]");
  if (page_table_1.shape[0] < rows || page_table_1.shape[1] < cols)
    c.fail(page_table_1.name, "at least [" + std::to_string(rows) + ", " + std::to_string(cols) + "]",
           page_table_1.describe());
  s.page_table_1 = page_table_1.as<int32_t>();
  if (seqlens_expanded.present) {
    int32_vector(c, seqlens_expanded, decode ? 0 : rows, "[seqlens_expanded_size]");
    s.seqlens_expanded = seqlens_expanded.as<int32_t>();
  }
  int32_vector(c, nsa_cache_seqlens, rows, "[rows]");
  s.nsa_cache_seqlens = nsa_cache_seqlens.as<int32_t>();
  int32_vector(c, nsa_cu_seqlens_k, rows + 1, "[rows + 1]");
  s.nsa_cu_seqlens_k = nsa_cu_seqlens_k.as<int32_t>();
  if (real_page_table.present) {
    int32_data(c, real_page_table);
    s.real_page_table_ld = c.table(real_page_table, "[rows, pages]");
    if (real_page_table.shape[0] < rows)
      c.fail(real_page_table.name, "at least " + std::to_string(rows) + " rows", real_page_table.describe());
    s.real_page_table_cols = real_page_table.shape[1];
    s.real_page_table = real_page_table.as<int32_t>();
  }
  if (num_splits.present) {
    int32_vector(c, num_splits, rows + 1, "[rows + 1]");
    s.flashmla_num_splits = num_splits.as<int32_t>();
  }
  if (fm_metadata.present) {
    int32_flat(c, fm_metadata);
    s.flashmla_metadata = fm_metadata.as<int32_t>();
    s.flashmla_metadata_size = fm_metadata.numel();
  }
  const nsa::Exec exec = c.exec(stream);
  run_op(c, [&] { nsa::copy_metadata(exec, shape, s, t.targets); });
}

}  // namespace

void bind_metadata(nb::module_& m) {
  nb::class_<MetadataTargetsHandle>(m, "MetadataTargetsHandle")
      .def_prop_ro("count", &MetadataTargetsHandle::count)
      .def("max_rows",
           [](const MetadataTargetsHandle& t, int64_t i) { return nsa::metadata_target(t.targets, i).max_rows; });
  m.def("metadata_targets_workspace_bytes", [](int64_t count) { return nsa::metadata_targets_workspace_bytes(count); });
  m.def("upload_metadata_targets", &upload, nb::arg("destinations"), nb::arg("workspace"), nb::arg("stream").none(),
        nb::rv_policy::take_ownership);
  m.def("prepare_build_metadata", &prepare_build_metadata, nb::arg("targets"), nb::arg("mode"), nb::arg("draft_tokens"),
        nb::arg("topk"), nb::arg("page_size"), nb::arg("seq_lens"), nb::arg("req_pool_indices"),
        nb::arg("req_to_token"), nb::arg("extend_lens").none(), nb::arg("flashmla_num_splits").none(),
        nb::arg("flashmla_metadata").none(), nb::arg("paged_mqa_layout"), nb::arg("paged_mqa_clamp_min_len"));
  m.def("build_metadata", &build_metadata, nb::arg("targets"), nb::arg("mode"), nb::arg("draft_tokens"),
        nb::arg("topk"), nb::arg("page_size"), nb::arg("seq_lens"), nb::arg("req_pool_indices"),
        nb::arg("req_to_token"), nb::arg("extend_lens").none(), nb::arg("flashmla_num_splits").none(),
        nb::arg("flashmla_metadata").none(), nb::arg("paged_mqa_layout"), nb::arg("paged_mqa_clamp_min_len"),
        nb::arg("stream").none());
  m.def("paged_mqa_schedule", &paged_mqa_schedule, nb::arg("context_lens"), nb::arg("out"), nb::arg("layout"),
        nb::arg("clamp_min_len"), nb::arg("stream").none());
  m.def("copy_metadata", &copy_metadata, nb::arg("targets"), nb::arg("mode"), nb::arg("bs"), nb::arg("max_len"),
        nb::arg("max_seqlen_k"), nb::arg("seqlens_expanded_size"), nb::arg("sources"), nb::arg("stream").none());
}

}  // namespace nsa_py
