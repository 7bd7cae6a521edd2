#include "quarot/json_limits.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "quarot/error.hpp"

namespace quarot {

namespace {

std::string mib(uint64_t b) { return std::to_string((b + (1 << 20) - 1) >> 20) + " MiB"; }

std::optional<std::string> size_problem(uint64_t size, const DocumentLimits& limits) {
  if (size > limits.max_bytes)
    return "is " + std::to_string(size) + " bytes, more than the " + mib(limits.max_bytes) + " limit";
  return std::nullopt;
}

std::string too_deep(const DocumentLimits& limits, std::size_t at) {
  return "nested deeper than " + std::to_string(limits.max_depth) + " levels at byte " + std::to_string(at) +
         " (refused before parsing)";
}

}  // namespace

std::optional<std::string> json_limits_problem(std::string_view text, const DocumentLimits& limits) {
  if (auto p = size_problem(text.size(), limits)) return p;
  int depth = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;  // the escaped character cannot end the string
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limits.max_depth) return too_deep(limits, i);
    } else if (c == ']' || c == '}') {
      --depth;  // unbalanced text is the parser's to reject
    }
  }
  return std::nullopt;
}

std::optional<std::string> toml_limits_problem(std::string_view text, const DocumentLimits& limits) {
  if (auto p = size_problem(text.size(), limits)) return p;
  int depth = 0, dots = 0;  // bracket depth; dots on the current line (dotted keys nest tables)
  const std::size_t n = text.size();
  auto starts = [&](std::size_t i, std::string_view s) { return i <= n && text.substr(i, s.size()) == s; };
  for (std::size_t i = 0; i < n; ++i) {
    const char c = text[i];
    if (c == '\n') {
      dots = 0;
    } else if (c == '#') {
      while (i + 1 < n && text[i + 1] != '\n') ++i;
    } else if (starts(i, "\"\"\"") || starts(i, "'''")) {
      const std::string_view close = text.substr(i, 3);
      const bool escapes = c == '"';
      for (i += 3; i < n && !starts(i, close); ++i)
        if (escapes && text[i] == '\\') ++i;
      i += 2;  // onto the last quote of the closing delimiter (or past the end)
    } else if (c == '"' || c == '\'') {
      for (++i; i < n && text[i] != c && text[i] != '\n'; ++i)
        if (c == '"' && text[i] == '\\') ++i;
    } else if (c == '.') {
      if (depth + ++dots > limits.max_depth) return too_deep(limits, i);
    } else if (c == '[' || c == '{') {
      if (++depth + dots > limits.max_depth) return too_deep(limits, i);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return std::nullopt;
}

void check_json_limits(std::string_view text, const std::string& label, const DocumentLimits& limits) {
  if (auto p = json_limits_problem(text, limits)) throw Error(label, "JSON " + *p);
}

void check_toml_limits(std::string_view text, const std::string& label, const DocumentLimits& limits) {
  if (auto p = toml_limits_problem(text, limits)) throw Error(label, "TOML " + *p);
}

std::string read_json_file(const std::string& path, const DocumentLimits& limits) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw Error(path, std::string("cannot open: ") + std::strerror(errno));
  if (S_ISREG(st.st_mode))
    if (auto p = size_problem(uint64_t(st.st_size), limits)) throw Error(path, *p);
  if (S_ISDIR(st.st_mode)) throw Error(path, "is a folder, expected a file");
  // Read here rather than through io's read_text_file: base sits below io (docs/architecture.md).
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, std::string("cannot open: ") + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string text = std::move(ss).str();
  check_json_limits(text, path, limits);
  return text;
}

}  // namespace quarot
