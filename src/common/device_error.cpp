// Names and messages of checked-mode violations (host side); the names come
// from the op registry, nsa/detail/ops.def.
#include <cstddef>
#include <string>

#include "nsa/common.h"

namespace nsa {

namespace {
// Names indexed by enumerator value: both come from the same list, in order,
// after kNone = 0.
constexpr const char* kOpNames[] = {
    "unknown op",
#define NSA_OP(Id, name, cuda_params) #name,
#include "nsa/detail/ops.def"
};
constexpr const char* kArgNames[] = {
    "unknown argument",
#define NSA_ARG(Id, name) #name,
#include "nsa/detail/ops.def"
};

template <class Id, size_t N>
const char* name_of(Id id, const char* const (&names)[N]) {
  const auto i = static_cast<size_t>(static_cast<int32_t>(id));
  return i < N ? names[i] : names[0];
}
}  // namespace

const char* to_string(OpId op) { return name_of(op, kOpNames); }
const char* to_string(ArgId arg) { return name_of(arg, kArgNames); }

std::string describe(const DeviceError& e) {
  if (e.code == 0) return "no error";
  return std::string(to_string(static_cast<OpId>(e.op))) + ": argument '" + to_string(static_cast<ArgId>(e.arg)) +
         "' at row " + std::to_string(e.row) + ": invalid value " + std::to_string(e.value);
}

}  // namespace nsa
