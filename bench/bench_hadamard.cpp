// Online Hadamard transforms: the fast transform (FWHT x small dense base) against a dense
// matrix product of the same size, and the online transforms' share of a rotated layer's
// forward time.
//
//   quarot-bench-hadamard [--sizes 4096,11008,14336] [--rows 512]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/forward.hpp"
#include "quarot/hadamard.hpp"
#include "quarot/rotate.hpp"
#include "quarot/synth.hpp"

using Clock = std::chrono::steady_clock;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

template <class F>
double best_of(int reps, F&& f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    f();
    best = std::min(best, since(t0));
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes = {4096, 11008, 14336};
  int rows = 512;
  CLI::App app{"Online Hadamard cost: fast transform vs dense product; share of a rotated layer.", "quarot-bench-hadamard"};
  app.add_option("--sizes", sizes, "transform sizes")->delimiter(',');
  app.add_option("--rows", rows, "rows of the batched case")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::printf("fwht path: %s; %d threads for the dense products (the fast transform runs on one)\n", quarot::fwht_isa(),
              omp_get_max_threads());

  quarot::detail::Rng rng(1);
  for (int n : sizes) {
    const auto h = quarot::Hadamard::make(n, 0);
    const auto qd = h.dense();
    RowMat q(n, n);
    for (std::size_t i = 0; i < qd.size(); ++i) q.data()[i] = float(qd[i]);
    RowMat x(rows, n);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.gaussian();
    RowMat y(rows, n);
    Eigen::Matrix<float, 1, Eigen::Dynamic> v = x.row(0), w(n);
    const double fast1 = best_of(20, [&] { h.right(v.data(), 1, n); });
    const double dense1 = best_of(5, [&] { w.noalias() = v * q; });
    RowMat xb = x;
    const double fastb = best_of(3, [&] { h.right(xb.data(), rows, n); });
    const double denseb = best_of(3, [&] { y.noalias() = x * q; });
    std::printf("n=%5d (%s)\n  1 row:    fast %9.1f us, dense GEMV %9.1f us -> %6.1fx\n"
                "  %d rows: fast %9.2f ms, dense GEMM %9.2f ms -> %6.1fx\n",
                n, h.construction().c_str(), fast1 * 1e6, dense1 * 1e6, dense1 / fast1, rows, fastb * 1e3, denseb * 1e3,
                denseb / fastb);
  }

  // Share of the online transforms in a rotated layer (llama2-7b-layer shape, 1 layer, fp32
  // linear layers; vocabulary cut to 512 so the layer dominates).
  auto spec = quarot::synth_preset("llama2-7b-layer");
  spec.config.vocab = 512;
  auto m = quarot::make_synthetic(spec);
  const auto online = quarot::rotate_model(m, quarot::RotationOptions{});
  double in_hooks = 0;
  quarot::ForwardHook<float> inner = quarot::online_hook<float>(online);
  quarot::Transformer<float> model(m, 600);
  model.set_hook([&](quarot::HookPoint p, int layer, const quarot::ActivationView<float>& a) {
    const auto t0 = Clock::now();
    inner(p, layer, a);
    in_hooks += since(t0);
  });
  std::vector<int> tokens(512);
  for (int i = 0; i < 512; ++i) tokens[i] = (i * 37 + 1) % 512;
  std::vector<float> logits;
  model.forward(std::span<const int>(tokens.data(), 16), logits);  // warm-up
  model.reset();
  in_hooks = 0;
  auto t0 = Clock::now();
  model.forward(tokens, logits);
  const double prefill = since(t0), prefill_hooks = in_hooks;
  in_hooks = 0;
  t0 = Clock::now();
  for (int i = 0; i < 32; ++i) model.forward_last(std::span<const int>(&tokens[i], 1), logits);
  const double decode = since(t0), decode_hooks = in_hooks;
  std::printf("\nrotated llama2-7b-layer (1 layer, fp32 linear layers; R3 %s, R4 %s, cross-head %s):\n",
              online.r3->construction().c_str(), online.r4->construction().c_str(), online.cross_head->construction().c_str());
  std::printf("  prefill 512 tokens: %.3fs, online transforms %.3fs = %.1f%%\n", prefill, prefill_hooks, 100 * prefill_hooks / prefill);
  std::printf("  decode 32 tokens:   %.3fs, online transforms %.4fs = %.1f%%\n", decode, decode_hooks, 100 * decode_hooks / decode);
  return 0;
}
