// Baselines of topk_transform, kept only to measure against (bench/topk_bench);
// not part of the library.
//   - read floor: every visible score of every row read once (16-byte loads,
//     a whole-GPU grid), nothing else: the bytes a top-k cannot avoid.
//   - sort baseline, shaped like a torch.sort/topk path: a CUB segmented
//     radix sort (descending, stable) of each row's window with its indices,
//     then a kernel taking the first min(len, K) of each row through the
//     transform (-1 after). It owns its scratch (allocated once, outside timing).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "nsa/topk.h"

namespace nsa {
namespace baseline {

// starts/lens: device int32 [rows] (window of each row); sink: device int32, written only if a
// (never observed) bit pattern appears, so the loads cannot be optimized away. fp32 scores.
cudaError_t topk_read_floor(const float* scores, int64_t rows, int64_t ld, const int32_t* starts, const int32_t* lens,
                            int64_t max_len, int32_t* sink, nsa::cudaStream stream);

class SortTopk {
 public:
  // rows x ld fp32 scores; windows from host starts/lens (the sort's segments are fixed at setup).
  SortTopk(int64_t rows, int64_t ld, const int32_t* host_starts, const int32_t* host_lens);
  ~SortTopk();
  SortTopk(const SortTopk&) = delete;
  SortTopk& operator=(const SortTopk&) = delete;
  // `args` as for topk_transform (fp32 scores, device pointers); the windows given at setup are used.
  cudaError_t run(const TopkArgs& args, nsa::cudaStream stream);

 private:
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
