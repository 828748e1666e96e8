// Downstream use of the installed package: a CPU gather through the public API.
#include <nsa/nsa.h>
#include <cstdio>
#include <vector>
int main() {
  std::vector<uint8_t> pool(2 * nsa::IndexCacheLayout::kBytesPerPage, 7), out(64 * 128);
  std::vector<int32_t> ids = {1};
  nsa::gather_k(nsa::Exec::cpu(), {pool.data(), 2}, 64, ids.data(), out.data());
  std::printf("nsa %s: gathered %d, cuda built %d\n", NSA_VERSION_STRING, int(out[5]), int(nsa::cuda_built()));
}
