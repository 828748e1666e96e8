// Memory for tests, benchmarks and the CLI (the library itself never
// allocates): a byte buffer in host or device memory with explicit uploads
// and downloads, plus the few CUDA helpers these tools need.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "nsa/common.h"

namespace nsa {
namespace support {

// True when the CUDA backend is built and at least one device is usable.
bool cuda_device_available();
// Why the CUDA backend cannot run here: "no CUDA device found" or "built without CUDA (...)".
const char* cuda_unavailable_reason();
// Name of device 0, "" when none.
std::string cuda_device_name();

class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend backend, size_t bytes);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Backend backend() const { return backend_; }

  // upload and fill return once the bytes are in the buffer (on the device:
  // work launched afterwards on any stream sees them); download copies what
  // the buffer holds now, so the caller first waits for the work writing it.
  void upload(const void* host, size_t bytes, size_t offset = 0);
  void download(void* host, size_t bytes, size_t offset = 0) const;
  void fill(uint8_t byte);
  std::vector<uint8_t> to_host() const;
  template <class T>
  void upload(const std::vector<T>& v, size_t offset = 0) {
    upload(v.data(), v.size() * sizeof(T), offset);
  }

 private:
  Backend backend_ = Backend::kCpu;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Blocks until all work on the device is done and rethrows any sticky error.
void synchronize(Backend backend);

}  // namespace support
}  // namespace nsa
