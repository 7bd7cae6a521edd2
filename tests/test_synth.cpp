// Synthetic checkpoints: deterministic from the seed, real shapes, planted outliers that are
// really there.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/synth.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

TEST(Synth, PresetsHaveTheRealShapes) {
  const auto l2 = synth_preset("llama2-7b-layer").config;
  EXPECT_EQ(l2.hidden, 4096);
  EXPECT_EQ(l2.intermediate, 11008);
  EXPECT_EQ(l2.n_heads, 32);
  EXPECT_EQ(l2.n_kv_heads, 32);
  EXPECT_EQ(l2.vocab, 32000);
  const auto l3 = synth_preset("llama3-8b-layer").config;
  EXPECT_EQ(l3.intermediate, 14336);
  EXPECT_EQ(l3.n_kv_heads, 8);
  EXPECT_EQ(l3.vocab, 128256);
  const auto q = synth_preset("qwen2-small").config;
  EXPECT_EQ(q.family, Family::Qwen2);
  EXPECT_EQ(q.hidden, 896);
  EXPECT_EQ(q.intermediate, 4864);
  EXPECT_EQ(q.n_heads, 14);
  EXPECT_EQ(q.n_kv_heads, 2);
  EXPECT_EQ(q.head_dim, 64);
  EXPECT_TRUE(q.tied_embeddings && q.q_bias && q.k_bias && q.v_bias && !q.o_bias);
  const auto q3 = synth_preset("qwen3-small").config;  // Qwen3-0.6B
  EXPECT_EQ(q3.family, Family::Qwen3);
  EXPECT_EQ(q3.hidden, 1024);
  EXPECT_EQ(q3.intermediate, 3072);
  EXPECT_EQ(q3.head_dim, 128);
  EXPECT_EQ(q3.q_dim(), 2048);
  EXPECT_EQ(q3.n_kv_heads, 8);
  EXPECT_TRUE(q3.tied_embeddings && q3.qk_norm && !q3.q_bias && !q3.o_bias);
  for (const auto& n : synth_preset_names()) EXPECT_NO_THROW(synth_preset(n).config.validate(n));
  EXPECT_THROW(synth_preset("gpt2"), Error);
}

TEST(Synth, SameSeedSameBitsOtherSeedOtherBits) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 42;
  const auto a = make_synthetic(s), b = make_synthetic(s);
  s.seed = 43;
  const auto c = make_synthetic(s);
  EXPECT_EQ(a.tok_embeddings.data, b.tok_embeddings.data);
  EXPECT_EQ(a.layers[1].w_down.data, b.layers[1].w_down.data);
  EXPECT_NE(a.tok_embeddings.data, c.tok_embeddings.data);
  // Pinned values: a change of generator is a change of every synthetic benchmark.
  EXPECT_EQ(planted_outliers(synth_preset("tiny")).residual_channels.size(), 2u);
}

TEST(Synth, WeightsHaveSensibleStatistics) {
  const auto m = make_synthetic(synth_preset("tiny"));
  double sum = 0, sq = 0;
  const auto& w = m.layers[0].wq.data;
  for (float v : w) {
    sum += v;
    sq += double(v) * v;
  }
  const double mean = sum / double(w.size()), var = sq / double(w.size()) - mean * mean;
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(var * 64.0, 1.0, 0.1);  // std 1/sqrt(fan_in)
  for (float v : m.layers[0].attn_norm) EXPECT_NEAR(v, 1.0, 0.5);
}

TEST(Synth, PlantedOutliersStandOut) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 7;
  const auto m = make_synthetic(s);
  const auto p = planted_outliers(s);
  ASSERT_EQ(p.residual_channels.size(), 2u);
  // Column max |emb| per residual channel: planted channels are >= 20x the median channel.
  std::vector<float> colmax(m.config.hidden, 0.f);
  for (int v = 0; v < m.config.vocab; ++v)
    for (int c = 0; c < m.config.hidden; ++c) colmax[c] = std::max(colmax[c], std::fabs(m.tok_embeddings.row(v)[c]));
  auto sorted = colmax;
  std::sort(sorted.begin(), sorted.end());
  const float median = sorted[sorted.size() / 2];
  for (std::size_t k = 0; k < p.residual_channels.size(); ++k) {
    EXPECT_GE(p.residual_scales[k], 20.f);
    EXPECT_LE(p.residual_scales[k], 100.f);
    EXPECT_GT(colmax[p.residual_channels[k]], 10 * median);
  }
  // up_proj rows of the FFN outlier channels are scaled too.
  for (std::size_t k = 0; k < p.ffn_channels.size(); ++k) {
    const int ch = p.ffn_channels[k];
    double row = 0, other = 0;
    for (int j = 0; j < 64; ++j) {
      row += std::fabs(m.layers[0].w_up.row(ch)[j]);
      other += std::fabs(m.layers[0].w_up.row((ch + 1) % 172)[j]);
    }
    EXPECT_GT(row, 10 * other);
  }
}

TEST(Synth, GqaAndQwenShapesLoadThroughHf) {
  // The real-shape presets with a small vocabulary and width, so the test stays fast under ASan,
  // keep their head structure (GQA 4:1, 7:1; biases; tied).
  TempDir dir;
  SynthSpec s = synth_preset("llama3-8b-layer");
  s.config.hidden = 256;
  s.config.head_dim = 8;
  s.config.intermediate = 896;
  s.config.vocab = 300;
  s.config.bos_id = 1;
  s.config.eos_id = 2;
  save_hf(make_synthetic(s), dir / "l3");
  const auto l3 = load_hf(dir / "l3");
  EXPECT_EQ(l3.layers[0].wk.rows, 8 * 8);
  EXPECT_EQ(l3.config.rope_theta, 500000.0);

  SynthSpec q = synth_preset("qwen2-small");
  q.config.hidden = 112;
  q.config.head_dim = 8;
  q.config.intermediate = 608;
  q.config.vocab = 300;
  q.config.bos_id = q.config.eos_id = 2;
  save_hf(make_synthetic(q), dir / "q");
  const auto qm = load_hf(dir / "q");
  EXPECT_EQ(qm.layers[1].bk.size(), 16u);
  EXPECT_TRUE(qm.lm_head.data.empty());
}
