// Names and messages of checked-mode violations (host side).
#include <string>

#include "nsa/common.h"

namespace nsa {

const char* to_string(OpId op) {
  switch (op) {
    case OpId::kQuantizeAndStoreK: return "quantize_and_store_k";
    case OpId::kStoreKAndS: return "store_k_and_s";
    case OpId::kGatherK: return "gather_k";
    case OpId::kGatherS: return "gather_s";
    case OpId::kGatherKAndS: return "gather_k_and_s";
    case OpId::kBuildMetadata: return "build_metadata";
    case OpId::kCopyMetadata: return "copy_metadata";
    default: return "unknown op";
  }
}

const char* to_string(ArgId arg) {
  switch (arg) {
    case ArgId::kSlots: return "slots";
    case ArgId::kPageIds: return "page_ids";
    case ArgId::kPageTable: return "page_table";
    case ArgId::kSeqLens: return "seq_lens";
    case ArgId::kCuSeqLens: return "cu_seq_lens";
    case ArgId::kOutCapacity: return "out_capacity";
    case ArgId::kReqPoolIndices: return "req_pool_indices";
    case ArgId::kExtendLens: return "extend_lens";
    default: return "unknown argument";
  }
}

std::string describe(const DeviceError& e) {
  if (e.code == 0) return "no error";
  return std::string(to_string(static_cast<OpId>(e.op))) + ": argument '" + to_string(static_cast<ArgId>(e.arg)) +
         "' at row " + std::to_string(e.row) + ": invalid value " + std::to_string(e.value);
}

}  // namespace nsa
