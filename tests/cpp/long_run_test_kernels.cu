// Device side of long_run_test: the hash of one replay's outputs (many
// blocks, one atomic add each) and the comparison with the expected hash of
// the input set that was copied in, both captured in the graph after the ops.
#include <cuda_runtime.h>

#include "long_run_hash.h"

namespace nsa {
namespace test {

namespace {
__global__ void hash_kernel(LongRunView v, unsigned long long* accum) {
  const int64_t tid = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint64_t sum = 0;
  long_run_visit(v, tid, threads, [&](uint64_t f, uint64_t i, uint32_t x) { sum += long_run_mix(f, i, x); });
  atomicAdd(accum, static_cast<unsigned long long>(sum));
}

// counters: [0] replays checked, [1] mismatches, [2] first mismatching replay.
__global__ void compare_kernel(unsigned long long* accum, const unsigned long long* expected,
                               unsigned long long* counters) {
  const unsigned long long replay = counters[0]++;
  if (*accum != *expected) {
    if (counters[1]++ == 0) counters[2] = replay;
  }
  *accum = 0;  // ready for the next replay
}
}  // namespace

cudaError_t launch_long_run_check(const LongRunView& v, unsigned long long* accum, const unsigned long long* expected,
                                  unsigned long long* counters, cudaStream_t stream) {
  hash_kernel<<<64, 256, 0, stream>>>(v, accum);
  compare_kernel<<<1, 1, 0, stream>>>(accum, expected, counters);
  return cudaGetLastError();
}

}  // namespace test
}  // namespace nsa
