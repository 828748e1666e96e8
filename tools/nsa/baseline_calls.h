// The upstream-style baselines behind one interface for both backends: the
// CUDA kernels/copies of bench/baselines (CUDA builds) or their CPU loops.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "nsa/common.h"
#include "nsa/metadata.h"
#include "nsa/topk.h"

namespace nsa {
namespace baseline {
class SortTopk;  // CUDA builds: bench/baselines/topk_baseline.h
}  // namespace baseline
}  // namespace nsa

namespace nsa {
namespace cli {
namespace baseline_call {

// Number of copies copy_metadata_per_field makes for these destinations.
int64_t metadata_copies(const MetadataCopyShape& shape, const MetadataSources& src, const MetadataBuffers* dsts,
                        int64_t count);
void copy_metadata_per_field(Backend backend, cudaStream stream, const MetadataCopyShape& shape,
                             const MetadataSources& src, const MetadataBuffers* dsts, int64_t count);
void quantize_k(Backend backend, cudaStream stream, const uint16_t* k, int64_t n, int64_t k_ld, bool ue8m0,
                uint8_t* k_fp8, float* scale);
void set_k_and_s(Backend backend, cudaStream stream, uint8_t* cache, const uint8_t* k_fp8, const float* scale,
                 const int64_t* slots, int64_t n);
void gather_k_and_s_per_token(Backend backend, cudaStream stream, const uint8_t* cache, const int32_t* page_table,
                              int64_t table_ld, const int64_t* cu_seq_lens, int64_t batch, int64_t total_tokens,
                              uint8_t* out_k, float* out_s);

// The sort-based top-k + transform baseline (bench/baselines/topk_baseline.h):
// a CUB segmented sort of each row's window, then a take-k kernel (CUDA), or a
// stable sort per row (CPU). The windows are fixed at setup (host lengths of
// rows x ld fp32 scores, each starting at column 0), as a sort's segments are.
class SortTopk {
 public:
  SortTopk(Backend backend, int64_t rows, int64_t ld, const std::vector<int32_t>& lens);
  int64_t launches() const;  // kernels per run (CUDA), 1 (CPU)
  // `args` as for topk_transform over the scores given at setup's shape.
  void run(cudaStream stream, const TopkArgs& args) const;

 private:
  Backend backend_;
  std::shared_ptr<baseline::SortTopk> gpu_;  // shared_ptr: the type is complete only in CUDA builds
};

}  // namespace baseline_call
}  // namespace cli
}  // namespace nsa
