// Config conformance: every config file in ../shared/data/configs (MANIFEST.md) is either
// accepted with the shapes the real model has, or refused with one line naming the field.
// A file the table below does not know fails the test, so new data cannot go unchecked.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "quarot/checkpoint.hpp"
#include "quarot/config.hpp"
#include "quarot/error.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/weights.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
namespace fs = std::filesystem;

namespace {

struct Accepted {
  Family family;
  int hidden, intermediate, layers, heads, kv_heads, head_dim, vocab;
  bool tied;
  RopeScalingType scaling = RopeScalingType::None;
  double scaling_factor = 1.0;
  int64_t params = 0;  // published parameter count, when one is (0: not checked)
};
struct Refused {
  std::string field;  // the config field the one-line error names
  std::string what;   // and a word of why
};

// Published counts: Llama-2-7B 6,738,415,616; Llama-3.1-8B 8,030,261,248; Llama-3.2-1B
// 1,235,814,400 (tied); Qwen3-0.6B 596,049,920 (0.44 B without the embedding, as its card says).
const std::map<std::string, Accepted>& accepted() {
  static const std::map<std::string, Accepted> a = {
      {"mlc-transcribed/llama2_7b.json", {Family::Llama, 4096, 11008, 32, 32, 32, 128, 32000, false, RopeScalingType::None, 1, 6738415616}},
      {"mlc-transcribed/llama3_1_8b.json", {Family::Llama, 4096, 14336, 32, 32, 8, 128, 128256, false, RopeScalingType::Llama3, 8, 8030261248}},
      {"mlc-transcribed/llama3_2_1b.json", {Family::Llama, 2048, 8192, 16, 32, 8, 64, 128256, true, RopeScalingType::Llama3, 32, 1235814400}},
      {"mlc-transcribed/llama3_2_3b.json", {Family::Llama, 3072, 8192, 28, 24, 8, 128, 128256, true, RopeScalingType::Llama3, 32}},
      {"mlc-transcribed/mistral_7b.json", {Family::Mistral, 4096, 14336, 32, 32, 8, 128, 32000, false}},
      {"mlc-transcribed/mistral_7b_v03.json", {Family::Mistral, 4096, 14336, 32, 32, 8, 128, 32768, false}},
      {"mlc-transcribed/qwen2_0_5b.json", {Family::Qwen2, 896, 4864, 24, 14, 2, 64, 151936, true}},
      {"mlc-transcribed/qwen2_1_5b.json", {Family::Qwen2, 1536, 8960, 28, 12, 2, 128, 151936, true}},
      {"mlc-transcribed/qwen2_7b.json", {Family::Qwen2, 3584, 18944, 28, 28, 4, 128, 152064, false}},
      {"mlc-transcribed/qwen2.5_3b.json", {Family::Qwen2, 2048, 11008, 36, 16, 2, 128, 151936, true}},
      {"mlc-transcribed/qwen3_0.6b.json", {Family::Qwen3, 1024, 3072, 28, 16, 8, 128, 151936, true, RopeScalingType::None, 1, 596049920}},
      {"mlc-transcribed/tinyllama_1b_chat_v1.0.json", {Family::Llama, 2048, 5632, 22, 32, 4, 64, 32000, false}},
      {"mlc-transcribed/smollm_135m.json", {Family::Llama, 576, 1536, 30, 9, 3, 64, 49152, true}},
      {"mlc-transcribed/smollm_360m.json", {Family::Llama, 960, 2560, 32, 15, 5, 64, 49152, true}},
      {"mlc-transcribed/smollm_1_7b.json", {Family::Llama, 2048, 8192, 24, 32, 32, 64, 49152, true}},
      {"mlc-transcribed/smollm2_135m.json", {Family::Llama, 576, 1536, 30, 9, 3, 64, 49152, true}},
      {"mlc-transcribed/smollm2_360m.json", {Family::Llama, 960, 2560, 32, 15, 5, 64, 49152, true}},
  };
  return a;
}
const std::map<std::string, Refused>& refused() {
  static const std::map<std::string, Refused> r = {
      {"mlc-transcribed/gemma_2b.json", {"model_type", "'gemma' is not a supported architecture"}},
      {"mlc-transcribed/gemma2_2b.json", {"model_type", "'gemma2' is not a supported architecture"}},
      {"mlc-transcribed/gpt2.json", {"model_type", "'gpt2' is not a supported architecture"}},
      {"mlc-transcribed/phi-3_5.json", {"model_type", "'phi3' is not a supported architecture"}},
      {"real/gemma-2b-it/config.json", {"model_type", "'gemma' is not a supported architecture"}},
      {"real/WizardLM-2-8x22B-mixtral/config.json", {"model_type", "'mixtral' is not a supported architecture"}},
      {"real/Llama-3.1-8B-Instruct-bnb8bit/config.json", {"quantization_config", "already quantized (\"bitsandbytes\")"}},
  };
  return r;
}

// Every model config under configs/: the mlc transcriptions and each real folder's config.json
// (the folders' other JSON files are tokenizer, generation and index files).
std::vector<std::string> config_files() {
  std::vector<std::string> files;
  const fs::path root = data_file("configs");
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (!e.is_regular_file() || e.path().extension() != ".json") continue;
    const std::string rel = fs::relative(e.path(), root).string();
    if (rel.rfind("mlc-transcribed/", 0) == 0 || e.path().filename() == "config.json") files.push_back(rel);
  }
  std::sort(files.begin(), files.end());
  return files;
}

ModelConfig parse_file(const std::string& path) { return parse_hf_config(read_json_file(path), path); }

}  // namespace

TEST(ConfigConformance, EveryFileIsAcceptedWithItsShapesOrRefusedNamingTheField) {
  QUAROT_REQUIRE_DATA("configs/mlc-transcribed/qwen3_0.6b.json");
  const auto files = config_files();
  EXPECT_EQ(files.size(), accepted().size() + refused().size());
  for (const auto& rel : files) {
    SCOPED_TRACE(rel);
    const std::string path = data_file("configs/" + rel);
    if (const auto a = accepted().find(rel); a != accepted().end()) {
      const Accepted& x = a->second;
      ModelConfig c;
      ASSERT_NO_THROW(c = parse_file(path));
      EXPECT_EQ(c.family, x.family);
      EXPECT_EQ(c.hidden, x.hidden);
      EXPECT_EQ(c.intermediate, x.intermediate);
      EXPECT_EQ(c.n_layers, x.layers);
      EXPECT_EQ(c.n_heads, x.heads);
      EXPECT_EQ(c.n_kv_heads, x.kv_heads);
      EXPECT_EQ(c.head_dim, x.head_dim);
      EXPECT_EQ(c.vocab, x.vocab);
      EXPECT_EQ(c.tied_embeddings, x.tied);
      EXPECT_EQ(c.rope_scaling.type, x.scaling);
      if (x.scaling != RopeScalingType::None) {
        EXPECT_EQ(c.rope_scaling.factor, x.scaling_factor);
      }
      EXPECT_EQ(c.qk_norm, x.family == Family::Qwen3);
      EXPECT_EQ(c.q_bias && c.k_bias && c.v_bias && !c.o_bias, x.family == Family::Qwen2);
      if (x.family != Family::Qwen2) {
        EXPECT_FALSE(c.q_bias || c.k_bias || c.v_bias || c.o_bias);
      }
      if (x.params) {
        int64_t n = 0;
        for (const auto& [name, shape] : tensor_shapes(c)) {
          int64_t k = 1;
          for (int64_t d : shape) k *= d;
          n += k;
        }
        EXPECT_EQ(n, x.params);
      }
      // Written back as quarot writes config.json: the same model.
      const auto back = parse_hf_config(hf_config_json(c, "bfloat16"), "back");
      EXPECT_EQ(back.family, c.family);
      EXPECT_EQ(back.head_dim, c.head_dim);
      EXPECT_EQ(back.qk_norm, c.qk_norm);
      EXPECT_EQ(back.rope_scaling.type, c.rope_scaling.type);
      EXPECT_EQ(back.tied_embeddings, c.tied_embeddings);
    } else if (const auto r = refused().find(rel); r != refused().end()) {
      const std::string e = error_of([&] { parse_file(path); });
      EXPECT_EQ(e.rfind(path + ": ", 0), 0u) << e;  // names the file
      EXPECT_NE(e.find("config field '" + r->second.field + "'"), std::string::npos) << e;
      EXPECT_NE(e.find(r->second.what), std::string::npos) << e;
      EXPECT_EQ(e.find('\n'), std::string::npos) << e;  // one line
    } else {
      ADD_FAILURE() << "no expectation for config " << rel << " (add it to the tables in test_configs.cpp)";
    }
  }
}

TEST(ConfigConformance, UnknownKeysAreIgnoredAndKnownProblemsNamed) {
  QUAROT_REQUIRE_DATA("configs/mlc-transcribed/llama2_7b.json");
  auto j = nlohmann::json::parse(read_json_file(data_file("configs/mlc-transcribed/llama2_7b.json")));
  ASSERT_TRUE(j.contains("context_window_size"));  // an mlc-only key, ignored
  j["some_future_key"] = {{"nested", true}};
  EXPECT_EQ(parse_hf_config(j.dump(), "c").hidden, 4096);
  j["rope_interleaved"] = true;  // SmolLM2's key: false there; true is another RoPE layout
  EXPECT_NE(error_of([&] { parse_hf_config(j.dump(), "c"); }).find("config field 'rope_interleaved' is true"), std::string::npos);
  j["rope_interleaved"] = false;
  j["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  EXPECT_NE(error_of([&] { parse_hf_config(j.dump(), "c"); }).find("'quantization_config' is present: this checkpoint is already quantized (\"gptq\")"),
            std::string::npos);
  j["quantization_config"] = nullptr;  // null: none
  EXPECT_EQ(parse_hf_config(j.dump(), "c").vocab, 32000);
}

TEST(ConfigConformance, InspectConfigOnlyPrintsTheDerivedShapes) {
  QUAROT_REQUIRE_DATA("configs/mlc-transcribed/qwen3_0.6b.json");
  auto r = run_tool("quarot-inspect", "--config-only " + data_file("configs/mlc-transcribed/qwen3_0.6b.json"));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  for (const char* s : {"architecture: qwen3 (28 layers, hidden 1024, FFN 3072, 16 heads, 8 KV heads, GQA 2:1, head_dim 128",
                        "attention:    q 2048, k/v 1024 wide (head_dim x heads != hidden)", "q/k norm:",
                        "model.layers.0.self_attn.q_norm.weight", "parameters:   596049920", "embeddings:   tied"})
    EXPECT_NE(r.stdout_text.find(s), std::string::npos) << s << "\n" << r.stdout_text;
  r = run_tool("quarot-inspect", "--config-only " + data_file("configs/mlc-transcribed/llama3_2_1b.json"));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("llama3 scaling x32"), std::string::npos) << r.stdout_text;
  // A folder's config.json (no weights needed) and a refused architecture.
  r = run_tool("quarot-inspect", "--config-only " + data_file("configs/real/gemma-2b-it"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("config field 'model_type' 'gemma' is not a supported architecture"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
  EXPECT_TRUE(r.stdout_text.empty());
  r = run_tool("quarot-inspect", "--config-only " + data_file("configs/real/Llama-3.1-8B-Instruct-bnb8bit/config.json"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("already quantized"), std::string::npos) << r.stderr_text;
}

TEST(ConfigConformance, QuantizeDryRunPlansEveryAcceptedConfig) {
  QUAROT_REQUIRE_DATA("configs/mlc-transcribed/qwen3_0.6b.json");
  // A folder holding only config.json: the dry run reads nothing else and writes nothing.
  TempDir dir;
  for (const auto& rel : config_files()) {
    SCOPED_TRACE(rel);
    const std::string folder = dir / fs::path(rel).parent_path().filename().string().append("-").append(fs::path(rel).stem().string());
    fs::create_directories(folder);
    fs::copy_file(data_file("configs/" + rel), folder + "/config.json");
    const auto r = run_tool("quarot-quantize", folder + " -o " + folder + "/out.q4.safetensors --dry-run");
    if (accepted().count(rel)) {
      EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
      EXPECT_FALSE(r.stdout_text.empty() && r.stderr_text.empty());
    } else {
      EXPECT_EQ(r.exit_code, 1) << r.stdout_text;
      EXPECT_NE(r.stderr_text.find("config field '" + refused().at(rel).field + "'"), std::string::npos) << r.stderr_text;
    }
    EXPECT_FALSE(fs::exists(folder + "/out.q4.safetensors"));
  }
}
