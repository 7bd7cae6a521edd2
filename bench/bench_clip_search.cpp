// RTN's clip search on a LLaMA-2-7B-shaped weight (4096 x 4096 per channel, or --rows/--cols,
// --group for groups of columns): quantize_rtn (early-abandoned candidate scoring) against the
// full 80-pass vectorized scoring it replaced (c3f06ba), and with --scalar also against the
// scalar per-element scoring before that (d9840b0), in the same process, interleaved, one
// thread; all must choose the very same parameters (checked; exit 1 otherwise).
//
//   quarot-bench-clip-search [--rows 4096] [--cols 4096] [--group 0] [--reps 3] [--scalar]
#include "quarot/detail/eigen.hpp"  // first: its diagnostics pragma must precede Eigen

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <omp.h>
#include <random>
#include <span>
#include <vector>

#include "quarot/quant.hpp"

using namespace quarot;

namespace {
double cpu_seconds() { return double(std::clock()) / CLOCKS_PER_SEC; }

// Symmetric grid only (the bench's).
QParams from_range(double l, double h, const Grid& g) {
  QParams p;
  const double m = std::max(std::fabs(l), std::fabs(h));
  p.scale = m > 0 ? double(float(m / g.qmax())) : 1.0;
  if (p.scale == 0) p.scale = 1.0;
  return p;
}

double exact_error(std::span<const float> x, const QParams& c, const Grid& g) {
  double s = 0;
  for (float v : x) s += std::pow(std::fabs(fake_quant(v, c, g) - v), 2.4);
  return s;
}

// The scoring before early abandon: each of the 80 candidates by one vectorized pass over the
// whole row (src/quant/quant.cpp at c3f06ba).
QParams full_pass_search(std::span<const float> x, const Grid& g) {
  double lo = x[0], hi = x[0];
  for (float v : x) {
    lo = std::min(lo, double(v));
    hi = std::max(hi, double(v));
  }
  const QParams full = from_range(lo, hi, g);
  QParams best = full;
  float best_err = INFINITY;
  const Eigen::Index n = Eigen::Index(x.size());
  const Eigen::ArrayXd xd = Eigen::Map<const Eigen::ArrayXf>(x.data(), n).cast<double>();
  Eigen::ArrayXf err(n);
  for (int i = 0; i < 80; ++i) {
    const double p = 1.0 - i / 100.0;
    const QParams c = from_range(p * lo, p * hi, g);
    err = ((((xd / c.scale).rint() + double(c.zero)).max(double(g.qmin())).min(double(g.qmax())) - double(c.zero)) * c.scale - xd)
              .cast<float>();
    const float e = ((err.abs().log()) * 2.4f).exp().sum();
    if (e < best_err) {
      best_err = e;
      best = c;
    }
  }
  if (best.scale != full.scale && exact_error(x, best, g) > exact_error(x, full, g)) best = full;
  return best;
}

// The scoring before that: one scalar fake_quant per element and candidate (d9840b0).
QParams reference_search(std::span<const float> x, const Grid& g) {
  double lo = x[0], hi = x[0];
  for (float v : x) {
    lo = std::min(lo, double(v));
    hi = std::max(hi, double(v));
  }
  const QParams full = from_range(lo, hi, g);
  QParams best = full;
  float best_err = INFINITY;
  Eigen::ArrayXf err(Eigen::Index(x.size()));
  for (int i = 0; i < 80; ++i) {
    const double p = 1.0 - i / 100.0;
    const QParams c = from_range(p * lo, p * hi, g);
    for (std::size_t k = 0; k < x.size(); ++k) err[Eigen::Index(k)] = float(fake_quant(x[k], c, g) - x[k]);
    const float e = ((err.abs().log()) * 2.4f).exp().sum();
    if (e < best_err) {
      best_err = e;
      best = c;
    }
  }
  if (best.scale != full.scale && exact_error(x, best, g) > exact_error(x, full, g)) best = full;
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"RTN clip search: early-abandoned scoring vs the full 80-pass scoring (and the scalar reference)"};
  int rows = 4096, cols = 4096, group = 0, reps = 3;
  bool scalar = false;
  app.add_option("--rows", rows);
  app.add_option("--cols", cols);
  app.add_option("--group", group, "columns per group (0: per row)");
  app.add_option("--reps", reps);
  app.add_flag("--scalar", scalar, "also time the scalar per-element reference (slow)");
  CLI11_PARSE(app, argc, argv);
  if (group < 0 || (group > 0 && cols % group != 0)) {
    std::fprintf(stderr, "--group must divide --cols\n");
    return 2;
  }
  omp_set_num_threads(1);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<float> w(std::size_t(rows) * cols);
  for (auto& v : w) v = nd(rng);
  for (int r = 0; r < rows; ++r) w[std::size_t(r) * cols + std::size_t(r * 7 % cols)] *= 20;  // outliers
  const WeightQuantOptions o{Grid{4, true}, group, true};
  const int gs = group ? group : cols, groups = cols / gs;
  std::vector<double> t_new, t_full, t_ref;
  bool same = true;
  double err_new = 0, err_full = 0;  // sum over groups of the exact |q(w) - w|^2.4
  auto search_all = [&](auto&& search, std::vector<double>& times, double* err_sum, const QuantizedMatrix& q) {
    const double t0 = cpu_seconds();
    double e = 0;
    for (int r = 0; r < rows; ++r)
      for (int gi = 0; gi < groups; ++gi) {
        const std::span<const float> x(w.data() + std::size_t(r) * cols + std::size_t(gi) * gs, std::size_t(gs));
        const QParams p = search(x, o.grid);
        const QParams& mine = q.params[std::size_t(r) * groups + gi];
        same = same && p.scale == mine.scale && p.zero == mine.zero;
        if (err_sum) e += exact_error(x, p, o.grid);
      }
    times.push_back(cpu_seconds() - t0);
    if (err_sum) *err_sum = e;
  };
  for (int rep = 0; rep < reps; ++rep) {
    const double t0 = cpu_seconds();
    const QuantizedMatrix q = quantize_rtn(w.data(), rows, cols, o);
    t_new.push_back(cpu_seconds() - t0);
    if (rep == 0)  // the error of the chosen parameters (outside the timings)
      for (int r = 0; r < rows; ++r)
        for (int gi = 0; gi < groups; ++gi)
          err_new += exact_error(std::span<const float>(w.data() + std::size_t(r) * cols + std::size_t(gi) * gs, std::size_t(gs)),
                                 q.params[std::size_t(r) * groups + gi], o.grid);
    search_all(full_pass_search, t_full, rep == 0 ? &err_full : nullptr, q);
    if (scalar) search_all(reference_search, t_ref, nullptr, q);
  }
  std::sort(t_new.begin(), t_new.end());
  std::sort(t_full.begin(), t_full.end());
  std::sort(t_ref.begin(), t_ref.end());
  const int g_print = group;
  std::printf("%d x %d, group %d, clip search, one thread, CPU s (%d reps): quantize_rtn min %.3f median %.3f; full 80-pass "
              "scoring min %.3f median %.3f; %.2fx (min/min), %.2fx (median/median)\n",
              rows, cols, g_print, reps, t_new.front(), t_new[t_new.size() / 2], t_full.front(), t_full[t_full.size() / 2],
              t_full.front() / t_new.front(), t_full[t_full.size() / 2] / t_new[t_new.size() / 2]);
  if (scalar)
    std::printf("scalar reference scoring min %.3f median %.3f; %.2fx (min/min)\n", t_ref.front(), t_ref[t_ref.size() / 2],
                t_ref.front() / t_new.front());
  std::printf("error sum |q(w) - w|^2.4 per group, mean: quantize_rtn %.6g, full-pass %.6g\n", err_new / (double(rows) * groups),
              err_full / (double(rows) * groups));
  std::printf("parameters %s\n", same ? "identical" : "DIFFER");
  return same ? 0 : 1;
}
