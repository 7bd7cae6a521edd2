// Online Hadamard transforms: the fast transform (FWHT x small dense base) against a dense
// matrix product of the same size, and the online transforms' share of a rotated layer's
// forward time.
//
//   quarot-bench-hadamard [--sizes 172,4096,11008,14336] [--rows 512] [--reps 7]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
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

// Min and median seconds of `reps` runs of f.
struct Timing {
  double min = 0, median = 0;
};
template <class F>
Timing time_reps(int reps, F&& f) {
  std::vector<double> t(static_cast<std::size_t>(reps));
  for (auto& v : t) {
    const auto t0 = Clock::now();
    f();
    v = since(t0);
  }
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes = {172, 4096, 11008, 14336};
  int rows = 512, reps = 7;
  CLI::App app{"Online Hadamard cost: batched transform vs the per-row reference loop and a dense product; share of a rotated layer.",
               "quarot-bench-hadamard"};
  app.add_option("--sizes", sizes, "transform sizes")->delimiter(',');
  app.add_option("--rows", rows, "rows of the batched case")->capture_default_str();
  app.add_option("--reps", reps, "repeats (min and median)")->capture_default_str()->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  std::printf("fwht path: %s; %d threads (the reference loop runs on one)\n", quarot::fwht_isa(), omp_get_max_threads());
  std::printf("times per row, us: min / median of %d repeats\n", reps);

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
    // Interleaved in one run: the reference loop, the batched path and a dense product.
    const Timing ref1 = time_reps(reps, [&] { h.apply_reference(v.data(), 1, n, false); });
    const Timing fast1 = time_reps(reps, [&] { h.right(v.data(), 1, n); });
    const Timing dense1 = time_reps(reps, [&] { w.noalias() = v * q; });
    RowMat xb = x;
    const Timing refb = time_reps(std::max(1, reps / 2), [&] { h.apply_reference(xb.data(), rows, n, false); });
    const Timing fastb = time_reps(reps, [&] { h.right(xb.data(), rows, n); });
    const Timing denseb = time_reps(reps, [&] { y.noalias() = x * q; });
    const double pr = 1e6 / rows;
    std::printf("n=%5d (%s)\n", n, h.construction().c_str());
    std::printf("  1 row:    reference %9.2f / %9.2f, batched %9.2f / %9.2f (%5.1fx), dense GEMV %9.2f / %9.2f\n", ref1.min * 1e6,
                ref1.median * 1e6, fast1.min * 1e6, fast1.median * 1e6, ref1.min / fast1.min, dense1.min * 1e6, dense1.median * 1e6);
    std::printf("  %d rows: reference %9.2f / %9.2f, batched %9.2f / %9.2f (%5.1fx), dense GEMM %9.2f / %9.2f\n", rows, refb.min * pr,
                refb.median * pr, fastb.min * pr, fastb.median * pr, refb.min / fastb.min, denseb.min * pr, denseb.median * pr);
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
