// Device helper of metadata_test: the consumer kernel captured after
// build_metadata in the CUDA-graph test (reads what the build wrote).
#include <cuda_runtime.h>

#include <cstdint>

namespace nsa {
namespace test {

namespace {
__global__ void checksum_kernel(const int32_t* v, int64_t n, long long* out) {
  __shared__ unsigned long long sum;
  if (threadIdx.x == 0) sum = 0;
  __syncthreads();
  long long mine = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) mine += v[i];
  atomicAdd(&sum, static_cast<unsigned long long>(mine));
  __syncthreads();
  if (threadIdx.x == 0) *out = static_cast<long long>(sum);
}
}  // namespace

cudaError_t launch_checksum(const int32_t* v, int64_t n, long long* out, cudaStream_t stream) {
  checksum_kernel<<<1, 256, 0, stream>>>(v, n, out);
  return cudaGetLastError();
}

}  // namespace test
}  // namespace nsa
