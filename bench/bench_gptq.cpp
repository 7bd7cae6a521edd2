// GPTQ cost on real shapes: the Hessian from calibration tokens (H = 2/N sum x x^T, fp32 GEMM
// accumulated in fp64) and GPTQ on a 4096x4096 and an 11008x4096 linear layer, with an
// extrapolation to a LLaMA-2-7B-shaped model.
//
//   quarot-bench-gptq [--samples 128] [--seqlen 2048]
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/quant.hpp"

using Clock = std::chrono::steady_clock;
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}

int main(int argc, char** argv) {
  int samples = 128, seqlen = 2048, cols = 4096;
  CLI::App app{"GPTQ time on real shapes, and its extrapolation to a 7B model.", "quarot-bench-gptq"};
  app.add_option("--samples", samples, "calibration sequences")->capture_default_str();
  app.add_option("--seqlen", seqlen, "tokens per sequence")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  quarot::detail::Rng rng(1);
  // Activations with a few large channels, as real layer inputs have.
  MatF x(seqlen, cols);
  auto t0 = Clock::now();
  MatF hf = MatF::Zero(cols, cols);
  MatD h = MatD::Zero(cols, cols);
  for (int s = 0; s < samples; ++s) {
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.gaussian() * ((i % cols) % 512 == 7 ? 20.f : 1.f);
    hf.noalias() = x.transpose() * x;  // fp32 GEMM per sequence, accumulated in fp64
    h += hf.cast<double>();
  }
  h *= 2.0 / (double(samples) * seqlen);
  const double t_hessian = since(t0);
  std::printf("Hessian %dx%d from %d x %d tokens: %.1fs (%.2fs per sequence; includes generating the activations)\n", cols,
              cols, samples, seqlen, t_hessian, t_hessian / samples);

  double t_layer[2] = {0, 0};
  const int rows_of[2] = {4096, 11008};
  for (int k = 0; k < 2; ++k) {
    const int rows = rows_of[k];
    std::vector<float> w(std::size_t(rows) * cols);
    for (auto& v : w) v = rng.gaussian() * 0.02f;
    quarot::GptqOptions o;
    o.weights = {{4, true}, 0, true};
    t0 = Clock::now();
    const auto r = quarot::gptq_quantize(w.data(), rows, cols, std::vector<double>(h.data(), h.data() + h.size()), o);
    t_layer[k] = since(t0);
    std::printf("GPTQ W4 (clip search) on %5d x %d: %.1fs (loss %.4g, damp %.3g)\n", rows, cols, t_layer[k], r.loss, r.damp_used);
  }
  // LLaMA-2-7B per layer: q,k,v,o (4096x4096), gate,up (11008x4096) and down (4096x11008). For
  // down, the rows*cols^2 update term scales the 11008x4096 run by 11008/4096 (its larger
  // Cholesky is not counted). Hessians: 3 of width 4096 and 1 of width 11008 per layer.
  const double down = t_layer[1] * (11008.0 / 4096.0);
  const double per_layer = 4 * t_layer[0] + 2 * t_layer[1] + down +
                           t_hessian * (3 + (11008.0 / 4096.0) * (11008.0 / 4096.0));
  std::printf("extrapolated LLaMA-2-7B (32 layers, %d x %d calibration tokens): %.1f min per layer, %.1f h in all "
              "(forward passes through the model not included)\n",
              samples, seqlen, per_layer / 60, 32 * per_layer / 3600);
  return 0;
}
