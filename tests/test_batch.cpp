// quarot-batch: a plan run whole and as 3 merged shards gives the same summary; gates set the
// exit code naming the run and the figure; --resume skips verified runs; bad plans and flags.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "test_support.hpp"

using namespace quarot::test;
namespace fs = std::filesystem;

namespace {

std::string slurp(const std::string& p) {
  const auto b = read_bytes(p);
  return std::string(b.begin(), b.end());
}

void write_text(const std::string& p, const std::string& s) { write_bytes(p, std::vector<uint8_t>(s.begin(), s.end())); }

std::string plan_json(double ppl_ratio_gate) {
  nlohmann::json plan = {
      {"name", "test plan"},
      {"defaults", {{"ctx", 512}, {"chunks", 2}, {"outlier-windows", 1}, {"no-checksum", true}}},
      {"gates", {{"max_kld", 5.0}}},
      {"models", {{{"name", "stories"}, {"path", data_file("stories260K/stories260K.bin")},
                   {"eval-ids", data_file("tinystories/validation_100.tok512.ids")}}}},
      {"runs", {{{"name", "float"}, {"preset", "none"}},
                {{"name", "rtn-rot"}, {"preset", "w4a4kv4-rtn"}, {"gates", {{"max_ppl_ratio", ppl_ratio_gate}}}},
                {{"name", "rtn-norot"}, {"preset", "w4a4kv4-rtn"}, {"no-rotate", true}},
                {{"name", "w4a16-rtn"}, {"preset", "w4a16-rtn"}, {"w-group", 0}}}}};
  return plan.dump(2);
}

}  // namespace

TEST(Batch, ShardsMergeToTheWholeAndGatesDecide) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string plan = dir / "plan.json";
  write_text(plan, plan_json(10.0));
  auto r = run_tool("quarot-batch", plan + " -o " + (dir / "whole"));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  for (int i = 1; i <= 3; ++i) {
    r = run_tool("quarot-batch", plan + " -o " + (dir / ("shard" + std::to_string(i))) + " --shard " + std::to_string(i) + "/3");
    ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  }
  r = run_tool("quarot-batch", "merge -o " + (dir / "merged") + " " + (dir / "shard1") + " " + (dir / "shard2") + " " + (dir / "shard3"));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  const std::string whole = slurp(dir / "whole/summary.csv");
  EXPECT_EQ(whole, slurp(dir / "merged/summary.csv"));
  EXPECT_EQ(slurp(dir / "whole/summary.md"), slurp(dir / "merged/summary.md"));
  EXPECT_EQ(std::count(whole.begin(), whole.end(), '\n'), 5);  // header + 4 runs
  EXPECT_NE(whole.find("stories,rtn-rot,w4a4kv4-rtn,on,"), std::string::npos) << whole;
  EXPECT_TRUE(fs::exists(dir / "whole/stories/rtn-rot/model.q4.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "whole/stories/rtn-rot/report.md"));
  EXPECT_FALSE(fs::exists(dir / "whole/stories/float/model.q4.safetensors"));  // nothing to pack
  EXPECT_TRUE(fs::exists(dir / "whole/ppl_vs_bits.svg"));

  // --resume: every run verifies and is skipped, with the same summary.
  r = run_tool("quarot-batch", plan + " -o " + (dir / "whole") + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(std::count(r.stderr_text.begin(), r.stderr_text.end(), '\n'), 4 + 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("up to date, skipped"), std::string::npos);
  EXPECT_EQ(whole, slurp(dir / "whole/summary.csv"));

  // An impossible gate: exit 1, naming the run and the figure; the merge applies it too.
  write_text(plan, plan_json(0.5));
  r = run_tool("quarot-batch", plan + " -o " + (dir / "whole") + " --resume");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("gate failed: stories/rtn-rot: perplexity ratio"), std::string::npos) << r.stderr_text;
  EXPECT_NE(slurp(dir / "whole/summary.md").find("FAIL"), std::string::npos);
}

TEST(Batch, BadPlansAndFlags) {
  TempDir dir;
  EXPECT_EQ(run_tool("quarot-batch", "-o " + (dir / "o")).exit_code, 2);                       // no plan
  EXPECT_EQ(run_tool("quarot-batch", "p.toml -o " + (dir / "o") + " --shard 4/3").exit_code, 2);  // bad shard
  EXPECT_EQ(run_tool("quarot-batch", "p.toml -o " + (dir / "o") + " --jobs 0").exit_code, 2);
  auto r = run_tool("quarot-batch", (dir / "missing.toml") + " -o " + (dir / "o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("missing.toml"), std::string::npos);
  const std::string bad = dir / "bad.toml";
  write_text(bad, "name = \"x\"\n[[models]]\nname = \"m\"\npath = \"m.bin\"\n[[runs]]\nname = \"r\"\ngates = { max_speed = 1 }\n");
  r = run_tool("quarot-batch", bad + " -o " + (dir / "o"));
  EXPECT_EQ(r.exit_code, 2);  // the plan's content: a usage error, like a --config key
  EXPECT_NE(r.stderr_text.find("unknown gate 'max_speed'"), std::string::npos) << r.stderr_text;
  write_text(bad, "name = \"x\"\n[[models]\n");
  r = run_tool("quarot-batch", bad + " -o " + (dir / "o"));
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.stderr_text.find("invalid TOML"), std::string::npos) << r.stderr_text;
  // A run that fails (missing model) is reported by name and fails the batch.
  write_text(bad, "[[models]]\nname = \"m\"\npath = \"/nonexistent/m.bin\"\n[[runs]]\nname = \"r\"\npreset = \"w4a4kv4-rtn\"\n");
  r = run_tool("quarot-batch", bad + " -o " + (dir / "o"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("m/r: run failed"), std::string::npos) << r.stderr_text;
  // The example plan parses and lists its 7 runs.
  r = run_tool("quarot-batch", std::string(QUAROT_SOURCE_DIR) + "/examples/ci-plan.toml -o " + (dir / "o") + " --list");
  EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(count_lines(r.stdout_text), 7) << r.stdout_text;
}

// A plan is read as strictly as a --config file (one reader): an unknown or misspelt option is
// refused before any run starts, naming the plan, the run and the key, with the closest valid
// key. Before, `w_bits = 3` was passed through, ignored by quarot-quantize, and the 4-bit run's
// gates passed as if it were the 3-bit one.
TEST(Batch, UnknownOptionsAndWrongTypesAreRefusedBeforeAnyRun) {
  TempDir dir;
  const std::string plan = dir / "plan.toml";
  const std::string head = "[[models]]\nname = \"m\"\npath = \"/nonexistent/m.bin\"\n";
  struct Case {
    std::string text, expect;
  } cases[] = {
      {head + "[[runs]]\nname = \"r3\"\nw_bits = 3\n", "run 'r3': unknown key 'w_bits' (did you mean 'w-bits'?)"},
      {head + "[[runs]]\nname = \"r\"\nw-bits = \"3\"\n", "run 'r': key 'w-bits' must be a whole number"},
      {head + "[[runs]]\nname = \"r\"\na-bits = 17\n", "run 'r': key 'a-bits' must be 2..8 or 16"},
      {head + "calibb = \"c.ids\"\n[[runs]]\nname = \"r\"\n", "model 'm': unknown key 'calibb' (did you mean 'calib'?)"},
      {"[defaults]\nthreds = 2\n" + head + "[[runs]]\nname = \"r\"\n", "defaults: unknown key 'threds' (did you mean 'threads'?)"},
      {"nmae = \"x\"\n" + head + "[[runs]]\nname = \"r\"\n", "unknown key 'nmae' (did you mean 'name'?)"},
      {head + "[[runs]]\nname = \"r\"\ngates = { max_kdl = 1 }\n", "unknown gate 'max_kdl' (did you mean 'max_kld'?"},
      {"[1]\n", "top level must be a JSON object"},
  };
  for (const auto& c : cases) {
    write_text(plan, c.text);
    const auto r = run_tool("quarot-batch", plan + " -o " + (dir / "o"));
    EXPECT_EQ(r.exit_code, 2) << c.text << r.stderr_text;
    EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find(plan), std::string::npos) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find(c.expect), std::string::npos) << c.text << " -> " << r.stderr_text;
    EXPECT_FALSE(fs::exists(dir / "o")) << "a run started";
  }
}

// Every run's options go through quarot-quantize's plan check (--dry-run: make_plan and the
// model's shapes) before the first run starts: a combination error in the last run is reported
// up front, naming the run, and nothing is run or written.
TEST(Batch, CombinationErrorsAreReportedBeforeAnyRun) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  TempDir dir;
  const std::string plan = dir / "plan.toml";
  write_text(plan, "[[models]]\nname = \"m\"\npath = \"" + data_file("stories260K/stories260K.bin") +
                       "\"\n[[runs]]\nname = \"ok\"\npreset = \"w4a4kv4-rtn\"\n[[runs]]\nname = \"wide-group\"\npreset = \"w4a4kv4-rtn\"\n"
                       "w-group = 128\n");
  const auto r = run_tool("quarot-batch", plan + " -o " + (dir / "o"));
  EXPECT_EQ(r.exit_code, 2) << r.stderr_text;
  EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find(plan + ": run 'm/wide-group': "), std::string::npos) << r.stderr_text;
  EXPECT_FALSE(fs::exists(dir / "o/m/ok")) << "a run started before the plan was checked";
}
