#pragma once
// Limits checked on untrusted JSON and TOML text BEFORE it is handed to a parser.
// nlohmann::json copies, compares, dumps and (in places) parses recursively, and toml++'s dotted
// keys nest tables without its own depth limit: a few hundred KB of "[[[[" or "a.a.a.a" would
// overflow the stack. A linear pre-scan of the nesting depth (outside strings) refuses such a
// document with a one-line error before any recursion can happen.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace quarot {

struct DocumentLimits {
  int max_depth = 64;                       // real configs and headers nest 2..5 deep
  uint64_t max_bytes = 16ull << 20;         // 16 MiB: config.json is ~1 KB, an index ~100 KB
};

// The problem with `text` as JSON ("nested deeper than 64 levels at byte 812", "is 20 MB,
// more than the 16 MiB limit"), or nothing when it is within the limits. Does not validate
// the syntax (the parser does that afterwards).
std::optional<std::string> json_limits_problem(std::string_view text, const DocumentLimits& limits = {});
// The same for TOML: nesting of [ and { plus the components of dotted keys, outside strings
// and comments.
std::optional<std::string> toml_limits_problem(std::string_view text, const DocumentLimits& limits = {});

// Throwing forms: quarot::Error naming `label`.
void check_json_limits(std::string_view text, const std::string& label, const DocumentLimits& limits = {});
void check_toml_limits(std::string_view text, const std::string& label, const DocumentLimits& limits = {});

// Reads a JSON file whose size (checked with stat before reading) and nesting are within
// `limits`; throws quarot::Error naming the path otherwise.
std::string read_json_file(const std::string& path, const DocumentLimits& limits = {});

}  // namespace quarot
