#pragma once
// Perplexity and KL-divergence evaluation, shared by quarot-eval and the quantizer's report.
//
// Protocols:
//  - Paper (QuaRot / GPTQ): the token stream (one BOS in front, or one per document as the
//    stream was built) cut into non-overlapping windows of ctx tokens, tail dropped; every
//    next-token target of a window scored (ctx - 1 per window);
//    PPL = exp(mean over windows of the window's mean NLL).
//  - LlamaCpp (llama.cpp's perplexity tool): windows of ctx, the first token of each replaced by
//    BOS, only targets in the second half scored; PPL = exp(mean NLL) ± its standard error.
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "quarot/forward.hpp"

namespace quarot {

enum class Protocol { Paper, LlamaCpp };
Protocol parse_protocol(const std::string& s);  // "paper" | "llama.cpp"
std::string protocol_name(Protocol p);

struct Window {
  std::vector<int> tokens;
  int first_scored = 0;  // logits[j] for j in [first_scored, size-1) predict tokens[j+1]
};

// Cuts a token stream into the protocol's windows; at most max_windows (0: all).
std::vector<Window> make_windows(const std::vector<int>& stream, Protocol p, int ctx, int bos, int max_windows);
// One window per sequence (longer ones cut into windows of ctx, tails dropped).
std::vector<Window> windows_per_sequence(const std::vector<std::vector<int>>& seqs, Protocol p, int ctx, int bos, int max_windows);

struct EvalResult {
  Protocol protocol = Protocol::Paper;
  int ctx = 0;
  int windows = 0;
  long long tokens_scored = 0;
  double mean_nll = 0;    // per the protocol's averaging
  double ppl = 0;
  double ppl_stderr = 0;  // llama.cpp protocol (0 for paper)
  std::vector<double> window_nll;  // mean NLL of each window
  bool has_kld = false;
  double kld_mean = 0, kld_p99 = 0, kld_max = 0;
  double top1_agreement = 0;  // share of scored positions where both models' argmax agree
  double seconds = 0;
};

// Called after each window: (index, total, running result).
using EvalProgress = std::function<void(int, int, const EvalResult&)>;

// Evaluates `model`; with `base`, also the KL divergence KL(base || model) on the same windows.
EvalResult evaluate(Transformer<float>& model, const std::vector<Window>& windows, Protocol p,
                    Transformer<float>* base = nullptr, const EvalProgress& progress = {});

// The base model's figures (result 0, no KLD) and each model's against it (results 1..), in one
// pass over the windows: the base runs once per window however many models are compared, the
// very figures evaluate() gives for each. A result's seconds are its own model's forwards and
// scoring; progress sees the base's running figures, model_progress the first model's.
std::vector<EvalResult> evaluate_against(Transformer<float>& base, std::span<Transformer<float>* const> models,
                                         const std::vector<Window>& windows, Protocol p, const EvalProgress& progress = {},
                                         const EvalProgress& model_progress = {});

// Seconds per decode step (one token through the model, logits of that token only), the minimum
// over `repeats` runs of `steps` steps after a one-token prompt (the KV cache grows to steps + 1).
double decode_seconds_per_token(Transformer<float>& model, int steps, int repeats = 3);

}  // namespace quarot
