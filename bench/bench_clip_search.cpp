// RTN's clip search on a LLaMA-2-7B-shaped weight (4096 x 4096 per channel, or --rows/--cols):
// quantize_rtn (the vectorized candidate scoring) against the scalar reference scoring it
// replaced (the same 80 candidates, fake_quant per element), in the same process, interleaved;
// the two must choose the very same parameters and codes (checked; exit 1 otherwise).
//
//   quarot-bench-clip-search [--rows 4096] [--cols 4096] [--reps 3]
#include "quarot/detail/eigen.hpp"  // first: its diagnostics pragma must precede Eigen

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <random>
#include <span>
#include <vector>

#include "quarot/quant.hpp"

using namespace quarot;

namespace {
double cpu_seconds() { return double(std::clock()) / CLOCKS_PER_SEC; }

// The scoring before: one scalar fake_quant per element and candidate (src/quant/quant.cpp at d9840b0).
QParams reference_search(std::span<const float> x, const Grid& g) {
  double lo = x[0], hi = x[0];
  for (float v : x) {
    lo = std::min(lo, double(v));
    hi = std::max(hi, double(v));
  }
  auto from_range = [&](double l, double h) {  // symmetric grid only (the bench's)
    QParams p;
    const double m = std::max(std::fabs(l), std::fabs(h));
    p.scale = m > 0 ? double(float(m / g.qmax())) : 1.0;
    if (p.scale == 0) p.scale = 1.0;
    return p;
  };
  const QParams full = from_range(lo, hi);
  QParams best = full;
  float best_err = INFINITY;
  Eigen::ArrayXf err(Eigen::Index(x.size()));
  for (int i = 0; i < 80; ++i) {
    const double p = 1.0 - i / 100.0;
    const QParams c = from_range(p * lo, p * hi);
    for (std::size_t k = 0; k < x.size(); ++k) err[Eigen::Index(k)] = float(fake_quant(x[k], c, g) - x[k]);
    const float e = ((err.abs().log()) * 2.4f).exp().sum();
    if (e < best_err) {
      best_err = e;
      best = c;
    }
  }
  auto exact = [&](const QParams& c) {
    double s = 0;
    for (float v : x) s += std::pow(std::fabs(fake_quant(v, c, g) - v), 2.4);
    return s;
  };
  if (best.scale != full.scale && exact(best) > exact(full)) best = full;
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"RTN clip search: vectorized scoring vs the scalar reference"};
  int rows = 4096, cols = 4096, reps = 3;
  app.add_option("--rows", rows);
  app.add_option("--cols", cols);
  app.add_option("--reps", reps);
  CLI11_PARSE(app, argc, argv);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<float> w(std::size_t(rows) * cols);
  for (auto& v : w) v = nd(rng);
  for (int r = 0; r < rows; ++r) w[std::size_t(r) * cols + std::size_t(r * 7 % cols)] *= 20;  // outliers
  const WeightQuantOptions o{Grid{4, true}, 0, true};
  std::vector<double> t_new, t_ref;
  bool same = true;
  for (int rep = 0; rep < reps; ++rep) {
    double t0 = cpu_seconds();
    const QuantizedMatrix q = quantize_rtn(w.data(), rows, cols, o);
    t_new.push_back(cpu_seconds() - t0);
    t0 = cpu_seconds();
    for (int r = 0; r < rows; ++r) {
      const QParams p = reference_search(std::span<const float>(w.data() + std::size_t(r) * cols, std::size_t(cols)), o.grid);
      same = same && p.scale == q.params[std::size_t(r)].scale && p.zero == q.params[std::size_t(r)].zero;
    }
    t_ref.push_back(cpu_seconds() - t0);
  }
  std::sort(t_new.begin(), t_new.end());
  std::sort(t_ref.begin(), t_ref.end());
  std::printf("%d x %d, clip search, CPU s: quantize_rtn min %.3f median %.3f; reference scoring min %.3f median %.3f; %.2fx (min/min)\n",
              rows, cols, t_new.front(), t_new[t_new.size() / 2], t_ref.front(), t_ref[t_ref.size() / 2],
              t_ref.front() / t_new.front());
  std::printf("parameters %s\n", same ? "identical" : "DIFFER");
  return same ? 0 : 1;
}
