// The pipeline as a library: plans built and validated in one place, run() with a silent
// observer, and the RunReport's JSON round trip (the only place spelling report.json's keys).
#include <gtest/gtest.h>

#include <filesystem>

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
  EXPECT_EQ(r.modules.size(), 36u);  // 35 linears and the INT8 embedding/classifier table (a packed output's default)
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

namespace quarot {
namespace {

// Text calibration and --eval-text with no --tokenizer: the tokenizer beside the model is used,
// and the report says which one and what BOS each stream got; without one, a one-line error.
TEST(Pipeline, TextInputsFindTheModelsTokenizerAndStateTheBosPolicy) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.txt");
  test::TempDir dir;
  std::filesystem::copy_file(test::data_file("stories260K/stories260K.bin"), dir / "stories260K.bin");
  PlanOptions o;
  o.model = dir / "stories260K.bin";
  o.preset = "w4a4kv4";
  o.calib = test::data_file("tinystories/validation_100.txt");
  o.nsamples = 2;
  o.seqlen = 64;
  o.eval_text = o.calib;
  o.ctx = 128;
  o.chunks = 1;
  o.outlier_windows = 0;
  o.no_checksum = true;
  // The dry run states the memory the run needs and whether it would stream.
  EXPECT_NE(describe_plan(make_plan(o)).find(" available: whole in memory"), std::string::npos) << describe_plan(make_plan(o));
  Observer silent;
  EXPECT_THROW(run(make_plan(o), silent), Error);  // no tokenizer in the folder
  std::filesystem::copy_file(test::data_file("stories260K/tok512.model"), dir / "tokenizer.model");
  const RunReport r = run(make_plan(o), silent);
  ASSERT_TRUE(r.tokenizer);
  EXPECT_EQ(r.tokenizer->path, dir / "tokenizer.model");
  EXPECT_EQ(r.tokenizer->found, "the model's folder");
  EXPECT_EQ(r.tokenizer->bos_id, 1);
  EXPECT_EQ(r.tokenizer->calibration.value_or(""),
            "BOS 1 once in front of the whole text, none per window (the windows are random spans of that stream)");
  ASSERT_TRUE(r.eval && r.eval->text);
  EXPECT_EQ(*r.eval->text, o.eval_text);
  EXPECT_EQ(r.eval->windows, 1);
  EXPECT_EQ(RunReport::from_json(r.to_json()).to_json(), r.to_json());
  o.eval_ids = test::data_file("tinystories/validation_100.tok512.ids");  // both: a usage error
  EXPECT_THROW(make_plan(o), UsageError);
}

}  // namespace
}  // namespace quarot
