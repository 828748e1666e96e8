#include "baseline_calls.h"

#include <string>

#include "cpu_baseline.h"
#include "index_cache_baseline.h"
#include "metadata_baseline.h"
#include "topk_baseline.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace cli {
namespace baseline_call {

namespace {
#if defined(NSA_WITH_CUDA)
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(ErrorCode::kCudaError, std::string("baseline ") + what + ": " + cudaGetErrorString(err));
}
#else
[[noreturn]] void no_cuda() { throw Error(ErrorCode::kUnsupported, "baseline: this build has no CUDA backend"); }
#endif
}  // namespace

int64_t metadata_copies(const MetadataCopyShape& shape, const MetadataSources& src, const MetadataBuffers* dsts,
                        int64_t count) {
  int64_t n = 0;
  for (int64_t d = 0; d < count; ++d)
    n += static_cast<int64_t>(baseline::metadata_field_copies(shape, src, dsts[d]).size());
  return n;
}

void copy_metadata_per_field(Backend backend, cudaStream stream, const MetadataCopyShape& shape,
                             const MetadataSources& src, const MetadataBuffers* dsts, int64_t count) {
  if (backend == Backend::kCpu) {
    cpu_baseline::copy_metadata_per_field(shape, src, dsts, count);
    return;
  }
#if defined(NSA_WITH_CUDA)
  check(baseline::copy_metadata_per_field(shape, src, dsts, count, stream), "copy_metadata_per_field");
#else
  (void)stream;
  no_cuda();
#endif
}

void quantize_k(Backend backend, cudaStream stream, const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0,
                uint8_t* k_fp8, float* scale) {
  if (backend == Backend::kCpu) return baseline::cpu::quantize_k(k, n, k_ld, ue8m0, k_fp8, scale);
#if defined(NSA_WITH_CUDA)
  check(baseline::quantize_k(k, n, k_ld, ue8m0, k_fp8, scale, stream), "quantize_k");
#else
  (void)stream;
  no_cuda();
#endif
}

void set_k_and_s(Backend backend, cudaStream stream, uint8_t* cache, const uint8_t* k_fp8, const float* scale,
                 const int64_t* slots, int64_t n) {
  if (backend == Backend::kCpu) return baseline::cpu::set_k_and_s(cache, k_fp8, scale, slots, n);
#if defined(NSA_WITH_CUDA)
  check(baseline::set_k_and_s(cache, k_fp8, scale, slots, n, stream), "set_k_and_s");
#else
  (void)stream;
  no_cuda();
#endif
}

void gather_k_and_s_per_token(Backend backend, cudaStream stream, const uint8_t* cache, const int32_t* page_table,
                              int64_t table_ld, const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens,
                              uint8_t* out_k, float* out_s) {
  if (backend == Backend::kCpu)
    return baseline::cpu::gather_k_and_s_per_token(cache, page_table, table_ld, cu_seq_lens, batch, total_tokens, out_k,
                                                   out_s);
#if defined(NSA_WITH_CUDA)
  check(baseline::gather_k_and_s_per_token(cache, page_table, table_ld, cu_seq_lens, batch, total_tokens, out_k, out_s,
                                           stream),
        "gather_k_and_s_per_token");
#else
  (void)stream;
  no_cuda();
#endif
}

SortTopk::SortTopk(Backend backend, int64_t rows, int64_t ld, const std::vector<int32_t>& lens) : backend_(backend) {
  if (backend == Backend::kCpu) return;
#if defined(NSA_WITH_CUDA)
  const std::vector<int32_t> starts(lens.size(), 0);
  gpu_ = std::make_shared<baseline::SortTopk>(rows, ld, starts.data(), lens.data());
#else
  (void)rows;
  (void)ld;
  (void)lens;
  no_cuda();
#endif
}

int64_t SortTopk::launches() const {
#if defined(NSA_WITH_CUDA)
  if (gpu_) return gpu_->kernels();
#endif
  return 1;
}

void SortTopk::run(cudaStream stream, const TopkArgs& args) const {
  if (backend_ == Backend::kCpu) return baseline::cpu::sort_topk(args);
#if defined(NSA_WITH_CUDA)
  check(gpu_->run(args, stream), "sort top-k");
#else
  (void)stream;
  no_cuda();
#endif
}

}  // namespace baseline_call
}  // namespace cli
}  // namespace nsa
