// QDEC: exact top-k with deterministic ties, the residual store's grid, k = 0 is the plain
// quantized model bit for bit, and every channel with an 8-bit residual brings a layer back to
// the float layer within the residual's own quantization error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/qdec.hpp"
#include "quarot/quant.hpp"
#include "quarot/quantize.hpp"
#include "quarot/synth.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {
std::vector<float> gaussian(std::size_t n, uint64_t seed) {
  detail::Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = rng.gaussian();
  return v;
}
}  // namespace

TEST(Qdec, TopKMatchesASortedReferenceWithDeterministicTies) {
  for (uint64_t seed : {1, 2, 3}) {
    auto x = gaussian(300, seed);
    for (int i = 0; i < 300; i += 7) x[std::size_t(i)] = (i % 2 ? 1.5f : -1.5f);  // many ties of |x|
    std::vector<int> ref(300);
    for (int i = 0; i < 300; ++i) ref[std::size_t(i)] = i;
    std::stable_sort(ref.begin(), ref.end(), [&](int a, int b) { return std::fabs(x[a]) > std::fabs(x[b]); });
    for (int k : {0, 1, 5, 40, 300, 400}) {
      std::vector<int> got;
      top_k_abs(x.data(), 300, k, got);
      ASSERT_EQ(got.size(), std::size_t(std::min(k, 300)));
      EXPECT_TRUE(std::equal(got.begin(), got.end(), ref.begin())) << "k " << k;
    }
  }
  EXPECT_EQ(qdec_k(4, 4096), 16);
  EXPECT_EQ(qdec_k(4, 11008), 43);
  EXPECT_EQ(qdec_k(1, 64), 1);
  EXPECT_EQ(qdec_k(-1, 172), 172);
  EXPECT_EQ(qdec_k(0, 4096), 0);
}

TEST(Qdec, ResidualStoreIsOnItsGridAndCompensatesToTheFloatLayer) {
  const int64_t rows = 37, cols = 96;
  const auto w = gaussian(std::size_t(rows * cols), 5);
  const auto q = quantize_rtn(w.data(), rows, cols, {{3, true}, 0, true});
  for (int bits : {4, 8}) {
    const auto r = make_residual_store(w.data(), q.dequantized.data(), rows, cols, bits);
    const int qmax = bits == 4 ? 7 : 127;
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t o = 0; o < rows; ++o) {
        const int c = r.code(i, o);
        ASSERT_LE(std::abs(c), qmax);
        const float res = w[std::size_t(o * cols + i)] - q.dequantized[std::size_t(o * cols + i)];
        if (std::fabs(res) <= float(qmax) * r.scales[std::size_t(o)]) {  // not clipped: within half a step
          ASSERT_LE(std::fabs(r.residual(i, o) - res), r.scales[std::size_t(o)] * 0.5f * (1 + 1e-5f)) << bits;
        }
      }
  }
  // One token: y_q + compensation over every channel against the float layer.
  const auto r8 = make_residual_store(w.data(), q.dequantized.data(), rows, cols, 8);
  const auto x = gaussian(std::size_t(cols), 9);
  std::vector<float> yf(rows, 0.f), yq(rows, 0.f);
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t i = 0; i < cols; ++i) {
      yf[std::size_t(o)] += w[std::size_t(o * cols + i)] * x[std::size_t(i)];
      yq[std::size_t(o)] += q.dequantized[std::size_t(o * cols + i)] * x[std::size_t(i)];
    }
  auto y = yq;
  qdec_compensate(r8, x.data(), 1, 0, y.data());
  EXPECT_EQ(y, yq);  // k = 0: untouched
  qdec_compensate(r8, x.data(), 1, int(cols), y.data());
  double err_q = 0, err_c = 0;
  for (int64_t o = 0; o < rows; ++o) {
    // Stated bound: |y_c - y_f| <= sum_i |x_i| * |R_io - R^_io| (+ fp32 rounding).
    double bound = 1e-4;
    for (int64_t i = 0; i < cols; ++i)
      bound += std::fabs(x[std::size_t(i)]) *
               std::fabs(r8.residual(i, o) - (w[std::size_t(o * cols + i)] - q.dequantized[std::size_t(o * cols + i)]));
    EXPECT_LE(std::fabs(y[std::size_t(o)] - yf[std::size_t(o)]), bound) << o;
    err_q += std::pow(yq[std::size_t(o)] - yf[std::size_t(o)], 2);
    err_c += std::pow(y[std::size_t(o)] - yf[std::size_t(o)], 2);
  }
  EXPECT_LT(std::sqrt(err_c), 0.03 * std::sqrt(err_q));  // an 8-bit residual removes >97% of the error
  EXPECT_THROW(make_residual_store(w.data(), q.dequantized.data(), rows, cols, 5), Error);
}

TEST(Qdec, ModelLevelKZeroIsThePlainModelAndMoreChannelsHelp) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 3;
  s.config.vocab = 128;
  const auto original = make_synthetic(s);
  auto quantized = original;
  QuantConfig cfg = quant_preset("w4a16-rtn");
  cfg.gptq.weights.group_size = 0;
  cfg.gptq.weights.grid.bits = 3;
  quantize_weights(quantized, {}, cfg, {});
  const auto store = build_qdec_store(original, quantized, 4);
  EXPECT_GT(store.bytes(), 0u);
  std::vector<int> t = {1};
  for (int i = 1; i < 48; ++i) t.push_back(3 + (i * 37) % 120);
  Transformer<float> plain(quantized, 64), fl(original, 64);
  std::vector<float> lp, lf;
  plain.forward(t, lp);
  fl.forward(t, lf);
  const auto store8 = build_qdec_store(original, quantized, 8);
  auto run = [&](int k, const QdecStore* st = nullptr) {
    Transformer<float> m(quantized, 64, make_qdec_simulation_backend(quantized, st ? *st : store, QdecK::all(k)));
    std::vector<float> l;
    m.forward(t, l);
    return l;
  };
  EXPECT_EQ(run(0), lp);  // bit for bit
  auto dist = [&](const std::vector<float>& a) {
    double d = 0;
    for (std::size_t i = 0; i < a.size(); ++i) d += std::pow(a[i] - lf[i], 2);
    return std::sqrt(d);
  };
  const double d0 = dist(lp), d64 = dist(run(64)), dall = dist(run(-1)), dall8 = dist(run(-1, &store8));
  EXPECT_LT(d64, d0);
  EXPECT_LT(dall, d0);
  // Every channel with an 8-bit residual: the float model up to the residual's rounding.
  EXPECT_LT(dall8, 0.1 * d0) << d0 << " " << d64 << " " << dall << " " << dall8;
}
