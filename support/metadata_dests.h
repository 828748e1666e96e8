// Destination sets of the metadata ops for tests, benchmarks and the CLI: one
// buffer per field on a backend, a host mirror holding the same initial bytes
// (a reference writes the expected result into it), and the uploaded table.
// Every field is handled through kMetadataFields (nsa/metadata.h), so a new
// field needs no change here.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "buffer.h"
#include "nsa/metadata.h"

namespace nsa {
namespace support {

constexpr uint32_t kAllMetadataFields = (1u << kMetadataFieldCount) - 1;

// Index of each field in kMetadataFields: the `field` argument of MetadataDests.
constexpr int field_index(MetadataField f) { return static_cast<int>(f); }
constexpr int kCacheSeqlens = field_index(MetadataField::kCacheSeqlens);
constexpr int kCuSeqlensK = field_index(MetadataField::kCuSeqlensK);
constexpr int kPageTable1 = field_index(MetadataField::kPageTable1);
constexpr int kSeqlensExpanded = field_index(MetadataField::kSeqlensExpanded);
constexpr int kNsaCacheSeqlens = field_index(MetadataField::kNsaCacheSeqlens);
constexpr int kNsaCuSeqlensK = field_index(MetadataField::kNsaCuSeqlensK);
constexpr int kRealPageTable = field_index(MetadataField::kRealPageTable);
constexpr int kFlashmlaNumSplits = field_index(MetadataField::kFlashmlaNumSplits);
constexpr int kFlashmlaMetadata = field_index(MetadataField::kFlashmlaMetadata);

// Capacities of one destination set. Optional fields are present when their
// bit (metadata_field_bit) is in `fields`; mandatory ones always are.
struct MetadataDestShape {
  int64_t max_batch = 0, max_rows = 0;
  int64_t page_table_1_cols = 0, page_table_1_ld = 0;        // ld 0: = cols
  int64_t real_page_table_cols = 0, real_page_table_ld = 0;  // ld 0: = cols
  int64_t flashmla_metadata_size = 0;
  int64_t paged_mqa_num_sms = 132;  // an H100/H200's SM count
  uint32_t fields = kAllMetadataFields;

  bool has(int field) const { return !kMetadataFields[field].optional || (fields >> field & 1u); }
  // The descriptor of this shape with every pointer null.
  MetadataBuffers descriptor() const;
};

// Elements of `field` in a destination of this shape (0 when absent): rows x
// row stride for the tables.
int64_t metadata_field_size(const MetadataDestShape& shape, int field);

class MetadataDests {
 public:
  // Initial bytes: random (rng) or `byte` everywhere; the mirror starts equal.
  MetadataDests(Backend backend, const std::vector<MetadataDestShape>& shapes, std::mt19937_64& rng);
  MetadataDests(Backend backend, const std::vector<MetadataDestShape>& shapes, uint8_t byte);
  // Same, uploaded on `exec` (a stream other than the default one, a checked exec).
  MetadataDests(const Exec& exec, const std::vector<MetadataDestShape>& shapes, std::mt19937_64& rng);
  MetadataDests(const Exec& exec, const std::vector<MetadataDestShape>& shapes, uint8_t byte);
  // Backend buffers only, contents undefined until fill(), and no host mirror
  // (benchmarks, whose destinations may take GBs): mirror() and expected()
  // then hold nothing.
  MetadataDests(Backend backend, const std::vector<MetadataDestShape>& shapes);

  int64_t count() const { return static_cast<int64_t>(shapes_.size()); }
  const MetadataTargets& targets() const { return targets_; }
  const MetadataBuffers& device(int64_t d) const { return device_[static_cast<size_t>(d)]; }
  const std::vector<MetadataBuffers>& devices() const { return device_; }  // the uploaded descriptors
  // Descriptors of the host mirror, for the reference ops.
  MetadataBuffers* expected() { return expected_.data(); }
  const MetadataDestShape& shape(int64_t d) const { return shapes_[static_cast<size_t>(d)]; }
  const std::vector<MetadataDestShape>& shapes() const { return shapes_; }

  bool present(int64_t d, int field) const { return shape(d).has(field); }
  std::vector<uint8_t> read(int64_t d, int field) const;  // the backend's bytes
  const std::vector<uint8_t>& mirror(int64_t d, int field) const;
  std::vector<uint8_t>& mirror(int64_t d, int field);
  const Buffer& buffer(int64_t d, int field) const;
  size_t bytes(int64_t d) const;  // of destination d's fields on the backend
  // Sets every byte of every field, on the backend and in the mirror.
  void fill(uint8_t byte);
  // Writes `bytes` bytes at byte `offset` of (d, field), on the backend and in the mirror (if any).
  void write(int64_t d, int field, const void* data, size_t bytes, size_t offset = 0);
  // True when the backend's bytes equal the mirror's; `d`, `field` narrow it.
  bool matches() const;
  bool matches(int64_t d, int field) const;

 private:
  void init(Backend backend, const Exec& exec, const std::vector<MetadataDestShape>& shapes, std::mt19937_64* rng,
            uint8_t byte, bool mirrored = true);

  std::vector<MetadataDestShape> shapes_;
  std::vector<std::vector<Buffer>> buffers_;               // [d][field]
  std::vector<std::vector<std::vector<uint8_t>>> mirror_;  // [d][field]
  std::vector<MetadataBuffers> device_, expected_;
  Buffer workspace_;
  MetadataTargets targets_;
};

}  // namespace support
}  // namespace nsa
