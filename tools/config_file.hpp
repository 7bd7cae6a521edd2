#pragma once
// --config FILE for the tools: TOML (CLI11's own reader) or JSON (an object; detected by its
// first character). Keys are the long option names without dashes ("w-bits", "preset"); a
// flag given on the command line overrides the file.
#include <CLI/CLI.hpp>
#include <iterator>
#include <nlohmann/json.hpp>
#include "quarot/json_limits.hpp"
#include <sstream>
#include <string>

namespace quarot::cli {

class JsonOrTomlConfig : public CLI::ConfigBase {
 public:
  std::vector<CLI::ConfigItem> from_config(std::istream& in) const override {
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string::npos || text[first] != '{') {
      std::istringstream toml(text);
      return CLI::ConfigBase::from_config(toml);
    }
    nlohmann::json j;
    if (auto problem = quarot::json_limits_problem(text)) throw CLI::ConversionError("config file: JSON " + *problem);
    try {
      j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      throw CLI::ConversionError(std::string("config file: invalid JSON: ") + e.what());
    }
    std::vector<CLI::ConfigItem> out;
    flatten(j, {}, out);
    return out;
  }

 private:
  static std::string scalar(const nlohmann::json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    return v.dump();
  }
  static void flatten(const nlohmann::json& j, const std::vector<std::string>& parents, std::vector<CLI::ConfigItem>& out) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.value().is_object()) {
        auto p = parents;
        p.push_back(it.key());
        flatten(it.value(), p, out);
        continue;
      }
      CLI::ConfigItem item;
      item.parents = parents;
      item.name = it.key();
      if (it.value().is_array()) {
        for (const auto& e : it.value()) item.inputs.push_back(scalar(e));
      } else {
        item.inputs.push_back(scalar(it.value()));
      }
      out.push_back(item);
    }
  }
};

}  // namespace quarot::cli
