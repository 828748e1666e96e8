// CPU-only builds (no nvcc at configure time): the CUDA backend entry points
// exist but refuse to run. The public API rejects Backend::kCuda before it
// gets here (detail::require_backend), so these only guard against misuse.
#include <string>

#include "backends.h"
#include "indexer_backends.h"
#include "metadata_backends.h"
#include "topk_backends.h"

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

// One throwing stub per CUDA entry point of the op registry. A stub whose
// parameters drift from the declaration in *backends.h is another overload,
// and this build then fails to link.
#define NSA_CUDA_STUB(name, cuda_params) \
  void name cuda_params { unavailable(#name); }
#define NSA_OP(Id, name, cuda_params) NSA_CUDA_STUB(name, cuda_params)
#define NSA_CUDA_ENTRY(name, cuda_params) NSA_CUDA_STUB(name, cuda_params)
#include "nsa/detail/ops.def"
#undef NSA_CUDA_STUB

}  // namespace cuda
}  // namespace nsa
