#include "common/check.h"

namespace nsa {

const char* to_string(Backend backend) { return backend == Backend::kCpu ? "cpu" : "cuda"; }
const char* to_string(IndexType type) { return type == IndexType::kInt32 ? "int32" : "int64"; }

namespace detail {

void require_backend(const ArgChecker& check, const Exec& exec) {
  if (exec.backend != Backend::kCpu && exec.backend != Backend::kCuda)
    check.fail("exec.backend", "Backend::kCpu or Backend::kCuda", std::to_string(static_cast<int>(exec.backend)));
  if (exec.backend == Backend::kCuda && !cuda_built()) {
    throw Error(ErrorCode::kUnsupported,
                std::string("nsa::") + check.op() + ": backend 'cuda' requested but this build has no CUDA backend");
  }
  if (exec.backend == Backend::kCpu && exec.cpu_threads < 0) {
    check.fail("exec.cpu_threads", ">= 0", std::to_string(exec.cpu_threads));
  }
  // Checked mode (CUDA): the kernels write the 8-byte fields of DeviceError.
  // On the CPU exec.checked is ignored: the CPU backend always validates and throws.
  if (exec.backend == Backend::kCuda && exec.checked != nullptr) check.aligned(exec.checked, 8, "exec.checked");
}

}  // namespace detail
}  // namespace nsa
