// CPU-only builds (no nvcc at configure time): the CUDA backend entry points
// exist but refuse to run. The public API rejects Backend::kCuda before it
// gets here (detail::require_backend), so these only guard against misuse.
#include <string>

#include "backends.h"
#include "metadata_backends.h"
#include "topk_backends.h"
#include "indexer_backends.h"

namespace nsa {

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }

void reset_device_error(const Exec&) {
  throw Error(ErrorCode::kUnsupported, "nsa::reset_device_error: this build has no CUDA backend");
}
DeviceError read_device_error(const Exec&) {
  throw Error(ErrorCode::kUnsupported, "nsa::read_device_error: this build has no CUDA backend");
}

namespace cuda {
namespace {
[[noreturn]] void unavailable(const char* op) {
  throw Error(ErrorCode::kUnsupported, std::string("nsa::") + op + ": this build has no CUDA backend");
}
}  // namespace

void quantize_and_store_k(cudaStream, DeviceError*, IndexCache, const uint16_t*, int64_t, int64_t, const int64_t*,
                          ScaleMode) {
  unavailable("quantize_and_store_k");
}
void store_k_and_s(cudaStream, DeviceError*, IndexCache, const uint8_t*, int64_t, int64_t, const float*,
                   const int64_t*) {
  unavailable("store_k_and_s");
}
void gather_k(cudaStream, DeviceError*, ConstIndexCache, int64_t, Indices, uint8_t*) { unavailable("gather_k"); }
void gather_s(cudaStream, DeviceError*, ConstIndexCache, int64_t, Indices, float*) { unavailable("gather_s"); }
void gather_k_and_s(cudaStream, DeviceError*, ConstIndexCache, const PagedBatch&, uint8_t*, float*, int64_t) {
  unavailable("gather_k_and_s");
}
void upload_metadata_targets(cudaStream, const MetadataBuffers*, int64_t, void*) {
  unavailable("upload_metadata_targets");
}
void build_metadata(cudaStream, DeviceError*, const MetadataConfig&, const MetadataInputs&, const MetadataTargets&) {
  unavailable("build_metadata");
}
void copy_metadata(cudaStream, const MetadataCopyShape&, const MetadataSources&, const MetadataTargets&) {
  unavailable("copy_metadata");
}

// topk_transform (issue 16)
void topk_transform(cudaStream, const TopkArgs&) { unavailable("topk_transform"); }

// paged_mqa_logits (issue 17)
void paged_mqa_logits(cudaStream, const PagedMqaLogitsArgs&) { unavailable("paged_mqa_logits"); }

}  // namespace cuda
}  // namespace nsa
