// QDEC's cost per decode token on LLaMA-2-7B-shaped layers: the compensation (exact top-k of the
// input + the selected residual rows) at k_chunk = 4, 16, 64 per 1024 inputs, against the plain
// INT4 GEMV of the same layer (W4A4: INT4 x INT8-lane kernel; W4A16: dequantize + fp32), and the
// tuner's choice of k per module kind for a 2.5% and a 10% budget.
//
// One 7B-shaped decoder layer (q/k/v/o 4096x4096, gate/up 4096 -> 11008, down 11008 -> 4096) is
// ~101 MB of packed INT4 weights plus as much again of 4-bit residual: every token walks through
// all seven linears in forward order, so each linear's weights and residual rows are out of the
// cache when it is timed (the machine's LLC is far smaller than 200 MB).
//
//   quarot-bench-qdec-overhead [--tokens 200] [--threads 0]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <array>
#include <tuple>

#include "quarot/detail/rng.hpp"
#include "quarot/int4.hpp"
#include "quarot/qdec.hpp"
#include "quarot/qdec_runtime.hpp"

using Clock = std::chrono::steady_clock;
using quarot::LinearModule;

namespace {

struct Linear {
  LinearModule module;
  int64_t rows, cols;  // out, in
  std::vector<uint8_t> packed;
  std::vector<float> scales;
  quarot::Int4Weights w;
  quarot::ResidualStore r;
};

Linear make_linear(LinearModule m, int64_t rows, int64_t cols, quarot::detail::Rng& rng) {
  Linear L{m, rows, cols, {}, {}, {}, {}};
  const int64_t K = quarot::int4_padded_cols(cols);
  L.packed.resize(std::size_t(rows * K / 2));
  for (auto& b : L.packed) b = uint8_t(rng.next());
  L.scales.assign(std::size_t(rows), 0.01f);
  L.w = {rows, cols, cols, L.packed.data(), L.scales.data(), nullptr};
  L.r.rows = rows;
  L.r.cols = cols;
  L.r.bits = 4;
  L.r.codes.resize(std::size_t(cols * L.r.row_bytes()));
  for (auto& b : L.r.codes) b = uint8_t(rng.next() | 0x11);  // no nibble is 0 (-8 is off the grid)
  L.r.scales.assign(std::size_t(rows), 0.001f);
  return L;
}

double secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

int main(int argc, char** argv) {
  int tokens = 200, threads = 0;
  CLI::App app{"QDEC overhead per decode token on 7B-shaped layers, and the tuner's choice.", "quarot-bench-qdec-overhead"};
  app.add_option("--tokens", tokens, "decode tokens timed")->check(CLI::Range(10, 100000))->capture_default_str();
  app.add_option("--threads", threads, "threads (0: all cores)")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) omp_set_num_threads(threads);
  quarot::ModelConfig c7b;  // LLaMA-2 7B's widths (MHA: k/v as wide as q)
  c7b.hidden = 4096;
  c7b.intermediate = 11008;
  c7b.n_heads = c7b.n_kv_heads = 32;
  c7b.head_dim = 128;
  const int64_t H = c7b.hidden, F = c7b.intermediate;
  quarot::detail::Rng rng(7);
  std::vector<Linear> layer;
  for (const quarot::LinearSpec& s : quarot::kLinearSpecs)
    layer.push_back(make_linear(s.module, quarot::linear_rows(c7b, s.module), quarot::linear_cols(c7b, s.module), rng));
  double weight_mb = 0, residual_mb = 0;
  for (const auto& L : layer) {
    weight_mb += double(L.packed.size()) / 1e6;
    residual_mb += double(L.r.bytes()) / 1e6;
  }
  std::printf("7B-shaped layer: %.1f MB packed INT4 weights + %.1f MB 4-bit residual; %d tokens, %d threads, ISA %s\n\n", weight_mb,
              residual_mb, tokens, omp_get_max_threads(), quarot::isa_name(quarot::best_isa()));

  // Inputs of each token: Gaussian with a few large channels (as after RMSNorm), fresh per token.
  std::vector<float> xh(static_cast<std::size_t>(H)), xf(static_cast<std::size_t>(F)), y(static_cast<std::size_t>(F));
  quarot::Int8Activations act;
  std::vector<int> sel;
  const int levels[] = {4, 16, 64};
  // time[linear][0] W4A4 GEMV, [1] W4A16 GEMV, [2 + j] QDEC at levels[j] (selection + rows),
  // [5 + j] the selection alone
  std::vector<std::array<double, 8>> time(layer.size(), std::array<double, 8>{});
  for (int t = 0; t < tokens + 3; ++t) {
    for (auto& v : xh) v = rng.gaussian();
    for (auto& v : xf) v = rng.gaussian();
    const bool timed = t >= 3;  // warm-up tokens
    for (std::size_t li = 0; li < layer.size(); ++li) {
      const Linear& L = layer[li];
      const float* x = L.cols == H ? xh.data() : xf.data();
      auto t0 = Clock::now();
      quarot::quantize_activations(x, 1, L.cols, 4, 0.9, act);
      quarot::int4_gemm(L.w, act, nullptr, y.data());
      auto t1 = Clock::now();
      if (timed) time[li][0] += secs(t0, t1);
      t0 = Clock::now();
      quarot::int4_gemm_f32(L.w, x, 1, nullptr, y.data());
      t1 = Clock::now();
      if (timed) time[li][1] += secs(t0, t1);
      for (std::size_t j = 0; j < std::size(levels); ++j) {
        const int k = quarot::qdec_k(levels[j], L.cols);
        t0 = Clock::now();
        quarot::qdec_select(x, 1, int(L.cols), k, sel);
        const auto ts = Clock::now();
        quarot::qdec_apply(L.r, x, 1, k, sel.data(), y.data());
        t1 = Clock::now();
        if (timed) time[li][2 + j] += secs(t0, t1);
        if (timed) time[li][5 + j] += secs(t0, ts);
      }
    }
  }
  std::printf("QDEC = exact top-k of |x| + the selected residual rows (in the model q/k/v share one selection and gate/up\n"
              "another; here every linear selects). (selection alone) in brackets.\n\n");
  std::printf("| linear (in -> out) | W4A4 GEMV us | W4A16 GEMV us | QDEC k=4 us (%% of W4A4) | k=16 | k=64 |\n|---|---|---|---|---|---|\n");
  for (std::size_t li = 0; li < layer.size(); ++li) {
    const Linear& L = layer[li];
    const double g = time[li][0] / tokens, g16 = time[li][1] / tokens;
    std::printf("| %s (%lld -> %lld) | %.1f | %.1f |", quarot::linear_module_name(L.module), (long long)L.cols, (long long)L.rows, g * 1e6,
                g16 * 1e6);
    for (std::size_t j = 0; j < std::size(levels); ++j) {
      const double q = time[li][2 + j] / tokens;
      std::printf(" %.1f [%.1f] (%.1f%%, k=%d) |", q * 1e6, time[li][5 + j] / tokens * 1e6, 100 * q / g, quarot::qdec_k(levels[j], L.cols));
    }
    std::printf("\n");
  }
  double base = 0, base16 = 0;
  for (std::size_t li = 0; li < layer.size(); ++li) {
    base += time[li][0] / tokens;
    base16 += time[li][1] / tokens;
  }
  std::printf("\nlayer total: W4A4 GEMVs %.1f us, W4A16 GEMVs %.1f us per token\n", base * 1e6, base16 * 1e6);

  // The tuner on this layer: costs measured by measure_qdec_costs (the store's real rows),
  // budgets as a share of the layer's W4A4 GEMV time (a decode step is dominated by it).
  quarot::QdecStore store;
  for (const auto& L : layer) store.linears.push_back(L.r);
  const auto costs = quarot::measure_qdec_costs(store);
  std::printf("\ntuner costs per token (us), levels");
  for (int lv : quarot::kQdecLevels) std::printf(" %d", lv);
  std::printf(":\n");
  for (int kind = 0; kind < quarot::kQdecKinds; ++kind) {
    std::printf("  %-8s", quarot::qdec_kind_name(kind));
    for (std::size_t lv = 0; lv < std::size(quarot::kQdecLevels); ++lv) std::printf(" %7.2f", costs.seconds[kind][lv] * 1e6);
    std::printf("\n");
  }
  for (double pct : {2.5, 10.0}) {
    const auto tu = quarot::tune_qdec(costs, base * pct / 100);
    std::printf("budget %.1f%% of %.1f us = %.2f us: k per 1024 %s, cost %.2f us\n", pct, base * 1e6, tu.budget_seconds * 1e6,
                tu.k.describe().c_str(), tu.cost_seconds * 1e6);
  }
  return 0;
}
