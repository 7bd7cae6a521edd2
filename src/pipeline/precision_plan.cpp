// The precision planner (issue 17): which K/V and activation parts of which layers stay at 8
// bits under a budget or a target KLD, and each layer's clip ratios, chosen from calibration
// windows only. It measures the final logits' KL divergence from the float model on those
// windows, so what it sees is what the model outputs, not a per-tensor error that may not matter
// downstream.
//
// What it can choose is what the packed integer path runs per layer: the K and V cache bits (4
// or 8; the INT8 and INT4 KV kernels), with 4-bit activations the activation bits of the layer's
// linears (4 or 8: the INT4 GEMM takes 2..8-bit activation codes, u4 x s8 products summed
// exactly in int32; planned under --budget-act-bits or --target-kld), and the clip ratios of
// activations, keys and values. Weight bits stay the model's: the packed format stores 2..4-bit
// weights, so an 8-bit layer would have to be simulated only (not done: the report's `limits`
// says so).
//
// --target-kld T: the parts allowed at 8 bits (every part, or those the budgets choose) go to 8
// bits in one order until the calibration KLD is at most T. The order is sensitivity per bit
// added to the part's own mean: a K or V part adds (8 - 4) / (2 L) bits per cached element (2 L
// cache parts), an activation part (8 - 4) / L bits per activation (L layers, same input widths),
// so at equal sensitivity a K/V part comes first (it costs half as many bits of its mean). The
// two means are reported apart (kv_bits_per_element, act_bits_per_element): they count different
// things (cache memory per token vs GEMM input width) and are not added.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "pipeline_detail.hpp"
#include "quarot/error.hpp"
#include "quarot/pipeline.hpp"

namespace quarot {

std::vector<std::pair<int, int>> choose_kv_bits(const std::vector<double>& k_sens, const std::vector<double>& v_sens, double budget, int low,
                                                int high) {
  if (k_sens.size() != v_sens.size() || k_sens.empty()) throw Error("precision planner", "one K and one V sensitivity per layer");
  if (!(high > low)) throw Error("precision planner", "high bits must exceed low bits");
  if (!(budget >= low)) throw Error("--budget-kv-bits", "must be at least " + std::to_string(low) + ", got " + std::to_string(budget));
  const int layers = int(k_sens.size()), parts = 2 * layers;
  // Each part raised costs (high - low) / parts bits of the mean. The 1e-9 keeps a budget that is
  // exactly reachable (e.g. 6 with half the parts raised) from losing a part to rounding.
  const int raised = std::clamp(int(std::floor((budget - low) * parts / (high - low) + 1e-9)), 0, parts);
  std::vector<int> order(static_cast<std::size_t>(parts));
  std::iota(order.begin(), order.end(), 0);  // part p: layer p / 2, K when p is even
  auto sens = [&](int p) { return p % 2 == 0 ? k_sens[std::size_t(p / 2)] : v_sens[std::size_t(p / 2)]; };
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sens(a) > sens(b); });
  std::vector<std::pair<int, int>> bits(std::size_t(layers), {low, low});
  for (int i = 0; i < raised; ++i) {
    const int p = order[std::size_t(i)];
    (p % 2 == 0 ? bits[std::size_t(p / 2)].first : bits[std::size_t(p / 2)].second) = high;
  }
  return bits;
}

std::vector<int> choose_act_bits(const std::vector<double>& sens, double budget, int low, int high) {
  if (sens.empty()) throw Error("precision planner", "one activation sensitivity per layer");
  if (!(high > low)) throw Error("precision planner", "high bits must exceed low bits");
  if (!(budget >= low)) throw Error("--budget-act-bits", "must be at least " + std::to_string(low) + ", got " + std::to_string(budget));
  const int layers = int(sens.size());
  // As choose_kv_bits: each layer raised costs (high - low) / layers bits of the mean.
  const int raised = std::clamp(int(std::floor((budget - low) * layers / (high - low) + 1e-9)), 0, layers);
  std::vector<int> order(static_cast<std::size_t>(layers));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return sens[std::size_t(a)] > sens[std::size_t(b)]; });
  std::vector<int> bits(std::size_t(layers), low);
  for (int i = 0; i < raised; ++i) bits[std::size_t(order[std::size_t(i)])] = high;
  return bits;
}

namespace pipeline_detail {

namespace {

constexpr int kLow = 4, kHigh = 8;
constexpr int kMaxPlanTokens = 512;  // per window: enough attention span for the cache to matter, cheap to repeat

// The float model's log-probabilities on the planner's windows, computed once; each candidate
// setting is then one quantized forward pass per window.
class KldScorer {
 public:
  KldScorer(const ModelWeights& float_model, const ModelWeights& quantized, const OnlineTransforms& online, int head_dim,
            std::vector<std::vector<int>> windows)
      : q_(quantized), online_(online), head_dim_(head_dim), windows_(std::move(windows)) {
    for (const auto& w : windows_) ctx_ = std::max(ctx_, int(w.size()));
    Transformer<float> fm(float_model, ctx_);
    std::vector<float> logits;
    for (const auto& w : windows_) {
      fm.reset();
      fm.forward(w, logits);
      ref_.push_back(log_softmax(logits, w.size()));
      tokens_ += int(w.size());
    }
  }
  int tokens() const { return tokens_; }
  // Mean over every position of KL(float || quantized with `act`).
  double kld(const ActQuantOptions& act) {
    Transformer<float> qm(q_, ctx_);
    qm.set_hook(quantized_model_hook<float>(online_, act, head_dim_));
    std::vector<float> logits;
    double sum = 0;
    for (std::size_t i = 0; i < windows_.size(); ++i) {
      qm.reset();
      qm.forward(windows_[i], logits);
      const std::vector<double> lq = log_softmax(logits, windows_[i].size());
      const std::vector<double>& lp = ref_[i];
      const std::size_t vocab = lp.size() / windows_[i].size();
      for (std::size_t t = 0; t < windows_[i].size(); ++t) {
        double k = 0;
        for (std::size_t v = 0; v < vocab; ++v) {
          const double p = lp[t * vocab + v];
          k += std::exp(p) * (p - lq[t * vocab + v]);
        }
        sum += std::max(0.0, k);
      }
    }
    if (!std::isfinite(sum)) throw Error("precision planner", "the calibration KLD is not finite (NaN or Inf in the quantized model's logits)");
    return sum / double(tokens_);
  }

 private:
  static std::vector<double> log_softmax(const std::vector<float>& logits, std::size_t n) {
    const std::size_t vocab = logits.size() / n;
    std::vector<double> out(logits.size());
    for (std::size_t t = 0; t < n; ++t) {
      const float* x = logits.data() + t * vocab;
      double m = x[0];
      for (std::size_t v = 1; v < vocab; ++v) m = std::max(m, double(x[v]));
      double s = 0;
      for (std::size_t v = 0; v < vocab; ++v) s += std::exp(double(x[v]) - m);
      const double lse = m + std::log(s);
      for (std::size_t v = 0; v < vocab; ++v) out[t * vocab + v] = double(x[v]) - lse;
    }
    return out;
  }

  const ModelWeights& q_;
  const OnlineTransforms& online_;
  int head_dim_ = 0, ctx_ = 1, tokens_ = 0;
  std::vector<std::vector<int>> windows_;
  std::vector<std::vector<double>> ref_;
};

}  // namespace

RunReport::PrecisionPlan plan_precision(const ModelWeights& float_model, const ModelWeights& quantized, const OnlineTransforms& online,
                                        ActQuantOptions& act, int w_bits, const std::vector<std::vector<int>>& calibration,
                                        const Plan::Planner& o, const std::function<void(const std::string&)>& log) {
  const int L = quantized.config.n_layers;
  std::vector<std::vector<int>> windows;
  for (const auto& w : calibration) {
    if (int(windows.size()) >= o.windows) break;
    const std::size_t n = std::min<std::size_t>(w.size(), std::size_t(std::min(kMaxPlanTokens, quantized.config.max_positions)));
    if (n >= 2) windows.emplace_back(w.begin(), w.begin() + std::ptrdiff_t(n));
  }
  if (windows.empty()) throw Error("precision planner", "no calibration window of at least 2 tokens");
  KldScorer scorer(float_model, quantized, online, quantized.config.head_dim, windows);

  ActQuantOptions base = act;
  base.layers.clear();
  // Activation parts are plannable from 4-bit activations: under --budget-act-bits (which needs
  // them) and under --target-kld (which plans K/V alone when activations are 8- or 16-bit).
  const bool plan_act = o.budget_act_bits > 0 || (o.target_kld > 0 && base.a_bits == kLow);
  if (o.budget_act_bits > 0 && base.a_bits != kLow)
    throw Error("--budget-act-bits", "chooses 4 or 8 activation bits per layer: needs 4-bit activations (--a-bits 4), got " +
                                         std::to_string(base.a_bits));
  LayerActQuant start = base.layer(0);  // the model's clips: where each layer's search starts
  start.a_bits = plan_act ? kLow : 0;   // 0: the model's (no per-layer activation bits in the recipe)
  auto with = [&](const std::vector<LayerActQuant>& ls) {
    ActQuantOptions a = base;
    a.layers = ls;
    return a;
  };
  auto uniform = [&](int bits) {
    LayerActQuant l = start;
    l.k_bits = l.v_bits = bits;
    return std::vector<LayerActQuant>(std::size_t(L), l);
  };

  RunReport::PrecisionPlan plan;
  plan.budget_kv_bits = o.budget_kv_bits;
  plan.target_kld = o.target_kld;
  plan.windows = int(windows.size());
  plan.tokens = scorer.tokens();
  plan.budget_act_bits = o.budget_act_bits;
  char line[640];
  if (plan_act)
    std::snprintf(line, sizeof line,
                  "K and V per layer: %d or %d bits; activations per layer: %d or %d bits (the INT4 GEMM on 8-bit codes); clips per "
                  "layer. Weights stay %d-bit in every layer: the packed format stores 2..4-bit weights, so 8-bit weight layers would "
                  "not run on the integer path.",
                  kLow, kHigh, kLow, kHigh, w_bits);
  else
    std::snprintf(line, sizeof line,
                  "K and V per layer: %d or %d bits; clips per layer. Activations stay %d-bit (per-layer 4 or 8 bits from 4-bit "
                  "activations, with --budget-act-bits or --target-kld) and weights %d-bit in every layer: the packed format stores 2..4-bit weights, so 8-bit weight "
                  "layers would not run on the integer path.",
                  kLow, kHigh, base.a_bits, w_bits);
  plan.limits = line;
  log("precision planner: " + plan.limits + "\n");

  // Sensitivities: every K/V at 8 bits, then one part of one layer at 4.
  plan.kld_high = scorer.kld(with(uniform(kHigh)));
  plan.kld_low = scorer.kld(with(uniform(kLow)));
  std::vector<double> ks(static_cast<std::size_t>(L)), vs(static_cast<std::size_t>(L));
  for (int l = 0; l < L; ++l) {
    auto ls = uniform(kHigh);
    ls[std::size_t(l)].k_bits = kLow;
    ks[std::size_t(l)] = scorer.kld(with(ls)) - plan.kld_high;
    ls[std::size_t(l)] = uniform(kHigh)[0];
    ls[std::size_t(l)].v_bits = kLow;
    vs[std::size_t(l)] = scorer.kld(with(ls)) - plan.kld_high;
    std::snprintf(line, sizeof line, "  layer %d: KLD %+.5f with K at 4 bits, %+.5f with V at 4 bits\n", l, ks[std::size_t(l)], vs[std::size_t(l)]);
    log(line);
  }

  // Activations: every activation and K/V at 8 bits, then one layer's activations at 4.
  std::vector<double> as(static_cast<std::size_t>(L), 0.0);
  std::vector<int> a_bits(static_cast<std::size_t>(L), 0);
  if (plan_act) {
    auto high = uniform(kHigh);
    for (auto& x : high) x.a_bits = kHigh;
    const double a_high = scorer.kld(with(high));
    for (int l = 0; l < L; ++l) {
      auto ls = high;
      ls[std::size_t(l)].a_bits = kLow;
      as[std::size_t(l)] = scorer.kld(with(ls)) - a_high;
      std::snprintf(line, sizeof line, "  layer %d: KLD %+.5f with activations at 4 bits\n", l, as[std::size_t(l)]);
      log(line);
    }
  }

  // Bits: the most sensitive parts at 8 within the budgets (none given: every part allowed); with
  // a target KLD, only as many of those parts, in order of sensitivity per bit added (see the top
  // of this file), as it takes to reach it.
  const double budget = o.budget_kv_bits > 0 ? o.budget_kv_bits : double(kHigh);
  std::vector<std::pair<int, int>> bits = choose_kv_bits(ks, vs, budget, kLow, kHigh);
  if (plan_act) a_bits = choose_act_bits(as, o.budget_act_bits > 0 ? o.budget_act_bits : double(kHigh), kLow, kHigh);
  auto layers_of = [&](const std::vector<std::pair<int, int>>& b, const std::vector<int>& a) {
    auto ls = uniform(kLow);
    for (int l = 0; l < L; ++l) {
      ls[std::size_t(l)].k_bits = b[std::size_t(l)].first;
      ls[std::size_t(l)].v_bits = b[std::size_t(l)].second;
      if (plan_act) ls[std::size_t(l)].a_bits = a[std::size_t(l)];
    }
    return ls;
  };
  if (o.target_kld > 0) {
    enum Kind { K, V, A };
    struct Part {
      int layer;
      Kind kind;
      double per_bit;  // sensitivity / bits added to the part's own mean
    };
    const double kv_step = double(kHigh - kLow) / (2.0 * L), act_step = double(kHigh - kLow) / L;
    std::vector<Part> allowed;  // layer by layer, K, V, A: ties keep this order (stable sort)
    for (int l = 0; l < L; ++l) {
      const std::size_t i = std::size_t(l);
      if (bits[i].first == kHigh) allowed.push_back({l, K, ks[i] / kv_step});
      if (bits[i].second == kHigh) allowed.push_back({l, V, vs[i] / kv_step});
      if (plan_act && a_bits[i] == kHigh) allowed.push_back({l, A, as[i] / act_step});
    }
    std::stable_sort(allowed.begin(), allowed.end(), [](const Part& a, const Part& b) { return a.per_bit > b.per_bit; });
    for (std::size_t n = 0; n <= allowed.size(); ++n) {
      std::vector<std::pair<int, int>> kv(std::size_t(L), {kLow, kLow});
      std::vector<int> a(std::size_t(L), kLow);
      for (std::size_t i = 0; i < n; ++i) {
        const Part& p = allowed[i];
        (p.kind == K ? kv[std::size_t(p.layer)].first : p.kind == V ? kv[std::size_t(p.layer)].second : a[std::size_t(p.layer)]) = kHigh;
      }
      const double k = scorer.kld(with(layers_of(kv, a)));
      std::snprintf(line, sizeof line, "  target KLD %.5f: %zu of %zu allowed parts at 8 bits, calibration KLD %.5f\n", o.target_kld, n, allowed.size(), k);
      log(line);
      if (n == allowed.size() || k <= o.target_kld) {
        bits = kv;
        if (plan_act) a_bits = a;
        break;
      }
    }
  }
  std::vector<LayerActQuant> ls = layers_of(bits, a_bits);

  // Clips: per layer and part, the candidate with the lowest calibration KLD (coordinate descent,
  // one pass, layer by layer; a candidate must be strictly better to replace the model's).
  double best = scorer.kld(with(ls));
  const double kv_candidates[] = {1.0, 0.95, 0.9};
  const double a_candidates[] = {1.0, 0.95, 0.9, 0.85};
  for (int l = 0; l < L; ++l) {
    auto search = [&](double LayerActQuant::*clip, std::span<const double> candidates) {
      for (double c : candidates) {
        auto trial = ls;
        if (trial[std::size_t(l)].*clip == c) continue;
        trial[std::size_t(l)].*clip = c;
        const double k = scorer.kld(with(trial));
        if (k < best) {
          best = k;
          ls = trial;
        }
      }
    };
    search(&LayerActQuant::k_clip, kv_candidates);
    search(&LayerActQuant::v_clip, kv_candidates);
    if (base.a_bits < 16) search(&LayerActQuant::a_clip, a_candidates);
  }
  plan.kld_planned = best;
  act = with(ls);
  plan.kv_bits_per_element = kv_cache_bits(act, quantized.config.head_dim).codes();
  for (int l = 0; l < L; ++l) {
    const LayerActQuant x = act.layer(l);  // a_bits resolved
    plan.act_bits_per_element += double(x.a_bits) / L;
    plan.layers.push_back({l, ks[std::size_t(l)], vs[std::size_t(l)], x.k_bits, x.v_bits, x.a_clip, x.k_clip, x.v_clip, as[std::size_t(l)], x.a_bits});
    std::snprintf(line, sizeof line, "  layer %d: K%d V%d A%d, clips activations %.2f K %.2f V %.2f\n", l, x.k_bits, x.v_bits, x.a_bits, x.a_clip,
                  x.k_clip, x.v_clip);
    log(line);
  }
  std::snprintf(line, sizeof line,
                "precision planner: %.2f bits per cached element (budget %.2f), %.2f activation bits per layer; calibration KLD %.5f (all "
                "K/V 8-bit %.5f, all 4-bit %.5f), %d windows, %d tokens\n",
                plan.kv_bits_per_element, budget, plan.act_bits_per_element, plan.kld_planned, plan.kld_high, plan.kld_low, plan.windows,
                plan.tokens);
  log(line);
  return plan;
}

}  // namespace pipeline_detail
}  // namespace quarot
