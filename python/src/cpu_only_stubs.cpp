// Workaround, compiled only in CPU-only builds: src/index_cache.cpp calls the
// nsa::cuda:: entry points without an NSA_WITH_CUDA guard, so a CPU-only
// libnsa.a leaves them undefined and the extension module fails to load
// ("undefined symbol: nsa::cuda::gather_k_and_s"). These weak definitions are
// never reached (require_backend rejects Backend::kCuda first) and give way
// to real definitions if the library ever provides them.
#include "backends.h"

namespace nsa {
namespace cuda {
namespace {
[[noreturn]] void no_cuda(const char* op) {
  throw Error(ErrorCode::kUnsupported, std::string("nsa::") + op + ": this build has no CUDA backend");
}
}  // namespace

__attribute__((weak)) void quantize_and_store_k(cudaStream, IndexCache, const uint16_t*, int64_t, int64_t,
                                                const int64_t*, ScaleMode) {
  no_cuda("quantize_and_store_k");
}
__attribute__((weak)) void store_k_and_s(cudaStream, IndexCache, const uint8_t*, int64_t, int64_t, const float*,
                                         const int64_t*) {
  no_cuda("store_k_and_s");
}
__attribute__((weak)) void gather_k(cudaStream, ConstIndexCache, int64_t, Indices, uint8_t*) { no_cuda("gather_k"); }
__attribute__((weak)) void gather_s(cudaStream, ConstIndexCache, int64_t, Indices, float*) { no_cuda("gather_s"); }
__attribute__((weak)) void gather_k_and_s(cudaStream, ConstIndexCache, const PagedBatch&, uint8_t*, float*, int64_t) {
  no_cuda("gather_k_and_s");
}

}  // namespace cuda
}  // namespace nsa
