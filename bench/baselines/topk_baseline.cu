#include "topk_baseline.h"

#include <cub/device/device_segmented_radix_sort.cuh>

#include <stdexcept>
#include <string>
#include <vector>

#include "nsa/detail/topk_math.h"

namespace nsa {
namespace baseline {

namespace {

constexpr int kFloorThreads = 256;
constexpr int64_t kFloorVecsPerThread = 4;
constexpr int64_t kFloorElemsPerBlock = kFloorThreads * kFloorVecsPerThread * 4;

// Block (row, segment): 4 x 16 B loads in flight per thread over its part of the window.
__global__ void __launch_bounds__(kFloorThreads)
    read_floor_kernel(const float* __restrict__ scores, int64_t ld, const int32_t* __restrict__ starts,
                      const int32_t* __restrict__ lens, int64_t segs, int32_t* sink) {
  const int64_t r = blockIdx.x / segs, seg = blockIdx.x % segs;
  const int64_t start = __ldg(starts + r), len = __ldg(lens + r);
  const float* row = scores + r * ld + start;
  const int64_t head = ((16 - (reinterpret_cast<uintptr_t>(row) & 15)) & 15) / 4;
  const int64_t nvec = len > head ? (len - head) / 4 : 0;
  const uint4* vec = reinterpret_cast<const uint4*>(row + head);
  uint32_t acc = 0;
  const int64_t v0 = seg * kFloorThreads * kFloorVecsPerThread + threadIdx.x;
  uint4 v[kFloorVecsPerThread];
#pragma unroll
  for (int j = 0; j < kFloorVecsPerThread; ++j) {
    const int64_t i = v0 + j * kFloorThreads;
    v[j] = i < nvec ? __ldg(vec + i) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int j = 0; j < kFloorVecsPerThread; ++j) acc ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
  if (seg == 0 && threadIdx.x < 8) {  // head (< 4) and tail (< 4) elements
    const int64_t i = threadIdx.x < 4 ? threadIdx.x : head + nvec * 4 + (threadIdx.x - 4);
    if ((threadIdx.x < 4 && i < head && i < len) || (threadIdx.x >= 4 && i < len)) acc ^= __float_as_uint(row[i]);
  }
  if (acc == 0x7fc0dead) *sink = 1;
}

// Block (row, slice of 1024 slots): the K indices of the row in out (and
// raw), 16-byte stores where the rows allow, -1 (a value no load produces).
__global__ void __launch_bounds__(kFloorThreads)
    write_floor_kernel(int32_t* out, int64_t out_ld, int32_t* raw, int64_t raw_ld, int64_t k, int64_t slices) {
  const int64_t r = blockIdx.x / slices, s0 = (blockIdx.x % slices) * 1024;
  for (int64_t s = s0 + threadIdx.x * 4; s < s0 + 1024 && s < k; s += kFloorThreads * 4) {
    for (int32_t* row : {out + r * out_ld, raw != nullptr ? raw + r * raw_ld : nullptr}) {
      if (row == nullptr) continue;
      if (s + 4 <= k && (reinterpret_cast<uintptr_t>(row + s) & 15) == 0)
        *reinterpret_cast<int4*>(row + s) = make_int4(-1, -1, -1, -1);
      else
        for (int64_t j = s; j < s + 4 && j < k; ++j) row[j] = -1;
    }
  }
}

// Block (row, slice of 1024 slots), 4 consecutive slots per thread (one
// page: 4 divides 64): the length and the slots' table entry are loaded
// together, then both outputs are stored.
__global__ void __launch_bounds__(kFloorThreads)
    identity_floor_kernel(const int32_t* __restrict__ lens, const int32_t* __restrict__ table, int64_t table_ld,
                          int64_t table_cols, int32_t* out, int64_t out_ld, int32_t* raw, int64_t raw_ld, int64_t k,
                          int64_t slices) {
  const int64_t r = blockIdx.x / slices, s = (blockIdx.x % slices) * 1024 + threadIdx.x * 4;
  if (s >= k) return;
  const int64_t col = s >> 6;
  const int64_t len = __ldg(lens + r);
  const int64_t entry = col < table_cols ? __ldg(table + r * table_ld + col) : -1;
  int32_t o[4], x[4];
  for (int j = 0; j < 4; ++j) {
    const bool in = s + j < len && entry >= 0;
    o[j] = in ? static_cast<int32_t>(entry * 64 + ((s + j) & 63)) : -1;
    x[j] = s + j < len ? static_cast<int32_t>(s + j) : -1;
  }
  int32_t* const dst[2] = {out + r * out_ld + s, raw + r * raw_ld + s};
  const int32_t* const src[2] = {o, x};
  for (int d = 0; d < 2; ++d) {
    if (s + 4 <= k && (reinterpret_cast<uintptr_t>(dst[d]) & 15) == 0)
      *reinterpret_cast<int4*>(dst[d]) = make_int4(src[d][0], src[d][1], src[d][2], src[d][3]);
    else
      for (int j = 0; j < 4 && s + j < k; ++j) dst[d][j] = src[d][j];
  }
}

__global__ void iota_rows_kernel(int32_t* vals, int64_t rows, int64_t ld) {
  const int64_t n = rows * ld;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    vals[i] = static_cast<int32_t>(i % ld);  // the column: raw index = column - window start
}

// One block per row: slot s gets the s-th sorted index through the transform.
__global__ void take_k_kernel(const TopkArgs a, const int32_t* __restrict__ vals_out,
                              const int32_t* __restrict__ begin) {
  const int64_t r = blockIdx.x;
  const detail::TopkWindow w = detail::topk_window(a, r);
  const int64_t q = detail::topk_request(a, r);
  const int64_t valid = w.len < a.k ? w.len : a.k;
  for (int64_t s = threadIdx.x; s < a.k; s += blockDim.x) {
    const int64_t x = s < valid ? vals_out[begin[r] + s] - w.start : -1;
    a.out[r * a.out_ld + s] = s < valid ? detail::topk_apply_transform(a, r, q, x) : -1;
    if (a.out_raw != nullptr) a.out_raw[r * a.out_raw_ld + s] = static_cast<int32_t>(x);
  }
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("SortTopk: ") + what + ": " + cudaGetErrorString(e));
}

}  // namespace

cudaError_t topk_read_floor(const float* scores, int64_t rows, int64_t ld, const int32_t* starts, const int32_t* lens,
                            int64_t max_len, int32_t* sink, nsa::cudaStream stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t segs = max_len > 0 ? (max_len + kFloorElemsPerBlock - 1) / kFloorElemsPerBlock : 1;
  read_floor_kernel<<<static_cast<unsigned>(rows * segs), kFloorThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      scores, ld, starts, lens, segs, sink);
  return cudaGetLastError();
}

cudaError_t topk_write_floor(int32_t* out, int64_t out_ld, int32_t* raw, int64_t raw_ld, int64_t rows, int64_t k,
                             nsa::cudaStream stream) {
  if (rows == 0 || k == 0) return cudaSuccess;
  const int64_t slices = (k + 1023) / 1024;
  write_floor_kernel<<<static_cast<unsigned>(rows * slices), kFloorThreads, 0,
                       reinterpret_cast<cudaStream_t>(stream)>>>(out, out_ld, raw, raw_ld, k, slices);
  return cudaGetLastError();
}

cudaError_t topk_identity_floor(const int32_t* lens, const int32_t* table, int64_t table_ld, int64_t table_cols,
                                int32_t* out, int64_t out_ld, int32_t* raw, int64_t raw_ld, int64_t rows, int64_t k,
                                nsa::cudaStream stream) {
  if (rows == 0 || k == 0) return cudaSuccess;
  const int64_t slices = (k + 1023) / 1024;
  identity_floor_kernel<<<static_cast<unsigned>(rows * slices), kFloorThreads, 0,
                          reinterpret_cast<cudaStream_t>(stream)>>>(lens, table, table_ld, table_cols, out, out_ld, raw,
                                                                    raw_ld, k, slices);
  return cudaGetLastError();
}

SortTopk::SortTopk(int64_t rows, int64_t ld, const int32_t* host_starts, const int32_t* host_lens)
    : rows_(rows), ld_(ld) {
  if (rows * ld > INT32_MAX) throw std::runtime_error("SortTopk: rows * ld must fit in int32 (CUB item count)");
  std::vector<int32_t> b(rows), e(rows);
  for (int64_t r = 0; r < rows; ++r) {
    b[r] = static_cast<int32_t>(r * ld + host_starts[r]);
    e[r] = b[r] + host_lens[r];
  }
  check(cudaMalloc(&keys_out_, rows * ld * sizeof(float)), "cudaMalloc");
  check(cudaMalloc(&vals_in_, rows * ld * sizeof(int32_t)), "cudaMalloc");
  check(cudaMalloc(&vals_out_, rows * ld * sizeof(int32_t)), "cudaMalloc");
  check(cudaMalloc(&begin_, rows * sizeof(int32_t)), "cudaMalloc");
  check(cudaMalloc(&end_, rows * sizeof(int32_t)), "cudaMalloc");
  check(cudaMemcpy(begin_, b.data(), rows * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
  check(cudaMemcpy(end_, e.data(), rows * 4, cudaMemcpyHostToDevice), "cudaMemcpy");
  iota_rows_kernel<<<1024, 256>>>(vals_in_, rows, ld);
  check(cudaGetLastError(), "iota");
  check(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, temp_bytes_, static_cast<const float*>(nullptr),
                                                           keys_out_, vals_in_, vals_out_, static_cast<int>(rows * ld),
                                                           static_cast<int>(rows), begin_, end_),
        "temp size");
  check(cudaMalloc(&temp_, temp_bytes_ > 0 ? temp_bytes_ : 16), "cudaMalloc");
  check(cudaDeviceSynchronize(), "setup");
  kernels_ = count_sort_nodes() + 1;  // + take_k_kernel
}

// Graph nodes of one sort, recorded (never run) by a capture: CUB's pass count
// depends on its tuning policy, so it is counted rather than assumed.
int64_t SortTopk::count_sort_nodes() {
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  cudaGraph_t graph = nullptr;
  size_t nodes = 0, bytes = temp_bytes_;
  cudaError_t e = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  if (e == cudaSuccess) {
    const cudaError_t sort =
        cub::DeviceSegmentedRadixSort::SortPairsDescending(temp_, bytes, static_cast<const float*>(keys_out_),
                                                           keys_out_, vals_in_, vals_out_,
                                                           static_cast<int>(rows_ * ld_), static_cast<int>(rows_),
                                                           begin_, end_, 0, 32, s);
    e = cudaStreamEndCapture(s, &graph);
    if (e == cudaSuccess) e = sort;
  }
  if (e == cudaSuccess) e = cudaGraphGetNodes(graph, nullptr, &nodes);
  if (graph != nullptr) (void)cudaGraphDestroy(graph);
  (void)cudaStreamDestroy(s);
  check(e, "counting the sort's kernels");
  return static_cast<int64_t>(nodes);
}

SortTopk::~SortTopk() {
  for (void* p : {static_cast<void*>(keys_out_), static_cast<void*>(vals_in_), static_cast<void*>(vals_out_),
                  static_cast<void*>(begin_), static_cast<void*>(end_), temp_})
    (void)cudaFree(p);
}

cudaError_t SortTopk::run(const TopkArgs& a, nsa::cudaStream stream) {
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  size_t bytes = temp_bytes_;
  const cudaError_t e =
      cub::DeviceSegmentedRadixSort::SortPairsDescending(temp_, bytes, static_cast<const float*>(a.scores), keys_out_,
                                                         vals_in_, vals_out_, static_cast<int>(rows_ * ld_),
                                                         static_cast<int>(rows_), begin_, end_, 0, 32, s);
  if (e != cudaSuccess) return e;
  take_k_kernel<<<static_cast<unsigned>(rows_), 256, 0, s>>>(a, vals_out_, begin_);
  return cudaGetLastError();
}

}  // namespace baseline
}  // namespace nsa
