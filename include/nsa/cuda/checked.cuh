// Device side of checked mode (see nsa/common.h): kernels that validate
// device-resident indices record one violation into the caller's DeviceError.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "nsa/common.h"

namespace nsa {
namespace kernels {

// The first thread to claim the record writes it; later violations are dropped
// (the caller learns that something was wrong, and one concrete instance).
__device__ __forceinline__ void record_error(DeviceError* error, OpId op, ArgId arg, int64_t row, int64_t value) {
  if (atomicCAS(&error->code, 0, 1) == 0) {
    error->op = static_cast<int32_t>(op);
    error->arg = static_cast<int32_t>(arg);
    error->row = row;
    error->value = value;
  }
}

}  // namespace kernels
}  // namespace nsa
