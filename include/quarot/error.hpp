#pragma once
// One exception type for every failure a user can cause (bad file, bad shape, bad flag value).
// Its message is a single line that starts with the file (or other subject) it is about, so a
// tool can print it as-is and exit 1.
#include <stdexcept>
#include <string>

namespace quarot {

class Error : public std::runtime_error {
 public:
  Error(const std::string& subject, const std::string& problem)
      : std::runtime_error(one_line(subject.empty() ? problem : subject + ": " + problem)) {}

 private:
  static std::string one_line(std::string s) {
    for (char& c : s)
      if (c == '\n' || c == '\r') c = ' ';
    return s;
  }
};

}  // namespace quarot
