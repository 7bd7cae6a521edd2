// llama2.c checkpoints and tokenizers, on the real models in the shared data folder.
#include <gtest/gtest.h>

#include <sentencepiece_processor.h>

#include <cstring>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {

// The file's floats in the order MANIFEST.md lists them, read independently of the loader.
struct RawLlama2c {
  int32_t h[7];
  std::vector<float> f;  // everything after the header
};

RawLlama2c read_raw(const std::string& path) {
  const auto bytes = read_bytes(path);
  RawLlama2c r;
  std::memcpy(r.h, bytes.data(), 28);
  r.f.resize((bytes.size() - 28) / 4);
  std::memcpy(r.f.data(), bytes.data() + 28, r.f.size() * 4);
  return r;
}

void expect_matches_file(const ModelWeights& m, const RawLlama2c& raw) {
  const int64_t d = raw.h[0], ff = raw.h[1], L = raw.h[2], nh = raw.h[3], nkv = raw.h[4];
  const int64_t V = std::abs(raw.h[5]), hd = d / nh, kv = nkv * hd;
  std::size_t pos = 0;
  auto same = [&](const float* got, int64_t n, const std::string& what) {
    ASSERT_LE(pos + n, raw.f.size()) << what;
    ASSERT_EQ(std::memcmp(got, raw.f.data() + pos, n * 4), 0) << what;
    pos += n;
  };
  same(m.tok_embeddings.data.data(), V * d, "embeddings");
  for (int l = 0; l < L; ++l) same(m.layers[l].attn_norm.data(), d, "attn_norm");
  for (int l = 0; l < L; ++l) same(m.layers[l].wq.data.data(), d * d, "wq");
  for (int l = 0; l < L; ++l) same(m.layers[l].wk.data.data(), kv * d, "wk");
  for (int l = 0; l < L; ++l) same(m.layers[l].wv.data.data(), kv * d, "wv");
  for (int l = 0; l < L; ++l) same(m.layers[l].wo.data.data(), d * d, "wo");
  for (int l = 0; l < L; ++l) same(m.layers[l].ffn_norm.data(), d, "ffn_norm");
  for (int l = 0; l < L; ++l) same(m.layers[l].w_gate.data.data(), ff * d, "w1");
  for (int l = 0; l < L; ++l) same(m.layers[l].w_down.data.data(), d * ff, "w2");
  for (int l = 0; l < L; ++l) same(m.layers[l].w_up.data.data(), ff * d, "w3");
  same(m.final_norm.data(), d, "final norm");
  pos += std::size_t(raw.h[6]) * hd;  // freq_cis
  EXPECT_EQ(pos, raw.f.size()) << "tied model: nothing after freq_cis";
}

struct Expected {
  const char* file;
  int hidden, inter, layers, heads, kv_heads, head_dim, vocab, seq;
};

}  // namespace

class RealModels : public ::testing::TestWithParam<Expected> {};

TEST_P(RealModels, LoadWithRightConfigAndExactWeights) {
  const Expected e = GetParam();
  QUAROT_REQUIRE_DATA(e.file);
  const auto m = load_llama2c(data_file(e.file));
  const auto& c = m.config;
  EXPECT_EQ(c.hidden, e.hidden);
  EXPECT_EQ(c.intermediate, e.inter);
  EXPECT_EQ(c.n_layers, e.layers);
  EXPECT_EQ(c.n_heads, e.heads);
  EXPECT_EQ(c.n_kv_heads, e.kv_heads);
  EXPECT_EQ(c.head_dim, e.head_dim);
  EXPECT_EQ(c.vocab, e.vocab);
  EXPECT_EQ(c.max_positions, e.seq);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(c.rope_layout, RopeLayout::Interleaved);
  EXPECT_DOUBLE_EQ(c.rms_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_TRUE(m.lm_head.data.empty());
  expect_matches_file(m, read_raw(data_file(e.file)));
}

INSTANTIATE_TEST_SUITE_P(
    SharedData, RealModels,
    ::testing::Values(Expected{"stories260K/stories260K.bin", 64, 172, 5, 8, 4, 8, 512, 512},
                      Expected{"salty260K/salty260K.bin", 64, 192, 5, 8, 4, 8, 512, 256},
                      Expected{"aidreams260K/aidreams260K.bin", 64, 172, 4, 4, 4, 16, 512, 128}),
    [](const auto& param_info) {
      const std::string file = param_info.param.file;
      return file.substr(0, file.find('/'));
    });

TEST(Llama2c, UntiedClassifierFollowsFreqCis) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  // Make an untied copy: negative vocab, classifier appended after freq_cis.
  auto bytes = read_bytes(data_file("stories260K/stories260K.bin"));
  int32_t vocab;
  std::memcpy(&vocab, bytes.data() + 20, 4);
  const int32_t neg = -vocab;
  std::memcpy(bytes.data() + 20, &neg, 4);
  std::vector<float> cls(std::size_t(vocab) * 64);
  for (std::size_t i = 0; i < cls.size(); ++i) cls[i] = float(i % 97) * 0.01f;
  const auto* p = reinterpret_cast<const uint8_t*>(cls.data());
  bytes.insert(bytes.end(), p, p + cls.size() * 4);
  const auto m = parse_llama2c(bytes, "untied.bin");
  EXPECT_FALSE(m.config.tied_embeddings);
  EXPECT_TRUE(std::equal(m.lm_head.data.begin(), m.lm_head.data.end(), cls.begin(), cls.end()));
}

TEST(Llama2c, BadInputsAreOneLineErrorsNamingTheFile) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const auto good = read_bytes(data_file("stories260K/stories260K.bin"));
  auto expect = [](std::vector<uint8_t> b, const std::string& needle) {
    try {
      parse_llama2c(b, "m.bin");
      FAIL() << needle;
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind("m.bin: ", 0), 0u) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  expect(std::vector<uint8_t>(good.begin(), good.begin() + 20), "shorter than its 28-byte header");
  expect(std::vector<uint8_t>(good.begin(), good.end() - 4), "truncated");
  auto longer = good;
  longer.push_back(0);
  expect(longer, "trailing bytes");
  auto bad = good;
  const int32_t minus = -3;
  std::memcpy(bad.data() + 8, &minus, 4);  // n_layers
  expect(bad, "'n_layers' = -3 is out of range");
  bad = good;
  const int32_t three = 3;
  std::memcpy(bad.data() + 16, &three, 4);  // n_kv_heads 3 does not divide 8 heads
  expect(bad, "num_key_value_heads");
  EXPECT_THROW(load_llama2c("/nonexistent/model.bin"), Error);
}

// SentencePiece marks spaces with U+2581; llama2.c's export writes them as plain spaces.
static std::string llama2c_piece(std::string p) {
  const std::string mark = "\xe2\x96\x81";
  for (std::size_t i; (i = p.find(mark)) != std::string::npos;) p.replace(i, mark.size(), " ");
  return p;
}

TEST(Llama2cTokenizer, SharedTokenizersLoad) {
  struct T {
    const char* bin;
    const char* model;  // SentencePiece twin, or nullptr
    std::size_t pieces;
  };
  for (const T t : {T{"stories260K/tok512.bin", "stories260K/tok512.model", 512},
                    T{"aidreams260K/tok512.bin", nullptr, 512},
                    T{"llama2-tokenizer/tokenizer.bin", "llama2-tokenizer/tokenizer.model", 32000}}) {
    if (!fs::exists(data_file(t.bin))) GTEST_SKIP() << "real data not found: " << data_file(t.bin);
    const auto tok = load_llama2c_tokenizer(data_file(t.bin));
    EXPECT_EQ(tok.pieces.size(), t.pieces) << t.bin;
    EXPECT_EQ(tok.scores.size(), t.pieces);
    if (!t.model || !fs::exists(data_file(t.model))) continue;
    // Same pieces and scores as the SentencePiece model (the control pieces excepted, whose
    // text llama2.c's export rewrites).
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.Load(data_file(t.model)).ok());
    ASSERT_EQ(std::size_t(sp.GetPieceSize()), tok.pieces.size());
    int compared = 0;
    for (int i = 0; i < sp.GetPieceSize(); ++i) {
      if (sp.IsControl(i) || sp.IsUnknown(i)) continue;
      ASSERT_EQ(llama2c_piece(sp.IdToPiece(i)), tok.pieces[i]) << t.bin << " piece " << i;
      ASSERT_EQ(sp.GetScore(i), tok.scores[i]) << t.bin << " piece " << i;
      ++compared;
    }
    EXPECT_GT(compared, int(t.pieces) - 4);
  }
}

TEST(Llama2cTokenizer, RejectsCorruptFiles) {
  std::vector<uint8_t> f = {16, 0, 0, 0};                      // max_token_length 16
  const float score = -1.f;
  const int32_t len = 40;                                      // longer than allowed
  f.insert(f.end(), reinterpret_cast<const uint8_t*>(&score), reinterpret_cast<const uint8_t*>(&score) + 4);
  f.insert(f.end(), reinterpret_cast<const uint8_t*>(&len), reinterpret_cast<const uint8_t*>(&len) + 4);
  EXPECT_THROW(parse_llama2c_tokenizer(f, "tok.bin"), Error);
  f.resize(10);
  EXPECT_THROW(parse_llama2c_tokenizer(f, "tok.bin"), Error);
  EXPECT_THROW(parse_llama2c_tokenizer(std::vector<uint8_t>{1, 0}, "tok.bin"), Error);
}
