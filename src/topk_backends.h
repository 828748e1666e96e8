// Backend entry points of topk_transform. The public API (topk.cpp) validates
// every host-visible argument first; backends never allocate. Device values
// (lengths, starts, requests, table entries, offsets) cannot be invalid: they
// are clamped or masked to -1 by the same rules on both backends.
#pragma once

#include "nsa/topk.h"

namespace nsa {

namespace cpu {
void topk_transform(int threads, const TopkArgs& args);
}  // namespace cpu

namespace cuda {
void topk_transform(cudaStream stream, const TopkArgs& args);
}  // namespace cuda

}  // namespace nsa
