// Small switch helpers that turn runtime values into template constants
// (index element types), so kernels and CPU loops are written once per type
// without runtime branching in the inner loop. Switches that header launchers
// need live in nsa/detail/dispatch.h.
#pragma once

#include <cstdint>

#include "nsa/common.h"

// NSA_DISPATCH_INDEX(type, T, ...): runs the body with `using T = int32_t` or `int64_t`.
#define NSA_DISPATCH_INDEX(type, T, ...)       \
  [&] {                                        \
    if ((type) == ::nsa::IndexType::kInt32) {  \
      using T = int32_t;                       \
      return __VA_ARGS__();                    \
    } else {                                   \
      using T = int64_t;                       \
      return __VA_ARGS__();                    \
    }                                          \
  }()
