// Backend entry points of paged_mqa_logits. The public API (indexer.cpp)
// validates every host-visible argument first; backends never allocate.
// Device values (lengths, table entries) cannot be invalid: lengths are
// clamped and unreadable pages masked by the same rules on both backends.
#pragma once

#include "nsa/indexer.h"

namespace nsa {

namespace cpu {
void paged_mqa_logits(int threads, const PagedMqaLogitsArgs& args);
}  // namespace cpu

namespace cuda {
void paged_mqa_logits(cudaStream stream, const PagedMqaLogitsArgs& args);
}  // namespace cuda

}  // namespace nsa
