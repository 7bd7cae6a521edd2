#pragma once
// Zero-shot multiple-choice tasks with lm-evaluation-harness semantics.
//
// Each item is a context and its endings. An ending is scored as the continuation " " + ending
// given the context: the whole string context + continuation is tokenized (with what the
// tokenizer's convention adds, e.g. BOS in front), the context alone likewise, and the
// continuation's tokens are those of the whole after the context's count (lm-eval's
// _encode_pair). Its log-likelihood is the sum of log-softmax of those tokens. acc = the
// argmax ending (first on ties) is the gold one; acc_norm = the argmax of loglik / the ending's
// length in UTF-8 bytes (lm-eval divides by Python's len(): code points; the same for ASCII).
// Standard errors as lm-eval: sqrt(p (1 - p) / (n - 1)).
//
// Files:
//  - HellaSwag in llama.cpp's --hellaswag text layout (already preprocessed by its extractor,
//    taken as is): 6 lines per task: "activity_label: ctx", the gold label 0-3, four endings.
//  - PIQA: valid.jsonl ({"goal", "sol1", "sol2"} per line) and valid-labels.lst (0/1 per
//    line); context "Question: {goal}\nAnswer:", endings sol1, sol2.
// Compressed files are refused with a message (decompress with bzip2 -dk first).
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "quarot/forward.hpp"
#include "quarot/tokenizer.hpp"

namespace quarot {

struct ChoiceItem {
  std::string context;
  std::vector<std::string> endings;  // scored as " " + ending
  int gold = 0;
};

struct ChoiceTask {
  std::string name;  // "hellaswag" | "piqa"
  std::vector<ChoiceItem> items;
};

// Parsers of the file contents (label: the file name for errors, which name file and line).
ChoiceTask parse_hellaswag(std::string_view text, const std::string& label);
ChoiceTask parse_piqa(std::string_view jsonl, const std::string& jsonl_label, std::string_view labels,
                      const std::string& labels_label);
ChoiceTask read_hellaswag(const std::string& path);
// labels_path empty: beside the jsonl, X.jsonl -> X-labels.lst.
ChoiceTask read_piqa(const std::string& jsonl_path, std::string labels_path = "");
// "hellaswag" or "piqa"; anything else throws.
ChoiceTask read_task(const std::string& name, const std::string& path, const std::string& labels_path = "");

// The token sequences of one item: whole[e] = encode_with_special(context + " " + ending e);
// the continuation of ending e is whole[e][context_tokens ..].
struct ItemTokens {
  int context_tokens = 0;
  std::vector<std::vector<int>> whole;
};
ItemTokens tokenize_item(const Tokenizer& tok, const ChoiceItem& item);

struct ItemScore {
  std::vector<double> loglik;      // per ending
  std::vector<int> ending_tokens;  // per ending
  int gold = 0;
  int pred = 0, pred_norm = 0;
  bool truncated = false;  // a sequence longer than the model's context lost tokens on the left
};

struct TaskResult {
  std::string task;
  int items = 0;
  double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
  int truncated_items = 0;
  double seconds = 0, seconds_per_item = 0;
  std::vector<ItemScore> scores;
};

// Picks acc / acc_norm from per-ending log-likelihoods (first maximum wins, as numpy's argmax).
int argmax_choice(const std::vector<double>& v);
std::vector<double> length_normalized(const std::vector<double>& loglik, const std::vector<std::string>& endings);
// acc, acc_norm and their standard errors from scores (with pred, pred_norm, gold set).
void summarize(TaskResult& r);

using TaskProgress = std::function<void(int done, int total, const TaskResult& so_far)>;

// Scores the first `limit` items (0: all). One forward per (context + ending) from an empty KV
// cache; a sequence longer than model.max_context() + 1 keeps its last tokens (lm-eval's left
// truncation); an ending longer than max_context() alone is scored on its last max_context()
// tokens (lm-eval refuses it). Both count as truncated. T = float (any model, packed too) or
// double (tests).
template <class T>
TaskResult score_task(Transformer<T>& model, const Tokenizer& tok, const ChoiceTask& task, int limit = 0,
                      const TaskProgress& progress = {});

extern template TaskResult score_task<float>(Transformer<float>&, const Tokenizer&, const ChoiceTask&, int, const TaskProgress&);
extern template TaskResult score_task<double>(Transformer<double>&, const Tokenizer&, const ChoiceTask&, int,
                                              const TaskProgress&);

}  // namespace quarot
