// A live one-line progress report on stderr ("[3/9] metadata: timing ours"),
// rewritten in place. Silent when stderr is not a terminal, so logs and CI
// output stay clean.
#pragma once

#include <string>

namespace nsa {
namespace cli {

class Progress {
 public:
  Progress(int total_steps, bool enabled);
  ~Progress();
  void step(const std::string& what);  // advances the counter and shows `what`
  void done();                         // clears the line

 private:
  int total_;
  int current_ = 0;
  bool enabled_;
  bool shown_ = false;
};

}  // namespace cli
}  // namespace nsa
