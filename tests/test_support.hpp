#pragma once
// Shared by the tests: where the real data lives (skip, never fail, when it is missing),
// temporary folders, and running the tools as a user would.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"

namespace quarot::test {

namespace fs = std::filesystem;

// QUAROT_DATA (environment) overrides the configured default (../shared/data).
inline std::string data_dir() {
  if (const char* env = std::getenv("QUAROT_DATA")) return env;
  return QUAROT_DATA_DIR;
}

inline std::string data_file(const std::string& rel) { return (fs::path(data_dir()) / rel).string(); }

// Skips the current test with a clear message when a data file is missing.
#define QUAROT_REQUIRE_DATA(rel)                                                          \
  do {                                                                                    \
    if (!std::filesystem::exists(::quarot::test::data_file(rel)))                         \
      GTEST_SKIP() << "real data not found: " << ::quarot::test::data_file(rel)           \
                   << " (set QUAROT_DATA or QUAROT_DATA_DIR to the shared data folder)"; \
  } while (0)

// ASan/UBSan builds run 3-8x slower: the heaviest tests shrink or skip there.
inline constexpr bool kSanitizedBuild =
#if defined(__SANITIZE_ADDRESS__)
    true;
#else
    false;
#endif

// The message of the quarot::Error that fn throws, or "(no error)".
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// n Gaussian values (times scale) from the project's PRNG.
inline std::vector<float> gaussian(std::size_t n, uint64_t seed, float scale = 1.f) {
  detail::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * rng.gaussian();
  return v;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "quarot-test-XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& rel) const { return (path_ / rel).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

struct ToolResult {
  int exit_code;
  std::string stdout_text, stderr_text;
};

// Runs a quarot tool (by name, from the build's tools folder) with a shell-quoted argument string.
inline ToolResult run_tool(const std::string& tool, const std::string& args) {
  TempDir t;
  const std::string out = t / "out", err = t / "err";
  const std::string cmd = std::string(QUAROT_TOOL_DIR) + "/" + tool + " " + args + " >" + out + " 2>" + err + " </dev/null";
  const int status = std::system(cmd.c_str());
  auto slurp = [](const std::string& p) {
    auto b = read_bytes(p);
    return std::string(b.begin(), b.end());
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
}

// max |a - b| / max |a| over two equally long vectors (logits).
template <class A, class B>
double max_rel_diff(const A& a, const B& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(a[i])));
  }
  return a.size() == b.size() ? num / den : INFINITY;
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace quarot::test
