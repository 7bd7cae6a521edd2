// QDEC at run time (include/quarot/qdec_runtime.hpp): the fake-quant simulation backend and
// the tuner's cost measurement.
// Eigen first: detail/eigen.hpp silences GCC 12 false positives inside it.
#include "quarot/detail/eigen.hpp"
#include "quarot/qdec_runtime.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "quarot/act16.hpp"
#include "quarot/detail/fixed_chunks.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"
#include "quarot/quantize.hpp"

namespace quarot {

namespace {

class QdecSimulationBackend : public LinearBackend {
 public:
  QdecSimulationBackend(const ModelWeights& m, const QdecStore& s, QdecK k, const ActQuantOptions& act)
      : m_(m), s_(s), k_(k), act_(act) {
    if (s.layers() != m.config.n_layers) throw Error("qdec", "the residual store does not match the model's layers");
  }
  void allocate(const ModelConfig& c, int max_context) override {
    kv_ = c.kv_dim();
    k_cache_.assign(std::size_t(c.n_layers), std::vector<float>(std::size_t(max_context) * kv_));
    v_cache_.assign(std::size_t(c.n_layers), std::vector<float>(std::size_t(max_context) * kv_));
  }
  void linear(int layer, LinearModule m, const float* in, int n, int cols, float* out, int rows, bool same_input) override {
    using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    // q/k/v read one input, gate/up another: quantize and select once.
    const bool first = !same_input;
    const float* x = in;
    const LayerActQuant la = act_.layer(layer);
    if (la.a_bits < 16) {
      if (first) {
        xq_.assign(in, in + std::size_t(n) * std::size_t(cols));
        fake_quant_rows(xq_.data(), n, cols, act_.a_group, Grid{la.a_bits, true}, la.a_clip);
      }
      x = xq_.data();
    } else if (act_.a16_group >= 0) {  // W4A16's 16-bit codes per weight group (quarot/act16.hpp)
      if (first) {
        xq_.assign(in, in + std::size_t(n) * std::size_t(cols));
        xq_rounded_ = act16_fake_quant_rows(xq_.data(), n, cols, act_.a16_group);
      }
      if (xq_rounded_) x = xq_.data();
    }
    const Matrix& w = m_.layers[std::size_t(layer)].*linear_member(m);
    Eigen::Map<Mat> y(out, n, rows);
    const Eigen::Map<const Mat> xm(x, n, cols);
    detail::for_fixed_chunks(rows, detail::kOutputChunk, double(n) * cols * rows >= detail::kParallelMacs, [&](int64_t o0, int64_t count) {
      y.middleCols(o0, count).noalias() = xm * Eigen::Map<const Mat>(w.data.data() + o0 * cols, count, cols).transpose();
    });
    const int k = qdec_k(k_.of(m), cols);
    if (k == 0) return;
    if (first) qdec_select(in, n, cols, k, sel_);
    qdec_apply(s_.at(layer, m), in, n, k, sel_.data(), out);
  }
  void store_and_load_kv(int layer, int pos, int n, const float* k, const float* v, float* k_out, float* v_out) override {
    auto& kc = k_cache_[std::size_t(layer)];
    auto& vc = v_cache_[std::size_t(layer)];
    std::copy(k, k + std::size_t(n) * kv_, kc.begin() + std::ptrdiff_t(pos) * kv_);
    std::copy(v, v + std::size_t(n) * kv_, vc.begin() + std::ptrdiff_t(pos) * kv_);
    std::copy(kc.begin(), kc.begin() + std::ptrdiff_t(pos + n) * kv_, k_out);
    std::copy(vc.begin(), vc.begin() + std::ptrdiff_t(pos + n) * kv_, v_out);
  }

 private:
  const ModelWeights& m_;
  const QdecStore& s_;
  QdecK k_;
  ActQuantOptions act_;
  int kv_ = 0;
  std::vector<float> xq_;
  bool xq_rounded_ = false;  // W4A16: false for an input with a non-finite group (left fp32, as the kernel does)
  std::vector<int> sel_;
  std::vector<std::vector<float>> k_cache_, v_cache_;
};

}  // namespace

std::unique_ptr<LinearBackend> make_qdec_simulation_backend(const ModelWeights& quantized, const QdecStore& store, QdecK k,
                                                            const ActQuantOptions& act) {
  return std::make_unique<QdecSimulationBackend>(quantized, store, k, act);
}

Transformer<float> qdec_simulation_model(const ModelWeights& quantized, const QdecStore& store, QdecK k,
                                         const OnlineTransforms& online, const ActQuantOptions& act, int max_context) {
  ActQuantOptions kv_only = act;
  kv_only.a_bits = 16;  // the backend quantizes the linears' inputs (after selecting on them)
  for (auto& l : kv_only.layers) l.a_bits = 16;
  kv_only.a16_group = -1;
  Transformer<float> t(quantized, max_context, make_qdec_simulation_backend(quantized, store, k, act));
  if (auto hook = quantized_model_hook<float>(online, kv_only, quantized.config.head_dim)) t.set_hook(hook);
  return t;
}

QdecCosts measure_qdec_costs(const QdecStore& store, int repeats, Isa isa) {
  using Clock = std::chrono::steady_clock;
  QdecCosts c;
  const int layers = store.layers();
  if (layers == 0) return c;
  // Decode tokens' inputs: Gaussian (a fixed seed), so the selected rows are spread like real
  // ones; every layer's own store rows are read.
  // Eight different tokens in turn, so that the rows read change from token to token.
  detail::Rng rng(0x71646563);
  constexpr int kTokens = 8;
  const int64_t width = std::max(store.at(0, LinearModule::Q).cols, store.at(0, LinearModule::Down).cols);
  std::vector<float> xs(std::size_t(width * kTokens));
  for (auto& v : xs) v = rng.gaussian();
  int turn = 0;
  // Stores past 64 MB stand for models that do not fit the last-level cache.
  const bool cold = store.bytes() >= (64ull << 20);
  std::vector<uint8_t> evict(cold ? (192ull << 20) : 0, 1);
  std::vector<float> y;
  std::vector<int> sel;
  // The linears of each kind, in forward order (the first one's input is selected on).
  std::vector<LinearModule> kinds[kQdecKinds];
  for (const LinearSpec& s : kLinearSpecs) kinds[s.qdec_kind].push_back(s.module);
  for (int kind = 0; kind < kQdecKinds; ++kind)
    for (std::size_t lv = 1; lv < std::size(kQdecLevels); ++lv) {
      auto one_token = [&] {
        const float* x = xs.data() + int64_t(turn++ % kTokens) * width;
        for (int l = 0; l < layers; ++l) {
          const ResidualStore& first = store.at(l, kinds[kind][0]);
          const int k = qdec_k(kQdecLevels[lv], first.cols);
          qdec_select(x, 1, int(first.cols), k, sel);
          for (LinearModule m : kinds[kind]) {
            const ResidualStore& r = store.at(l, m);
            y.assign(std::size_t(r.rows), 0.f);
            qdec_apply(r, x, 1, k, sel.data(), y.data(), isa);
          }
        }
      };
      if (cold) {
        // A model larger than the cache reads cold rows at every decode step (the whole model
        // passed through the cache since): evict before each timed token, keep the median.
        std::vector<double> ts;
        for (int r = 0; r < 4 * std::max(1, repeats); ++r) {
          for (std::size_t i = 0; i < evict.size(); i += 64) evict[i] = uint8_t(evict[i] + 1);
          const auto t0 = Clock::now();
          one_token();
          ts.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        }
        std::nth_element(ts.begin(), ts.begin() + std::ptrdiff_t(ts.size() / 2), ts.end());
        c.seconds[kind][lv] = ts[ts.size() / 2];
        continue;
      }
      // Enough tokens per timing that the clock's resolution does not matter (>= 2 ms).
      int reps = 1;
      for (;;) {
        const auto t0 = Clock::now();
        for (int i = 0; i < reps; ++i) one_token();
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (s >= 2e-3 || reps >= (1 << 20)) break;
        reps *= 4;
      }
      double best = INFINITY;
      for (int r = 0; r < std::max(1, repeats); ++r) {
        const auto t0 = Clock::now();
        for (int i = 0; i < reps; ++i) one_token();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count() / reps);
      }
      c.seconds[kind][lv] = best;
    }
  return c;
}

QdecTuning tune_qdec(const QdecCosts& costs, double budget_seconds) {
  QdecTuning t;
  t.budget_seconds = budget_seconds;
  std::size_t level[kQdecKinds] = {0, 0, 0, 0};
  for (;;) {
    int pick = -1;
    double pick_delta = INFINITY;
    for (int kind = 0; kind < kQdecKinds; ++kind) {
      const std::size_t next = level[kind] + 1;
      if (next >= std::size(kQdecLevels)) continue;
      const double delta = costs.seconds[kind][next] - costs.seconds[kind][level[kind]];
      if (t.cost_seconds + delta <= budget_seconds && delta < pick_delta) {
        pick = kind;
        pick_delta = delta;
      }
    }
    if (pick < 0) break;
    ++level[pick];
    t.cost_seconds += pick_delta;
    t.k.kind(pick) = kQdecLevels[level[pick]];
    char line[160];
    std::snprintf(line, sizeof line, "%s -> %d (+%.2f us, total %.2f of %.2f us)", qdec_kind_name(pick), t.k.kind(pick),
                  pick_delta * 1e6, t.cost_seconds * 1e6, budget_seconds * 1e6);
    t.steps.push_back(line);
  }
  return t;
}

}  // namespace quarot
