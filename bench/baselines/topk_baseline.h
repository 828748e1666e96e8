// Baselines of topk_transform, kept only to measure against (bench/topk_bench);
// not part of the library.
//   - read floor: every visible score of every row read once (16-byte loads,
//     a whole-GPU grid), nothing else: the bytes a top-k cannot avoid.
//   - sort baseline, shaped like a torch.sort/topk path: a CUB segmented
//     radix sort (descending, stable) of each row's window with its indices,
//     then a kernel taking the first min(len, K) of each row through the
//     transform (-1 after). It owns its scratch (allocated once, outside timing).
//     The CPU loop (namespace cpu, every build) is the same path for `nsa bench`
//     on the CPU backend: a stable sort of each row's window, then the transform.
#pragma once

#include <cstddef>
#include <cstdint>

#include "nsa/topk.h"

namespace nsa {
namespace baseline {
namespace cpu {

// `a` as for topk_transform (fp32 scores, host pointers, any length form and
// transform): per row, std::stable_sort of the window's indices by descending
// score (ties: smaller index first, the op's rule), then the first min(len, k)
// through the transform and -1 after. Single-threaded.
void sort_topk(const TopkArgs& a);

}  // namespace cpu
}  // namespace baseline
}  // namespace nsa

#if defined(__CUDACC__) || defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>

namespace nsa {
namespace baseline {

// starts/lens: device int32 [rows] (window of each row); sink: device int32, written only if a
// (never observed) bit pattern appears, so the loads cannot be optimized away. fp32 scores.
cudaError_t topk_read_floor(const float* scores, int64_t rows, int64_t ld, const int32_t* starts, const int32_t* lens,
                            int64_t max_len, int32_t* sink, nsa::cudaStream stream);

// The output floor: K int32 per row written to out (and to raw when not
// null), nothing read: the bytes every top-k writes, whatever it reads (the
// whole cost of an identity row, len <= K, besides its table loads).
cudaError_t topk_write_floor(int32_t* out, int64_t out_ld, int32_t* raw, int64_t raw_ld, int64_t rows, int64_t k,
                             nsa::cudaStream stream);

// The identity floor: the least memory work of rows whose length is at most
// K (the identity) under the paged-64 transform: each row's int32 length and
// the table entries of its K slots read (row r's table row is r), out and
// raw written; no score is read. 16-byte stores where the rows allow.
cudaError_t topk_identity_floor(const int32_t* lens, const int32_t* table, int64_t table_ld, int64_t table_cols,
                                int32_t* out, int64_t out_ld, int32_t* raw, int64_t raw_ld, int64_t rows, int64_t k,
                                nsa::cudaStream stream);

class SortTopk {
 public:
  // rows x ld fp32 scores; windows from host starts/lens (the sort's segments are fixed at setup).
  SortTopk(int64_t rows, int64_t ld, const int32_t* host_starts, const int32_t* host_lens);
  ~SortTopk();
  SortTopk(const SortTopk&) = delete;
  SortTopk& operator=(const SortTopk&) = delete;
  // `args` as for topk_transform (fp32 scores, device pointers); the windows given at setup are used.
  cudaError_t run(const TopkArgs& args, nsa::cudaStream stream);
  // Kernels one run enqueues (the sort's passes + the take-k kernel), counted at setup.
  int64_t kernels() const { return kernels_; }

 private:
  int64_t count_sort_nodes();
  int64_t kernels_ = 0;
  int64_t rows_ = 0, ld_ = 0;
  float* keys_out_ = nullptr;
  int32_t* vals_in_ = nullptr;
  int32_t* vals_out_ = nullptr;
  int32_t* begin_ = nullptr;
  int32_t* end_ = nullptr;
  void* temp_ = nullptr;
  size_t temp_bytes_ = 0;
};

}  // namespace baseline
}  // namespace nsa
#endif  // CUDA
