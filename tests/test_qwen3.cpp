// Qwen3 dense: the per-head q/k RMSNorm and an explicit head_dim (attention width != residual
// width) through every stage: config, Hugging Face files, the float forward against the scalar
// reference, QuaRot's invariance (the norms stay float and untouched: R3 acts after RoPE, which
// acts after the norms), the quantization simulation, the packed file and the integer path.
// Eigen first: detail/eigen.hpp silences GCC 12 false positives inside it.
#include "quarot/detail/eigen.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/forward.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/rotate.hpp"
#include "quarot/runtime.hpp"
#include "quarot/synth.hpp"
#include "pipeline_support.hpp"
#include "reference_forward.hpp"
#include "rotation_support.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
using json = nlohmann::json;

namespace {

// qwen3-small scaled down: 8 heads x head_dim 32 = 256 attention width over a residual of 128
// (Qwen3-0.6B has 2048 over 1024), 4 KV heads, tied, q/k norms.
ModelWeights small_qwen3(int layers = 2, int vocab = 320, uint64_t seed = 5) {
  SynthSpec s = synth_preset("qwen3-small");
  s.seed = seed;
  s.config.hidden = 128;
  s.config.n_heads = 8;
  s.config.n_kv_heads = 4;
  s.config.head_dim = 32;
  s.config.intermediate = 384;
  s.config.n_layers = layers;
  s.config.vocab = vocab;
  s.config.bos_id = 1;
  s.config.eos_id = 2;
  s.residual_outliers = s.ffn_outliers = 2;
  return make_synthetic(s);
}

std::vector<int> some_tokens(int n, int vocab, uint64_t seed) {
  std::vector<int> t = {1};
  for (uint64_t s = seed * 2654435761u + 17; int(t.size()) < n;) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t.push_back(int(3 + (s >> 33) % uint64_t(vocab - 3)));
  }
  return t;
}

double rel_rms(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Token streams sampled from the float model at temperature 1 (as stories260K's calibration
// set): text the model finds likely, so that perplexity measures something.
std::vector<std::vector<int>> sampled_from(const ModelWeights& m, int n_seqs, int len, uint64_t seed) {
  Transformer<float> t(m, len);
  detail::Rng rng(seed);
  std::vector<std::vector<int>> out;
  std::vector<float> logits;
  for (int s = 0; s < n_seqs; ++s) {
    t.reset();
    std::vector<int> seq = {m.config.bos_id};
    t.forward_last(seq, logits);
    while (int(seq.size()) < len) {
      const float mx = *std::max_element(logits.begin(), logits.end());
      double sum = 0;
      for (float l : logits) sum += std::exp(double(l - mx));
      double u = rng.uniform() * sum;
      int next = 0;
      for (; next + 1 < int(logits.size()); ++next)
        if ((u -= std::exp(double(logits[std::size_t(next)] - mx))) <= 0) break;
      seq.push_back(next);
      t.forward_last(std::span<const int>(&seq.back(), 1), logits);
    }
    out.push_back(std::move(seq));
  }
  return out;
}

}  // namespace

TEST(Qwen3Config, RealConfigGivesHeadDimQkNormsAndNoBiases) {
  QUAROT_REQUIRE_DATA("configs/mlc-transcribed/qwen3_0.6b.json");
  const std::string path = data_file("configs/mlc-transcribed/qwen3_0.6b.json");
  const auto c = parse_hf_config(read_json_file(path), path);
  EXPECT_EQ(c.family, Family::Qwen3);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_dim(), 2048);  // twice hidden_size
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_FALSE(c.q_bias || c.k_bias || c.v_bias || c.o_bias);
  EXPECT_TRUE(c.tied_embeddings);
  // Written back and read again: the same config.
  const auto back = parse_hf_config(hf_config_json(c, "bfloat16"), "back");
  EXPECT_EQ(back.family, Family::Qwen3);
  EXPECT_TRUE(back.qk_norm);
  EXPECT_EQ(back.head_dim, 128);
  // The tensors a Qwen3 folder must hold: the two norms of each layer, [head_dim].
  int norms = 0;
  for (const auto& [name, shape] : tensor_shapes(c))
    if (name.ends_with("self_attn.q_norm.weight") || name.ends_with("self_attn.k_norm.weight")) {
      EXPECT_EQ(shape, std::vector<int64_t>{128}) << name;
      ++norms;
    }
  EXPECT_EQ(norms, 2 * 28);
  // Qwen3 MoE stays refused, naming the field.
  auto j = json::parse(hf_config_json(c, "bfloat16"));
  j["model_type"] = "qwen3_moe";
  EXPECT_NE(error_of([&] { parse_hf_config(j.dump(), "config.json"); }).find("'model_type' 'qwen3_moe' is not a supported"),
            std::string::npos);
  j["model_type"] = "qwen3";
  j["num_experts"] = 128;
  EXPECT_NE(error_of([&] { parse_hf_config(j.dump(), "config.json"); }).find("'num_experts' is set"), std::string::npos);
  // A config built in code must say qwen3 and q/k norms together.
  ModelConfig odd = c;
  odd.family = Family::Qwen2;
  EXPECT_NE(error_of([&] { odd.validate("x"); }).find("q/k norms come with model_type qwen3"), std::string::npos);
}

TEST(Qwen3Forward, MatchesTheReferenceAndTheNormsMatter) {
  const auto m = small_qwen3();
  ASSERT_NE(m.config.q_dim(), m.config.hidden);
  ASSERT_EQ(m.layers[0].q_norm.size(), 32u);
  const auto tokens = some_tokens(40, 320, 3);
  const auto ref = reference_logits(m, tokens);
  for (const bool decode : {false, true}) {
    Transformer<double> d(m, 40);
    Transformer<float> f(m, 40);
    std::vector<double> ld, step_d;
    std::vector<float> lf, step_f;
    if (decode) {
      for (int t : tokens) {
        d.forward(std::span<const int>(&t, 1), step_d);
        f.forward(std::span<const int>(&t, 1), step_f);
        ld.insert(ld.end(), step_d.begin(), step_d.end());
        lf.insert(lf.end(), step_f.begin(), step_f.end());
      }
    } else {
      d.forward(tokens, ld);
      f.forward(tokens, lf);
    }
    EXPECT_LE(max_rel_error(ld, ref), 1e-10) << (decode ? "decode" : "window");
    EXPECT_LE(max_rel_error(lf, ref), 3e-5) << (decode ? "decode" : "window");
  }
  // Not a test that cannot fail: other q/k norm scales give other logits (and the reference
  // sees that too).
  auto other = m;
  for (float& g : other.layers[1].k_norm) g *= 1.5f;
  Transformer<double> d(other, 40);
  std::vector<double> lo;
  d.forward(tokens, lo);
  EXPECT_GT(max_rel_error(lo, ref), 1e-3);
  EXPECT_LE(max_rel_error(lo, reference_logits(other, tokens)), 1e-10);
  // Weights without the norms the config asks for are refused.
  auto missing = m;
  missing.layers[0].q_norm.clear();
  EXPECT_NE(error_of([&] { Transformer<float> t(missing, 8); }).find("q/k norms"), std::string::npos);
}

TEST(Qwen3Hf, FolderRoundTripsWithTheNormTensors) {
  TempDir dir;
  const auto m = small_qwen3();
  save_hf(m, dir / "q3", {DType::F32, 60000, {}});  // sharded
  const auto cfg = json::parse(read_text_file(dir / "q3/config.json"));
  EXPECT_EQ(cfg["model_type"], "qwen3");
  EXPECT_EQ(cfg["architectures"][0], "Qwen3ForCausalLM");
  EXPECT_EQ(cfg["head_dim"], 32);
  const auto back = load_hf(dir / "q3");
  EXPECT_TRUE(back.config.qk_norm);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(back.layers[l].q_norm, m.layers[l].q_norm);
    EXPECT_EQ(back.layers[l].k_norm, m.layers[l].k_norm);
  }
  const CheckpointReader reader(dir / "q3");
  EXPECT_EQ(reader.layer(1).k_norm, m.layers[1].k_norm);  // the streamed path reads them too
  const auto index = json::parse(read_text_file(dir / "q3/model.safetensors.index.json"));
  EXPECT_TRUE(index["weight_map"].contains("model.layers.0.self_attn.q_norm.weight"));
  EXPECT_TRUE(index["weight_map"].contains("model.layers.1.self_attn.k_norm.weight"));
  // A Qwen3 folder without its norms is refused naming the tensor.
  auto cfg_l = cfg;
  cfg_l["model_type"] = "llama";  // a llama reading Qwen3's files: unexpected tensors
  write_file_atomic(dir / "q3/config.json", cfg_l.dump());
  const std::string e = error_of([&] { load_hf(dir / "q3"); });  // names the first, by name
  EXPECT_NE(e.find("unexpected tensor 'model.layers.0.self_attn.k_norm.weight'"), std::string::npos) << e;
  auto as_llama = small_qwen3(1);
  as_llama.config.family = Family::Llama;
  as_llama.config.qk_norm = false;
  as_llama.layers[0].q_norm.clear();
  as_llama.layers[0].k_norm.clear();
  save_hf(as_llama, dir / "plain");
  auto cfg_q = json::parse(read_text_file(dir / "plain/config.json"));
  cfg_q["model_type"] = "qwen3";
  write_file_atomic(dir / "plain/config.json", cfg_q.dump());
  EXPECT_NE(error_of([&] { load_hf(dir / "plain"); }).find("missing tensor 'model.layers.0.self_attn.q_norm.weight'"),
            std::string::npos);
}

TEST(Qwen3Rotate, EveryStepAloneAndAllTogetherIsInvariant) {
  const auto m = small_qwen3();
  const auto tokens = some_tokens(40, 320, 1);
  struct Step {
    const char* name;
    RotationOptions o;
  };
  // Bars as in test_rotate.cpp: the rotated weights are stored in fp32, so an fp64 forward of the
  // rotated model differs by their rounding (~1e-7); R3 alone changes no weight.
  for (const auto& [name, o] : {Step{"fusion", only(true, false, false, false, false)},
                                Step{"fusion+R1", only(true, true, false, false, false)},
                                Step{"R2", only(false, false, true, false, false)},
                                Step{"R3", only(false, false, false, true, false)},
                                Step{"R4", only(false, false, false, false, true)},
                                Step{"all", only(true, true, true, true, true)}}) {
    const double e = invariance_error<double>(m, o, tokens);
    std::printf("qwen3 invariance fp64 %-10s %.3g\n", name, e);
    EXPECT_LE(e, std::string(name) == "R3" ? 1e-12 : 1e-5) << name;
  }
  const auto all = only(true, true, true, true, true);
  const double dec = invariance_error<double>(m, all, tokens, true);
  const double f32 = invariance_error<float>(m, all, tokens);
  RotationOptions random = all;
  random.r1_kind = R1Kind::Random;
  const double rnd = invariance_error<double>(m, random, tokens);
  std::printf("qwen3 invariance fp64 decode %.3g, fp32 %.3g, random R1 %.3g\n", dec, f32, rnd);
  EXPECT_LE(dec, 1e-5);
  EXPECT_LE(f32, 1e-3);
  EXPECT_LE(rnd, 1e-5);
  // The q/k norms are neither fused nor rotated: bit for bit what they were.
  auto r = m;
  rotate_model(r, all);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(r.layers[l].q_norm, m.layers[l].q_norm);
    EXPECT_EQ(r.layers[l].k_norm, m.layers[l].k_norm);
    for (float g : r.layers[l].attn_norm) ASSERT_EQ(g, 1.f);
  }
  // ... and folding them anyway (into wq's rows, as a norm fusion would) breaks the model:
  // the norm divides by the RMS of what wq gives, so it is not a per-row scale.
  auto folded = m;
  for (int64_t row = 0; row < folded.layers[0].wq.rows; ++row)
    for (int64_t col = 0; col < folded.layers[0].wq.cols; ++col)
      folded.layers[0].wq.row(row)[col] *= folded.layers[0].q_norm[std::size_t(row % 32)];
  std::fill(folded.layers[0].q_norm.begin(), folded.layers[0].q_norm.end(), 1.f);
  Transformer<double> a(m, 40), b(folded, 40);
  std::vector<double> la, lb;
  a.forward(tokens, la);
  b.forward(tokens, lb);
  EXPECT_GT(max_rel_diff(la, lb), 1e-3);
}

TEST(Qwen3Rotate, FullWidthLayerOfQwen3SmallIsInvariant) {
  if (kSanitizedBuild) GTEST_SKIP() << "full-width layer checked in the release build";
  // Qwen3-0.6B's real widths (hidden 1024, 16 x 128 heads, 8 KV heads, FFN 3072), one layer,
  // vocabulary cut to 512.
  SynthSpec s = synth_preset("qwen3-small");
  s.config.n_layers = 1;
  s.config.vocab = 512;
  s.config.bos_id = 1;
  s.config.eos_id = 2;
  s.seed = 9;
  const auto m = make_synthetic(s);
  const auto tokens = some_tokens(12, 512, 4);
  const auto all = only(true, true, true, true, true);
  const double e64 = invariance_error<double>(m, all, tokens), e32 = invariance_error<float>(m, all, tokens);
  std::printf("qwen3-small full-width layer invariance: fp64 %.3g, fp32 %.3g\n", e64, e32);
  EXPECT_LE(e64, 1e-5);
  EXPECT_LE(e32, 1e-3);
}

TEST(Qwen3Quant, PackedKeepsTheNormsFloatAndTheIntegerPathMatchesTheSimulation) {
  TempDir dir;
  const auto original = small_qwen3();
  const std::string path = dir / "q3.q4.safetensors";
  PlanOptions o;
  o.model = saved_model(original, dir / "hf");
  o.output = path;
  o.preset = "w4a4kv4-rtn";
  run_plan(o);
  const PackedModel p(path);
  EXPECT_TRUE(p.config().qk_norm);
  EXPECT_EQ(p.config().head_dim, 32);
  for (int l = 0; l < 2; ++l) {
    EXPECT_EQ(p.float_weights().layers[l].q_norm, original.layers[l].q_norm);
    EXPECT_EQ(p.float_weights().layers[l].k_norm, original.layers[l].k_norm);
  }
  const auto deq = p.dequantized();
  const auto t = some_tokens(40, 320, 3);
  for (Isa isa : {Isa::Scalar, best_isa()}) {
    auto integer = integer_model(p, 64, isa);
    auto sim = simulated_model(p, deq, 64);
    std::vector<float> li, ls;
    integer.forward(t, li);
    sim.forward(t, ls);
    ASSERT_EQ(li.size(), ls.size());
    const double e = rel_rms(li, ls);
    std::printf("qwen3 integer vs simulation (%s): rel rms %.3g\n", isa_name(isa), e);
    EXPECT_LT(e, 1e-4) << isa_name(isa);
    // Decode through the quantized KV cache agrees with the window.
    integer.reset();
    std::vector<float> step;
    for (int i = 0; i < 40; ++i) integer.forward_last(std::span<const int>(&t[std::size_t(i)], 1), step);
    // Relative to the largest logit: this model's logits reach ~2000, where one fp32 ulp is 1.2e-4,
    // and the window's and the single step's products sum in different orders (the ASan build's
    // -O2 code measured 1.22e-3 = 5 ulp, 6e-7 of the largest logit). A wrong cache is off by O(1).
    double worst = 0, largest = 0;
    for (int v = 0; v < 320; ++v) {
      const double window = li[std::size_t(39 * 320 + v)];
      worst = std::max(worst, std::fabs(double(step[std::size_t(v)]) - window));
      largest = std::max(largest, std::fabs(window));
    }
    EXPECT_LT(worst, 1e-5 * largest) << isa_name(isa);
  }
  // The packed file's norm tensors are checked like every float tensor.
  const SafetensorsFile f(path);
  ASSERT_NE(f.find("model.layers.1.self_attn.k_norm.weight"), nullptr);
}

TEST(Qwen3Quant, StreamedAndWholeModelPipelinesWriteTheSameFile) {
  TempDir dir;
  const auto m = small_qwen3();
  save_hf(m, dir / "hf");
  PlanOptions o;
  o.model = dir / "hf";
  o.preset = "w4a4kv4";
  use_calibration(o, {some_tokens(24, 320, 1), some_tokens(24, 320, 2)}, dir / "calib.ids");
  o.output = dir / "whole.q4.safetensors";
  run_plan(o);
  o.output = dir / "streamed.q4.safetensors";
  o.stream = true;
  run_plan(o);
  EXPECT_EQ(read_bytes(dir / "whole.q4.safetensors"), read_bytes(dir / "streamed.q4.safetensors"));
}

namespace {

struct PplResult {
  double fl = 0, sim = 0, integer = 0, kld = 0, top1 = 0;
  long long tokens = 0;
};

// Float vs quantized perplexity of `m` on `windows` (packed file, its integer path and its
// simulation), quantized by the pipeline with `preset` (rotated unless `rotate` is false), GPTQ
// calibrated on `calib`, the preset's KV clip.
PplResult float_vs_quantized(const ModelWeights& m, const std::string& preset, const std::vector<std::vector<int>>& calib,
                             const std::vector<Window>& windows, bool rotate = true) {
  Transformer<float> fl(m, 128);
  PplResult r;
  const auto f = evaluate(fl, windows, Protocol::Paper);
  r.fl = f.ppl;
  r.tokens = f.tokens_scored;
  TempDir dir;
  const std::string path = dir / "m.q4.safetensors";
  PlanOptions o;
  o.model = saved_model(m, dir / "hf");
  o.output = path;
  o.preset = preset;
  o.kv_clip = plan_preset(preset).quant.act.kv_clip;
  o.no_rotate = !rotate;
  use_calibration(o, calib, dir / "calib.ids");
  run_plan(o);
  const PackedModel p(path);
  auto integer = integer_model(p, 128);
  const auto qi = evaluate(integer, windows, Protocol::Paper, &fl);
  r.integer = qi.ppl;
  r.kld = qi.kld_mean;
  r.top1 = qi.top1_agreement;
  const auto deq = p.dequantized();
  auto sim = simulated_model(p, deq, 128);
  r.sim = evaluate(sim, windows, Protocol::Paper).ppl;
  return r;
}

// The synthetic tied classifier is the embedding with its planted x20-100 residual channels,
// which the final state also carries: logits of a model that repeats one token (perplexity
// 1.0). An untied classifier of N(0, (0.2 * sqrt(128 / hidden))^2) gives logits of std ~2.
void give_a_plain_classifier(ModelWeights& m) {
  const int64_t V = m.config.vocab, d = m.config.hidden;
  m.config.tied_embeddings = false;
  const auto cls = gaussian(std::size_t(V * d), 77, float(0.2 * std::sqrt(128.0 / double(d))));
  m.lm_head.rows = V;
  m.lm_head.cols = d;
  m.lm_head.data.assign(cls.begin(), cls.end());
}

std::vector<Window> whole_windows(const std::vector<std::vector<int>>& seqs) {
  std::vector<Window> w;
  for (const auto& s : seqs) w.push_back({s, 0});
  return w;
}

}  // namespace

TEST(Qwen3Quant, FullWidthQwen3SmallW4A4KV4Perplexity) {
  if (kSanitizedBuild) GTEST_SKIP() << "full-width model checked in the release build";
  // qwen3-small at its real widths (hidden 1024, 16 x 128 heads, 8 KV heads, FFN 3072, planted
  // outliers), one layer (2 layers: x1.216, 147 s on the shared machine; 2026-11-30), vocabulary
  // cut to 320; text sampled from the float model.
  SynthSpec s = synth_preset("qwen3-small");
  s.config.n_layers = 1;
  s.config.vocab = 320;
  s.config.bos_id = 1;
  s.config.eos_id = 2;
  s.seed = 5;
  auto m = make_synthetic(s);
  give_a_plain_classifier(m);
  const auto windows = whole_windows(sampled_from(m, 2, 128, 101));
  const auto q = float_vs_quantized(m, "w4a4kv4", sampled_from(m, 4, 128, 202), windows);
  std::printf("qwen3-small (synthetic, 1 layer, full width) perplexity on %lld sampled tokens: float %.4f, W4A4KV4 simulated "
              "%.4f, integer %.4f (x%.4f), KLD %.4f, top-1 %.1f%%\n",
              q.tokens, q.fl, q.sim, q.integer, q.integer / q.fl, q.kld, 100 * q.top1);
  EXPECT_LT(q.fl, 0.5 * 320);
  EXPECT_GT(q.integer, q.fl);
  EXPECT_LT(q.integer / q.fl, 2.0);
  EXPECT_NEAR(q.integer, q.sim, 0.01 * q.sim);
}

TEST(Qwen3Quant, W4A4KV4PerplexityFloatVsQuantized) {
  // Perplexity on text sampled from the float model itself (temperature 1); GPTQ calibrated on
  // other samples. A synthetic model of width 128 with planted outliers: the figures show the
  // machinery works and what the q/k norms change, not a real model's quality.
  auto m = small_qwen3(2, 320, 5);
  give_a_plain_classifier(m);  // the same classifier as before this helper: N(0, 0.2^2)
  const auto eval_seqs = sampled_from(m, 4, 128, 101);
  const auto calib = sampled_from(m, 8, 128, 202);
  std::vector<Window> windows;
  for (const auto& s : eval_seqs) windows.push_back({s, 0});
  const auto q = float_vs_quantized(m, "w4a4kv4", calib, windows);
  std::printf("qwen3 (synthetic, 2 layers, width 128) perplexity on %lld sampled tokens: float %.4f, W4A4KV4 simulated %.4f, "
              "integer %.4f (x%.4f), KLD %.4f, top-1 %.1f%%\n",
              q.tokens, q.fl, q.sim, q.integer, q.integer / q.fl, q.kld, 100 * q.top1);
  EXPECT_LT(q.fl, 0.5 * 320);  // the samples are what the model finds likely
  EXPECT_GT(q.integer, q.fl);   // 4-bit everything costs something
  EXPECT_NEAR(q.integer, q.sim, 0.01 * q.sim);
  // Without the rotations the same recipe does worse (the planted outliers).
  const auto u = float_vs_quantized(m, "w4a4kv4", calib, windows, false);
  std::printf("  without rotation: integer %.4f (x%.4f)\n", u.integer, u.integer / u.fl);
  EXPECT_GT(u.integer, q.integer);
  // The same weights without the q/k norms (a LLaMA layer): the norms cost no extra loss
  // (their inputs are float; what is quantized after them is what LLaMA quantizes).
  auto llama = m;
  llama.config.family = Family::Llama;
  llama.config.qk_norm = false;
  for (auto& L : llama.layers) L.q_norm.clear(), L.k_norm.clear();
  const auto l_eval = sampled_from(llama, 4, 128, 101);
  const auto l_calib = sampled_from(llama, 8, 128, 202);
  std::vector<Window> l_windows;
  for (const auto& s : l_eval) l_windows.push_back({s, 0});
  const auto l = float_vs_quantized(llama, "w4a4kv4", l_calib, l_windows);
  std::printf("  same weights without q/k norms (llama): float %.4f, integer %.4f (x%.4f)\n", l.fl, l.integer, l.integer / l.fl);
  EXPECT_LT(q.integer / q.fl, 1.25 * (l.integer / l.fl));
}

TEST(TokenizerFit, FewerTokensThanEmbeddingRowsIsFineMoreIsRefused) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("llama2-tokenizer/tokenizer.model");
  TempDir dir;
  {
    std::ofstream f(dir / "t.txt");
    f << "Once upon a time there was a cat. It liked to play in the sun all day long.\n";
  }
  const std::string model = data_file("stories260K/stories260K.bin");
  // LLaMA-2's 32,000 tokens on a 512-row model: ids past the embedding, refused in one line.
  auto r = run_tool("quarot-eval", model + " --text " + (dir / "t.txt") + " --tokenizer " +
                                       data_file("llama2-tokenizer/tokenizer.model") + " --ctx 8 --progress none");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("the tokenizer has 32000 tokens, more than the model's 512 embedding rows"), std::string::npos)
      << r.stderr_text;
  r = run_tool("quarot-run", model + " --prompt Once --tokenizer " + data_file("llama2-tokenizer/tokenizer.model") + " -n 2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("more than the model's 512 embedding rows"), std::string::npos) << r.stderr_text;
  // The model's own tokenizer (equal sizes) still runs; the prompt starts with its BOS.
  r = run_tool("quarot-run", model + " --prompt Once --tokenizer " + data_file("stories260K/tok512.model") + " -n 2");
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(r.stdout_text.rfind("ids: 1 ", 0), 0u) << r.stdout_text;
}
