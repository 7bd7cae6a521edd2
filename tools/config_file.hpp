#pragma once
// The one reader of option files: quarot-quantize's --config and quarot-batch's plans read a
// file the same way. JSON (an object; detected by its first character) or TOML (toml++, for
// both: CLI11's own TOML reader accepts what toml++ refuses and the two disagreed), checked for
// size, nesting and binary bytes before parsing. Option keys are quarot-quantize's long option
// names ("w-bits", "preset"; options.hpp's table); an unknown key, a value of the wrong type or
// out of range is an error naming the file, the key and (for a typo) the closest valid key.
// A flag given on the command line overrides the file.
#include <toml++/toml.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "quarot/atomic_file.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/options.hpp"
#include "quarot/pipeline.hpp"

namespace quarot::cli {

// An option file's content (`text`; `path` names it in errors) as a JSON object. Throws
// quarot::UsageError naming `path` for what is wrong with it (binary, not an object, bad syntax).
inline nlohmann::json parse_option_document(const std::string& text, const std::string& path) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c == 0 || (c < 0x20 && c != '\t' && c != '\n' && c != '\r'))
      throw UsageError(path, "not a text file (byte 0x" + std::string(1, "0123456789abcdef"[c >> 4]) + "0123456789abcdef"[c & 15] +
                                 " at offset " + std::to_string(i) + "): give a JSON or TOML file");
  }
  const auto first = text.find_first_not_of(" \t\r\n");
  // A JSON array starts like a TOML table header: it is JSON when it parses as JSON.
  if (first != std::string::npos && text[first] == '[' && !quarot::json_limits_problem(text) && nlohmann::json::accept(text))
    throw UsageError(path, "the top level must be a JSON object ({...}) or TOML keys, got a JSON array");
  nlohmann::json doc;
  if (first != std::string::npos && text[first] == '{') {
    if (auto problem = quarot::json_limits_problem(text)) throw UsageError(path, "JSON " + *problem);
    try {
      doc = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      throw UsageError(path, std::string("invalid JSON: ") + e.what());
    }
  } else {
    if (auto problem = quarot::toml_limits_problem(text)) throw UsageError(path, "TOML " + *problem);
    try {
      const toml::table t = toml::parse(text, path);
      std::ostringstream s;
      s << toml::json_formatter{t};
      doc = nlohmann::json::parse(s.str());
    } catch (const toml::parse_error& e) {
      throw UsageError(path, std::string("invalid TOML: ") + std::string(e.description()) + " at line " +
                                 std::to_string(e.source().begin.line));
    } catch (const std::exception& e) {
      throw UsageError(path, std::string("invalid TOML: ") + e.what());
    }
  }
  if (!doc.is_object()) throw UsageError(path, std::string("the top level must be an object, got a JSON ") + doc.type_name());
  return doc;
}
// The same, read from `path` (quarot::Error when it cannot be read).
inline nlohmann::json read_option_document(const std::string& path) { return parse_option_document(quarot::read_text_file(path), path); }

// Checks one option's value against the table: kind, range, choices. `where` is the subject of
// the error ("FILE" or "FILE: run 'x'").
inline void check_option_entry(const std::string& where, const std::string& key, const nlohmann::json& v) {
  const OptionSpec* s = find_option_spec(key);
  if (!s) throw UsageError(where, unknown_option_message("key", key, {}));
  auto wrong = [&](const char* want) { throw UsageError(where, "key '" + key + "' must be " + want + ", got " + v.dump()); };
  switch (s->kind) {
    case OptionKind::Flag:
      if (!v.is_boolean()) wrong("true or false");
      return;
    case OptionKind::Text:
      if (!v.is_string()) wrong("a string");
      if (auto p = option_choice_problem(*s, v.get<std::string>())) throw UsageError(where, "key '" + key + "' " + *p);
      return;
    case OptionKind::Uint:
      if (!v.is_number_unsigned()) wrong("a whole number >= 0");
      return;
    case OptionKind::Int:
      if (!v.is_number_integer()) wrong("a whole number");
      if (auto p = option_value_problem(*s, double(v.get<int64_t>()))) throw UsageError(where, "key '" + key + "' " + *p);
      return;
    case OptionKind::Real:
      if (!v.is_number()) wrong("a number");
      if (auto p = option_value_problem(*s, v.get<double>())) throw UsageError(where, "key '" + key + "' " + *p);
      return;
  }
}

// Checks every key of an options object; keys in `extra` (plan structure: "name", "gates", ...)
// are the caller's and skipped here.
inline void check_option_object(const std::string& where, const nlohmann::json& obj, const std::vector<std::string_view>& extra = {}) {
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    if (std::find(extra.begin(), extra.end(), it.key()) != extra.end()) continue;
    if (!find_option_spec(it.key())) throw UsageError(where, unknown_option_message("key", it.key(), extra));
    check_option_entry(where, it.key(), it.value());
  }
}

// CLI11's config formatter for --config: the document above, checked, as CLI11's items. It asks
// the app for the file's name (CLI11 hands it only a stream).
class StrictConfig : public CLI::ConfigBase {
 public:
  explicit StrictConfig(const CLI::App& app) : app_(app) {}
  std::vector<CLI::ConfigItem> from_config(std::istream&) const override {
    const std::string path = app_.get_config_ptr()->as<std::string>();
    nlohmann::json doc;
    try {
      doc = read_option_document(path);
      check_option_object(path, doc);
    } catch (const quarot::Error& e) {
      throw CLI::ConversionError(e.what());  // a usage error: exit 2 through cli::parse
    }
    std::vector<CLI::ConfigItem> out;
    for (auto it = doc.begin(); it != doc.end(); ++it) {
      CLI::ConfigItem item;
      item.name = it.key();
      const auto& v = it.value();
      item.inputs.push_back(v.is_string() ? v.get<std::string>() : v.is_boolean() ? (v.get<bool>() ? "true" : "false") : v.dump());
      out.push_back(item);
    }
    return out;
  }

 private:
  const CLI::App& app_;
};

}  // namespace quarot::cli
