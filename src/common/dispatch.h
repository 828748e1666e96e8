// Small switch helpers that turn runtime values into template constants
// (index element types), so kernels and CPU loops are written once per type
// without runtime branching in the inner loop. Switches that header launchers
// need live in nsa/detail/dispatch.h.
#pragma once

#include <cstdint>

#include "nsa/common.h"

// NSA_DISPATCH_INDEX(type, T, ...): runs the body with `using T = int32_t` or `int64_t`.
#define NSA_DISPATCH_INDEX(type, T, ...)      \
  [&] {                                       \
    if ((type) == ::nsa::IndexType::kInt32) { \
      using T = int32_t;                      \
      return __VA_ARGS__();                   \
    } else {                                  \
      using T = int64_t;                      \
      return __VA_ARGS__();                   \
    }                                         \
  }()

// NSA_DISPATCH_PAGE_SIZE(page_size, NAME, ...): runs the body with `constexpr int NAME`
// = the index cache's tokens per page (16, 32, 64, 128 or 256; the public API
// has rejected every other value before a backend runs). The only place where
// the runtime page size becomes a template constant.
#define NSA_DISPATCH_PAGE_SIZE(page_size, NAME, ...) \
  [&] {                                              \
    switch (page_size) {                             \
      case 16: {                                     \
        constexpr int NAME = 16;                     \
        return __VA_ARGS__();                        \
      }                                              \
      case 32: {                                     \
        constexpr int NAME = 32;                     \
        return __VA_ARGS__();                        \
      }                                              \
      case 128: {                                    \
        constexpr int NAME = 128;                    \
        return __VA_ARGS__();                        \
      }                                              \
      case 256: {                                    \
        constexpr int NAME = 256;                    \
        return __VA_ARGS__();                        \
      }                                              \
      default: {                                     \
        constexpr int NAME = 64;                     \
        return __VA_ARGS__();                        \
      }                                              \
    }                                                \
  }()
