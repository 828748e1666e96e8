// The metadata side of the fuzz targets: destination sets whose descriptors
// are sometimes broken, the shape-independent descriptor rules of
// upload_metadata_targets, and the way a target table is handed to the ops
// (uploaded with a fuzzed workspace, sometimes broken afterwards so the ops'
// own table checks are reached).
#pragma once

#include <array>
#include <vector>

#include "fuzz_input.h"
#include "nsa/metadata.h"

namespace nsa {
namespace fuzz {

// Field indices of kMetadataFields (nsa/metadata.h).
enum Field { kCache, kCuK, kPt, kExpanded, kNsa, kNsaCu, kReal, kSplits, kTiles, kSchedule, kFields };
static_assert(kFields == kMetadataFieldCount, "one entry per MetadataBuffers field");

// The most SMs upload_metadata_targets accepts for a paged-MQA schedule.
constexpr int64_t kMaxSms = int64_t{1} << 20;

// Sizes a destination is built with. Columns and strides are chosen by the
// target (they bound the lengths it may generate).
struct DestShape {
  int64_t max_rows = 0;
  int64_t pt_cols = 0, pt_ld = 0;
  int64_t rt_cols = 0, rt_ld = 0;
  int64_t tiles = 0;
  int64_t sms = 0;  // paged_mqa_num_sms
  bool expanded = true, real = false, splits = false, has_tiles = false, schedule = false;
  int null_field = -1;  // a mandatory field left null (descriptor error), or -1

  // Whether field f (kMetadataFields) is given: mandatory ones always (unless null_field).
  bool has(int f) const {
    switch (f) {
      case kExpanded: return expanded;
      case kReal: return real;
      case kSplits: return splits;
      case kTiles: return has_tiles;
      case kSchedule: return schedule;
      default: return !kMetadataFields[f].optional;
    }
  }
};

class FuzzDest {
 public:
  FuzzDest(Input& in, const DestShape& s) : s_(s) {
    auto n = [](int64_t v) { return v > 0 ? v : 0; };
    // The extents of the buffers: whole rows of the widest of columns and stride (however broken the descriptor).
    MetadataBuffers extents;
    extents.max_rows = extents.max_batch = n(s.max_rows);
    extents.page_table_1_cols = extents.page_table_1_ld = n(std::max(s.pt_ld, s.pt_cols));
    extents.real_page_table_cols = extents.real_page_table_ld = n(std::max(s.rt_ld, s.rt_cols));
    extents.flashmla_metadata_size = n(s.tiles);
    extents.paged_mqa_num_sms = s.sms > 0 && s.sms <= kMaxSms ? s.sms : 0;  // a broken count gets no buffer
    for (int f = 0; f < kFields; ++f) {
      present_[f] = s.has(f) && f != s.null_field;
      if (!present_[f]) continue;
      const size_t size = static_cast<size_t>(metadata_field_elements(extents, kMetadataFields[f].extent));
      const std::vector<uint8_t> bytes = bytes_from(in, size * 4 + 4);  // +1 element: never empty
      actual_[f].resize(size + 1);
      std::memcpy(actual_[f].data(), bytes.data(), actual_[f].size() * 4);
      expected_[f] = actual_[f];
    }
  }

  MetadataBuffers view(bool expected) {
    MetadataBuffers m;
    for (int f = 0; f < kFields; ++f)
      if (present_[f]) m.*kMetadataFields[f].pointer = (expected ? expected_[f] : actual_[f]).data();
    m.page_table_1_cols = s_.pt_cols;
    m.page_table_1_ld = s_.pt_ld;
    m.real_page_table_cols = s_.rt_cols;
    m.real_page_table_ld = s_.rt_ld;
    m.flashmla_metadata_size = s_.tiles;
    m.paged_mqa_num_sms = s_.sms;
    m.max_rows = s_.max_rows;
    m.max_batch = s_.max_rows;
    return m;
  }

  // upload_metadata_targets' rules for one descriptor.
  bool descriptor_valid() const {
    return s_.null_field < 0 && s_.max_rows >= 0 && s_.pt_cols >= 0 && s_.pt_ld >= s_.pt_cols &&
           (!s_.real || (s_.rt_cols >= 0 && s_.rt_ld >= s_.rt_cols)) && (!s_.has_tiles || s_.tiles >= 0) &&
           (!s_.schedule || (s_.sms >= 1 && s_.sms <= kMaxSms));
  }
  const DestShape& shape() const { return s_; }

  void check_matches_expected() const {
    for (int f = 0; f < kFields; ++f) expect_equal(actual_[f], expected_[f], kMetadataFields[f].name);
  }

 private:
  DestShape s_;
  std::array<bool, kFields> present_{};
  std::array<std::vector<int32_t>, kFields> actual_, expected_;
};

// A mandatory field to drop, rarely.
inline int pick_null_field(Input& in) {
  if (!in.rarely(64)) return -1;
  static const int kMandatory[] = {kCache, kCuK, kPt, kNsa, kNsaCu};
  return kMandatory[in.byte() % 5];
}

// The destination table the ops read: uploaded with a fuzzed workspace (the
// upload's own rules are checked here), then sometimes broken by hand so the
// ops' table checks are reached. Descriptor rules are checked by the caller.
struct FuzzTargets {
  std::vector<MetadataBuffers> host, expected_host;
  std::vector<MetadataBuffers> workspace;  // upload's destination (CPU backend: host memory)
  MetadataTargets targets;
  bool table_ok = true;  // the op may run with this table (when the rest is valid)

  // Returns false when upload rejected the call (checked against its rules);
  // the op is then not called.
  bool prepare(Input& in, const Where& where, std::vector<FuzzDest>& dests) {
    for (auto& d : dests) {
      host.push_back(d.view(false));
      expected_host.push_back(d.view(true));
    }
    const int64_t count = static_cast<int64_t>(host.size());
    bool descriptors_ok = true;
    for (auto& d : dests) descriptors_ok = descriptors_ok && d.descriptor_valid();
    workspace.resize(host.size() + 1);
    const bool null_host = in.rarely(64), null_ws = in.rarely(64), misaligned = in.rarely(64);
    const size_t needed = metadata_targets_workspace_bytes(count);
    const size_t ws_bytes = in.rarely(32) ? needed - 1 - in.byte() % 8 : needed + in.byte() % 8;
    void* ws = null_ws ? nullptr : reinterpret_cast<uint8_t*>(workspace.data()) + (misaligned ? 4 : 0);
    const bool valid =
        where.backend_ok && !null_host && descriptors_ok && !null_ws && !misaligned && ws_bytes >= needed;
    const std::vector<MetadataBuffers> ws_before = workspace;
    const bool ran = run_checked(valid, [&] {
      targets = upload_metadata_targets(where.exec, null_host ? nullptr : host.data(), count, ws, ws_bytes);
    });
    if (!ran) {
      expect_equal(workspace.data(), ws_before.data(), workspace.size() * sizeof(MetadataBuffers), "workspace");
      return false;
    }
    expect_equal(workspace.data(), host.data(), host.size() * sizeof(MetadataBuffers), "uploaded table");
    if (targets.table != static_cast<void*>(workspace.data()) || targets.count != count)
      fail("upload_metadata_targets returned a different table than it was given");
    // Sometimes a broken table: wrong count, no device table, or no host state (built by hand).
    switch (in.rarely(16) ? in.byte() % 3 : 3) {
      case 0:
        targets.count = in.flag() ? 0 : count + 1;
        table_ok = false;
        break;
      case 1:
        targets.table = nullptr;
        table_ok = false;
        break;
      case 2:
        targets.host = nullptr;
        table_ok = false;
        break;
      default: break;
    }
    return true;
  }
};

}  // namespace fuzz
}  // namespace nsa
