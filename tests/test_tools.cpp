// The tools as a user runs them: exit codes 0/1/2, one-line errors naming the file, nothing
// written on failure, and the default model summarised.
#include <gtest/gtest.h>

#include <cctype>
#include <set>

#include "quarot/options.hpp"
#include "quarot/pipeline.hpp"
#include "quarot/version.hpp"
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

// --config files are strict (one reader with quarot-batch's plans, tools/config_file.hpp): an
// unknown key, a value of the wrong type or range, a non-object document or a binary file is a
// usage error naming the file and the key, with the closest valid key for a typo. Before, a
// TOML `w_bits = 3` was ignored and the run quantized at 4 bits.
TEST(Tools, ConfigFilesAreStrict) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  TempDir dir;
  const std::string model = data_file("stories260K/stories260K.bin"), cfg = dir / "c.toml";
  auto with = [&](const std::string& text) {
    write_bytes(cfg, std::vector<uint8_t>(text.begin(), text.end()));
    return run_tool("quarot-quantize", model + " --dry-run --config " + cfg);
  };
  struct Case {
    std::string text, expect;
  } refused[] = {
      {"w_bits = 3\n", "unknown key 'w_bits' (did you mean 'w-bits'?)"},
      {"w-bitz = 3\n", "did you mean 'w-bits'?"},
      {"presett = \"w4a16\"\n", "did you mean 'preset'?"},
      {"w-bits = \"three\"\n", "key 'w-bits' must be a whole number"},
      {"w-bits = 3.5\n", "key 'w-bits' must be a whole number"},
      {"w-bits = 9\n", "key 'w-bits' must be 2..8"},
      {"a-clip = -1.0\n", "key 'a-clip' must be (0, 1]"},
      {"seed = -1\n", "key 'seed' must be a whole number >= 0"},
      {"rotation = \"hadmard\"\n", "key 'rotation' must be one of hadamard, random"},
      {"w-asym = 1\n", "key 'w-asym' must be true or false"},
      {"[weights]\nbits = 3\n", "unknown key 'weights'"},
      {"[1, 2]\n", "top level must be a JSON object"},
      {"\"w4a16\"\n", "invalid TOML"},
      {"{\"w_bits\": 3}\n", "unknown key 'w_bits' (did you mean 'w-bits'?)"},
      {std::string("w-bits = 3\n\0\x01\x02", 14), "not a text file"},
  };
  for (const auto& c : refused) {
    const auto r = with(c.text);
    EXPECT_EQ(r.exit_code, 2) << c.text << r.stdout_text;
    EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find(cfg), std::string::npos) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find(c.expect), std::string::npos) << c.text << " -> " << r.stderr_text;
  }
  // The right key takes effect, in TOML and in JSON; a flag on the command line overrides it.
  auto r = with("w-bits = 3\npreset = \"w4a16-rtn\"\nw-group = 0\n");  // per channel: 128 divides no width of stories260K
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("3-bit"), std::string::npos) << r.stdout_text;
  r = with("{\"w-bits\": 3, \"w-group\": 0, \"no-rotate\": true}");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("3-bit"), std::string::npos) << r.stdout_text;
  EXPECT_NE(r.stdout_text.find("rotate: no"), std::string::npos) << r.stdout_text;
  r = run_tool("quarot-quantize", model + " --dry-run --config " + cfg + " --w-bits 2");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("2-bit"), std::string::npos) << r.stdout_text;
}

// Every numeric flag is range-checked from the one option table (options.hpp): values the old
// checks let through (a negative clip, 100000 threads, a seed of -1 that wrapped) are usage
// errors naming the flag and its range, from the CLI and from the library's make_plan alike.
TEST(Tools, NumericFlagsAreRangeCheckedFromTheTable) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const std::string model = data_file("stories260K/stories260K.bin");
  for (const auto& [flag, expect] : std::vector<std::pair<std::string, std::string>>{
           {"--a-bits 17", "2..8 or 16"}, {"--a-clip -1", "(0, 1]"}, {"--kv-clip 1.5", "(0, 1]"}, {"--threads 100000", "0..1024"},
           {"--seed -1", "whole number >= 0"}, {"--w-bits 9", "2..8"}, {"--classifier-bits 12", "2..8 or 16"}, {"--damp 0", "(0, 1]"},
           {"--qdec-bits 6", "4 or 8"}, {"--nsamples 0", "1.."}, {"--w-group -2", "0.."}}) {
    const auto r = run_tool("quarot-quantize", model + " --dry-run " + flag);
    EXPECT_EQ(r.exit_code, 2) << flag;
    EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find(flag.substr(0, flag.find(' '))), std::string::npos) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find(expect), std::string::npos) << flag << " -> " << r.stderr_text;
  }
  // The same table for other tools' flags of the same name.
  EXPECT_EQ(run_tool("quarot-eval", model + " --threads 100000").exit_code, 2);

  quarot::PlanOptions o;
  o.model = model;
  o.a_clip = -1;
  try {
    (void)quarot::make_plan(o);
    ADD_FAILURE() << "a_clip -1 accepted";
  } catch (const quarot::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--a-clip: must be (0, 1]"), std::string::npos) << e.what();
  }
  o.a_clip = 0;
  o.threads = 100000;
  EXPECT_THROW((void)quarot::make_plan(o), quarot::UsageError);
}

// The option table and quarot-quantize's options are the same set: every --config key and
// batch option is a flag, and every long flag is a key.
TEST(Tools, OptionTableMatchesQuantizeFlags) {
  const auto r = run_tool("quarot-quantize", "--help");
  ASSERT_EQ(r.exit_code, 0);
  std::set<std::string> flags;
  for (std::size_t i = r.stdout_text.find("--"); i != std::string::npos; i = r.stdout_text.find("--", i + 2)) {
    std::size_t e = i + 2;
    while (e < r.stdout_text.size() && (std::isalnum(static_cast<unsigned char>(r.stdout_text[e])) || r.stdout_text[e] == '-')) ++e;
    if (e > i + 2 && (i == 0 || r.stdout_text[i - 1] == ' ' || r.stdout_text[i - 1] == ',')) flags.insert(r.stdout_text.substr(i + 2, e - i - 2));
  }
  for (const char* not_keys : {"help", "config", "version"}) flags.erase(not_keys);
  std::set<std::string> table = {};
  for (const auto& s : quarot::option_specs())
    if (s.name != "model") table.insert(std::string(s.name));
  EXPECT_EQ(flags, table);
}

// The "command:" line of --dry-run (also report.md's configuration) is a command that parses
// and makes the same plan, paths with spaces and quotes included: run it through the shell
// with --dry-run and the whole plan text, its own command line too, comes back the same.
TEST(Tools, DryRunCommandLineReproducesThePlan) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  TempDir dir;
  fs::create_directories(dir / "in dir");
  const std::string model = dir / "in dir/it's model.bin";
  fs::copy_file(data_file("stories260K/stories260K.bin"), model);
  for (const std::string& flags :
       {std::string("--preset w4a4kv4-rtn --w-bits 3 --a-clip 0.8 --seed 7 --no-rotate --kv-clip 0.9 --ctx 128 --chunks 2"),
        std::string("--preset w4a16 --w-group 0 --act-order --damp 0.05 --nsamples 8 --seqlen 64 --rotation random --qdec-k 8"),
        std::string("--preset w4a4kv4 -o '") + (dir / "out dir/m.q4.safetensors") + "' --a-group 16 --classifier-bits 8"}) {
    const auto first = run_tool("quarot-quantize", "\"" + model + "\" --dry-run " + flags);
    ASSERT_EQ(first.exit_code, 0) << flags << first.stderr_text;
    const auto at = first.stdout_text.find("  command: quarot-quantize ");
    ASSERT_NE(at, std::string::npos) << first.stdout_text;
    const auto begin = at + std::string("  command: quarot-quantize ").size();
    const std::string args = first.stdout_text.substr(begin, first.stdout_text.find('\n', begin) - begin);
    const auto again = run_tool("quarot-quantize", args + " --dry-run");
    ASSERT_EQ(again.exit_code, 0) << args << again.stderr_text;
    // The same plan; the memory line also states the memory available now, which moves.
    auto plan_text = [](std::string t) {
      const auto m = t.find("\n  memory: ");
      if (m != std::string::npos) t.erase(m, t.find('\n', m + 1) - m);
      return t;
    };
    EXPECT_EQ(plan_text(again.stdout_text), plan_text(first.stdout_text)) << args;
  }
}

// Every tool answers --version with project(VERSION) (one generated string); -q leaves stderr
// empty on success; quarot-eval --progress bar draws a bar (it printed lines before).
TEST(Tools, VersionQuietAndProgressBar) {
  for (const char* tool : {"quarot-quantize", "quarot-eval", "quarot-run", "quarot-rotate", "quarot-convert", "quarot-inspect",
                           "quarot-batch", "quarot-synth", "quarot-tokenize"}) {
    const auto r = run_tool(tool, "--version");
    EXPECT_EQ(r.exit_code, 0) << tool << r.stderr_text;
    EXPECT_EQ(r.stdout_text, std::string(tool) + " " + quarot::kQuarotVersion + "\n") << tool;
  }
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string model = data_file("stories260K/stories260K.bin"), ids = data_file("tinystories/validation_100.tok512.ids");
  for (const auto& [tool, args] : std::vector<std::pair<std::string, std::string>>{
           {"quarot-eval", model + " --ids " + ids + " --ctx 256 --chunks 2 -q --progress bar"},
           {"quarot-convert", model + " -o " + (dir / "c") + " -q"},
           {"quarot-inspect", model + " -q"},
           {"quarot-rotate", model + " -o " + (dir / "r") + " -q"},
           {"quarot-synth", "--preset tiny -o " + (dir / "s") + " -q"},
           {"quarot-run", model + " -n 4 -q"},
           {"quarot-quantize", model + " --preset w4a4kv4-rtn --eval-ids " + ids + " --ctx 256 --chunks 2 --outlier-windows 0 --no-checksum -q"}}) {
    const auto r = run_tool(tool, args);
    EXPECT_EQ(r.exit_code, 0) << tool << r.stderr_text;
    EXPECT_EQ(r.stderr_text, "") << tool;
    EXPECT_NE(r.stdout_text, "") << tool;  // the results still come
  }
  const auto r = run_tool("quarot-eval", model + " --ids " + ids + " --ctx 256 --chunks 3 --progress bar");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("\reval ["), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("eval: 3 windows"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(r.stderr_text.find("[1/3] ppl so far"), std::string::npos) << r.stderr_text;
}
