#include "quarot/eval.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "quarot/error.hpp"

namespace quarot {

Protocol parse_protocol(const std::string& s) {
  if (s == "paper") return Protocol::Paper;
  if (s == "llama.cpp" || s == "llamacpp") return Protocol::LlamaCpp;
  throw Error("--protocol", "must be paper or llama.cpp, got '" + s + "'");
}
std::string protocol_name(Protocol p) { return p == Protocol::Paper ? "paper" : "llama.cpp"; }

namespace {

Window cut(const int* begin, int ctx, Protocol p, int bos) {
  Window w{std::vector<int>(begin, begin + ctx), 0};
  if (p == Protocol::LlamaCpp) {
    w.tokens[0] = bos;
    w.first_scored = ctx / 2;
  }
  return w;
}

// log-softmax of one row in double: returns log Z (so log p_i = x_i - logZ).
double log_partition(const float* x, int n) {
  const double mx = *std::max_element(x, x + n);
  double s = 0;
  for (int i = 0; i < n; ++i) s += std::exp(double(x[i]) - mx);
  return mx + std::log(s);
}

}  // namespace

std::vector<Window> make_windows(const std::vector<int>& stream, Protocol p, int ctx, int bos, int max_windows) {
  if (ctx < 2) throw Error("--ctx", "must be at least 2");
  std::vector<Window> out;
  for (std::size_t at = 0; at + std::size_t(ctx) <= stream.size(); at += std::size_t(ctx)) {
    if (max_windows > 0 && int(out.size()) >= max_windows) break;
    out.push_back(cut(stream.data() + at, ctx, p, bos));
  }
  return out;
}

std::vector<Window> windows_per_sequence(const std::vector<std::vector<int>>& seqs, Protocol p, int ctx, int bos,
                                         int max_windows) {
  std::vector<Window> out;
  for (const auto& s : seqs) {
    if (s.size() < 2) continue;
    if (int(s.size()) <= ctx) {
      if (max_windows > 0 && int(out.size()) >= max_windows) break;
      out.push_back(cut(s.data(), int(s.size()), p, bos));
      continue;
    }
    for (auto& w : make_windows(s, p, ctx, bos, 0)) {
      if (max_windows > 0 && int(out.size()) >= max_windows) break;
      out.push_back(std::move(w));
    }
  }
  return out;
}

namespace {
// The base model's log-probabilities and probabilities at one position, computed once however
// many models are compared with it (exp was a fifth of quarot-quantize's evaluation).
struct BaseRow {
  std::vector<double> lp, p;
  const float* logits = nullptr;
  void set(const float* b, int V) {
    logits = b;
    const double logzb = log_partition(b, V);
    lp.resize(std::size_t(V));
    p.resize(std::size_t(V));
    for (int i = 0; i < V; ++i) {
      lp[std::size_t(i)] = b[i] - logzb;
      p[std::size_t(i)] = std::exp(lp[std::size_t(i)]);
    }
  }
};

// One model's running figures over the windows (NLL per window, KLD and top-1 against a base).
struct Scores {
  EvalResult r;
  std::vector<double> all_nll, klds;
  long long agree = 0;
  double sum_window_means = 0, sum_nll = 0;
  double window_sum = 0;
  int window_n = 0;
  std::chrono::steady_clock::duration time{};

  // Position j of a window: x the model's logits there, target the next token.
  void add_position(const float* x, int target, const BaseRow* base, int V) {
    const double logz = log_partition(x, V);
    const double nll = logz - x[target];
    window_sum += nll;
    ++window_n;
    sum_nll += nll;
    all_nll.push_back(nll);
    if (base) {
      double kl = 0;
      for (int i = 0; i < V; ++i) kl += base->p[std::size_t(i)] * (base->lp[std::size_t(i)] - (x[i] - logz));
      klds.push_back(std::max(0.0, kl));
      const float* b = base->logits;
      agree += (std::max_element(x, x + V) - x) == (std::max_element(b, b + V) - b);
    }
  }

  // False when the window scored nothing (no progress call for it).
  bool end_window(const Window& w, Protocol p) {
    r.ctx = std::max(r.ctx, int(w.tokens.size()));
    const double sum = window_sum;
    const int n = window_n;
    window_sum = 0;
    window_n = 0;
    if (n == 0) return false;
    r.window_nll.push_back(sum / n);
    sum_window_means += sum / n;
    r.windows = int(r.window_nll.size());
    r.tokens_scored += n;
    // Running figures, so the progress line can show "ppl so far".
    r.mean_nll = p == Protocol::Paper ? sum_window_means / r.windows : sum_nll / double(all_nll.size());
    r.ppl = std::exp(r.mean_nll);
    return true;
  }

  EvalResult finish(Protocol p) {
    if (r.windows == 0) throw Error("evaluation", "no window to score (the text is shorter than one context window)");
    if (p == Protocol::LlamaCpp && all_nll.size() > 1) {
      // As llama.cpp: the standard error of the mean NLL, carried to PPL to first order.
      double mean = r.mean_nll, var = 0;
      for (double v : all_nll) var += (v - mean) * (v - mean);
      var /= double(all_nll.size() - 1);
      r.ppl_stderr = r.ppl * std::sqrt(var / double(all_nll.size()));
    }
    if (r.has_kld && !klds.empty()) {
      double s = 0;
      for (double k : klds) s += k;
      r.kld_mean = s / double(klds.size());
      r.kld_max = *std::max_element(klds.begin(), klds.end());
      auto sorted = klds;
      const std::size_t k99 = std::min(sorted.size() - 1, std::size_t(std::ceil(0.99 * double(sorted.size()))) - 1);
      std::nth_element(sorted.begin(), sorted.begin() + std::ptrdiff_t(k99), sorted.end());
      r.kld_p99 = sorted[k99];
      r.top1_agreement = double(agree) / double(klds.size());
    }
    r.seconds = std::chrono::duration<double>(time).count();
    return r;
  }
};
}  // namespace

EvalResult evaluate(Transformer<float>& model, const std::vector<Window>& windows, Protocol p, Transformer<float>* base,
                    const EvalProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int V = model.config().vocab;
  if (base && base->config().vocab != V) throw Error("--kld-base", "the base model's vocabulary differs");
  Transformer<float>* models[] = {&model};
  if (base) {
    auto all = evaluate_against(*base, models, windows, p, {}, progress);
    all[1].seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return all[1];
  }
  Scores s;
  s.r.protocol = p;
  std::vector<float> logits;
  for (std::size_t wi = 0; wi < windows.size(); ++wi) {
    const Window& w = windows[wi];
    model.reset();
    model.forward(w.tokens, logits);
    for (int j = w.first_scored; j + 1 < int(w.tokens.size()); ++j)
      s.add_position(logits.data() + std::size_t(j) * V, w.tokens[std::size_t(j) + 1], nullptr, V);
    if (s.end_window(w, p) && progress) progress(int(wi) + 1, int(windows.size()), s.r);
  }
  s.time = std::chrono::steady_clock::now() - t0;
  return s.finish(p);
}

std::vector<EvalResult> evaluate_against(Transformer<float>& base, std::span<Transformer<float>* const> models,
                                         const std::vector<Window>& windows, Protocol p, const EvalProgress& progress,
                                         const EvalProgress& model_progress) {
  const int V = base.config().vocab;
  for (Transformer<float>* m : models)
    if (m->config().vocab != V) throw Error("--kld-base", "the base model's vocabulary differs");
  std::vector<Scores> s(models.size() + 1);
  for (std::size_t i = 0; i < s.size(); ++i) {
    s[i].r.protocol = p;
    s[i].r.has_kld = i > 0;
  }
  std::vector<std::vector<float>> logits(models.size() + 1);
  BaseRow row;
  for (std::size_t wi = 0; wi < windows.size(); ++wi) {
    const Window& w = windows[wi];
    for (std::size_t i = 0; i < s.size(); ++i) {
      const auto t = std::chrono::steady_clock::now();
      Transformer<float>& m = i == 0 ? base : *models[i - 1];
      m.reset();
      m.forward(w.tokens, logits[i]);
      s[i].time += std::chrono::steady_clock::now() - t;
    }
    const auto t = std::chrono::steady_clock::now();
    for (int j = w.first_scored; j + 1 < int(w.tokens.size()); ++j) {
      const std::size_t at = std::size_t(j) * V;
      const int target = w.tokens[std::size_t(j) + 1];
      s[0].add_position(logits[0].data() + at, target, nullptr, V);
      if (models.empty()) continue;
      row.set(logits[0].data() + at, V);
      for (std::size_t i = 1; i < s.size(); ++i) s[i].add_position(logits[i].data() + at, target, &row, V);
    }
    // Scoring time, shared evenly (it is small next to the forwards).
    const auto share = (std::chrono::steady_clock::now() - t) / int64_t(s.size());
    bool scored = false;
    for (std::size_t i = 0; i < s.size(); ++i) {
      s[i].time += share;
      scored = s[i].end_window(w, p);
    }
    if (scored && progress) progress(int(wi) + 1, int(windows.size()), s[0].r);
    if (scored && model_progress && !models.empty()) model_progress(int(wi) + 1, int(windows.size()), s[1].r);
  }
  std::vector<EvalResult> out;
  for (auto& x : s) out.push_back(x.finish(p));
  return out;
}

double decode_seconds_per_token(Transformer<float>& model, int steps, int repeats) {
  steps = std::max(1, std::min(steps, model.max_context() - 1));
  const int vocab = model.config().vocab;
  std::vector<float> logits;
  double best = 1e300;
  for (int r = 0; r < std::max(1, repeats); ++r) {
    model.reset();
    const int bos = model.config().bos_id >= 0 ? model.config().bos_id : 1;
    model.forward_last(std::span<const int>(&bos, 1), logits);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < steps; ++i) {
      const int tok = int((uint64_t(i) * 7919 + 13) % uint64_t(vocab));  // fixed, model-independent tokens
      model.forward_last(std::span<const int>(&tok, 1), logits);
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps);
  }
  model.reset();
  return best;
}

}  // namespace quarot
