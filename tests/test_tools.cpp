// The tools as a user runs them: exit codes 0/1/2, one-line errors naming the file, nothing
// written on failure, and the default model summarised.
#include <gtest/gtest.h>

#include "test_support.hpp"

using namespace quarot::test;

TEST(Tools, HelpExitsZeroAndTeaches) {
  for (const char* tool : {"quarot-inspect", "quarot-synth", "quarot-convert"}) {
    const auto r = run_tool(tool, "--help");
    EXPECT_EQ(r.exit_code, 0) << tool;
    EXPECT_NE(r.stdout_text.find("Usage"), std::string::npos) << tool;
  }
}

TEST(Tools, UsageErrorsExitTwo) {
  EXPECT_EQ(run_tool("quarot-inspect", "").exit_code, 2);
  EXPECT_EQ(run_tool("quarot-synth", "-o /tmp/x --layers 0").exit_code, 2);
  EXPECT_EQ(run_tool("quarot-synth", "-o /tmp/x --dtype f8").exit_code, 2);
  EXPECT_EQ(run_tool("quarot-synth", "-o /tmp/x --shard-size 3X").exit_code, 2);
  const auto r = run_tool("quarot-convert", "a --no-such-flag");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
}

TEST(Tools, InspectSummarisesTheDefaultModel) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const auto r = run_tool("quarot-inspect", data_file("stories260K/stories260K.bin") + " --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("5 layers, hidden 64, FFN 172, 8 heads, 4 KV heads"), std::string::npos) << r.stdout_text;
  EXPECT_NE(r.stdout_text.find("parameters:   260032"), std::string::npos);
  EXPECT_NE(r.stdout_text.find("tied"), std::string::npos);
}

TEST(Tools, FailuresAreOneLineExitOneAndWriteNothing) {
  TempDir dir;
  write_bytes(dir / "broken.bin", std::vector<uint8_t>(100, 7));
  for (const std::string& input : {dir / "missing.bin", dir / "broken.bin", dir.path().string()}) {
    const auto r = run_tool("quarot-convert", input + " -o " + (dir / "out") + " --progress none");
    EXPECT_EQ(r.exit_code, 1) << input;
    EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find(input), std::string::npos) << r.stderr_text;
    EXPECT_FALSE(fs::exists(dir / "out")) << "output written despite the error";
  }
}

TEST(Tools, SynthThenConvertThenInspect) {
  TempDir dir;
  auto r = run_tool("quarot-synth", "--preset tiny --seed 3 --dtype bf16 --shard-size 64K -o " + (dir / "s") + " --progress plain");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("planted residual outlier channels:"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir / "s/model.safetensors.index.json"));
  r = run_tool("quarot-convert", (dir / "s") + " -o " + (dir / "c") + " --dtype f32 --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  r = run_tool("quarot-inspect", (dir / "c/config.json") + " --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("2 layers, hidden 64, FFN 172"), std::string::npos);
  // Converting a folder into itself is refused and leaves it intact.
  const auto before = read_bytes(dir / "c/model.safetensors");
  r = run_tool("quarot-convert", (dir / "c") + " -o " + (dir / "c") + " --progress none");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("refusing to overwrite an input file"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(read_bytes(dir / "c/model.safetensors"), before);
}
