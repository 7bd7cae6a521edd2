#pragma once
// The one table of quarot-quantize's options: every long flag is also a --config key and a
// quarot-batch plan option, so each name, its kind and its range live here once. The CLI
// attaches the range checks from it, the config reader checks keys, types and ranges with it,
// the plan's validate() checks the resolved values with it, and the packed reader checks a
// recipe's bit widths with the same rows.
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace quarot {

enum class OptionKind {
  Flag,  // true/false
  Int,   // a whole number in [min, max] (or `also`)
  Uint,  // a whole number >= 0 up to 2^64-1 (seeds)
  Real,  // a number in [min, max] ((min, max] with min_exclusive)
  Text,  // a string; one of `choices` ("a|b|c") when given
};

struct OptionSpec {
  std::string_view name;  // the long flag without dashes: "w-bits"
  OptionKind kind;
  double min = 0, max = 0;
  bool min_exclusive = false;
  std::optional<double> also;  // one more accepted value outside [min, max] (16: not quantized)
  std::string_view choices;    // Text: "a|b|c"; empty: any string
  std::string_view meaning;    // for error messages: "weight bits"
};

// Every row, in the order of --help.
std::span<const OptionSpec> option_specs();
// The row named `name` (without dashes), or null.
const OptionSpec* find_option_spec(std::string_view name);

// "2..8 or 16", "(0, 1]", "one of rtn, gptq, none".
std::string option_range_text(const OptionSpec& spec);
// What is wrong with a number for this row ("must be 2..8 or 16 (weight bits), got 17"), or nothing.
std::optional<std::string> option_value_problem(const OptionSpec& spec, double value);
// The same for a string of a Text row with choices.
std::optional<std::string> option_choice_problem(const OptionSpec& spec, std::string_view value);
// Throwing form: quarot::Error("--NAME", problem) when `value` is out of the row's range.
void check_option_value(std::string_view name, double value);

// The candidate nearest to `name` by edit distance (with '_' read as '-'), or "" when none is
// close enough to be a likely typo.
std::string closest_name(std::string_view name, const std::vector<std::string_view>& candidates);
// "unknown key 'w_bits' (did you mean 'w-bits'?)" for the option table's names plus `extra`.
std::string unknown_option_message(std::string_view what, std::string_view name, const std::vector<std::string_view>& extra = {});

}  // namespace quarot
