// GPTQ cost on real shapes: the Hessian from calibration tokens (H = 2/N sum x x^T, fp32 GEMM
// accumulated in fp64) and GPTQ on the three linear shapes of a LLaMA-2-7B layer (4096x4096,
// 11008x4096 and down_proj's 4096x11008, whose width-11008 Hessian dominates), with an
// extrapolation to the whole model.
//
//   quarot-bench-gptq [--samples 128] [--seqlen 2048] [--down-tokens 16384]
#include <CLI/CLI.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "quarot/detail/eigen.hpp"

#include <Eigen/Cholesky>

#include "quarot/detail/linalg.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/quant.hpp"

using Clock = std::chrono::steady_clock;
using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace {
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
}

int main(int argc, char** argv) {
  int samples = 128, seqlen = 2048, down_tokens = 16384;
  CLI::App app{"GPTQ time on real shapes, and its extrapolation to a 7B model.", "quarot-bench-gptq"};
  app.add_option("--samples", samples, "calibration sequences for the width-4096 Hessian")->capture_default_str();
  app.add_option("--seqlen", seqlen, "tokens per sequence")->capture_default_str();
  app.add_option("--down-tokens", down_tokens, "tokens for the width-11008 (down_proj) Hessian; 0 skips down_proj")
      ->capture_default_str();
  bool factor_check = true;
  app.add_flag("!--no-factor-check", factor_check, "skip timing the textbook inverse-Cholesky route at width 11008");
  int factor_reps = 0;
  app.add_option("--factor-threads", factor_reps,
                 "only time the direct factor at width 11008 with 1 and 2 OpenMP threads, alternating, this many rounds "
                 "(min and median; the Hessian from --down-tokens)");
  CLI11_PARSE(app, argc, argv);

  quarot::detail::Rng rng(1);
  // Activations with a few large channels, as real layer inputs have; H = 2/N sum x x^T per
  // sequence in fp32, accumulated in fp64 (what the pipeline does).
  const auto make_hessian = [&](int cols, int n_seq, int len) {
    MatF x(len, cols);
    MatF hf = MatF::Zero(cols, cols);
    MatD h = MatD::Zero(cols, cols);
    for (int s = 0; s < n_seq; ++s) {
      for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = rng.gaussian() * ((i % cols) % 512 == 7 ? 20.f : 1.f);
      hf.noalias() = x.transpose() * x;
      h += hf.cast<double>();
    }
    h *= 2.0 / (double(n_seq) * len);
    return h;
  };
  auto t0 = Clock::now();
  const MatD h4096 = make_hessian(4096, samples, seqlen);
  const double t_hessian = since(t0);
  std::printf("Hessian 4096x4096 from %d x %d tokens: %.1fs (%.2fs per sequence; includes generating the activations)\n",
              samples, seqlen, t_hessian, t_hessian / samples);
  MatD h11008;
  if (down_tokens > 0) {
    t0 = Clock::now();
    h11008 = make_hessian(11008, std::max(1, down_tokens / 2048), std::min(down_tokens, 2048));
    std::printf("Hessian 11008x11008 from %d tokens: %.1fs\n", down_tokens, since(t0));
  }

  if (factor_reps > 0 && down_tokens > 0) {
    MatD hd = h11008;
    hd.diagonal().array() += 0.01 * hd.diagonal().mean();
    std::vector<double> times[2];
    for (int r = 0; r < factor_reps; ++r)
      for (int t : {1, 2}) {
        omp_set_num_threads(t);
        t0 = Clock::now();
        MatD u;
        quarot::detail::upper_cholesky_of_inverse(hd, u);
        times[t - 1].push_back(since(t0));
      }
    for (int t : {1, 2}) {
      std::sort(times[t - 1].begin(), times[t - 1].end());
      std::printf("upper Cholesky of H^-1 at 11008, %d thread%s: min %.2fs, median %.2fs\n", t, t == 1 ? "" : "s", times[t - 1].front(),
                  times[t - 1][times[t - 1].size() / 2]);
    }
    return 0;
  }
  // The step that dominates down_proj: the upper Cholesky factor of the damped inverse Hessian,
  // by the textbook route (Cholesky, inverse, Cholesky: the baseline) and directly (one Cholesky
  // and a triangular inverse), in the same run.
  if (down_tokens > 0 && factor_check) {
    MatD hd = h11008;
    hd.diagonal().array() += 0.01 * hd.diagonal().mean();
    t0 = Clock::now();
    const MatD inv = Eigen::LLT<MatD>(hd).solve(MatD::Identity(hd.rows(), hd.cols()));
    const MatD textbook = Eigen::LLT<MatD>(inv).matrixU();
    const double t_textbook = since(t0);
    t0 = Clock::now();
    MatD direct;
    quarot::detail::upper_cholesky_of_inverse(hd, direct);
    const double t_direct = since(t0);
    std::printf("upper Cholesky of H^-1 at 11008: textbook %.1fs, direct %.1fs (%.2fx faster; relative difference %.2g)\n",
                t_textbook, t_direct, t_textbook / t_direct, (direct - textbook).norm() / textbook.norm());
  }

  struct Shape {
    const char* name;
    int rows, cols;
    int per_layer;
  };
  const Shape shapes[] = {{"q/k/v/o", 4096, 4096, 4}, {"gate/up", 11008, 4096, 2}, {"down", 4096, 11008, 1}};
  double per_layer = t_hessian * (3 + (11008.0 / 4096.0) * (11008.0 / 4096.0));
  bool complete = true;
  for (const Shape& sh : shapes) {
    const MatD& h = sh.cols == 4096 ? h4096 : h11008;
    if (h.size() == 0) {
      complete = false;
      continue;
    }
    std::vector<float> w(std::size_t(sh.rows) * sh.cols);
    for (auto& v : w) v = rng.gaussian() * 0.02f;
    quarot::GptqOptions o;
    o.weights = {{4, true}, 0, true};
    t0 = Clock::now();
    const auto r = quarot::gptq_quantize(w.data(), sh.rows, sh.cols, std::vector<double>(h.data(), h.data() + h.size()), o);
    const double t = since(t0);
    per_layer += sh.per_layer * t;
    std::printf("GPTQ W4 (clip search) %-8s %5d x %5d: %6.1fs (loss %.4g, damp %.3g)\n", sh.name, sh.rows, sh.cols, t, r.loss,
                r.damp_used);
  }
  // LLaMA-2-7B per layer: q,k,v,o (4096x4096), gate,up (11008x4096), down (4096x11008), and the
  // Hessians: 3 of width 4096 and 1 of width 11008 (its cost scaled from the width-4096 one).
  if (complete)
    std::printf("extrapolated LLaMA-2-7B (32 layers, %d x %d calibration tokens): %.1f min per layer, %.1f h in all "
                "(forward passes through the model not included)\n",
                samples, seqlen, per_layer / 60, 32 * per_layer / 3600);
  return 0;
}
