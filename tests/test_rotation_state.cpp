// Rotation state is part of the model: a rotated Hugging Face folder carries its rotation in a
// config.json that other loaders refuse (and in the safetensors metadata, as before); quarot's
// loader reads it back, and every way to rotate or quantize either composes or refuses.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/forward.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/quantize.hpp"
#include "quarot/rotate.hpp"
#include "quarot/synth.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
using nlohmann::json;

namespace {

#define EXPECT_ERROR_HAS(expr, needle)                                      \
  do {                                                                      \
    const std::string msg_ = error_of([&] { (void)(expr); });               \
    EXPECT_NE(msg_.find(needle), std::string::npos) << "message: " << msg_; \
  } while (0)

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

struct Rotated {
  ModelWeights original, rotated;
  OnlineTransforms online;
};

Rotated rotated_tiny() {
  Rotated r;
  auto s = synth_preset("tiny");
  s.config.n_layers = 2;
  s.config.vocab = 300;
  s.seed = 7;
  r.original = make_synthetic(s);
  convert_rope_layout(r.original, RopeLayout::Half);
  r.rotated = r.original;
  RotationOptions o;
  o.seed = 5;
  r.online = rotate_model(r.rotated, o);
  record_rotation(r.rotated, o, r.online);
  return r;
}

std::vector<float> logits_of(const ModelWeights& m, const OnlineTransforms& online) {
  const std::vector<int> tokens = {1, 17, 42, 99, 5, 250, 3, 77};
  Transformer<float> t(m, int(tokens.size()));
  if (!online.empty()) t.set_hook(online_hook<float>(online));
  std::vector<float> out;
  t.forward(tokens, out);
  return out;
}

}  // namespace

TEST(RotationState, RotatedFolderIsMarkedAndReadBack) {
  TempDir dir;
  const auto r = rotated_tiny();
  save_hf(r.rotated, dir / "rot");
  const std::string text = read_text(dir / "rot/config.json");
  const auto j = json::parse(text);
  // Other loaders see an architecture they do not know (transformers: model_type; llama.cpp: architectures).
  EXPECT_EQ(j["architectures"], json::array({"QuarotRotatedLlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "quarot_rotated_llama");
  const auto& rec = j[kRotatedConfigKey];
  EXPECT_EQ(rec["original_model_type"], "llama");
  EXPECT_EQ(rec["original_architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(rec["seed"], 5);
  EXPECT_EQ(rec["online"]["r4_intermediate"], r.rotated.config.intermediate);
  EXPECT_ERROR_HAS(parse_hf_config(text, "config.json"), "'quarot_rotated_llama' is not a supported architecture");
  // quarot reads it as the original architecture, rotated, with the same online transforms.
  const auto back = load_hf(dir / "rot");
  EXPECT_EQ(back.config.family, Family::Llama);
  ASSERT_TRUE(is_rotated(back));
  EXPECT_EQ(json::parse(back.metadata.at(kRotationMetadataKey)), json::parse(r.rotated.metadata.at(kRotationMetadataKey)));
  EXPECT_EQ(read_model_config(dir / "rot").family, Family::Llama);
  const auto online = online_transforms_of(back);
  EXPECT_LE(max_rel_diff(logits_of(r.original, {}), logits_of(back, online)), 1e-4);
  EXPECT_GT(max_rel_diff(logits_of(r.original, {}), logits_of(back, {})), 0.1);  // the transforms matter
  // Converting it again keeps the marking.
  save_hf(back, dir / "again", {DType::BF16, 0, {}});
  EXPECT_EQ(json::parse(read_text(dir / "again/config.json"))["model_type"], "quarot_rotated_llama");
  EXPECT_FALSE(is_rotated(load_hf([&] {
    save_hf(r.original, dir / "plain");
    return dir / "plain";
  }())));
  EXPECT_EQ(json::parse(read_text(dir / "plain/config.json"))["model_type"], "llama");
}

TEST(RotationState, EitherRecordAloneMakesItRotatedAndTheyMustAgree) {
  TempDir dir;
  const auto r = rotated_tiny();
  save_hf(r.rotated, dir / "rot");
  const std::string marked = read_text(dir / "rot/config.json");
  // A folder written before config.json was marked: plain config, the record in the metadata.
  write_file_atomic(dir / "rot/config.json", hf_config_json(r.rotated.config, "float32"));
  auto old = load_hf(dir / "rot");
  ASSERT_TRUE(is_rotated(old));
  EXPECT_FALSE(online_transforms_of(old).empty());
  // Only config.json carries it (e.g. safetensors rewritten by another tool without metadata).
  auto stripped = r.rotated;
  stripped.metadata.clear();
  save_hf(stripped, dir / "cfg_only");
  write_file_atomic(dir / "cfg_only/config.json", marked);
  const auto cfg_only = load_hf(dir / "cfg_only");
  ASSERT_TRUE(is_rotated(cfg_only));
  EXPECT_LE(max_rel_diff(logits_of(r.original, {}), logits_of(cfg_only, online_transforms_of(cfg_only))), 1e-4);
  // Disagreeing records, a marking without its record, a malformed record: refused, naming config.json.
  auto j = json::parse(marked);
  j[kRotatedConfigKey]["seed"] = 6;
  write_file_atomic(dir / "rot/config.json", j.dump());
  EXPECT_ERROR_HAS(load_hf(dir / "rot"), "config.json: 'quarot_rotation' differs from the rotation record 'quarot.rotation'");
  j = json::parse(marked);
  j.erase(kRotatedConfigKey);
  write_file_atomic(dir / "rot/config.json", j.dump());
  EXPECT_ERROR_HAS(load_hf(dir / "rot"), "config.json: marks a quarot-rotated model");
  j = json::parse(marked);
  j[kRotatedConfigKey] = 3;
  EXPECT_ERROR_HAS(parse_hf_config_with_rotation(j.dump(), "config.json", nullptr), "'quarot_rotation' must be an object");
  j = json::parse(marked);
  j[kRotatedConfigKey].erase("original_model_type");
  EXPECT_ERROR_HAS(parse_hf_config_with_rotation(j.dump(), "config.json", nullptr), "'original_model_type' must be a string");
  j = json::parse(marked);
  j[kRotatedConfigKey]["original_model_type"] = "mixtral";
  EXPECT_ERROR_HAS(parse_hf_config_with_rotation(j.dump(), "config.json", nullptr), "'mixtral' is not a supported architecture");
}

TEST(RotationState, RotatingTwiceIsRefusedAndQuantizingComposes) {
  TempDir dir;
  auto r = rotated_tiny();
  save_hf(r.rotated, dir / "rot");
  auto back = load_hf(dir / "rot");
  EXPECT_ERROR_HAS(rotate_model(back, RotationOptions{}), "is already rotated");
  // plan_rotation: an unrotated model is rotated as asked; a rotated one never again, with its transforms.
  EXPECT_TRUE(plan_rotation(r.original, true).rotate);
  EXPECT_FALSE(plan_rotation(r.original, false).rotate);
  EXPECT_TRUE(plan_rotation(r.original, true).online.empty());
  for (bool requested : {true, false}) {
    const auto p = plan_rotation(back, requested);
    EXPECT_FALSE(p.rotate);
    EXPECT_TRUE(p.already_rotated);
    ASSERT_TRUE(p.online.r3 && p.online.r4 && p.online.cross_head);
    EXPECT_EQ(p.online.r4->dense(), r.online.r4->dense());
    EXPECT_EQ(p.note.empty(), !requested);
  }
  // Quantizing a rotated model without its transforms is refused, in memory and streamed.
  auto cfg = plan_preset("w4a4kv4").quant;
  cfg.method = WeightMethod::Rtn;
  cfg.gptq.weights.group_size = 0;
  auto q = back;
  EXPECT_ERROR_HAS(quantize_weights(q, {}, cfg, {}, {}, {}), "which this step was not given");
  const CheckpointReader reader(dir / "rot");
  EXPECT_ERROR_HAS(StreamedLayers(reader, cfg), "is already rotated");
  // With the plan's transforms it is what quantizing the original with rotation gives.
  cfg.rotate = false;
  const auto streamed_plan = plan_rotation(reader.config(), reader.metadata(), reader.source(), true);
  EXPECT_FALSE(streamed_plan.rotate);
  ASSERT_TRUE(streamed_plan.online.r4);
  EXPECT_EQ(streamed_plan.online.r4->dense(), r.online.r4->dense());
  EXPECT_TRUE(plan_rotation(r.original.config, {}, "m", true).rotate);
  const StreamedLayers streamed(reader, cfg);
  ASSERT_TRUE(streamed.online().r4);
  EXPECT_EQ(streamed.online().r4->dense(), r.online.r4->dense());
  auto from_rotated = back;
  quantize_weights(from_rotated, plan_rotation(back, true).online, cfg, {}, {}, {});
  auto from_original = r.rotated;
  quantize_weights(from_original, r.online, cfg, {}, {}, {});
  EXPECT_LE(max_rel_diff(logits_of(from_original, r.online), logits_of(from_rotated, plan_rotation(back, true).online)), 1e-5);
}

// Issue 20, first-run friction 1: `quarot-rotate M -o R` then `quarot-quantize R` rotated again and
// dropped R's online transforms (float perplexity 53,972 instead of 4.10 on stories260K, exit 0).
// Now R evaluates to M's perplexity, and quantizing it with a rotation is refused, writing nothing.
TEST(RotationState, FirstRunRotateThenQuantizeIsRefusedNotCorrupted) {
  TempDir dir;
  ASSERT_EQ(run_tool("quarot-synth", "--preset tiny --layers 2 -o " + (dir / "m")).exit_code, 0);
  auto r = run_tool("quarot-rotate", (dir / "m") + " -o " + (dir / "r") + " --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(read_text(dir / "r/config.json").find("\"QuarotRotatedLlamaForCausalLM\""), std::string::npos);
  {
    std::ofstream ids(dir / "ids");
    for (int i = 0; i < 64; ++i) ids << (i * 37 + 11) % 250 + 3 << (i % 16 == 15 ? "\n" : " ");
  }
  auto ppl = [&](const std::string& model) {
    const auto e = run_tool("quarot-eval", model + " --ids " + (dir / "ids") + " --ctx 32 --progress none");
    EXPECT_EQ(e.exit_code, 0) << e.stderr_text;
    const auto at = e.stdout_text.find("perplexity: ");
    return at == std::string::npos ? -1.0 : std::stod(e.stdout_text.substr(at + 12));
  };
  const double base = ppl(dir / "m"), rotated = ppl(dir / "r");
  ASSERT_GT(base, 1.0);
  EXPECT_NEAR(rotated / base, 1.0, 1e-4) << base << " vs " << rotated;  // fp32 rounding only
  for (const char* extra : {"", " --no-rotate"}) {
    r = run_tool("quarot-quantize", (dir / "r") + " -o " + (dir / "out/q.q4.safetensors") +
                                        " --preset w4a4kv4 --w-method rtn --eval-ids " + (dir / "ids") + " --ctx 32 -q" + extra);
    EXPECT_EQ(r.exit_code, 1) << extra << r.stdout_text;
    EXPECT_NE(r.stderr_text.find(dir / "r"), std::string::npos) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find("rotated"), std::string::npos) << r.stderr_text;
    EXPECT_FALSE(fs::exists(dir / "out/q.q4.safetensors"));
  }
  r = run_tool("quarot-rotate", (dir / "r") + " -o " + (dir / "rr") + " --progress none");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("is already rotated"), std::string::npos) << r.stderr_text;
  EXPECT_FALSE(fs::exists(dir / "rr"));
}
