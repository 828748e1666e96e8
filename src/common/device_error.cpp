// Names and messages of checked-mode violations (host side); the names come
// from the op registry, nsa/detail/ops.def.
#include <string>

#include "nsa/common.h"

namespace nsa {

const char* to_string(OpId op) {
  switch (op) {
#define NSA_OP(Id, name, cuda_params) \
  case OpId::k##Id: return #name;
#include "nsa/detail/ops.def"
    default: return "unknown op";
  }
}

const char* to_string(ArgId arg) {
  switch (arg) {
#define NSA_ARG(Id, name) \
  case ArgId::k##Id: return #name;
#include "nsa/detail/ops.def"
    default: return "unknown argument";
  }
}

std::string describe(const DeviceError& e) {
  if (e.code == 0) return "no error";
  return std::string(to_string(static_cast<OpId>(e.op))) + ": argument '" + to_string(static_cast<ArgId>(e.arg)) +
         "' at row " + std::to_string(e.row) + ": invalid value " + std::to_string(e.value);
}

}  // namespace nsa
