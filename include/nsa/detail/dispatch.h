// Small switch helpers that turn runtime values into template constants, for
// header launchers (include/nsa/cuda/) as well as the library's own code.
#pragma once

// NSA_DISPATCH_BOOL(value, NAME, ...): runs the body with `constexpr bool NAME`.
#define NSA_DISPATCH_BOOL(value, NAME, ...) \
  [&] {                                     \
    if (value) {                            \
      constexpr bool NAME = true;           \
      return __VA_ARGS__();                 \
    } else {                                \
      constexpr bool NAME = false;          \
      return __VA_ARGS__();                 \
    }                                       \
  }()
