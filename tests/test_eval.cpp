// Evaluation protocols, perplexity and KL divergence.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/eval.hpp"
#include "quarot/synth.hpp"
#include "quarot/tokenizer.hpp"
#include "reference_forward.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

TEST(Eval, WindowsFollowTheProtocols) {
  std::vector<int> stream(1000);
  for (int i = 0; i < 1000; ++i) stream[i] = i % 50 + 3;
  const auto paper = make_windows(stream, Protocol::Paper, 128, 1, 0);
  ASSERT_EQ(paper.size(), 7u);  // 1000 / 128, tail dropped
  EXPECT_EQ(paper[1].tokens[0], stream[128]);
  EXPECT_EQ(paper[0].first_scored, 0);
  const auto lcpp = make_windows(stream, Protocol::LlamaCpp, 128, 1, 3);
  ASSERT_EQ(lcpp.size(), 3u);  // --chunks
  EXPECT_EQ(lcpp[2].tokens[0], 1);  // BOS replaces the first token
  EXPECT_EQ(lcpp[2].tokens[1], stream[257]);
  EXPECT_EQ(lcpp[2].first_scored, 64);
  const auto per_line = windows_per_sequence({{1, 2, 3}, {1, 5}, {7}}, Protocol::Paper, 128, 1, 0);
  EXPECT_EQ(per_line.size(), 2u);  // a one-token line has no target
}

TEST(Eval, PerplexityEqualsTheReferenceNll) {
  SynthSpec s = synth_preset("tiny");
  s.config.vocab = 64;
  s.config.n_layers = 1;
  const auto m = make_synthetic(s);
  std::vector<int> stream(70);
  for (int i = 0; i < 70; ++i) stream[i] = (i * 7 + 3) % 64;
  const auto windows = make_windows(stream, Protocol::Paper, 32, 1, 0);
  Transformer<float> model(m, 32);
  const auto r = evaluate(model, windows, Protocol::Paper);
  // exp(mean over windows of each window's mean NLL), from the fp64 reference.
  double sum = 0;
  for (const auto& w : windows) {
    const auto ref = reference_logits(m, w.tokens);
    double nll = 0;
    for (int j = 0; j + 1 < 32; ++j) {
      double mx = -1e300, z = 0;
      for (double v : ref[j]) mx = std::max(mx, v);
      for (double v : ref[j]) z += std::exp(v - mx);
      nll += mx + std::log(z) - ref[j][w.tokens[j + 1]];
    }
    sum += nll / 31;
  }
  EXPECT_EQ(r.windows, 2);
  EXPECT_EQ(r.tokens_scored, 62);
  EXPECT_NEAR(r.ppl, std::exp(sum / 2), 1e-5 * r.ppl);
}

TEST(Eval, KldAgainstItselfIsZeroAndAgainstAnotherModelIsNot) {
  SynthSpec s = synth_preset("tiny");
  s.config.n_layers = 1;
  const auto a = make_synthetic(s);
  s.seed = 99;
  const auto b = make_synthetic(s);
  std::vector<int> stream(200);
  for (int i = 0; i < 200; ++i) stream[i] = (i * 13 + 1) % 512;
  const auto windows = make_windows(stream, Protocol::LlamaCpp, 64, 1, 0);
  Transformer<float> ma(a, 64), ma2(a, 64), mb(b, 64);
  const auto self = evaluate(ma, windows, Protocol::LlamaCpp, &ma2);
  EXPECT_EQ(self.kld_mean, 0.0);
  EXPECT_EQ(self.kld_p99, 0.0);
  EXPECT_EQ(self.top1_agreement, 1.0);
  EXPECT_GT(self.ppl_stderr, 0.0);
  const auto other = evaluate(mb, windows, Protocol::LlamaCpp, &ma);
  EXPECT_GT(other.kld_mean, 0.01);
  EXPECT_LT(other.top1_agreement, 1.0);
  EXPECT_GE(other.kld_p99, other.kld_mean);
}

// evaluate_against runs the base once per window for several models: the figures of evaluate()
// with that base, each of them, and the base's own.
TEST(Eval, OneBasePassGivesEachModelsFiguresAgainstIt) {
  SynthSpec s = synth_preset("tiny");
  s.config.n_layers = 1;
  const auto a = make_synthetic(s);
  s.seed = 99;
  const auto b = make_synthetic(s);
  s.seed = 7;
  const auto c = make_synthetic(s);
  std::vector<int> stream(200);
  for (int i = 0; i < 200; ++i) stream[i] = (i * 13 + 1) % 512;
  for (const Protocol p : {Protocol::Paper, Protocol::LlamaCpp}) {
    const auto windows = make_windows(stream, p, 64, 1, 0);
    Transformer<float> ma(a, 64), mb(b, 64), mc(c, 64);
    const auto base = evaluate(ma, windows, p);
    const auto vb = evaluate(mb, windows, p, &ma), vc = evaluate(mc, windows, p, &ma);
    int calls = 0;
    Transformer<float>* models[] = {&mb, &mc};
    const auto all = evaluate_against(ma, models, windows, p, [&](int, int, const EvalResult&) { ++calls; });
    ASSERT_EQ(all.size(), 3u);
    EXPECT_EQ(calls, int(windows.size()));
    EXPECT_FALSE(all[0].has_kld);
    EXPECT_EQ(all[0].window_nll, base.window_nll);
    EXPECT_EQ(all[0].ppl, base.ppl);
    EXPECT_EQ(all[0].ppl_stderr, base.ppl_stderr);
    for (const auto& [got, want] : {std::pair{all[1], vb}, std::pair{all[2], vc}}) {
      EXPECT_TRUE(got.has_kld);
      EXPECT_EQ(got.window_nll, want.window_nll);
      EXPECT_EQ(got.ppl, want.ppl);
      EXPECT_EQ(got.kld_mean, want.kld_mean);
      EXPECT_EQ(got.kld_p99, want.kld_p99);
      EXPECT_EQ(got.top1_agreement, want.top1_agreement);
      EXPECT_GT(got.kld_mean, 0.01);
    }
  }
}

TEST(Eval, Stories260KTinyStoriesPerplexity) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  const auto m = load_llama2c(data_file("stories260K/stories260K.bin"));
  std::vector<int> stream;
  for (const auto& s : read_ids_file(data_file("tinystories/validation_100.tok512.ids"), 512))
    stream.insert(stream.end(), s.begin(), s.end());
  ASSERT_EQ(stream.size(), 39344u);
  const auto windows = make_windows(stream, Protocol::Paper, 512, 1, 0);
  EXPECT_EQ(windows.size(), 76u);
  Transformer<float> model(m, 512);
  const auto r = evaluate(model, windows, Protocol::Paper);
  // A 260K-parameter model on its own domain: measured 3.9138 (fp32). A broken forward pass
  // (wrong RoPE layout, mask, norm) lands far from it.
  EXPECT_NEAR(r.ppl, 3.9138, 0.001);
}

TEST(EvalTool, PrintsPerplexityWritesJsonAndFailsCleanly) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  TempDir dir;
  const std::string model = data_file("stories260K/stories260K.bin");
  auto r = run_tool("quarot-eval", model + " --ids " + data_file("tinystories/validation_100.tok512.ids") +
                                       " --ctx 512 --chunks 4 --kld-base " + model + " --json " + (dir / "e.json"));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("[4/4] ppl so far"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("perplexity:"), std::string::npos);
  const auto j = nlohmann::json::parse(read_text_file(dir / "e.json"));
  EXPECT_EQ(j["windows"], 4);
  EXPECT_EQ(j["kld"]["mean"], 0.0);
  EXPECT_EQ(j["kld"]["top1_agreement"], 1.0);
  EXPECT_EQ(j["token_source"]["sha256"].get<std::string>().size(), 64u);
  // The same windows from the text and its tokenizer give the same perplexity.
  r = run_tool("quarot-eval", model + " --text " + data_file("tinystories/validation_100.txt") + " --tokenizer " +
                                  data_file("stories260K/tok512.model") +
                                  " --split-docs '<|endoftext|>' --ctx 512 --chunks 4 --progress none --json " + (dir / "t.json"));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(nlohmann::json::parse(read_text_file(dir / "t.json"))["perplexity"], j["perplexity"]);
  // Bad input.
  EXPECT_EQ(run_tool("quarot-eval", model).exit_code, 2);  // no token source
  EXPECT_EQ(run_tool("quarot-eval", model + " --text x.txt").exit_code, 2);  // no tokenizer
  write_file_atomic(dir / "bad.ids", "1 2 3 9999\n");
  r = run_tool("quarot-eval", model + " --ids " + (dir / "bad.ids"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("bad.ids: line 1: token id 9999 outside the vocabulary"), std::string::npos) << r.stderr_text;
  EXPECT_FALSE(fs::exists(dir / "bad.json"));
}
