// Output files named on a command line (--json, --plot) are checked before a
// long run, so a typo in a directory fails at once instead of after minutes.
#pragma once

#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>

namespace nsa {
namespace support {

// Throws std::runtime_error naming `option` when `path` cannot be opened for
// writing. An existing file is left as it is; a file this check created is removed.
inline void check_writable(const std::string& path, const char* option) {
  const bool existed = static_cast<bool>(std::ifstream(path));
  if (!std::ofstream(path, std::ios::app))
    throw std::runtime_error(std::string(option) + " " + path + ": cannot be written (does the directory exist?)");
  if (!existed) std::remove(path.c_str());
}

}  // namespace support
}  // namespace nsa
