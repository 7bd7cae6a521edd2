// Forward-pass throughput (tokens/s) at windows 512 and 2048 on a synthetic llama2-7b-layer
// model with 2 layers, and the GFLOP/s its linear layers reach against Eigen's GEMM on the same
// shapes, measured standalone in the same run (the peak).
//
//   quarot-bench-forward [--layers 2] [--windows 512,2048] [--threads 0]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <vector>

#include "quarot/detail/eigen.hpp"
#include "quarot/forward.hpp"
#include "quarot/synth.hpp"

using Clock = std::chrono::steady_clock;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Eigen GEMM of [n x k] * [out x k]^T, as the forward pass calls it; best of `reps`.
double gemm_seconds(int n, int k, int out, int reps) {
  RowMat a = RowMat::Random(n, k), w = RowMat::Random(out, k), c(n, out);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    c.noalias() = a * w.transpose();
    best = std::min(best, seconds_since(t0));
  }
  if (c(0, 0) == 12345.f) std::printf(" ");
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int layers = 2, threads = 0;
  std::vector<int> windows = {512, 2048};
  CLI::App app{"Forward-pass tokens/s and linear-layer GFLOP/s vs Eigen GEMM peak.", "quarot-bench-forward"};
  app.add_option("--layers", layers, "layers of the llama2-7b-layer model")->capture_default_str();
  app.add_option("--windows", windows, "window lengths")->delimiter(',');
  app.add_option("--threads", threads, "threads (0: all cores)");
  CLI11_PARSE(app, argc, argv);
  if (threads > 0) omp_set_num_threads(threads);

  auto spec = quarot::synth_preset("llama2-7b-layer");
  spec.config.n_layers = layers;
  const auto t_gen = Clock::now();
  const auto m = quarot::make_synthetic(spec);
  const auto& c = m.config;
  std::printf("model: synthetic llama2-7b-layer, %d layers, %lld parameters (generated in %.1fs); %d threads\n", layers,
              static_cast<long long>(quarot::parameter_count(m)), seconds_since(t_gen), omp_get_max_threads());

  struct Shape {
    const char* name;
    int k, out, count;  // count: how many per forward
  };
  std::vector<Shape> shapes;
  for (const quarot::LinearSpec& s : quarot::kLinearSpecs)
    shapes.push_back({s.name, int(quarot::linear_cols(c, s.module)), int(quarot::linear_rows(c, s.module)), layers});
  shapes.push_back({"lm_head", c.hidden, c.vocab, 1});
  for (int n : windows) {
    double linear_flops = 0, gemm_time = 0;
    std::printf("\nwindow %d:\n", n);
    for (const auto& s : shapes) {
      const double t = gemm_seconds(n, s.k, s.out, 3);
      const double flops = 2.0 * n * s.k * s.out;
      std::printf("  Eigen GEMM %-13s [%d x %d] x [%d x %d]^T: %7.1f GFLOP/s\n", s.name, n, s.k, s.out, s.k, flops / t / 1e9);
      linear_flops += flops * s.count;
      gemm_time += t * s.count;
    }
    quarot::Transformer<float> model(m, n);
    std::vector<int> tokens(n);
    for (int i = 0; i < n; ++i) tokens[i] = (i * 7919 + 1) % c.vocab;
    std::vector<float> logits;
    model.forward(std::span<const int>(tokens.data(), std::min(n, 64)), logits);  // warm-up
    model.reset();
    const auto t0 = Clock::now();
    model.forward(tokens, logits);
    const double t = seconds_since(t0);
    const double peak = linear_flops / gemm_time / 1e9;
    const double achieved = linear_flops / t / 1e9;
    std::printf("  forward: %.2fs, %.1f tokens/s\n", t, n / t);
    std::printf("  linear layers: %.1f GFLOP/s over the whole forward vs Eigen GEMM %.1f GFLOP/s on the same shapes"
                " -> ratio %.2f (the rest is attention, norms, RoPE)\n",
                achieved, peak, achieved / peak);
  }
  return 0;
}
