// The pipeline as a library: plans built and validated in one place, run() with a silent
// observer, and the RunReport's JSON round trip (the only place spelling report.json's keys).
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "quarot/atomic_file.hpp"
#include "quarot/gguf.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "test_support.hpp"

namespace quarot {
namespace {

PlanOptions stories_options() {
  PlanOptions o;
  o.model = test::data_file("stories260K/stories260K.bin");
  o.preset = "w4a4kv4-rtn";
  o.eval_ids = test::data_file("tinystories/validation_100.tok512.ids");
  o.ctx = 512;
  o.chunks = 2;
  return o;
}

TEST(Pipeline, UsageRulesAreUsageErrors) {
  auto o = stories_options();
  o.preset = "w4a4kv4";  // GPTQ without --calib
  EXPECT_THROW(make_plan(o), UsageError);
  o.dry_run = true;  // a dry run only describes the plan
  EXPECT_NO_THROW(make_plan(o));
  o = stories_options();
  o.classifier_bits = 17;
  EXPECT_THROW(make_plan(o), UsageError);
  o = stories_options();
  o.preset = "none";
  o.qdec_k = "8";  // implies --qdec, which needs quantized weights
  EXPECT_THROW(make_plan(o), UsageError);
  o = stories_options();
  o.qdec_sweep = true;
  o.eval_ids.clear();
  EXPECT_THROW(make_plan(o), UsageError);
  o = stories_options();
  o.qdec_k = "4";
  const Plan p = make_plan(o);
  EXPECT_TRUE(p.qdec.enabled);
  EXPECT_EQ(p.quant.preset, "w4a4kv4-rtn");
}

// The presets the packed INT4 file cannot hold are refused with -o when the plan is made (before
// any work, --dry-run included), saying what holds them.
TEST(Pipeline, PresetsThePackedFileCannotHoldAreRefusedWithTheAlternative) {
  for (const char* preset : {"w8a8kv8", "w6a6kv6", "none"}) {
    auto o = stories_options();
    o.preset = preset;
    o.calib = "c.ids";
    o.output = "x.q4.safetensors";
    for (bool dry : {false, true}) {
      o.dry_run = dry;
      const std::string e = test::error_of([&] { (void)make_plan(o); });
      EXPECT_NE(e.find(std::string(preset) == "none" ? "quarot-convert or --preset gguf-f32 -o OUT.gguf" : "--preset gguf-q8_0 -o OUT.gguf"),
                std::string::npos) << e;
      EXPECT_THROW((void)make_plan(o), UsageError);
    }
    o.output.clear();  // simulation only: fine
    EXPECT_NO_THROW((void)make_plan(o)) << preset;
  }
  // The alternative it names is writable: gguf-q8_0 (llama-quantize's own rounding, its
  // preset's method "none") was refused by the GGUF rule meant for --w-method none.
  auto o = stories_options();
  o.preset = "gguf-q8_0";
  o.output = "x.gguf";
  EXPECT_NO_THROW((void)make_plan(o));
  o.preset = "gguf-q4_0";
  o.w_method = "none";
  EXPECT_THROW((void)make_plan(o), UsageError);
}

// One table of presets (src/pipeline), the GGUF exports among them: every name resolves, the
// gguf-* ones (and only they) carry export options, and make_plan takes the table's settings.
TEST(Pipeline, OnePresetTableHoldsEveryPresetGgufIncluded) {
  const auto names = plan_preset_names();
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()).size(), names.size());
  int gguf = 0;
  for (const auto& n : names) {
    const Preset p = plan_preset(n);
    EXPECT_EQ(p.quant.preset, n);
    EXPECT_EQ(p.gguf.has_value(), n.rfind("gguf-", 0) == 0) << n;
    if (p.gguf) {
      ++gguf;
      EXPECT_EQ(p.gguf->preset, n);
      EXPECT_EQ(p.quant.method, p.gguf->method) << n;
      EXPECT_EQ(p.quant.rotate, p.gguf->rotate) << n;
    }
  }
  EXPECT_EQ(gguf, 6);
  EXPECT_EQ(plan_preset("gguf-q4_k_m").gguf->type, GgufType::Q4_K);
  EXPECT_TRUE(plan_preset("gguf-q4_k_m").gguf->k_mix);
  EXPECT_EQ(plan_preset("w4a16").quant.gptq.weights.group_size, 128);
  EXPECT_THROW((void)plan_preset("w3a3"), UsageError);
  auto o = stories_options();
  o.preset = "w4a4k8v4";
  o.calib = "c.ids";
  const Plan p = make_plan(o);
  EXPECT_EQ(p.quant.describe(), plan_preset("w4a4k8v4").quant.describe());
  EXPECT_TRUE(p.gguf_preset.empty());
}

TEST(Pipeline, RunWritesThePackedFileAndItsReportRoundTrips) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  const auto dir = std::filesystem::temp_directory_path() / "quarot_test_pipeline";
  std::filesystem::remove_all(dir);
  auto o = stories_options();
  o.output = (dir / "m.q4.safetensors").string();
  o.qdec = true;
  o.no_checksum = true;
  const Plan p = make_plan(o);
  Observer silent;
  const RunReport r = run(p, silent);
  ASSERT_TRUE(r.eval && r.eval->packed && r.eval->float_model && r.qdec);
  EXPECT_EQ(r.modules.size(), 35u);
  EXPECT_EQ(*r.sizes.packed_bytes, std::filesystem::file_size(o.output));
  EXPECT_EQ(PackedModel(o.output).config().n_layers, 5);
  EXPECT_LT(r.eval->packed->ppl, 3 * r.eval->float_model->ppl);  // measured 2.1x at W4A4KV4 RTN
  EXPECT_FALSE(r.input.sha256);
  // report.json on disk is the returned report; parsing it back gives the same text.
  const std::string text = read_text_file((dir / "report.json").string());
  EXPECT_EQ(text, r.to_json());
  EXPECT_EQ(RunReport::from_json(text).to_json(), text);
  EXPECT_THROW(RunReport::from_json("{\"schema\": 1}"), Error);
  std::filesystem::remove_all(dir);
}

// A gguf-* preset writes a GGUF through src/gguf and evaluates the exported weights; a .gguf
// output without one, or online transforms / activation bits with one, are usage errors.
TEST(Pipeline, GgufPresetExportsAndEvaluatesTheExportedWeights) {
  auto o = stories_options();
  o.preset = "gguf-q4_0";
  o.output = "x.q4.safetensors";
  EXPECT_THROW(make_plan(o), UsageError);  // not a .gguf path
  o.preset = "w4a4kv4-rtn";
  o.output = "x.gguf";
  EXPECT_THROW(make_plan(o), UsageError);  // a .gguf path needs a GGUF preset
  o.preset = "gguf-q4_0";
  o.a_bits = 4;
  EXPECT_THROW(make_plan(o), UsageError);  // llama.cpp quantizes activations itself
  o.a_bits = 0;
  o.stream = true;
  EXPECT_THROW(make_plan(o), UsageError);
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  const auto dir = std::filesystem::temp_directory_path() / "quarot_test_pipeline_gguf";
  std::filesystem::remove_all(dir);
  o = stories_options();
  o.preset = "gguf-q4_0";
  o.w_method = "rtn";
  o.tokenizer = test::data_file("stories260K/tok512.bin");
  o.output = (dir / "m.gguf").string();
  o.no_checksum = true;
  const Plan p = make_plan(o);
  EXPECT_EQ(p.gguf_preset, "gguf-q4_0");
  EXPECT_FALSE(p.quant.act.any());
  EXPECT_NE(describe_plan(p).find("GGUF for llama.cpp: q4_0 blocks"), std::string::npos) << describe_plan(p);
  Observer silent;
  const RunReport r = run(p, silent);
  EXPECT_EQ(*r.sizes.packed_bytes, std::filesystem::file_size(o.output));
  EXPECT_EQ(read_text_file(o.output).substr(0, 4), "GGUF");
  EXPECT_EQ(r.modules.size(), 35u);
  ASSERT_TRUE(r.eval && r.eval->float_model && r.eval->quantized);
  EXPECT_FALSE(r.eval->packed);
  // Rotated RTN Q4_0 (groups of 32, fp16 scales): a few percent above float.
  EXPECT_GT(r.eval->quantized->ppl, r.eval->float_model->ppl);
  EXPECT_LT(r.eval->quantized->ppl, 1.2 * r.eval->float_model->ppl);
  EXPECT_NE(r.config_json.find("\"format\":\"gguf\""), std::string::npos) << r.config_json;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace quarot
