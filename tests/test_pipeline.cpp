// The pipeline as a library: plans built and validated in one place, run() with a silent
// observer, and the RunReport's JSON round trip (the only place spelling report.json's keys).
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/gguf.hpp"
#include "quarot/packed.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/synth.hpp"
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

// Stops a run at its first stage: what run() refuses is refused before any weight is read.
class StopAtLoad : public Observer {
 public:
  struct Stopped {};
  void stage_start(std::string_view stage) override {
    if (stage == "load") throw Stopped{};
  }
};

// "ok", or the usage error a dry run / the start of the real run gives.
std::string dry_run_outcome(PlanOptions o) {
  o.dry_run = true;
  try {
    (void)describe_plan(make_plan(o));
    return "ok";
  } catch (const UsageError& e) {
    return std::string("usage: ") + e.what();
  } catch (const Error& e) {
    return std::string("error: ") + e.what();
  }
}
std::string run_start_outcome(const PlanOptions& o) {
  try {
    StopAtLoad stop;
    (void)run(make_plan(o), stop);
    return "ran to the end";
  } catch (const StopAtLoad::Stopped&) {
    return "ok";
  } catch (const UsageError& e) {
    return std::string("usage: ") + e.what();
  } catch (const Error& e) {
    return std::string("error: ") + e.what();
  }
}

// Every preset on the three real models (with -o): --dry-run fails exactly when the run would,
// with the same message, and before anything is written. W4A16's groups of 128 do not divide
// the 260K models' width 64 (the dry run passed and the run failed after loading before); the
// presets the packed file cannot hold are refused with what holds them.
TEST(Pipeline, DryRunFailsExactlyWhenTheRunWould) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("salty260K/salty260K.bin");
  QUAROT_REQUIRE_DATA("aidreams260K/aidreams260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  test::TempDir dir;
  std::map<std::string, std::string> first_outcome;
  for (const char* model : {"stories260K/stories260K.bin", "salty260K/salty260K.bin", "aidreams260K/aidreams260K.bin"})
    for (const auto& preset : plan_preset_names()) {
      PlanOptions o;
      o.model = test::data_file(model);
      o.preset = preset;
      o.calib = test::data_file("stories260K/calib-t1-seed42.ids");
      o.output = dir / ("out/m." + std::string(plan_preset(preset).gguf ? "gguf" : "q4.safetensors"));
      o.no_checksum = true;
      const std::string dry = dry_run_outcome(o), real = run_start_outcome(o);
      EXPECT_EQ(dry, real) << model << " --preset " << preset;
      if (!first_outcome.count(preset)) first_outcome[preset] = dry;
    }
  EXPECT_NE(first_outcome["w4a16"].find("usage: --w-group: group size 128 (preset w4a16) does not divide the input width 64 of q_proj"),
            std::string::npos) << first_outcome["w4a16"];
  EXPECT_NE(first_outcome["w4a16-rtn"].find("does not divide the input width 64"), std::string::npos);
  EXPECT_NE(first_outcome["w8a8kv8"].find("--preset gguf-q8_0 -o OUT.gguf"), std::string::npos) << first_outcome["w8a8kv8"];
  EXPECT_NE(first_outcome["w6a6kv6"].find("evaluate the 6-bit model in simulation"), std::string::npos) << first_outcome["w6a6kv6"];
  EXPECT_NE(first_outcome["none"].find("quarot-convert"), std::string::npos) << first_outcome["none"];
  for (const char* ok : {"w4a4kv4", "w4a4k8v4", "w4a4kv4-rtn", "gguf-q4_0", "gguf-q4_k_m", "gguf-q8_0", "gguf-f32"})
    EXPECT_EQ(first_outcome[ok], "ok") << ok;
  EXPECT_FALSE(std::filesystem::exists(dir / "out/m.q4.safetensors"));

  // A rotation size with no Hadamard construction (FFN 1042 = 2 x 521) is found from the config.
  const std::string folder = dir / "wide-ffn";
  SynthSpec spec = synth_preset("tiny");
  save_hf(make_synthetic(spec), folder, {DType::F32, 0, {}});
  auto j = nlohmann::json::parse(read_text_file(folder + "/config.json"));
  j["intermediate_size"] = 1042;
  write_file_atomic(folder + "/config.json", j.dump());
  PlanOptions o = stories_options();
  o.model = folder;
  o.eval_ids.clear();
  const std::string dry = dry_run_outcome(o);
  EXPECT_EQ(dry, run_start_outcome(o));
  EXPECT_NE(dry.find("R4 Hadamard (down_proj input, online): size = 1042 has no Hadamard construction"), std::string::npos) << dry;
  o.no_rotate = true;  // without R4 the size does not matter (the load then finds the shapes wrong)
  EXPECT_EQ(dry_run_outcome(o), "ok");
}

// The tool: the same exit code (2, a usage error) for the dry run and the run.
TEST(Pipeline, QuantizeToolDryRunExitsAsTheRun) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  test::TempDir dir;
  const std::string model = test::data_file("stories260K/stories260K.bin");
  const auto dry = test::run_tool("quarot-quantize", model + " --preset w4a16-rtn --dry-run");
  const auto real = test::run_tool("quarot-quantize", model + " --preset w4a16-rtn -o " + (dir / "o/m.q4.safetensors"));
  EXPECT_EQ(dry.exit_code, 2) << dry.stderr_text;
  EXPECT_EQ(real.exit_code, 2) << real.stderr_text;
  EXPECT_EQ(dry.stderr_text, real.stderr_text);
  EXPECT_EQ(test::count_lines(real.stderr_text), 1);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
  for (const char* preset : {"w8a8kv8", "none"}) {
    const auto d = test::run_tool("quarot-quantize", model + " --preset " + std::string(preset) + " --dry-run -o " + (dir / "m.q4.safetensors"));
    EXPECT_EQ(d.exit_code, 2) << preset;
  }
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
  const std::string text = read_text_file((dir / "m.q4.safetensors.report/report.json").string());
  EXPECT_EQ(text, r.to_json());
  EXPECT_EQ(RunReport::from_json(text).to_json(), text);
  EXPECT_THROW(RunReport::from_json("{\"schema\": 1}"), Error);
  std::filesystem::remove_all(dir);
}

// One report folder per output name: two outputs in one folder keep their own reports.
TEST(Pipeline, TwoOutputsInOneFolderKeepTheirOwnReports) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  test::TempDir dir;
  Observer silent;
  for (const char* name : {"a.q4.safetensors", "b.q4.safetensors"}) {
    auto o = stories_options();
    o.eval_ids.clear();
    o.no_checksum = true;
    o.output = dir / name;
    if (name[0] == 'b') o.w_bits = 3;
    (void)run(make_plan(o), silent);
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "report.json"));
  for (const char* name : {"a.q4.safetensors", "b.q4.safetensors"}) {
    const auto r = RunReport::from_json(read_text_file(dir / (std::string(name) + ".report/report.json")));
    EXPECT_EQ(nlohmann::json::parse(r.config_json)["output"], dir / name);
    EXPECT_EQ(nlohmann::json::parse(r.config_json)["weights"]["bits"], name[0] == 'b' ? 3 : 4);
    for (const char* f : {"report.md", "error_per_layer.svg", "outliers.svg"})
      EXPECT_TRUE(std::filesystem::exists(dir / (std::string(name) + ".report/" + f))) << f;
  }
}

// Plants a FIFO where the report will go once the packed file is being written.
class FifoAtReport : public Observer {
 public:
  explicit FifoAtReport(std::string report_dir) : dir_(std::move(report_dir)) {}
  void stage_start(std::string_view stage) override {
    if (stage != "pack") return;
    std::filesystem::create_directories(dir_);
    ASSERT_EQ(mkfifo((dir_ + "/report.md").c_str(), 0600), 0);
  }

 private:
  std::string dir_;
};

// The packed file and its report appear together: a report that cannot be written (a FIFO
// appeared in its place during the run) leaves no packed file and no temporary behind.
TEST(Pipeline, NoPackedFileWithoutItsReport) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  test::TempDir dir;
  auto o = stories_options();
  o.eval_ids.clear();
  o.no_checksum = true;
  o.output = dir / "out/m.q4.safetensors";
  FifoAtReport observer(o.output + ".report");
  EXPECT_THROW((void)run(make_plan(o), observer), Error);
  std::vector<std::string> left;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir.path())) left.push_back(e.path().filename().string());
  EXPECT_EQ(left, (std::vector<std::string>{"out", "m.q4.safetensors.report", "report.md"}));
  // Outputs named twice, or onto an input (a model folder's file, the tokenizer), are refused
  // before any work.
  Observer silent;
  auto twice = o;
  twice.output = dir / "t.q4.safetensors";
  twice.json = twice.output;
  const std::string e = test::error_of([&] { (void)run(make_plan(twice), silent); });
  EXPECT_NE(e.find("named twice as an output"), std::string::npos) << e;
}

// Every output (packed file, report files, --json) against every input (the model folder's
// files, calibration, tokenizer, evaluation ids) by identity, before any work: a file inside
// the model folder or the tokenizer passed the name check before.
TEST(Pipeline, OutputsOntoInputsAreRefusedByIdentity) {
  test::TempDir dir;
  auto o = stories_options();
  o.eval_ids.clear();
  o.no_checksum = true;
  Observer silent;
  auto refused = [&](const PlanOptions& x) { return test::error_of([&] { (void)run(make_plan(x), silent); }); };
  const std::string folder = dir / "hf";
  save_hf(make_synthetic(synth_preset("tiny")), folder, {DType::F32, 0, {}});
  const auto model_bytes = test::read_bytes(folder + "/model.safetensors");
  auto into_model = o;
  into_model.model = folder;
  into_model.output = folder + "/model.safetensors";
  EXPECT_NE(refused(into_model).find("refusing to overwrite an input file"), std::string::npos) << refused(into_model);
  auto json_onto_model = into_model;
  json_onto_model.output.clear();
  json_onto_model.json = folder + "/config.json";
  EXPECT_NE(refused(json_onto_model).find("refusing to overwrite an input file"), std::string::npos) << refused(json_onto_model);
  auto onto_tokenizer = o;
  write_file_atomic(dir / "tok.bin", "not read");
  onto_tokenizer.tokenizer = dir / "tok.bin";
  onto_tokenizer.output = dir / "tok.bin";
  EXPECT_NE(refused(onto_tokenizer).find("refusing to overwrite an input file"), std::string::npos) << refused(onto_tokenizer);
  EXPECT_EQ(test::read_bytes(folder + "/model.safetensors"), model_bytes);
  EXPECT_EQ(read_text_file(dir / "tok.bin"), "not read");
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
