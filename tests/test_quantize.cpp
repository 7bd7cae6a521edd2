// Whole-model quantization: calibration windows, presets, the sequential GPTQ pipeline, and the
// quarot-quantize tool.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <fstream>
#include <set>

#include "quarot/error.hpp"
#include "quarot/eval.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/synth.hpp"
#include "quarot/tokenizer.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {

std::vector<int> pseudo_text(int n, int vocab, uint64_t seed) {
  // Token ids with some structure (a repeating motif plus noise), so there is something to fit.
  std::vector<int> t = {1};
  uint64_t s = seed;
  while (int(t.size()) < n) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t.push_back((s >> 60) < 10 ? int(3 + (t.size() % 17)) : int(3 + (s >> 33) % uint64_t(vocab - 3)));
  }
  return t;
}

ModelWeights tiny_model() {
  SynthSpec s = synth_preset("tiny");
  s.seed = 5;
  s.config.vocab = 128;
  return make_synthetic(s);
}

double mean_kld(const ModelWeights& base, const ModelWeights& q, const OnlineTransforms& online, const ActQuantOptions& act,
                const std::vector<Window>& windows) {
  Transformer<float> fb(base, 128), fq(q, 128);
  fq.set_hook(quantized_model_hook<float>(online, act, q.config.head_dim));
  return evaluate(fq, windows, Protocol::Paper, &fb).kld_mean;
}

}  // namespace

TEST(Calibration, LinesOrSeededRandomWindows) {
  const std::vector<std::vector<int>> lines = {{1, 2, 3, 4, 5}, {1, 6, 7, 8, 9}, {1, 10, 11, 12}};
  const auto a = calibration_windows(lines, 2, 4, 0, "c.ids");
  ASSERT_EQ(a.size(), 2u);
  EXPECT_EQ(a[1], (std::vector<int>{1, 6, 7, 8}));  // first lines, cut to seqlen
  const auto b = calibration_windows(lines, 3, 4, 7, "c.ids");  // line 3 too short: random windows
  const auto b2 = calibration_windows(lines, 3, 4, 7, "c.ids");
  ASSERT_EQ(b.size(), 3u);
  EXPECT_EQ(b, b2);  // seeded
  for (const auto& w : b) EXPECT_EQ(w.size(), 4u);
  EXPECT_THROW(calibration_windows(lines, 4, 4, 0, "c.ids"), Error);  // 14 tokens < 16
}

TEST(Presets, ExpandToThePapersSettings) {
  const auto c = plan_preset("w4a4kv4").quant;
  EXPECT_EQ(c.method, WeightMethod::Gptq);
  EXPECT_EQ(c.gptq.weights.grid.bits, 4);
  EXPECT_TRUE(c.gptq.weights.grid.symmetric && c.gptq.weights.clip_search);
  EXPECT_EQ(c.act.a_bits, 4);
  EXPECT_DOUBLE_EQ(c.act.a_clip, 0.9);
  EXPECT_DOUBLE_EQ(c.act.kv_clip, 0.95);
  EXPECT_TRUE(c.act.kv_asym);
  EXPECT_TRUE(c.rotate);
  EXPECT_EQ(plan_preset("w4a16").quant.gptq.weights.group_size, 128);
  EXPECT_DOUBLE_EQ(plan_preset("w8a8kv8").quant.act.a_clip, 1.0);  // the clip ratios are 4-bit settings
  EXPECT_DOUBLE_EQ(plan_preset("w8a8kv8").quant.act.kv_clip, 1.0);
  EXPECT_EQ(plan_preset("w4a4kv4-rtn").quant.method, WeightMethod::Rtn);
  EXPECT_FALSE(plan_preset("none").quant.rotate);
  EXPECT_NE(c.describe().find("--a-clip 0.9"), std::string::npos);
  for (const auto& n : quarot::plan_preset_names()) EXPECT_NO_THROW((void)plan_preset(n));
  EXPECT_THROW((void)plan_preset("w3a3"), Error);
}

TEST(Presets, W4a4k8v4IsW4a4kv4WithEightBitKeys) {
  const auto a = plan_preset("w4a4kv4").quant, b = plan_preset("w4a4k8v4").quant;
  EXPECT_EQ(b.act.k_bits, 8);
  EXPECT_EQ(b.act.v_bits, 4);
  auto same = b;
  same.act.k_bits = 4;
  same.preset = a.preset;
  EXPECT_EQ(same.describe(), a.describe());
  EXPECT_NE(b.describe().find("--k-bits 8 --v-bits 4"), std::string::npos);
}

TEST(Presets, KvClipFollowsTheModelsHeadDim) {
  ModelConfig small, large;
  small.head_dim = 8;
  large.head_dim = 128;
  auto c = plan_preset("w4a4k8v4").quant;
  const std::string line = apply_model_defaults(c, small);
  EXPECT_DOUBLE_EQ(c.act.kv_clip, 1.0);
  EXPECT_NE(line.find("KV clip 1.00 (preset 0.95): head_dim 8 < 32"), std::string::npos) << line;
  EXPECT_EQ(apply_model_defaults(c, large), "");  // chosen once
  EXPECT_DOUBLE_EQ(c.act.kv_clip, 1.0);
  c = plan_preset("w4a4kv4").quant;
  EXPECT_NE(apply_model_defaults(c, large), "");
  EXPECT_DOUBLE_EQ(c.act.kv_clip, 0.95);  // the paper's head_dim-128 setting
  c = plan_preset("w4a4kv4").quant;
  c.kv_clip_follows_model = false;  // what a user's --kv-clip does
  c.act.kv_clip = 0.9;
  EXPECT_EQ(apply_model_defaults(c, small), "");
  EXPECT_DOUBLE_EQ(c.act.kv_clip, 0.9);
  c = plan_preset("w4a16").quant;  // no KV quantization: nothing to choose
  EXPECT_EQ(apply_model_defaults(c, small), "");
  EXPECT_DOUBLE_EQ(c.act.kv_clip, 1.0);
}

TEST(Presets, BitsPerCachedElement) {
  const auto k8v4 = kv_cache_bits(plan_preset("w4a4k8v4").quant.act, 8);
  EXPECT_DOUBLE_EQ(k8v4.codes(), 6.0);
  EXPECT_DOUBLE_EQ(k8v4.k_stored, 8 + 5.0);  // 40 bits of scale and zero over 8 values
  EXPECT_DOUBLE_EQ(k8v4.v_stored, 4 + 5.0);
  EXPECT_DOUBLE_EQ(k8v4.stored(), 11.0);
  EXPECT_DOUBLE_EQ(kv_cache_bits(plan_preset("w4a4kv4").quant.act, 128).stored(), 4 + 40.0 / 128);
  EXPECT_DOUBLE_EQ(kv_cache_bits(plan_preset("w4a4kv4").quant.act, 7).v_stored, (32 + 40) / 7.0);  // an odd head pads a nibble
  const auto none = kv_cache_bits(plan_preset("w4a16").quant.act, 64);
  EXPECT_DOUBLE_EQ(none.codes(), 16.0);
  EXPECT_DOUBLE_EQ(none.stored(), 32.0);
}

TEST(QuantizeModel, GptqBeatsRtnAndRotationHelpsW4A4) {
  const auto base = tiny_model();
  std::vector<std::vector<int>> calib;
  for (int i = 0; i < 16; ++i) calib.push_back(pseudo_text(128, 128, 100 + i));
  std::vector<Window> held_out;
  for (int i = 0; i < 4; ++i) held_out.push_back({pseudo_text(128, 128, 900 + i), 0});

  auto kld_for = [&](WeightMethod method, int w_bits, bool rotate, const ActQuantOptions& act) {
    auto m = base;
    QuantConfig cfg = plan_preset("w4a4kv4").quant;
    cfg.method = method;
    cfg.gptq.weights.grid.bits = w_bits;
    OnlineTransforms online;
    if (rotate) online = rotate_model(m, cfg.rotation);
    const auto stats = quantize_weights(m, online, cfg, calib);
    EXPECT_EQ(stats.size(), std::size_t(7 * base.config.n_layers));
    for (const auto& s : stats) EXPECT_GT(s.rel_weight_error, 0.0);
    return mean_kld(base, m, online, act, held_out);
  };
  const ActQuantOptions none;
  const double rtn3 = kld_for(WeightMethod::Rtn, 3, true, none);
  const double gptq3 = kld_for(WeightMethod::Gptq, 3, true, none);
  EXPECT_LT(gptq3, rtn3) << "W3A16: GPTQ " << gptq3 << " vs RTN " << rtn3;
  ActQuantOptions a4;
  a4.a_bits = a4.k_bits = a4.v_bits = 4;
  a4.a_clip = 0.9;
  a4.kv_clip = 0.95;
  const double rotated = kld_for(WeightMethod::Gptq, 4, true, a4);
  const double plain = kld_for(WeightMethod::Gptq, 4, false, a4);
  EXPECT_LT(rotated, plain) << "W4A4KV4 with planted outliers: rotated " << rotated << " vs not " << plain;
}

// Issue 20: `--threads 1` and `--threads 2` wrote different GPTQ files at Qwen2 width (Eigen's
// GEMM blocks its inner dimension by thread count). A model wide enough that every parallel
// product (forward linears, classifier, Hessians, GPTQ's lazy update) takes the parallel path.
TEST(QuantizeModel, GptqBytesDoNotDependOnTheThreadCount) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 11;
  s.config.hidden = 256;
  s.config.intermediate = 1024;
  s.config.n_heads = 4;
  s.config.n_kv_heads = 2;
  s.config.head_dim = 64;
  s.config.n_layers = 1;
  s.config.vocab = 2048;
  const ModelWeights base = make_synthetic(s);
  std::vector<std::vector<int>> calib;
  for (int i = 0; i < 8; ++i) calib.push_back(pseudo_text(128, s.config.vocab, 300 + i));
  auto quantized_with = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    ModelWeights m = base;
    const QuantConfig cfg = plan_preset("w4a4kv4").quant;
    const OnlineTransforms online = rotate_model(m, cfg.rotation);
    quantize_weights(m, online, cfg, calib);
    std::vector<float> logits;
    Transformer<float> t(m, 128);
    t.forward(calib.front(), logits);
    omp_set_num_threads(saved);
    return std::make_pair(m, logits);
  };
  const auto [one, logits_one] = quantized_with(1);
  const auto [two, logits_two] = quantized_with(2);
  for (std::size_t l = 0; l < one.layers.size(); ++l)
    for (const auto& spec : kLinearSpecs)
      EXPECT_EQ((one.layers[l].*spec.weight).data, (two.layers[l].*spec.weight).data) << "layer " << l << " " << spec.name;
  EXPECT_EQ(logits_one, logits_two) << "the float forward of the same weights";
}

// Calibration reuses each window's attention output for the groups after o_proj (and the carried
// activations) when it fits in memory; recomputing it instead must give the very same weights.
TEST(QuantizeModel, CachedAttentionGivesTheSameGptqAsRecomputing) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 12;
  s.config.hidden = 256;
  s.config.intermediate = 688;  // 4 x 172: an FFN width with a non-power-of-two online Hadamard
  s.config.n_heads = 4;
  s.config.n_kv_heads = 2;
  s.config.head_dim = 64;
  s.config.n_layers = 2;
  s.config.vocab = 1024;
  const ModelWeights base = make_synthetic(s);
  std::vector<std::vector<int>> calib;
  for (int i = 0; i < 6; ++i) calib.push_back(pseudo_text(96, s.config.vocab, 400 + i));
  auto quantized_with = [&](double cache_bytes) {
    const double saved = detail::set_attention_cache_bytes(cache_bytes);
    ModelWeights m = base;
    const QuantConfig cfg = plan_preset("w4a4kv4").quant;
    const OnlineTransforms online = rotate_model(m, cfg.rotation);
    quantize_weights(m, online, cfg, calib);
    detail::set_attention_cache_bytes(saved);
    return m;
  };
  const ModelWeights cached = quantized_with(1e12), recomputed = quantized_with(0);
  for (std::size_t l = 0; l < cached.layers.size(); ++l)
    for (const auto& spec : kLinearSpecs)
      EXPECT_EQ((cached.layers[l].*spec.weight).data, (recomputed.layers[l].*spec.weight).data) << "layer " << l << " " << spec.name;
}

TEST(QuantizeTool, ErrorsAndExitCodes) {
  EXPECT_EQ(run_tool("quarot-quantize", "x.bin --preset w9").exit_code, 2);
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const std::string model = data_file("stories260K/stories260K.bin");
  auto r = run_tool("quarot-quantize", model + " --preset w4a4kv4 --progress none");
  EXPECT_EQ(r.exit_code, 2);  // a missing flag: usage
  EXPECT_NE(r.stderr_text.find("GPTQ needs calibration data"), std::string::npos) << r.stderr_text;
  // Text calibration without a tokenizer is refused, naming the file.
  r = run_tool("quarot-quantize", model + " --preset w4a4kv4 --progress none --calib " + data_file("tinystories/validation_100.txt"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("validation_100.txt: calibration text needs a tokenizer"), std::string::npos) << r.stderr_text;
  r = run_tool("quarot-quantize", model + " --preset w4a16-rtn --progress none");  // group 128 vs width 64
  EXPECT_EQ(r.exit_code, 2);  // a usage error against the model, found before loading (as --dry-run finds it)
  EXPECT_NE(r.stderr_text.find("does not divide the input width 64"), std::string::npos) << r.stderr_text;
  r = run_tool("quarot-quantize", model + " --preset w8a8kv8 --a-bits 9 --progress none");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.stderr_text.find("--a-bits: must be 2..8"), std::string::npos) << r.stderr_text;
  r = run_tool("quarot-quantize", model + " --preset w8a8kv8 --classifier-bits 12 --progress none");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.stderr_text.find("--classifier-bits: must be 2..8 or 16"), std::string::npos) << r.stderr_text;
  r = run_tool("quarot-quantize", model + " --preset w8a8kv8 --progress none --eval-ids " +
                                      data_file("tinystories/validation_100.tok512.ids") + " --ctx 512 --chunks 2");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("perplexity: float"), std::string::npos);
}

TEST(QuantizeModel, ClassifierBitsQuantizeTheEmbeddingAndClassifierTables) {
  // Tied (as stories260K): the one table is quantized and stays tied, as a packed file stores it.
  // Untied: both tables. Per-row symmetric 8-bit: every row on its own grid of 255 levels, within
  // half a step (max|row| / 127, the scale's 16-bit significand aside) of the original.
  for (const bool tied : {true, false}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    auto m = tiny_model();
    m.config.tied_embeddings = tied;
    if (tied) m.lm_head = Matrix{};
    const auto embeddings = m.tok_embeddings, head = m.lm_head;
    QuantConfig cfg = plan_preset("none").quant;
    cfg.classifier_bits = 8;
    const auto stats = quantize_weights(m, {}, cfg, {});
    ASSERT_EQ(stats.size(), 1u);
    EXPECT_EQ(stats[0].module, "lm_head");
    EXPECT_EQ(stats[0].layer, -1);
    EXPECT_EQ(m.config.tied_embeddings, tied);
    auto check = [](const Matrix& q, const Matrix& w) {
      ASSERT_EQ(q.rows, w.rows);
      for (int64_t r = 0; r < q.rows; ++r) {
        float amax = 0;
        for (int64_t c = 0; c < q.cols; ++c) amax = std::max(amax, std::fabs(w.row(r)[c]));
        std::set<float> levels(q.row(r), q.row(r) + q.cols);
        EXPECT_LE(levels.size(), 255u);
        for (int64_t c = 0; c < q.cols; ++c) EXPECT_LE(std::fabs(q.row(r)[c] - w.row(r)[c]), amax / 127.0 * 0.5001 + 1e-6);
      }
    };
    check(m.tok_embeddings, embeddings);
    if (!tied) check(m.lm_head, head);
    EXPECT_NE(std::vector<float>(m.tok_embeddings.data.begin(), m.tok_embeddings.data.end()),
              std::vector<float>(embeddings.data.begin(), embeddings.data.end()));
    EXPECT_GT(stats[0].rel_weight_error, 0.0);
    EXPECT_LT(stats[0].rel_weight_error, 0.05);  // planted outlier columns (20-100x) widen each row's grid
    cfg.classifier_bits = 9;
    EXPECT_THROW(quantize_weights(m, {}, cfg, {}), Error);
  }
}

TEST(Calibration, TextIsTokenizedWholeWithBos) {
  QUAROT_REQUIRE_DATA("stories260K/tok512.model");
  const auto tok = load_tokenizer(data_file("stories260K/tok512.model"));
  TempDir dir;
  const std::string text = dir / "calib.txt";
  {
    std::ofstream f(text);
    f << "Once upon a time, there was a little girl.\r\nShe liked to play.\n";
  }
  const auto seqs = read_calibration(text, tok.get(), 512);
  ASSERT_EQ(seqs.size(), 1u);
  EXPECT_EQ(seqs[0][0], tok->bos_id());
  const auto expect = tok->encode("Once upon a time, there was a little girl.\nShe liked to play.\n");  // CRLF -> LF
  EXPECT_EQ(std::vector<int>(seqs[0].begin() + 1, seqs[0].end()), expect);
  EXPECT_THROW(read_calibration(text, nullptr, 512), Error);   // text needs a tokenizer
  // More tokens than the model has rows: refused; fewer (a padded embedding) is fine.
  EXPECT_NE(error_of([&] { read_calibration(text, tok.get(), 256); }).find("512 tokens, more than the model's 256"), std::string::npos);
  EXPECT_EQ(read_calibration(text, tok.get(), 600), seqs);
  EXPECT_THROW(read_calibration(dir / "missing.ids", nullptr, 512), Error);
}

TEST(Calibration, QwenTextGetsNoBosAndFitsThePaddedEmbedding) {
  QUAROT_REQUIRE_DATA("tokenizers/qwen2/Qwen3.tokenizer.json");
  const auto tok = load_tokenizer(data_file("tokenizers/qwen2/Qwen3.tokenizer.json"));
  ASSERT_EQ(tok->bos_id(), -1);
  ASSERT_EQ(tok->vocab_size(), 151669);
  TempDir dir;
  const std::string text = dir / "calib.txt";
  {
    std::ofstream f(text);
    f << "Hello world, this is Qwen.\n";
  }
  const auto seqs = read_calibration(text, tok.get(), 151936);  // Qwen3's embedding: 151,936 rows
  ASSERT_EQ(seqs.size(), 1u);
  EXPECT_EQ(seqs[0], tok->encode("Hello world, this is Qwen.\n"));  // no -1 in front
  EXPECT_THROW(read_calibration(text, tok.get(), 151000), Error);
}
