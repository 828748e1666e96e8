// nsa info: what this binary is and what it can run on.
#include <fmt/format.h>

#include "buffer.h"
#include "commands.h"
#include "nsa/common.h"
#include "nsa/version.h"

namespace nsa {
namespace cli {

int run_info() {
  fmt::print("nsa {}\n", NSA_VERSION_STRING);
  const bool built = cuda_built();
  fmt::print("build: CUDA backend {}", built ? "on" : "off");
  if (built) fmt::print(" (architectures: {})", NSA_CUDA_ARCHITECTURES);
  fmt::print("\nbackends: cpu{}\n", built ? ", cuda" : "");
  const int devices = cuda_device_count();
  if (!built) {
    fmt::print("devices: none (CUDA backend not built)\n");
  } else if (devices == 0) {
    fmt::print("devices: no CUDA device found\n");
  } else {
    fmt::print("devices: {} CUDA device{}; device 0: {}\n", devices, devices == 1 ? "" : "s",
               support::cuda_device_name());
  }
  return kExitOk;
}

}  // namespace cli
}  // namespace nsa
