// Hugging Face folders: conversion from llama2.c (RoPE permutation), dtype and shard round
// trips, config parsing, and every bad-input class.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/safetensors.hpp"
#include "quarot/synth.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
using nlohmann::json;

namespace {

void expect_same_config(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.family, b.family);
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.intermediate, b.intermediate);
  EXPECT_EQ(a.n_layers, b.n_layers);
  EXPECT_EQ(a.n_heads, b.n_heads);
  EXPECT_EQ(a.n_kv_heads, b.n_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab, b.vocab);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rms_eps, b.rms_eps);
  EXPECT_EQ(a.tied_embeddings, b.tied_embeddings);
  EXPECT_EQ(a.q_bias, b.q_bias);
  EXPECT_EQ(a.k_bias, b.k_bias);
  EXPECT_EQ(a.v_bias, b.v_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.qk_norm, b.qk_norm);
  EXPECT_EQ(a.max_positions, b.max_positions);
  EXPECT_EQ(a.bos_id, b.bos_id);
  EXPECT_EQ(a.eos_id, b.eos_id);
  EXPECT_EQ(a.rope_layout, b.rope_layout);
}

void expect_same_weights(const ModelWeights& a, const ModelWeights& b) {
  std::vector<std::vector<float>> av;
  for_each_tensor(a, [&](const TensorRef& t) { av.emplace_back(t.data.begin(), t.data.end()); });
  std::size_t i = 0;
  for_each_tensor(b, [&](const TensorRef& t) {
    ASSERT_LT(i, av.size());
    ASSERT_TRUE(std::equal(t.data.begin(), t.data.end(), av[i].begin(), av[i].end())) << t.name;
    ++i;
  });
  EXPECT_EQ(i, av.size());
}

ModelWeights tiny(uint64_t seed = 1, Family f = Family::Llama) {
  SynthSpec s = synth_preset("tiny");
  s.seed = seed;
  s.config.family = f;
  if (f == Family::Qwen2) {
    s.config.q_bias = s.config.k_bias = s.config.v_bias = true;
    s.config.tied_embeddings = true;
  }
  return make_synthetic(s);
}

// Rounds every weight to the nearest value of `t`, so that writing as `t` is exact.
void round_to(ModelWeights& m, DType t) {
  for_each_tensor(m, [&](const TensorRef& r) {
    std::vector<uint8_t> buf(r.data.size() * dtype_size(t));
    convert_from_f32(t, r.data.data(), r.data.size(), buf.data());
    convert_to_f32(t, buf.data(), r.data.size(), r.data.data());
  });
}

}  // namespace

TEST(HfFolder, Stories260KConvertsAndBothPathsDescribeTheSameModel) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  TempDir dir;
  const auto orig = load_llama2c(data_file("stories260K/stories260K.bin"));
  save_hf(orig, dir / "hf");
  auto hf = load_model(dir / "hf");
  EXPECT_EQ(hf.config.rope_layout, RopeLayout::Half);
  EXPECT_EQ(parameter_count(hf), parameter_count(orig));
  // The q/k rows really were permuted (RoPE pairs (2i,2i+1) -> (i, i+d/2)) ...
  EXPECT_NE(hf.layers[0].wq.data, orig.layers[0].wq.data);
  EXPECT_EQ(0, std::memcmp(hf.layers[0].wq.row(1), orig.layers[0].wq.row(2), 64 * 4));  // head 0: row 1 <- pair 1 first
  EXPECT_EQ(0, std::memcmp(hf.layers[0].wq.row(4), orig.layers[0].wq.row(1), 64 * 4));  // row d/2 <- pair 0 second
  EXPECT_EQ(hf.layers[0].wv.data, orig.layers[0].wv.data);
  // ... and undoing the permutation gives the original model back, bit for bit.
  convert_rope_layout(hf, RopeLayout::Interleaved);
  expect_same_config(hf.config, orig.config);
  expect_same_weights(hf, orig);
}

TEST(HfFolder, DtypeAndShardRoundTripsAreExact) {
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (uint64_t shard : {uint64_t(0), uint64_t(40000)}) {
      TempDir dir;
      auto m = tiny(3);
      round_to(m, t);
      HfWriteOptions o;
      o.dtype = t;
      o.max_shard_bytes = shard;
      save_hf(m, dir / "out", o);
      EXPECT_EQ(fs::exists(dir / "out/model.safetensors.index.json"), shard != 0);
      const auto back = load_hf(dir / "out");
      EXPECT_EQ(back.source_dtype, t);
      expect_same_config(back.config, m.config);
      expect_same_weights(back, m);
    }
  }
}

TEST(HfFolder, QwenStyleBiasesAndTiedEmbeddingsRoundTrip) {
  TempDir dir;
  const auto m = tiny(5, Family::Qwen2);
  save_hf(m, dir / "q", {DType::F32, 30000, {}});
  const auto back = load_hf(dir / "q");
  EXPECT_TRUE(back.config.q_bias && back.config.k_bias && back.config.v_bias && !back.config.o_bias);
  EXPECT_TRUE(back.config.tied_embeddings);
  EXPECT_EQ(back.config.family, Family::Qwen2);
  expect_same_weights(back, m);
}

TEST(HfFolder, WritingIsDeterministicAndResharding) {
  TempDir dir;
  const auto m = tiny(9);
  save_hf(m, dir / "a", {DType::F16, 0, {}});
  save_hf(m, dir / "b", {DType::F16, 0, {}});
  EXPECT_EQ(read_bytes(dir / "a/model.safetensors"), read_bytes(dir / "b/model.safetensors"));
  EXPECT_EQ(read_bytes(dir / "a/config.json"), read_bytes(dir / "b/config.json"));
  // Rewriting sharded removes the stale single file, so the folder stays unambiguous.
  save_hf(m, dir / "a", {DType::F16, 50000, {}});
  EXPECT_FALSE(fs::exists(dir / "a/model.safetensors"));
  expect_same_weights(load_hf(dir / "a"), load_hf(dir / "b"));
}

TEST(HfFolder, RefusesToOverwriteItsInput) {
  TempDir dir;
  const auto m = tiny(2);
  save_hf(m, dir / "in");
  const auto before = read_bytes(dir / "in/model.safetensors");
  const std::string msg = error_of([&] { save_hf(m, dir / "in", {DType::F32, 0, {dir / "in/model.safetensors"}}); });
  EXPECT_NE(msg.find("refusing to overwrite an input file"), std::string::npos) << msg;
  EXPECT_EQ(read_bytes(dir / "in/model.safetensors"), before);
}

// Builds a folder from the tiny model, then lets `edit` damage it.
class BadFolder : public ::testing::Test {
 protected:
  TempDir dir;
  std::string path = dir / "m";
  void SetUp() override { save_hf(tiny(4), path, {DType::F32, 0, {}}); }
  json config() { return json::parse(read_text_file(path + "/config.json")); }
  void set_config(const json& j) { write_file_atomic(path + "/config.json", j.dump()); }
  // Rewrites model.safetensors with `edit` applied to the list of tensors.
  void rewrite(const std::function<void(std::vector<TensorToWrite>&, std::vector<std::vector<float>>&)>& edit) {
    const auto m = load_hf(path);
    std::vector<std::vector<float>> store;
    std::vector<TensorToWrite> ts;
    for_each_tensor(m, [&](const TensorRef& t) { store.emplace_back(t.data.begin(), t.data.end()); });
    std::size_t i = 0;
    for_each_tensor(m, [&](const TensorRef& t) { ts.push_back({t.name, DType::F32, t.shape, store[i++].data(), DType::F32}); });
    edit(ts, store);
    write_safetensors(path + "/model.safetensors", ts, {});
  }
  std::string load_error() {
    return error_of([&] { load_hf(path); });
  }
};

TEST_F(BadFolder, MissingFolderOrFiles) {
  EXPECT_NE(error_of([&] { load_model(dir / "nope"); }).find("nope: no such file or folder"), std::string::npos);
  fs::remove(path + "/model.safetensors");
  EXPECT_NE(load_error().find("no model.safetensors or model.safetensors.index.json"), std::string::npos);
  fs::remove(path + "/config.json");
  EXPECT_NE(load_error().find("no config.json"), std::string::npos);
}

TEST_F(BadFolder, ConfigTensorMismatchMissingUnexpectedDtype) {
  auto j = config();
  j["intermediate_size"] = 100;
  set_config(j);
  EXPECT_NE(load_error().find("has shape [172,64] but config.json implies [100,64]"), std::string::npos) << load_error();
  j["intermediate_size"] = 172;
  set_config(j);
  rewrite([](auto& ts, auto&) { ts.erase(ts.begin() + 3); });
  EXPECT_NE(load_error().find("missing tensor 'model.layers.0.self_attn.k_proj.weight'"), std::string::npos) << load_error();
  fs::remove(path + "/model.safetensors");
  save_hf(tiny(4), path);
  rewrite([](auto& ts, auto& store) {
    store.push_back({1.f, 2.f});
    ts.push_back({"model.layers.0.mlp.experts.0.weight", DType::F32, {2}, store.back().data(), DType::F32});
  });
  EXPECT_NE(load_error().find("unexpected tensor 'model.layers.0.mlp.experts.0.weight'"), std::string::npos) << load_error();
  save_hf(tiny(4), path);
  std::vector<int8_t> ints(64, 1);
  rewrite([&](auto& ts, auto&) { ts[1] = {ts[1].name, DType::I8, ts[1].shape, ints.data(), DType::I8}; });
  EXPECT_NE(load_error().find("has dtype I8"), std::string::npos) << load_error();
}

TEST_F(BadFolder, CorruptOrTruncatedSafetensors) {
  auto bytes = read_bytes(path + "/model.safetensors");
  write_bytes(path + "/model.safetensors", std::vector<uint8_t>(bytes.begin(), bytes.end() - 100));
  const std::string e = load_error();
  EXPECT_NE(e.find("model.safetensors: "), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
  bytes[12] = 0xff;  // inside the JSON header
  write_bytes(path + "/model.safetensors", bytes);
  EXPECT_NE(load_error().find("not valid UTF-8 JSON"), std::string::npos) << load_error();
}

TEST_F(BadFolder, ShardIndexProblems) {
  save_hf(tiny(4), path, {DType::F32, 40000, {}});
  const std::string index = path + "/model.safetensors.index.json";
  auto j = json::parse(read_text_file(index));
  const std::string first = j["weight_map"]["model.embed_tokens.weight"];
  // A tensor the index places in the wrong shard.
  auto moved = j;
  moved["weight_map"]["model.norm.weight"] = first;
  write_file_atomic(index, moved.dump());
  EXPECT_NE(load_error().find("tensor 'model.norm.weight' listed in the index is not in this shard"), std::string::npos)
      << load_error();
  // A shard that is missing.
  auto missing = j;
  missing["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors";
  write_file_atomic(index, missing.dump());
  EXPECT_NE(load_error().find("lists shard 'model-00099-of-00099.safetensors', which is missing"), std::string::npos);
  // A shard the index does not mention is ignored; a tensor in two shards is a duplicate.
  write_file_atomic(index, j.dump());
  const std::string second = j["weight_map"]["lm_head.weight"];
  fs::copy_file(path + "/" + second, path + "/copy.safetensors");
  auto dup = j;
  dup["weight_map"]["extra"] = "copy.safetensors";
  write_file_atomic(index, dup.dump());
  EXPECT_NE(load_error().find("duplicate tensor 'lm_head.weight'"), std::string::npos) << load_error();
  EXPECT_NE(error_of([] { parse_hf_index("{\"weight_map\": {\"a\": \"../x\"}}", "i.json"); }).find("not a file in the same folder"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_hf_index("[]", "i.json"); }).find("no 'weight_map'"), std::string::npos);
}

TEST(HfConfig, UnsupportedArchitecturesNameTheField) {
  const json base = {{"model_type", "llama"}, {"hidden_size", 64}, {"intermediate_size", 128},
                     {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 100}};
  auto err = [&](const json& j) { return error_of([&] { parse_hf_config(j.dump(), "config.json"); }); };
  EXPECT_EQ(err(base), "(no error)");
  auto j = base;
  j["model_type"] = "mixtral";
  EXPECT_NE(err(j).find("'model_type' 'mixtral' is not a supported architecture"), std::string::npos);
  j = base;
  j["num_local_experts"] = 8;
  EXPECT_NE(err(j).find("'num_local_experts' is set: mixture-of-experts"), std::string::npos);
  j = base;
  j["model_type"] = "mistral";
  j["sliding_window"] = 4096;
  j["max_position_embeddings"] = 32768;
  // Mistral-7B v0.1: a 4096 window in a 32768 context runs up to 4096 positions, where the
  // window changes nothing.
  EXPECT_EQ(parse_hf_config(j.dump(), "c").max_positions, 4096);
  j["use_sliding_window"] = false;
  EXPECT_EQ(parse_hf_config(j.dump(), "c").max_positions, 32768);
  j.erase("use_sliding_window");
  j["sliding_window"] = 0;
  EXPECT_NE(err(j).find("'sliding_window' must be positive"), std::string::npos);
  j["sliding_window"] = 32768;
  EXPECT_EQ(err(j), "(no error)");
  j = base;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(err(j).find("'rope_scaling.rope_type' 'yarn' is not supported"), std::string::npos);
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(parse_hf_config(j.dump(), "c").rope_scaling.type, RopeScalingType::Linear);
  j = base;
  j["hidden_act"] = "gelu";
  EXPECT_NE(err(j).find("'hidden_act'"), std::string::npos);
  j = base;
  j["num_key_value_heads"] = 3;
  EXPECT_NE(err(j).find("'num_key_value_heads' (3) must divide"), std::string::npos);
  j = base;
  j["hidden_size"] = "64";
  EXPECT_NE(err(j).find("'hidden_size' must be an integer"), std::string::npos);
  j = base;
  j.erase("vocab_size");
  EXPECT_NE(err(j).find("'vocab_size' is missing"), std::string::npos);
  EXPECT_NE(error_of([] { parse_hf_config("{not json", "config.json"); }).find("config.json: not valid JSON"), std::string::npos);
}

TEST(HfConfig, Llama3AndQwen2Fields) {
  const json l3 = {{"model_type", "llama"}, {"hidden_size", 4096}, {"intermediate_size", 14336},
                   {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
                   {"vocab_size", 128256}, {"rope_theta", 500000.0}, {"rms_norm_eps", 1e-5},
                   {"bos_token_id", 128000}, {"eos_token_id", {128001, 128008, 128009}},
                   {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                     {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}};
  const auto c = parse_hf_config(l3.dump(), "c");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.eos_id, 128001);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::Llama3);
  EXPECT_FALSE(c.q_bias);
  const auto back = parse_hf_config(hf_config_json(c, "bfloat16"), "c2");
  expect_same_config(back, c);
  EXPECT_EQ(back.rope_scaling.factor, 8.0);
}
