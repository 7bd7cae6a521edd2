// QDEC: exact top-k with deterministic ties, the residual store's grid, k = 0 is the plain
// quantized model bit for bit, and every channel with an 8-bit residual brings a layer back to
// the float layer within the residual's own quantization error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>

#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/qdec_runtime.hpp"
#include "quarot/runtime.hpp"
#include "quarot/safetensors.hpp"
#include "quarot/qdec.hpp"
#include "quarot/quant.hpp"
#include "quarot/quantize.hpp"
#include "quarot/synth.hpp"
#include "pipeline_support.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

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
  QuantConfig cfg = plan_preset("w4a16-rtn").quant;
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

TEST(Qdec, TopKTiesAndSmallCases) {
  std::vector<float> zeros(10, 0.f);
  std::vector<int> got;
  top_k_abs(zeros.data(), 10, 4, got);
  EXPECT_EQ(got, (std::vector<int>{0, 1, 2, 3}));  // all tied: the lowest indices
  const std::vector<float> x = {0.5f, -2.f, 2.f, 1.f, -2.f};
  top_k_abs(x.data(), 5, 2, got);
  EXPECT_EQ(got, (std::vector<int>{1, 2}));
  top_k_abs(x.data(), 5, 3, got);
  EXPECT_EQ(got, (std::vector<int>{1, 2, 4}));
  top_k_abs(x.data(), 5, 5, got);
  EXPECT_EQ(got, (std::vector<int>{1, 2, 4, 3, 0}));
}

// The vectorized kernel against the plain loop: the same products summed in the same order
// (fma per selected row), so equal up to fp32 rounding of the contraction (stated: 1e-5 of the
// sum of |terms|).
// qdec_apply on every ISA against qdec_apply_reference: test_ops.cpp's kernel x ISA table.

TEST(Qdec, ParsesKPerKindAndRejectsBadValues) {
  EXPECT_EQ(parse_qdec_k("4"), QdecK::all(4));
  EXPECT_EQ(parse_qdec_k("all"), QdecK::all(-1));
  const QdecK k = parse_qdec_k("qkv=2,down=all", QdecK::all(4));
  EXPECT_EQ(k.qkv, 2);
  EXPECT_EQ(k.o, 4);
  EXPECT_EQ(k.gate_up, 4);
  EXPECT_EQ(k.down, -1);
  EXPECT_EQ(parse_qdec_k(k.describe()), k);
  for (const char* bad : {"", "x", "-1", "2000", "4x", "qkv=", "foo=1", "qkv=1,,o=2", "qkv:1"})
    EXPECT_THROW(parse_qdec_k(bad), Error) << bad;
  EXPECT_EQ(qdec_kind_of(LinearModule::V), 0);
  EXPECT_EQ(qdec_kind_of(LinearModule::Up), 2);
}

TEST(Qdec, TunerStaysWithinTheBudgetAndGrowsTheCheapestKindFirst) {
  QdecCosts c;
  // Kind costs per level: down is 4x the cost of the others per step, o is free-ish.
  const double unit[kQdecKinds] = {1e-6, 0.1e-6, 1e-6, 4e-6};
  for (int kind = 0; kind < kQdecKinds; ++kind)
    for (std::size_t lv = 0; lv < std::size(kQdecLevels); ++lv) c.seconds[kind][lv] = unit[kind] * kQdecLevels[lv];
  const auto none = tune_qdec(c, 0.05e-6);
  EXPECT_EQ(none.k, QdecK{});
  EXPECT_EQ(none.cost_seconds, 0);
  const auto small = tune_qdec(c, 3e-6);
  EXPECT_LE(small.cost_seconds, 3e-6);
  EXPECT_GT(small.k.o, small.k.qkv);  // the cheap kind grows first
  EXPECT_EQ(small.k.down, 0);
  EXPECT_FALSE(small.steps.empty());
  const auto all = tune_qdec(c, 1.0);
  EXPECT_EQ(all.k, QdecK::all(64));
  // Every budget: within it, and no single remaining step would still fit.
  for (double b : {1e-6, 5e-6, 20e-6, 100e-6, 300e-6}) {
    const auto t = tune_qdec(c, b);
    EXPECT_LE(t.cost_seconds, b * (1 + 1e-12));
    for (int kind = 0; kind < kQdecKinds; ++kind) {
      const auto* it = std::find(std::begin(kQdecLevels), std::end(kQdecLevels), t.k.kind(kind));
      ASSERT_NE(it, std::end(kQdecLevels));
      const std::size_t lv = std::size_t(it - std::begin(kQdecLevels));
      if (lv + 1 < std::size(kQdecLevels)) {
        EXPECT_GT(t.cost_seconds + c.seconds[kind][lv + 1] - c.seconds[kind][lv], b) << kind << " " << b;
      }
    }
  }
  // The measured costs of a real store: positive and growing with k (coarsely: 64 vs 1).
  SynthSpec s = synth_preset("tiny");
  s.config.vocab = 64;
  const auto original = make_synthetic(s);
  auto quantized = original;
  QuantConfig cfg = plan_preset("w4a16-rtn").quant;
  cfg.gptq.weights.group_size = 0;
  quantize_weights(quantized, {}, cfg, {});
  const auto costs = measure_qdec_costs(build_qdec_store(original, quantized, 4), 2);
  for (int kind = 0; kind < kQdecKinds; ++kind) {
    EXPECT_EQ(costs.seconds[kind][0], 0);
    EXPECT_GT(costs.seconds[kind][1], 0);
  }
}

namespace {

struct PackedQdec {
  ModelWeights quantized;
  OnlineTransforms online;
  QdecStore store;
  QuantConfig cfg;
};

// A tiny model rotated, quantized and packed by the pipeline, with a QDEC section of `bits`-bit
// residuals (k stored: `k`) unless `with_section` is false.
PackedQdec pack_with_qdec(const std::string& path, const std::string& preset, int bits, QdecK k, bool with_section = true) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 21;
  s.config.vocab = 96;
  PlanOptions o;
  o.model = saved_model(make_synthetic(s), path + ".in");
  o.output = path;
  o.preset = preset;
  o.w_group = 0;
  o.kv_clip = plan_preset(preset).quant.act.kv_clip;  // the preset's (head_dim 8 would choose 1.0)
  o.qdec = with_section;
  o.qdec_bits = bits;
  if (with_section) o.qdec_k = k.describe();
  auto r = run_plan(o);
  EXPECT_EQ(r.qdec.has_value(), with_section);
  return {std::move(r.quantized), std::move(r.online), r.qdec ? std::move(*r.qdec) : QdecStore{}, r.config};
}

std::vector<int> tokens_for_test(int n, int vocab) {
  std::vector<int> t = {1};
  for (int i = 1; i < n; ++i) t.push_back(3 + (i * 37) % (vocab - 3));
  return t;
}

std::vector<float> logits_of(Transformer<float> m, const std::vector<int>& t) {
  std::vector<float> l;
  m.forward(t, l);
  return l;
}

}  // namespace

TEST(QdecPacked, ResidualSectionRoundTripsExactlyAndIsChecked) {
  TempDir dir;
  for (int bits : {4, 8}) {
    const std::string path = dir / ("q" + std::to_string(bits) + ".q4.safetensors");
    const QdecK k = parse_qdec_k("qkv=2,o=4,gate_up=8,down=all");
    const auto p = pack_with_qdec(path, "w4a16-rtn", bits, k);
    const PackedModel m(path);
    ASSERT_NE(m.qdec(), nullptr);
    EXPECT_EQ(m.qdec_k(), k);
    EXPECT_EQ(m.qdec()->bits, bits);
    ASSERT_EQ(m.qdec()->linears.size(), p.store.linears.size());
    for (std::size_t i = 0; i < p.store.linears.size(); ++i) {
      const auto& a = p.store.linears[i];
      const auto& b = m.qdec()->linears[i];
      ASSERT_EQ(a.rows, b.rows);
      ASSERT_EQ(a.cols, b.cols);
      EXPECT_EQ(a.scales, b.scales);
      ASSERT_NE(b.external, nullptr);  // used in place from the map
      EXPECT_EQ(0, std::memcmp(a.codes.data(), b.code_data(), a.codes.size())) << i;
    }
    EXPECT_EQ(m.qdec()->bytes(), p.store.bytes());
  }
  // A flipped byte in a residual is caught by name.
  const std::string path = dir / "q4.q4.safetensors";
  const SafetensorsFile f(path);
  const TensorInfo* t = f.find("model.layers.1.mlp.down_proj.qdec_residual");
  ASSERT_NE(t, nullptr);
  const std::size_t at = std::size_t(f.header().data_start + t->begin + 3);
  auto bytes = read_bytes(path);
  bytes.at(at) ^= 0x10;
  write_bytes(path, bytes);
  try {
    PackedModel bad(path);
    FAIL() << "corruption not caught";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.down_proj.qdec_residual"), std::string::npos) << e.what();
  }
  // Without a section, asking for k > 0 is an error naming the file.
  const std::string plain = dir / "plain.q4.safetensors";
  pack_with_qdec(plain, "w4a16-rtn", 4, {}, false);
  const PackedModel pm(plain);
  EXPECT_EQ(pm.qdec(), nullptr);
  EXPECT_THROW(integer_model(pm, 16, best_isa(), QdecK::all(4)), Error);
  EXPECT_NO_THROW(integer_model(pm, 16, best_isa(), QdecK{}));
}

TEST(QdecPacked, KZeroIsThePlainIntegerModelAndIntegerMatchesSimulation) {
  TempDir dir;
  for (const char* preset : {"w4a16-rtn", "w4a4kv4-rtn"}) {
    const std::string with = dir / "with.q4.safetensors", without = dir / "without.q4.safetensors";
    const auto p = pack_with_qdec(with, preset, 4, QdecK::all(64));
    pack_with_qdec(without, preset, 4, {}, false);
    const PackedModel a(with), b(without);
    const auto t = tokens_for_test(24, 96);
    // k = 0: the plain integer model bit for bit; and the simulation's k = 0 the plain simulation.
    EXPECT_EQ(logits_of(integer_model(a, 32, best_isa(), QdecK{}), t), logits_of(integer_model(b, 32), t)) << preset;
    EXPECT_EQ(logits_of(qdec_simulation_model(p.quantized, p.store, QdecK{}, p.online, p.cfg.act, 32), t),
              logits_of(simulated_model(b, p.quantized, 32), t))
        << preset;
    // k > 0: the integer path and the simulation agree (A16: up to fp32 summation order; A4KV4:
    // a rare flipped 4-bit code, so a looser bound). (That more channels move toward the float
    // model is checked with an 8-bit residual above: this random rotated model amplifies small
    // changes chaotically, so its logit distance is not monotone in k.)
    const auto li = logits_of(integer_model(a, 32), t);
    const auto ls = logits_of(simulated_model(a, p.quantized, 32), t);
    const auto l0 = logits_of(integer_model(b, 32), t);
    double dis = 0, norm = 0, moved = 0;
    for (std::size_t i = 0; i < li.size(); ++i) {
      dis += std::pow(li[i] - ls[i], 2);
      norm += std::pow(ls[i], 2);
      moved += std::pow(li[i] - l0[i], 2);
    }
    EXPECT_GT(moved, 1e-6 * norm) << preset;  // the compensation does something
    const bool a16 = std::string(preset) == "w4a16-rtn";
    // A16: the same 16-bit activation codes (quarot/act16.hpp) and fp32 summation order; fp32
    // activations measured 1.03e-5 (so 2e-5 then). With codes an input 1e-7 off flips a code by one
    // step (max |x| / 32767), which this chaotic model amplifies: measured 2026-12-01 integer vs
    // simulation 7.1e-5 at k = 0 and 4.8e-4 at k = 64, and the simulation against itself with
    // every linear input scaled by 1 + 1e-7..1e-6: 1.4e-4..2.7e-4 (fp32 activations: 4.3e-6..5.8e-6).
    // So 2e-3; that both round alike is checked exactly per kernel (Int4GemmA16) and per packed
    // model (Packed.W4A16IntegerModelMatchesTheSimulation).
    EXPECT_LT(std::sqrt(dis / norm), a16 ? 2e-3 : 0.05) << preset;
  }
}
