// The option table (options.hpp). Ranges say what the code can do, not what is sensible: a
// value outside them is refused where it enters (flag, --config key, batch plan, packed recipe).
#include "quarot/options.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>

#include "quarot/error.hpp"

namespace quarot {

namespace {

constexpr double kWidth = 1 << 20;  // a group, window or sample count no model reaches
using K = OptionKind;

const OptionSpec kSpecs[] = {
    {"model", K::Text, 0, 0, false, {}, "", "the checkpoint"},
    {"output", K::Text, 0, 0, false, {}, "", "the packed output"},
    {"report-dir", K::Text, 0, 0, false, {}, "", "the report folder"},
    {"json", K::Text, 0, 0, false, {}, "", "a copy of report.json"},
    {"dry-run", K::Flag, 0, 0, false, {}, "", "print the plan only"},
    {"no-rotate", K::Flag, 0, 0, false, {}, "", "no rotations"},
    {"rotation", K::Text, 0, 0, false, {}, "hadamard|random", "R1 kind"},
    {"seed", K::Uint, 0, 18446744073709551615.0, false, {}, "", "seed"},
    {"preset", K::Text, 0, 0, false, {}, "", "quantization preset"},
    {"w-method", K::Text, 0, 0, false, {}, "rtn|gptq|none", "weight quantizer"},
    {"w-bits", K::Int, 2, 8, false, {}, "", "weight bits"},
    {"w-group", K::Int, 0, kWidth, false, {}, "", "input columns per weight group, 0: per output channel"},
    {"w-asym", K::Flag, 0, 0, false, {}, "", "asymmetric weights"},
    {"no-clip-search", K::Flag, 0, 0, false, {}, "", "no clip search"},
    {"damp", K::Real, 0, 1, true, {}, "", "GPTQ damping, a fraction of the mean Hessian diagonal"},
    {"act-order", K::Flag, 0, 0, false, {}, "", "GPTQ act order"},
    {"static-groups", K::Flag, 0, 0, false, {}, "", "GPTQ static groups"},
    {"classifier-bits", K::Int, 2, 8, false, 16.0, "", "classifier bits, 16: float"},
    {"a-bits", K::Int, 2, 8, false, 16.0, "", "activation bits, 16: not quantized"},
    {"a-clip", K::Real, 0, 1, true, {}, "", "activation clip ratio"},
    {"a-group", K::Int, 0, kWidth, false, {}, "", "activation channels per scale, 0: per token"},
    {"k-bits", K::Int, 2, 8, false, 16.0, "", "key cache bits, 16: not quantized"},
    {"v-bits", K::Int, 2, 8, false, 16.0, "", "value cache bits, 16: not quantized"},
    {"kv-clip", K::Real, 0, 1, true, {}, "", "KV clip ratio"},
    {"budget-kv-bits", K::Real, 4, 8, false, {}, "", "precision planner: mean bits per cached K/V element"},
    {"target-kld", K::Real, 0, 1e9, true, {}, "", "precision planner: calibration KLD to reach; K, V and (with --a-bits 4) activation parts raised to 8 bits by sensitivity per bit of their own mean, within any budgets"},
    {"budget-act-bits", K::Real, 4, 8, false, {}, "", "precision planner: mean activation bits over layers"},
    {"plan-windows", K::Int, 1, kWidth, false, {}, "", "precision planner: calibration windows measured"},
    {"qdec", K::Flag, 0, 0, false, {}, "", "QDEC residuals"},
    {"qdec-bits", K::Int, 4, 4, false, 8.0, "", "QDEC residual bits"},
    {"qdec-k", K::Text, 0, 0, false, {}, "", "QDEC channels per 1024 inputs"},
    {"qdec-slowdown", K::Real, 0.01, 1000, false, {}, "", "QDEC decode-time budget in percent"},
    {"qdec-sweep", K::Flag, 0, 0, false, {}, "", "QDEC k sweep"},
    {"gguf-embd-type", K::Text, 0, 0, false, {}, "q4_0|q4_1|q5_0|q8_0|iq4_nl|q4_k|q6_k|f16|f32",
     "GGUF token embedding type (default: llama-quantize's); a tied source gains an untied classifier under rotation, so the "
     "embedding at the linears' type keeps the file near llama-quantize's size"},
    {"calib", K::Text, 0, 0, false, {}, "", "calibration data"},
    {"tokenizer", K::Text, 0, 0, false, {}, "", "tokenizer"},
    {"nsamples", K::Int, 1, kWidth, false, {}, "", "calibration sequences"},
    {"seqlen", K::Int, 2, kWidth, false, {}, "", "calibration sequence length"},
    {"eval-ids", K::Text, 0, 0, false, {}, "", "evaluation token ids"},
    {"eval-text", K::Text, 0, 0, false, {}, "", "evaluation text"},
    {"ctx", K::Int, 0, kWidth, false, {}, "", "evaluation window, 0: the model's max"},
    {"chunks", K::Int, 0, 1 << 30, false, {}, "", "evaluation windows, 0: all"},
    {"outlier-windows", K::Int, 0, kWidth, false, {}, "", "outlier statistics windows"},
    {"task", K::Text, 0, 0, false, {}, "hellaswag|piqa", "zero-shot task"},
    {"task-file", K::Text, 0, 0, false, {}, "", "the task's data file"},
    {"task-labels", K::Text, 0, 0, false, {}, "", "piqa labels"},
    {"task-limit", K::Int, 0, 1 << 30, false, {}, "", "task items, 0: all"},
    // More threads than this is a typo (100000 made OpenMP fail to create them and crash).
    {"threads", K::Int, 0, 1024, false, {}, "", "threads, 0: the default"},
    {"stream", K::Flag, 0, 0, false, {}, "", "stream layers"},
    {"no-checksum", K::Flag, 0, 0, false, {}, "", "no input checksum"},
    {"progress", K::Text, 0, 0, false, {}, "auto|bar|plain|none", "progress display"},
    {"verbose", K::Flag, 0, 0, false, {}, "", "more detail"},
    {"quiet", K::Flag, 0, 0, false, {}, "", "only errors and the summary"},
};

std::string number(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.15g", v);
  return b;
}

// Edits (insert, delete, replace, swap of neighbours) from a to b: a typo's usual distance.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

}  // namespace

std::span<const OptionSpec> option_specs() { return kSpecs; }

const OptionSpec* find_option_spec(std::string_view name) {
  for (const auto& s : kSpecs)
    if (s.name == name) return &s;
  return nullptr;
}

std::string option_range_text(const OptionSpec& s) {
  switch (s.kind) {
    case OptionKind::Flag: return "true or false";
    case OptionKind::Uint: return "a whole number >= 0";
    case OptionKind::Text: {
      if (s.choices.empty()) return "a string";
      std::string c(s.choices), out = "one of ";
      for (char& ch : c) out += ch == '|' ? std::string(", ") : std::string(1, ch);
      return out;
    }
    case OptionKind::Int: {
      std::string r = s.min == s.max ? number(s.min) : number(s.min) + ".." + number(s.max);
      return s.also ? r + " or " + number(*s.also) : r;
    }
    case OptionKind::Real:
      return (s.min_exclusive ? "(" : "[") + number(s.min) + ", " + number(s.max) + "]";
  }
  return "";
}

std::optional<std::string> option_value_problem(const OptionSpec& s, double v) {
  if (s.kind == OptionKind::Flag || s.kind == OptionKind::Text) return std::nullopt;
  bool ok = std::isfinite(v) && (s.min_exclusive ? v > s.min : v >= s.min) && v <= s.max;
  if (s.kind != OptionKind::Real && v != std::floor(v)) ok = false;
  if (s.also && v == *s.also) ok = true;
  if (ok) return std::nullopt;
  return "must be " + option_range_text(s) + " (" + std::string(s.meaning) + "), got " + number(v);
}

std::optional<std::string> option_choice_problem(const OptionSpec& s, std::string_view v) {
  if (s.kind != OptionKind::Text || s.choices.empty()) return std::nullopt;
  std::string_view rest = s.choices;
  while (true) {
    const auto bar = rest.find('|');
    if (rest.substr(0, bar) == v) return std::nullopt;
    if (bar == std::string_view::npos) break;
    rest.remove_prefix(bar + 1);
  }
  return "must be " + option_range_text(s) + " (" + std::string(s.meaning) + "), got '" + std::string(v) + "'";
}

void check_option_value(std::string_view name, double value) {
  const OptionSpec* s = find_option_spec(name);
  if (!s) throw Error("--" + std::string(name), "not in the option table");
  if (auto p = option_value_problem(*s, value)) throw Error("--" + std::string(name), *p);
}

std::string closest_name(std::string_view name, const std::vector<std::string_view>& candidates) {
  // Option names use '-', gate names '_': a name is compared as written and with '_' read as '-'.
  std::string lower(name), dashed;
  for (char& c : lower) c = char(std::tolower(static_cast<unsigned char>(c)));
  for (const char c : lower) dashed += c == '_' ? '-' : c;
  std::string best;
  std::size_t best_d = SIZE_MAX;
  for (const auto c : candidates) {
    const std::size_t d = std::min(edit_distance(lower, c), edit_distance(dashed, c));
    if (d < best_d) best_d = d, best = std::string(c);
  }
  // A typo changes a few characters; a different word is no suggestion.
  return best_d <= std::max<std::size_t>(2, lower.size() / 3) ? best : std::string();
}

std::string unknown_option_message(std::string_view what, std::string_view name, const std::vector<std::string_view>& extra) {
  std::vector<std::string_view> names = extra;
  for (const auto& s : kSpecs) names.push_back(s.name);
  const std::string near = closest_name(name, names);
  return "unknown " + std::string(what) + " '" + std::string(name) + "'" + (near.empty() ? std::string(" (keys are quarot-quantize's long option names, e.g. 'w-bits')") : " (did you mean '" + near + "'?)");
}

}  // namespace quarot
