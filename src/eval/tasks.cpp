// Zero-shot multiple-choice tasks: file readers and the lm-eval-style log-likelihood scorer.
#include "quarot/tasks.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "quarot/error.hpp"

namespace quarot {

namespace {

std::string read_whole(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path, "cannot open");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) throw Error(path, "read failed");
  return s;
}

// Refuses compressed input by its magic bytes: decompressing here would need a new dependency
// (libbz2) or a shell command built from a path; `bzip2 -dk` once is simpler for the user.
void refuse_compressed(std::string_view text, const std::string& label) {
  if (text.starts_with("BZh")) throw Error(label, "is bzip2-compressed: decompress it first (bzip2 -dk FILE)");
  if (text.size() >= 2 && uint8_t(text[0]) == 0x1f && uint8_t(text[1]) == 0x8b)
    throw Error(label, "is gzip-compressed: decompress it first (gzip -dk FILE)");
}

// Lines split at '\n' with a trailing '\r' dropped; a final newline ends the last line (no empty
// line after it).
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  std::size_t at = 0;
  while (at < text.size()) {
    std::size_t nl = text.find('\n', at);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(at, nl - at);
    if (line.ends_with('\r')) line.remove_suffix(1);
    lines.push_back(line);
    at = nl + 1;
  }
  return lines;
}

std::string at_line(const std::string& label, std::size_t index) { return label + ":" + std::to_string(index + 1); }

int parse_label(std::string_view s, int n_choices, const std::string& where) {
  if (s.size() != 1 || s[0] < '0' || s[0] >= '0' + n_choices)
    throw Error(where, "label '" + std::string(s.substr(0, 20)) + "' is not one of 0.." + std::to_string(n_choices - 1));
  return s[0] - '0';
}

double stderr_of(double p, int n) { return n > 1 ? std::sqrt(p * (1 - p) / double(n - 1)) : 0.0; }

template <class T>
double log_partition(const T* x, int n) {
  double mx = -INFINITY;
  for (int i = 0; i < n; ++i) mx = std::max(mx, double(x[i]));
  double z = 0;
  for (int i = 0; i < n; ++i) z += std::exp(double(x[i]) - mx);
  return mx + std::log(z);
}

}  // namespace

ChoiceTask parse_hellaswag(std::string_view text, const std::string& label) {
  refuse_compressed(text, label);
  const auto lines = split_lines(text);
  if (lines.empty()) throw Error(label, "no tasks");
  if (lines.size() % 6 != 0)
    throw Error(label, std::to_string(lines.size()) +
                           " lines: not a multiple of 6 (context, label, 4 endings per task); the last task starts at line " +
                           std::to_string(lines.size() / 6 * 6 + 1));
  ChoiceTask task{"hellaswag", {}};
  task.items.reserve(lines.size() / 6);
  for (std::size_t i = 0; i < lines.size(); i += 6) {
    ChoiceItem item;
    if (lines[i].empty()) throw Error(at_line(label, i), "empty context");
    item.context = std::string(lines[i]);
    item.gold = parse_label(lines[i + 1], 4, at_line(label, i + 1));
    for (std::size_t e = 0; e < 4; ++e) {
      if (lines[i + 2 + e].empty()) throw Error(at_line(label, i + 2 + e), "empty ending");
      item.endings.emplace_back(lines[i + 2 + e]);
    }
    task.items.push_back(std::move(item));
  }
  return task;
}

ChoiceTask parse_piqa(std::string_view jsonl, const std::string& jsonl_label, std::string_view labels,
                      const std::string& labels_label) {
  refuse_compressed(jsonl, jsonl_label);
  refuse_compressed(labels, labels_label);
  const auto json_lines = split_lines(jsonl);
  const auto label_lines = split_lines(labels);
  if (json_lines.empty()) throw Error(jsonl_label, "no items");
  if (json_lines.size() != label_lines.size())
    throw Error(labels_label, std::to_string(label_lines.size()) + " labels for " + std::to_string(json_lines.size()) +
                                  " items in " + jsonl_label);
  ChoiceTask task{"piqa", {}};
  task.items.reserve(json_lines.size());
  for (std::size_t i = 0; i < json_lines.size(); ++i) {
    const std::string where = at_line(jsonl_label, i);
    const auto j = nlohmann::json::parse(json_lines[i].begin(), json_lines[i].end(), nullptr, false);
    if (j.is_discarded()) throw Error(where, "not a JSON value");
    if (!j.is_object()) throw Error(where, "not a JSON object");
    auto field = [&](const char* key) {
      const auto it = j.find(key);
      if (it == j.end() || !it->is_string()) throw Error(where, std::string("no string field \"") + key + "\"");
      std::string s = it->get<std::string>();
      if (s.empty()) throw Error(where, std::string("empty \"") + key + "\"");
      return s;
    };
    ChoiceItem item;
    item.context = "Question: " + field("goal") + "\nAnswer:";
    item.endings = {field("sol1"), field("sol2")};
    item.gold = parse_label(label_lines[i], 2, at_line(labels_label, i));
    task.items.push_back(std::move(item));
  }
  return task;
}

ChoiceTask read_hellaswag(const std::string& path) { return parse_hellaswag(read_whole(path), path); }

ChoiceTask read_piqa(const std::string& jsonl_path, std::string labels_path) {
  if (labels_path.empty()) {
    labels_path = jsonl_path;
    if (labels_path.ends_with(".jsonl")) labels_path.resize(labels_path.size() - 6);
    labels_path += "-labels.lst";
  }
  return parse_piqa(read_whole(jsonl_path), jsonl_path, read_whole(labels_path), labels_path);
}

ChoiceTask read_task(const std::string& name, const std::string& path, const std::string& labels_path) {
  if (name == "hellaswag") return read_hellaswag(path);
  if (name == "piqa") return read_piqa(path, labels_path);
  throw Error("--task", "unknown task '" + name + "' (hellaswag or piqa)");
}

ItemTokens tokenize_item(const Tokenizer& tok, const ChoiceItem& item) {
  ItemTokens t;
  t.context_tokens = int(tok.encode_with_special(item.context).size());
  for (const auto& e : item.endings) t.whole.push_back(tok.encode_with_special(item.context + " " + e));
  return t;
}

int argmax_choice(const std::vector<double>& v) { return int(std::max_element(v.begin(), v.end()) - v.begin()); }

std::vector<double> length_normalized(const std::vector<double>& loglik, const std::vector<std::string>& endings) {
  std::vector<double> out(loglik.size());
  for (std::size_t i = 0; i < loglik.size(); ++i) out[i] = loglik[i] / double(endings[i].size());
  return out;
}

void summarize(TaskResult& r) {
  r.items = int(r.scores.size());
  int hit = 0, hit_norm = 0;
  r.truncated_items = 0;
  for (const auto& s : r.scores) {
    hit += s.pred == s.gold;
    hit_norm += s.pred_norm == s.gold;
    r.truncated_items += s.truncated;
  }
  r.acc = r.items ? double(hit) / r.items : 0;
  r.acc_norm = r.items ? double(hit_norm) / r.items : 0;
  r.acc_stderr = stderr_of(r.acc, r.items);
  r.acc_norm_stderr = stderr_of(r.acc_norm, r.items);
  r.seconds_per_item = r.items ? r.seconds / r.items : 0;
}

template <class T>
TaskResult score_task(Transformer<T>& model, const Tokenizer& tok, const ChoiceTask& task, int limit,
                      const TaskProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int V = model.config().vocab;
  check_tokenizer_fits_model(tok, V, "tokenizer");
  const int n = limit > 0 ? std::min<int>(limit, int(task.items.size())) : int(task.items.size());
  const int max_in = model.max_context();
  TaskResult r;
  r.task = task.name;
  r.scores.reserve(n);
  std::vector<T> logits;
  for (int i = 0; i < n; ++i) {
    const ChoiceItem& item = task.items[i];
    const ItemTokens toks = tokenize_item(tok, item);
    if (toks.context_tokens == 0) throw Error(task.name + " item " + std::to_string(i + 1), "the context has no tokens");
    ItemScore s;
    s.gold = item.gold;
    for (const auto& whole : toks.whole) {
      const int cont = int(whole.size()) - toks.context_tokens;
      if (cont <= 0)
        throw Error(task.name + " item " + std::to_string(i + 1), "an ending adds no tokens to the context");
      // lm-eval: (context + continuation)[-(max_length + 1):][:-1] are the inputs.
      const int len = std::min<int>(int(whole.size()), max_in + 1);
      const int drop = int(whole.size()) - len;
      s.truncated |= drop > 0;
      const std::span<const int> seq(whole.data() + drop, std::size_t(len));
      model.reset();
      model.forward(seq.first(std::size_t(len - 1)), logits);
      // An ending longer than the context window: its last max_in tokens only (lm-eval refuses
      // such an ending; a small model with a short context meets a few, e.g. PIQA at 512).
      const int scored = std::min(cont, len - 1);
      double ll = 0;
      for (int j = len - 1 - scored; j < len - 1; ++j) {
        const T* x = logits.data() + std::size_t(j) * V;
        ll += double(x[seq[j + 1]]) - log_partition(x, V);
      }
      s.loglik.push_back(ll);
      s.ending_tokens.push_back(cont);
    }
    s.pred = argmax_choice(s.loglik);
    s.pred_norm = argmax_choice(length_normalized(s.loglik, item.endings));
    r.scores.push_back(std::move(s));
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (progress) {
      summarize(r);
      progress(i + 1, n, r);
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  summarize(r);
  return r;
}

template TaskResult score_task<float>(Transformer<float>&, const Tokenizer&, const ChoiceTask&, int, const TaskProgress&);
template TaskResult score_task<double>(Transformer<double>&, const Tokenizer&, const ChoiceTask&, int, const TaskProgress&);

}  // namespace quarot
