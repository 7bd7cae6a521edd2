// Hostile packed files (issue 20): small files that used to drive the reader into huge
// allocations, minutes of work, or silently wrong results. Each must be refused at once with one
// line naming the file and the field (or tensor) at fault.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "quarot/error.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/rotate.hpp"
#include "quarot/synth.hpp"
#include "pipeline_support.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
using json = nlohmann::json;

namespace {

// A small valid packed file (tiny synthetic model, RTN, rotated unless `intermediate` asks for
// an unrotated model of that FFN width; INT8 embedding/classifier tables, as packed files have
// by default, or fp32 ones with classifier_bits 16).
std::string make_packed(const TempDir& dir, int intermediate = 0, int classifier_bits = 8) {
  SynthSpec s = synth_preset("tiny");
  s.seed = 5;
  s.config.vocab = 96;
  if (intermediate) s.config.intermediate = intermediate;
  const std::string path = dir / "good.q4.safetensors";
  PlanOptions o;
  o.model = saved_model(make_synthetic(s), dir / "good.in");
  o.output = path;
  o.preset = "w4a4kv4-rtn";
  o.kv_clip = plan_preset(o.preset).quant.act.kv_clip;  // the preset's (head_dim 8 would choose 1.0)
  o.no_rotate = intermediate != 0;
  o.classifier_bits = classifier_bits;
  run_plan(o);
  return path;
}

// Rewrites `good` into `bad` with one metadata value changed (tensors kept as they are).
void rewrite_metadata(const std::string& good, const std::string& bad, const std::string& key, const std::string& value) {
  const SafetensorsFile f(good);
  std::vector<TensorToWrite> t;
  for (const auto& info : f.header().tensors) t.push_back({info.name, info.dtype, info.shape, f.data(info).data(), info.dtype});
  auto meta = f.header().metadata;
  meta[key] = value;
  write_safetensors(bad, t, meta);
}

std::string open_error(const std::string& path, bool verify_crc = true) {
  try {
    PackedModel m(path, verify_crc);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string metadata_value(const std::string& path, const std::string& key) { return SafetensorsFile(path).header().metadata.at(key); }

// One line, naming the file and every one of `names`, within a second.
void expect_refused(const std::string& path, const std::vector<std::string>& names, bool verify_crc = true) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = open_error(path, verify_crc);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_FALSE(e.empty()) << path << " was accepted";
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_NE(e.find(path), std::string::npos) << e;
  for (const auto& n : names) EXPECT_NE(e.find(n), std::string::npos) << "no '" << n << "' in: " << e;
  EXPECT_LT(s, 5.0) << e;
}

}  // namespace

TEST(PackedHostile, DeeplyNestedMetadataIsRefusedBeforeParsingNamingTheKey) {
  TempDir dir;
  const std::string good = make_packed(dir), bad = dir / "bad.q4.safetensors";
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  for (const char* key : {"recipe", "quarot.rotation", "quarot.crc32", "qdec", "config"}) {
    rewrite_metadata(good, bad, key, deep);
    expect_refused(bad, {std::string("'") + key + "'", "nested deeper than 64"});
  }
}

TEST(PackedHostile, ConfigWidthsTheFileDoesNotHoldAreRefusedBeforeAllocating) {
  TempDir dir;
  const std::string good = make_packed(dir), bad = dir / "bad.q4.safetensors";
  json c = json::parse(metadata_value(good, "config"));
  // 4096 layers of width 2^20: 32 GiB of norms were allocated before any tensor was looked at.
  json big = c;
  big["num_hidden_layers"] = 4096;
  big["hidden_size"] = 1 << 20;
  rewrite_metadata(good, bad, "config", big.dump());
  expect_refused(bad, {"'hidden_size' 1048576", "the file holds"});
  json layers = c;
  layers["num_hidden_layers"] = 4096;
  rewrite_metadata(good, bad, "config", layers.dump());
  expect_refused(bad, {"'num_hidden_layers' = 4096", "the file holds"});
  json vocab = c;
  vocab["vocab_size"] = 1 << 24;
  rewrite_metadata(good, bad, "config", vocab.dump());
  expect_refused(bad, {"'vocab_size'", "the file holds"});
}

TEST(PackedHostile, RotationSizesMustBeTheConfigsWidthsAndCheapToBuild) {
  TempDir dir;
  const std::string good = make_packed(dir), bad = dir / "bad.q4.safetensors";
  json r = json::parse(metadata_value(good, "quarot.rotation"));
  ASSERT_NE(r["online"]["r4_intermediate"].get<int>(), 0);
  r["online"]["r4_intermediate"] = 4001;
  rewrite_metadata(good, bad, "quarot.rotation", r.dump());
  expect_refused(bad, {"r4_intermediate = 4001", "'intermediate_size' (172)"});
  r["online"]["r4_intermediate"] = 172.5;
  rewrite_metadata(good, bad, "quarot.rotation", r.dump());
  expect_refused(bad, {"r4_intermediate must be an integer"});

  // A model whose FFN width really is 4001 (a prime: no Hadamard construction) and a record that
  // asks for R4 on it: building the dense 4001 x 4001 base took minutes; now refused at once.
  TempDir dir2;
  const std::string wide = make_packed(dir2, 4001);
  const std::string wide_bad = dir2 / "bad.q4.safetensors";
  json w = json::parse(metadata_value(good, "quarot.rotation"));
  w["online"]["r4_intermediate"] = 4001;
  w.erase("constructions");
  rewrite_metadata(wide, wide_bad, "quarot.rotation", w.dump());
  expect_refused(wide_bad, {"quarot.rotation: r4_intermediate = 4001", "random orthogonal base would be 4001 x 4001"});
  // The rotator refuses the same width, so quarot never writes what it cannot read back.
  ModelConfig c = synth_preset("tiny").config;
  c.intermediate = 4001;
  RotationOptions o;
  o.r4 = true;
  std::string rotator_error;
  try {
    const Rotator rotator(c, o);
  } catch (const Error& e) {
    rotator_error = e.what();
  }
  EXPECT_NE(rotator_error.find("size = 4001 has no Hadamard construction"), std::string::npos) << rotator_error;
}

TEST(PackedHostile, RecipeFieldsAreRangeCheckedNamingTheField) {
  TempDir dir;
  const std::string good = make_packed(dir), bad = dir / "bad.q4.safetensors";
  const json recipe = json::parse(metadata_value(good, "recipe"));
  const std::vector<std::pair<std::string, json>> cases = {
      {"w_bits", 4.5},           {"w_bits", 8},     {"w_group", -64}, {"w_group", 100},     {"classifier_bits", 99},
      {"method", "awq"},         {"a_bits", 17},    {"k_bits", 1},    {"a_clip", 1.5},      {"kv_clip", "0.9"},
      {"w_symmetric", 1},        {"a_group", -16},
  };
  for (const auto& [key, value] : cases) {
    json r = recipe;
    r[key] = value;
    rewrite_metadata(good, bad, "recipe", r.dump());
    SCOPED_TRACE(key + " = " + value.dump());
    expect_refused(bad, {"recipe field '" + key + "'"});
  }
  json missing = recipe;
  missing.erase("v_bits");
  rewrite_metadata(good, bad, "recipe", missing.dump());
  expect_refused(bad, {"recipe field 'v_bits' is missing"});
}

TEST(PackedHostile, NonFiniteScalesNormsAndEmbeddingsAreRefusedNamingTheTensor) {
  // fp32 tables (version 1) and INT8 tables (version 2: their row scales).
  for (const int classifier_bits : {16, 8}) {
    SCOPED_TRACE("classifier bits " + std::to_string(classifier_bits));
    TempDir dir;
    const std::string good = make_packed(dir, 0, classifier_bits), bad = dir / "bad.q4.safetensors";
    const SafetensorsFile f(good);
    const auto bytes = read_bytes(good);
    const bool int8 = classifier_bits < 16;
    for (const char* name : {"model.layers.1.mlp.down_proj.scales", "model.layers.0.input_layernorm.weight", "model.norm.weight",
                             int8 ? "model.embed_tokens.scales" : "model.embed_tokens.weight", int8 ? "lm_head.scales" : "lm_head.weight"}) {
      const TensorInfo* t = f.find(name);
      ASSERT_NE(t, nullptr) << name;
      for (const float v : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
        auto b = bytes;
        std::memcpy(b.data() + f.header().data_start + t->begin + 4 * 3, &v, 4);
        write_bytes(bad, b);
        // The CRC check would catch the change first; the values are checked whatever the CRCs say
        // (a hostile file can carry matching CRCs).
        expect_refused(bad, {std::string("'") + name + "'", "element 3"}, /*verify_crc=*/false);
      }
    }
    // QUAROT_ALLOW_NONFINITE=1 opens it anyway, as for float checkpoints.
    const char* old = std::getenv("QUAROT_ALLOW_NONFINITE");
    setenv("QUAROT_ALLOW_NONFINITE", "1", 1);
    EXPECT_EQ(open_error(bad, false), "");
    if (old) setenv("QUAROT_ALLOW_NONFINITE", old, 1);
    else unsetenv("QUAROT_ALLOW_NONFINITE");
    EXPECT_EQ(open_error(good), "");
  }
}

// The fuzz target's seeds (written by tests/fuzz/make_corpus.py) must be valid packed files, or
// the fuzzer would start below every check past the first failing one.
TEST(PackedHostile, FuzzSeedsAreValidPackedFiles) {
  for (const char* name : {"tiny.q4.safetensors", "tiny-qdec.q4.safetensors", "tiny-int8.q4.safetensors"}) {
    const std::string path = std::string(QUAROT_SOURCE_DIR) + "/tests/fuzz/corpus/fuzz_packed/" + name;
    EXPECT_EQ(open_error(path), "") << path;
  }
}
