#include "metadata_dests.h"

#include <cstring>

#include "host_data.h"

namespace nsa {
namespace support {

MetadataBuffers MetadataDestShape::descriptor() const {
  MetadataBuffers m;
  m.max_batch = max_batch;
  m.max_rows = max_rows;
  m.page_table_1_cols = page_table_1_cols;
  m.page_table_1_ld = page_table_1_ld ? page_table_1_ld : page_table_1_cols;
  if (has(static_cast<int>(MetadataField::kRealPageTable))) {
    m.real_page_table_cols = real_page_table_cols;
    m.real_page_table_ld = real_page_table_ld ? real_page_table_ld : real_page_table_cols;
  }
  if (has(static_cast<int>(MetadataField::kFlashmlaMetadata))) m.flashmla_metadata_size = flashmla_metadata_size;
  if (has(static_cast<int>(MetadataField::kPagedMqaSchedule))) m.paged_mqa_num_sms = paged_mqa_num_sms;
  return m;
}

int64_t metadata_field_size(const MetadataDestShape& shape, int field) {
  if (!shape.has(field)) return 0;
  const MetadataBuffers m = shape.descriptor();
  switch (kMetadataFields[field].extent) {
    case MetadataExtent::kPageTable1: return m.max_rows * m.page_table_1_ld;
    case MetadataExtent::kRealPageTable: return m.max_rows * m.real_page_table_ld;
    default: return metadata_field_elements(m, kMetadataFields[field].extent);
  }
}

MetadataDests::MetadataDests(Backend backend, const std::vector<MetadataDestShape>& shapes, std::mt19937_64& rng) {
  init(backend, backend == Backend::kCpu ? Exec::cpu() : Exec::cuda(), shapes, &rng, 0);
}
MetadataDests::MetadataDests(Backend backend, const std::vector<MetadataDestShape>& shapes, uint8_t byte) {
  init(backend, backend == Backend::kCpu ? Exec::cpu() : Exec::cuda(), shapes, nullptr, byte);
}
MetadataDests::MetadataDests(const Exec& exec, const std::vector<MetadataDestShape>& shapes, std::mt19937_64& rng) {
  init(exec.backend, exec, shapes, &rng, 0);
}
MetadataDests::MetadataDests(const Exec& exec, const std::vector<MetadataDestShape>& shapes, uint8_t byte) {
  init(exec.backend, exec, shapes, nullptr, byte);
}
MetadataDests::MetadataDests(Backend backend, const std::vector<MetadataDestShape>& shapes) {
  init(backend, backend == Backend::kCpu ? Exec::cpu() : Exec::cuda(), shapes, nullptr, 0, false);
}

void MetadataDests::init(Backend backend, const Exec& exec, const std::vector<MetadataDestShape>& shapes,
                         std::mt19937_64* rng, uint8_t byte, bool mirrored) {
  shapes_ = shapes;
  for (const auto& s : shapes_) {
    buffers_.emplace_back(kMetadataFieldCount);
    mirror_.emplace_back(kMetadataFieldCount);
    MetadataBuffers dev = s.descriptor(), host = dev;
    for (int f = 0; f < kMetadataFieldCount; ++f) {
      if (!s.has(f)) continue;
      const size_t bytes = static_cast<size_t>(metadata_field_size(s, f)) * sizeof(int32_t);
      auto& mirror = mirror_.back()[f];
      if (mirrored) mirror = rng ? random_bytes(*rng, bytes) : std::vector<uint8_t>(bytes, byte);
      buffers_.back()[f] = mirrored ? to_backend(backend, mirror) : Buffer(backend, bytes);
      dev.*kMetadataFields[f].pointer = buffers_.back()[f].as<int32_t>();
      if (mirrored) host.*kMetadataFields[f].pointer = reinterpret_cast<int32_t*>(mirror.data());
    }
    device_.push_back(dev);
    expected_.push_back(host);
  }
  workspace_ = Buffer(backend, metadata_targets_workspace_bytes(count()));
  targets_ = upload_metadata_targets(exec, device_.data(), count(), workspace_.data(), workspace_.bytes());
  synchronize(backend);
}

std::vector<uint8_t> MetadataDests::read(int64_t d, int field) const { return buffer(d, field).to_host(); }
const std::vector<uint8_t>& MetadataDests::mirror(int64_t d, int field) const {
  return mirror_[static_cast<size_t>(d)][static_cast<size_t>(field)];
}
std::vector<uint8_t>& MetadataDests::mirror(int64_t d, int field) {
  return mirror_[static_cast<size_t>(d)][static_cast<size_t>(field)];
}
const Buffer& MetadataDests::buffer(int64_t d, int field) const {
  return buffers_[static_cast<size_t>(d)][static_cast<size_t>(field)];
}

size_t MetadataDests::bytes(int64_t d) const {
  size_t total = 0;
  for (int f = 0; f < kMetadataFieldCount; ++f)
    if (present(d, f)) total += buffer(d, f).bytes();
  return total;
}

void MetadataDests::fill(uint8_t byte) {
  for (int64_t d = 0; d < count(); ++d) {
    for (int f = 0; f < kMetadataFieldCount; ++f) {
      if (!present(d, f)) continue;
      mirror(d, f).assign(mirror(d, f).size(), byte);
      buffers_[static_cast<size_t>(d)][static_cast<size_t>(f)].fill(byte);
    }
  }
}

void MetadataDests::write(int64_t d, int field, const void* data, size_t bytes, size_t offset) {
  buffers_[static_cast<size_t>(d)][static_cast<size_t>(field)].upload(data, bytes, offset);
  if (!mirror(d, field).empty()) std::memcpy(mirror(d, field).data() + offset, data, bytes);
}

bool MetadataDests::matches(int64_t d, int field) const {
  return !present(d, field) || read(d, field) == mirror(d, field);
}
bool MetadataDests::matches() const {
  for (int64_t d = 0; d < count(); ++d)
    for (int f = 0; f < kMetadataFieldCount; ++f)
      if (!matches(d, f)) return false;
  return true;
}

}  // namespace support
}  // namespace nsa
