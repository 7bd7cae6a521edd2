// Quantizers: exact grids, round half to even, error bounds, the clip search, GPTQ.
#include "quarot/detail/eigen.hpp"  // first: its diagnostics pragma must precede Eigen

#include <gtest/gtest.h>

#include <cmath>

#include "quarot/detail/gptq_factor.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"
#include "quarot/quant.hpp"
#include "test_support.hpp"

using namespace quarot;
using quarot::test::gaussian;

namespace {

std::vector<int> codes_of(const std::vector<float>& x, const Grid& g, double clip = 1.0) {
  const auto p = grid_params(x, g, clip);
  std::vector<int> c;
  for (float v : x) c.push_back(quantize_code(v, p, g));
  return c;
}

// || X W^T - X Q^T ||_F^2 over the rows of X ([n][cols]).
double output_error(const std::vector<float>& x, int n, const std::vector<float>& w, const std::vector<float>& q, int rows, int cols) {
  double e = 0;
  for (int t = 0; t < n; ++t)
    for (int r = 0; r < rows; ++r) {
      double d = 0;
      for (int c = 0; c < cols; ++c) d += double(x[std::size_t(t) * cols + c]) * (w[std::size_t(r) * cols + c] - q[std::size_t(r) * cols + c]);
      e += d * d;
    }
  return e;
}

std::vector<double> hessian_of(const std::vector<float>& x, int n, int cols) {
  std::vector<double> h(std::size_t(cols) * cols, 0.0);
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < cols; ++i)
      for (int j = 0; j < cols; ++j) h[std::size_t(i) * cols + j] += 2.0 / n * x[std::size_t(t) * cols + i] * x[std::size_t(t) * cols + j];
  return h;
}

}  // namespace

TEST(Grid, SymmetricCodesAreExactWithTiesToEven) {
  const Grid g{4, true};
  EXPECT_EQ(g.qmin(), -8);
  EXPECT_EQ(g.qmax(), 7);
  // max |x| = 7 -> scale exactly 1: codes are round-half-even of x.
  const std::vector<float> x = {7.f, 2.5f, -2.5f, 3.5f, 0.5f, -7.f, 1.49f};
  EXPECT_EQ(grid_params(x, g).scale, 1.0);
  EXPECT_EQ(codes_of(x, g), (std::vector<int>{7, 2, -2, 4, 0, -7, 1}));
  // A clip ratio shrinks the scale; values beyond it clamp to the grid's ends.
  EXPECT_EQ(codes_of({-7.f, 7.f, 1.f}, g, 0.5), (std::vector<int>{-8, 7, 2}));
  EXPECT_EQ(grid_params(std::vector<float>{0.f, 0.f}, g).scale, 1.0);  // all zero
}

TEST(Grid, AsymmetricCodesAndZeroPoint) {
  const Grid g{4, false};
  EXPECT_EQ(g.qmin(), 0);
  EXPECT_EQ(g.qmax(), 15);
  const std::vector<float> x = {-5.f, 10.f, 0.5f, 1.5f, 0.f};
  const auto p = grid_params(x, g);
  EXPECT_EQ(p.scale, 1.0);
  EXPECT_EQ(p.zero, 5);
  EXPECT_EQ(codes_of(x, g), (std::vector<int>{0, 15, 5, 7, 5}));  // 0.5 -> 0 (even) + 5; 1.5 -> 2 + 5
  // Positive-only data: the range still includes 0, so 0 stays exact.
  const auto q = grid_params(std::vector<float>{2.f, 17.f}, g);
  EXPECT_EQ(q.zero, 0);
  EXPECT_EQ(fake_quant(0.0, q, g), 0.0);
}

TEST(Grid, DequantizedErrorIsAtMostHalfAStep) {
  for (int bits = 2; bits <= 8; ++bits)
    for (bool sym : {true, false}) {
      const Grid g{bits, sym};
      const auto x = gaussian(1000, uint64_t(bits) * 7 + sym, 3.f);
      const auto p = grid_params(x, g);
      for (float v : x) ASSERT_LE(std::fabs(fake_quant(v, p, g) - v), p.scale / 2 * (1 + 1e-9)) << bits << sym;
    }
}

TEST(Rtn, ClipSearchIsNeverWorseAndPerGroupWorks) {
  const int rows = 16, cols = 128;
  auto w = gaussian(std::size_t(rows) * cols, 3);
  w[5] = 40.f;  // an outlier that clipping helps with
  for (int group : {0, 32})
    for (int bits : {3, 4, 8}) {
      WeightQuantOptions o{{bits, true}, group, false};
      const auto plain = quantize_rtn(w.data(), rows, cols, o);
      o.clip_search = true;
      const auto clipped = quantize_rtn(w.data(), rows, cols, o);
      const int gs = group ? group : cols;
      for (int r = 0; r < rows; ++r)
        for (int g0 = 0; g0 < cols; g0 += gs) {
          double e_plain = 0, e_clip = 0;
          for (int c = g0; c < g0 + gs; ++c) {
            const std::size_t at = std::size_t(r) * cols + c;
            e_plain += std::pow(std::fabs(plain.dequantized[at] - w[at]), 2.4);
            e_clip += std::pow(std::fabs(clipped.dequantized[at] - w[at]), 2.4);
          }
          ASSERT_LE(e_clip, e_plain * (1 + 1e-12)) << "row " << r << " group " << g0 << " bits " << bits;
        }
      EXPECT_EQ(clipped.params.size(), std::size_t(rows) * (cols / gs));
    }
}

TEST(Rtn, BadOptionsAreRefused) {
  const std::vector<float> w(64, 1.f);
  EXPECT_THROW(quantize_rtn(w.data(), 2, 32, {{9, true}, 0, false}), Error);
  EXPECT_THROW(quantize_rtn(w.data(), 2, 32, {{1, true}, 0, false}), Error);
  EXPECT_THROW(quantize_rtn(w.data(), 2, 32, {{4, true}, 12, false}), Error);  // 12 does not divide 32
  auto act = [](int bits, double clip) {
    ActQuantOptions o;
    o.a_bits = bits;
    o.a_clip = clip;
    return o;
  };
  EXPECT_THROW(check_act_options(act(3, 1.5)), Error);
  EXPECT_THROW(check_act_options(act(17, 0.9)), Error);  // was taken as "none"
  EXPECT_NO_THROW(check_act_options(act(16, 0.9)));
}

namespace {
// The clip search as it was before early abandon (c3f06ba): each of the 80 candidates scored by
// one full vectorized pass, the first strictly smallest float sum kept, then checked against
// no clipping with the exact pow. quantize_rtn must choose exactly what this chooses.
QParams range_params(double lo, double hi, const Grid& g) {
  QParams p;
  if (g.symmetric) {
    const double m = std::max(std::fabs(lo), std::fabs(hi));
    p.scale = m > 0 ? double(float(m / g.qmax())) : 1.0;
    if (p.scale == 0) p.scale = 1.0;
    return p;
  }
  lo = std::min(lo, 0.0);
  hi = std::max(hi, 0.0);
  if (hi == lo) return p;
  p.scale = double(float((hi - lo) / g.qmax()));
  if (p.scale == 0) return QParams{};
  p.zero = int(std::nearbyint(-lo / p.scale));
  return p;
}

QParams full_pass_clip_search(const float* v, int n, const Grid& g) {
  double lo = v[0], hi = v[0];
  for (int i = 0; i < n; ++i) {
    lo = std::min(lo, double(v[i]));
    hi = std::max(hi, double(v[i]));
  }
  const QParams full = range_params(lo, hi, g);
  QParams best = full;
  float best_err = INFINITY;
  const Eigen::ArrayXd xd = Eigen::Map<const Eigen::ArrayXf>(v, n).cast<double>();
  Eigen::ArrayXf err(n);
  for (int i = 0; i < 80; ++i) {
    const double p = 1.0 - i / 100.0;
    const QParams c = range_params(p * lo, p * hi, g);
    err = ((((xd / c.scale).rint() + double(c.zero)).max(double(g.qmin())).min(double(g.qmax())) - double(c.zero)) * c.scale - xd)
              .cast<float>();
    const float e = ((err.abs().log()) * 2.4f).exp().sum();
    if (e < best_err) {
      best_err = e;
      best = c;
    }
  }
  auto exact = [&](const QParams& c) {
    double s = 0;
    for (int i = 0; i < n; ++i) s += std::pow(std::fabs(fake_quant(v[i], c, g) - v[i]), 2.4);
    return s;
  };
  if (best.scale != full.scale && exact(best) > exact(full)) best = full;
  return best;
}
}  // namespace

// Early abandon and the candidate order change how much is computed, never what is chosen:
// every group's parameters equal the full 80-pass search's, over shapes (group sizes that are
// and are not multiples of the SIMD width and of the abandon block), grids and data with many
// exact ties (integer-valued and constant rows, zeros, one outlier).
TEST(Rtn, ClipSearchChoosesExactlyWhatTheFullSearchChooses) {
  quarot::detail::Rng rng(11);
  int checked = 0;
  for (const int cols : {1, 7, 16, 100, 128, 300, 1024})
    for (const int kind : {0, 1, 2, 3})
      for (const Grid g : {Grid{4, true}, Grid{4, false}, Grid{3, true}, Grid{8, false}}) {
        const int rows = 12;
        std::vector<float> w(std::size_t(rows) * cols);
        for (int r = 0; r < rows; ++r)
          for (int c = 0; c < cols; ++c) {
            float v = float(rng.gaussian());
            if (kind == 1) v = std::round(v * 3.f);        // integer-valued: equal error sums are common
            if (kind == 2) v = r % 3 == 0 ? 0.f : 0.25f;   // zero and constant rows
            if (kind == 3 && c == (r * 5) % cols) v *= 30.f;  // an outlier per row
            w[std::size_t(r) * cols + c] = kind == 3 ? v * 0.02f : v;
          }
        for (const int group : {0, cols % 4 == 0 ? cols / 4 : 0}) {
          const auto q = quantize_rtn(w.data(), rows, cols, WeightQuantOptions{g, group, true});
          const int gs = group ? group : cols;
          for (int r = 0; r < rows; ++r)
            for (int g0 = 0; g0 < cols; g0 += gs) {
              const QParams want = full_pass_clip_search(w.data() + std::size_t(r) * cols + g0, gs, g);
              const QParams& got = q.params[std::size_t(r) * (cols / gs) + g0 / gs];
              ASSERT_EQ(got.scale, want.scale) << "cols " << cols << " kind " << kind << " bits " << g.bits << " row " << r;
              ASSERT_EQ(got.zero, want.zero) << "cols " << cols << " kind " << kind << " bits " << g.bits << " row " << r;
              ++checked;
            }
        }
      }
  EXPECT_GT(checked, 1000);
}

// Linears that share an input share the Hessian's factor: the very result of the per-linear call.
TEST(Gptq, SharedHessianFactorGivesTheSameResult) {
  const int cols = 64, n = 256;
  const auto x = gaussian(std::size_t(n) * cols, 21);
  const auto h = hessian_of(x, n, cols);
  GptqOptions o;
  o.weights = {{4, true}, 16, true};
  o.act_order = true;
  const detail::GptqHessianFactor f = detail::gptq_factor(h, cols, o);
  for (const int rows : {8, 24}) {
    const auto w = gaussian(std::size_t(rows) * cols, uint64_t(rows));
    const auto alone = gptq_quantize(w.data(), rows, cols, h, o);
    const auto shared = detail::gptq_quantize(w.data(), rows, cols, f, o);
    EXPECT_EQ(alone.q.codes, shared.q.codes);
    EXPECT_EQ(alone.q.dequantized, shared.q.dequantized);
    EXPECT_EQ(alone.loss, shared.loss);
    EXPECT_EQ(alone.damp_used, shared.damp_used);
  }
  GptqOptions other = o;
  other.act_order = false;
  const auto w = gaussian(std::size_t(8) * cols, 5);
  EXPECT_THROW(detail::gptq_quantize(w.data(), 8, cols, f, other), Error);
}

TEST(Gptq, IdentityHessianEqualsRtn) {
  const int rows = 8, cols = 64;
  const auto w = gaussian(std::size_t(rows) * cols, 4);
  std::vector<double> h(std::size_t(cols) * cols, 0.0);
  for (int i = 0; i < cols; ++i) h[std::size_t(i) * cols + i] = 1.0;
  for (int group : {0, 16}) {
    GptqOptions o;
    o.weights = {{4, true}, group, true};
    o.block_size = 16;
    const auto g = gptq_quantize(w.data(), rows, cols, h, o);
    const auto r = quantize_rtn(w.data(), rows, cols, o.weights);
    EXPECT_EQ(g.q.dequantized, r.dequantized) << "group " << group;
    EXPECT_EQ(g.q.codes, r.codes);
  }
}

TEST(Gptq, PlantedLowRankInputBeatsRtnByTwoX) {
  // Inputs live (almost) in an 8-dimensional subspace of 64: GPTQ moves the rounding error
  // into the directions the inputs never take; RTN cannot.
  const int n = 512, cols = 64, rank = 8, rows = 32;
  const auto z = gaussian(std::size_t(n) * rank, 5);
  const auto a = gaussian(std::size_t(rank) * cols, 6);
  const auto noise = gaussian(std::size_t(n) * cols, 7, 0.01f);
  std::vector<float> x(std::size_t(n) * cols);
  for (int t = 0; t < n; ++t)
    for (int c = 0; c < cols; ++c) {
      double v = noise[std::size_t(t) * cols + c];
      for (int k = 0; k < rank; ++k) v += z[std::size_t(t) * rank + k] * a[std::size_t(k) * cols + c];
      x[std::size_t(t) * cols + c] = float(v);
    }
  const auto w = gaussian(std::size_t(rows) * cols, 8);
  for (bool act_order : {false, true}) {
    GptqOptions o;
    o.weights = {{4, true}, 0, false};
    o.act_order = act_order;
    o.block_size = 16;
    const auto g = gptq_quantize(w.data(), rows, cols, hessian_of(x, n, cols), o);
    const auto r = quantize_rtn(w.data(), rows, cols, o.weights);
    const double eg = output_error(x, n, w, g.q.dequantized, rows, cols);
    const double er = output_error(x, n, w, r.dequantized, rows, cols);
    EXPECT_GE(er / eg, 2.0) << "act_order " << act_order << ": RTN " << er << " GPTQ " << eg;
    EXPECT_GT(g.loss, 0.0);
  }
}

TEST(Gptq, GroupsStaticGroupsDeadInputsAndDamping) {
  const int rows = 8, cols = 64, n = 256;
  auto x = gaussian(std::size_t(n) * cols, 9);
  for (int t = 0; t < n; ++t) x[std::size_t(t) * cols + 3] = 0.f;  // a dead input
  const auto w = gaussian(std::size_t(rows) * cols, 10);
  const auto h = hessian_of(x, n, cols);
  for (bool stat : {false, true}) {
    GptqOptions o;
    o.weights = {{4, false}, 16, true};
    o.static_groups = stat;
    o.act_order = true;
    const auto g = gptq_quantize(w.data(), rows, cols, h, o);
    EXPECT_EQ(g.dead_inputs, 1);
    EXPECT_EQ(g.q.params.size(), std::size_t(rows) * 4);
    for (int r = 0; r < rows; ++r) EXPECT_EQ(g.q.dequantized[std::size_t(r) * cols + 3], 0.f);  // dead column zeroed
    EXPECT_EQ(g.damp_used, 0.01);
  }
  // An indefinite Hessian that 10x damping fixes: retried, and reported.
  std::vector<double> bad(std::size_t(cols) * cols, 0.0);
  for (int i = 0; i < cols; ++i)
    for (int j = 0; j < cols; ++j) bad[std::size_t(i) * cols + j] = 1.0;  // rank one, diag 1
  for (int i = 0; i < cols; ++i) bad[std::size_t(i) * cols + i] -= 0.05;  // eigenvalues -0.05
  GptqOptions o;
  const auto g = gptq_quantize(w.data(), rows, cols, bad, o);
  EXPECT_NEAR(g.damp_used, 0.1, 1e-12);
  // One that no damping fixes.
  for (auto& v : bad) v = -v;
  EXPECT_THROW(gptq_quantize(w.data(), rows, cols, bad, o), Error);
}

TEST(ActQuant, PerTokenAndPerHeadFakeQuant) {
  std::vector<float> x = {7.f, 2.5f, -3.5f, 0.5f, /* row 2 */ 1.f, 2.f, 3.f, 14.f};
  fake_quant_rows(x.data(), 2, 4, 0, Grid{4, true}, 1.0);
  EXPECT_EQ(x, (std::vector<float>{7.f, 2.f, -4.f, 0.f, 0.f, 2.f, 4.f, 14.f}));  // row 2: scale 2, 0.5 and 1.5 to even
  // Per head (groups of 2), asymmetric: each pair keeps its own range.
  std::vector<double> kv = {0.0, 15.0, 100.0, 115.0};
  fake_quant_rows(kv.data(), 1, 4, 2, Grid{4, false}, 1.0);
  EXPECT_EQ(kv[0], 0.0);
  EXPECT_EQ(kv[1], 15.0);
  EXPECT_NEAR(kv[3], 115.0, 115.0 / 15 / 2);
  // The hook touches only what it is asked to.
  ActQuantOptions o;
  o.a_bits = 4;
  auto hook = act_quant_hook<float>(o, 2);
  std::vector<float> q = {0.3f, 0.7f, 0.1f, 0.9f};
  auto k = q;
  hook(HookPoint::QkvInput, 0, ActivationView<float>{q.data(), 1, 4});
  hook(HookPoint::KeyAfterRope, 0, ActivationView<float>{k.data(), 1, 4});
  EXPECT_NE(q, (std::vector<float>{0.3f, 0.7f, 0.1f, 0.9f}));
  EXPECT_EQ(k, (std::vector<float>{0.3f, 0.7f, 0.1f, 0.9f}));  // k_bits 16: untouched
}
