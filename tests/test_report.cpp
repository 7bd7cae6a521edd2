// Reports: SVG charts are well-formed XML with the expected series, the schema validator
// catches what it should, and quarot-quantize's CLI contract (help, usage errors, dry run,
// atomic output, report.json valid against docs/report.schema.json, Markdown with the numbers).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "quarot/packed.hpp"
#include "quarot/report.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;
namespace fs = std::filesystem;

namespace {

// A small well-formedness check: every tag closed in order, attributes quoted, one root.
// Returns "" when well-formed, else what is wrong.
std::string xml_problem(const std::string& s) {
  std::vector<std::string> stack;
  int roots = 0;
  std::size_t i = 0;
  while ((i = s.find('<', i)) != std::string::npos) {
    const std::size_t e = s.find('>', i);
    if (e == std::string::npos) return "unterminated tag";
    std::string tag = s.substr(i + 1, e - i - 1);
    i = e + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '?' || tag[0] == '!') continue;
    int quotes = 0;
    for (char c : tag) quotes += c == '"';
    if (quotes % 2) return "unbalanced quotes in <" + tag + ">";
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (stack.empty() || stack.back() != name) return "unexpected </" + name + ">";
      stack.pop_back();
      continue;
    }
    const bool self = tag.back() == '/';
    const std::string name = tag.substr(0, tag.find_first_of(" /"));
    if (stack.empty()) ++roots;
    if (!self) stack.push_back(name);
  }
  if (!stack.empty()) return "unclosed <" + stack.back() + ">";
  if (roots != 1) return std::to_string(roots) + " root elements";
  if (s.find('&') != std::string::npos) {
    for (std::size_t k = s.find('&'); k != std::string::npos; k = s.find('&', k + 1))
      if (s.compare(k, 5, "&amp;") && s.compare(k, 4, "&lt;") && s.compare(k, 4, "&gt;") && s.compare(k, 6, "&quot;") && s.compare(k, 6, "&apos;"))
        return "raw &";
  }
  return "";
}

std::string read_text(const std::string& p) {
  const auto b = read_bytes(p);
  return std::string(b.begin(), b.end());
}

}  // namespace

TEST(Report, SvgChartIsWellFormedWithItsSeries) {
  ChartSeries a{"q_proj <&>", {0, 1, 2}, {0.1, 0.2, 0.15}, {}, false};
  ChartSeries b{"down_proj", {0, 1, 2}, {0.3, 0.05, 0.2}, {"x", "y", "z"}, true};
  ChartOptions o{"error \"per\" layer", "layer", "error"};
  const auto svg = svg_chart({a, b}, o);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_NE(svg.find("data-name=\"q_proj &lt;&amp;&gt;\""), std::string::npos);
  EXPECT_NE(svg.find("data-name=\"down_proj\""), std::string::npos);
  EXPECT_NE(svg.find("stroke-dasharray"), std::string::npos);
  o.log_y = true;
  o.lines = false;
  EXPECT_EQ(xml_problem(svg_chart({a, b}, o)), "");
  EXPECT_EQ(xml_problem(svg_chart({}, o)), "");  // empty: still a valid document
  // The checker itself can fail.
  EXPECT_NE(xml_problem("<svg><g></svg>"), "");
  EXPECT_NE(xml_problem("<a x=\"1></a>"), "");
}

TEST(Report, SchemaValidatorCatchesViolations) {
  const std::string schema = R"({"type":"object","required":["a","b"],
    "properties":{"a":{"type":"integer","minimum":0},"b":{"type":"array","items":{"$ref":"#/definitions/x"}},
                  "c":{"enum":["u","v"]},"d":{"const":"k"}},
    "definitions":{"x":{"type":"object","required":["n"],"properties":{"n":{"type":["number","null"]}}}}})";
  EXPECT_TRUE(validate_json_schema(schema, R"({"a":1,"b":[{"n":1.5},{"n":null}],"c":"u","d":"k"})").empty());
  auto errs = validate_json_schema(schema, R"({"a":-1,"b":[{"n":"s"},{}],"c":"w","d":"j"})");
  ASSERT_EQ(errs.size(), 5u);
  EXPECT_NE(errs[0].find("/a"), std::string::npos);
  EXPECT_FALSE(validate_json_schema(schema, R"({"a":1})").empty());      // missing b
  EXPECT_FALSE(validate_json_schema(schema, R"({"a":1.5,"b":[]})").empty());  // not an integer
  EXPECT_FALSE(validate_json_schema(schema, "{not json").empty());
}

TEST(Report, MarkdownStatesBitsPerCachedElementWhenGiven) {
  // The fields the pipeline fills from kv_cache_bits() (quant.hpp); a report without them has no
  // row; report.json carries them.
  RunReport with;
  with.sizes.bits_per_weight = 4.5;
  with.sizes.kv_bits_per_element = 6;
  with.sizes.kv_stored_bits_per_element = 11;
  with.config_json = "{}";
  const std::string md = report_markdown(with);
  EXPECT_NE(with.to_json().find("\"kv_stored_bits_per_element\": 11"), std::string::npos);
  EXPECT_NE(md.find("| bits per cached K/V element | 16 | 6.00 | 6.00 (11.00 stored with scales) |"), std::string::npos) << md;
  RunReport without;
  without.sizes.bits_per_weight = 4.5;
  without.config_json = "{}";
  EXPECT_EQ(report_markdown(without).find("cached K/V"), std::string::npos);
}

TEST(QuantizeCli, HelpUsageDryRunAndErrors) {
  auto r = run_tool("quarot-quantize", "--help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* group : {"Input/Output", "Rotation", "Weights", "Activations & KV", "Calibration", "Evaluation", "Runtime", "Logging"})
    EXPECT_NE(r.stdout_text.find(group), std::string::npos) << group;
  EXPECT_NE(r.stdout_text.find("w4a4kv4"), std::string::npos);
  // Every bad flag: exit 2 with one line.
  for (const char* bad : {"--w-bits 9", "--preset w3", "--a-bits 1", "--progress loud", "--no-such-flag", "--kv-clip 1.5",
                          "--classifier-bits 12", "--damp -1", "--nsamples 0", "--w-group x", ""}) {
    r = run_tool("quarot-quantize", std::string(*bad ? "m.bin " : "") + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.stderr_text;
    EXPECT_EQ(count_lines(r.stderr_text), 1) << bad << ": " << r.stderr_text;
  }
  r = run_tool("quarot-quantize", "/nonexistent/model.bin --preset w4a4kv4-rtn");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.stderr_text.find("/nonexistent/model.bin"), std::string::npos) << r.stderr_text;

  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const std::string model = data_file("stories260K/stories260K.bin");
  TempDir dir;
  r = run_tool("quarot-quantize", model + " --dry-run --calib c.ids -o " + (dir / "sub/x.q4.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("R4 at down_proj's input"), std::string::npos) << r.stdout_text;
  EXPECT_NE(r.stdout_text.find("bits per weight"), std::string::npos);
  EXPECT_TRUE(fs::is_empty(dir.path())) << "--dry-run wrote something";
  // A config file (TOML or JSON); flags override it.
  const std::string toml = dir / "c.toml", js = dir / "c.json";
  write_bytes(toml, std::vector<uint8_t>{});
  {
    const std::string t = "preset = \"w4a4kv4-rtn\"\nw-bits = 3\n";
    write_bytes(toml, std::vector<uint8_t>(t.begin(), t.end()));
    const std::string j = "{\"preset\": \"w4a16-rtn\", \"w-group\": 0, \"no-rotate\": true}";
    write_bytes(js, std::vector<uint8_t>(j.begin(), j.end()));
  }
  r = run_tool("quarot-quantize", model + " --dry-run --config " + toml);
  EXPECT_NE(r.stdout_text.find("--preset w4a4kv4-rtn"), std::string::npos) << r.stdout_text << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("--w-bits 3"), std::string::npos);
  r = run_tool("quarot-quantize", model + " --dry-run --config " + toml + " --w-bits 2");
  EXPECT_NE(r.stdout_text.find("--w-bits 2"), std::string::npos);
  r = run_tool("quarot-quantize", model + " --dry-run --config " + js);
  EXPECT_NE(r.stdout_text.find("--preset w4a16-rtn --rotate off"), std::string::npos) << r.stdout_text << r.stderr_text;
  EXPECT_EQ(run_tool("quarot-quantize", model + " --dry-run --config " + (dir / "missing.toml")).exit_code, 2);
  // Overwriting the input is refused.
  r = run_tool("quarot-quantize", model + " --preset w4a4kv4-rtn -o " + model);
  EXPECT_EQ(r.exit_code, 1);
}

TEST(QuantizeCli, KilledRunLeavesNoOutput) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("stories260K/calib-t1-seed42.ids");
  TempDir dir;
  const std::string out = dir / "k.q4.safetensors";
  const std::string cmd = std::string(QUAROT_TOOL_DIR) + "/quarot-quantize " + data_file("stories260K/stories260K.bin") +
                          " --preset w4a4kv4 --calib " + data_file("stories260K/calib-t1-seed42.ids") + " --seqlen 512 -o " + out +
                          " --progress none >/dev/null 2>&1";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // GPTQ is running
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(dir / "report.json"));
  EXPECT_FALSE(fs::exists(dir / "k.q4.safetensors.report/report.json"));
}

TEST(QuantizeCli, ReportValidatesAndCarriesTheNumbers) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string out = dir / "r/s.q4.safetensors";
  const auto r = run_tool("quarot-quantize", data_file("stories260K/stories260K.bin") + " --preset w4a4kv4-rtn -o " + out +
                                                 " --eval-ids " + data_file("tinystories/validation_100.tok512.ids") +
                                                 " --ctx 512 --chunks 3 --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  const std::string report = read_text(dir / "r/s.q4.safetensors.report/report.json");
  const std::string schema = read_text(std::string(QUAROT_SOURCE_DIR) + "/docs/report.schema.json");
  const auto errs = validate_json_schema(schema, report);
  EXPECT_TRUE(errs.empty()) << errs.front();
  const auto j = nlohmann::json::parse(report);
  EXPECT_EQ(j["modules"].size(), 36u);  // 35 linears and the INT8 embedding/classifier table ("lm_head", a packed default)
  EXPECT_FALSE(j["outliers"].empty());
  EXPECT_EQ(j["eval"]["windows"].get<int>(), 3);
  // The Markdown summary states the report's numbers.
  const std::string md = read_text(dir / "r/s.q4.safetensors.report/report.md");
  char ppl[32];
  std::snprintf(ppl, sizeof ppl, "%.4f", j["eval"]["packed"]["ppl"].get<double>());
  EXPECT_NE(md.find(std::string("| perplexity | ")), std::string::npos);
  EXPECT_NE(md.find(ppl), std::string::npos) << ppl << "\n" << md;
  std::snprintf(ppl, sizeof ppl, "%.4f", j["eval"]["float"]["ppl"].get<double>());
  EXPECT_NE(md.find(ppl), std::string::npos);
  // The plots: well-formed, one series per module kind / per point before and after.
  const std::string err_svg = read_text(dir / "r/s.q4.safetensors.report/error_per_layer.svg"), out_svg = read_text(dir / "r/s.q4.safetensors.report/outliers.svg");
  EXPECT_EQ(xml_problem(err_svg), "");
  EXPECT_EQ(xml_problem(out_svg), "");
  for (const LinearSpec& spec : kLinearSpecs)
    EXPECT_NE(err_svg.find(std::string("data-name=\"") + spec.name + "\""), std::string::npos) << spec.name;
  EXPECT_NE(out_svg.find("data-name=\"down_proj_input before\""), std::string::npos);
  EXPECT_NE(out_svg.find("data-name=\"down_proj_input after\""), std::string::npos);
  // A broken report fails the schema.
  auto bad = j;
  bad["modules"][0].erase("rel_weight_error");
  EXPECT_FALSE(validate_json_schema(schema, bad.dump()).empty());
}

TEST(QuantizeCli, QdecIsTunedWrittenAndReported) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string model = data_file("stories260K/stories260K.bin"), ids = data_file("tinystories/validation_100.tok512.ids");
  const std::string out = dir / "qd/s.q4.safetensors";
  // Usage errors first: nothing runs.
  for (const std::string& bad : std::vector<std::string>{" --qdec-slowdown 5", " -o " + out + " --qdec-k 3 --qdec-slowdown 5", " -o " + out + " --qdec-bits 5",
                                " -o " + out + " --qdec-k foo", " -o " + out + " --qdec-sweep"}) {
    const auto r = run_tool("quarot-quantize", model + " --preset w4a16-rtn --w-group 0" + bad);
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.stderr_text;
  }
  EXPECT_FALSE(fs::exists(out));
  const auto r = run_tool("quarot-quantize", model + " --preset w4a16-rtn --w-bits 3 --w-group 0 --qdec-slowdown 10 --qdec-sweep -o " + out +
                                                 " --eval-ids " + ids + " --ctx 512 --chunks 2 --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  const std::string report = read_text(dir / "qd/s.q4.safetensors.report/report.json");
  const auto errs = validate_json_schema(read_text(std::string(QUAROT_SOURCE_DIR) + "/docs/report.schema.json"), report);
  EXPECT_TRUE(errs.empty()) << errs.front();
  const auto j = nlohmann::json::parse(report);
  const auto& q = j["qdec"];
  ASSERT_TRUE(q.is_object());
  EXPECT_LE(q["tuner"]["cost_seconds_per_token"].get<double>(), q["tuner"]["budget_seconds_per_token"].get<double>());
  EXPECT_EQ(q["sweep"].size(), 9u);
  // k = 0 in the sweep is the plain model; all channels beat it (3-bit weights, 4-bit residual).
  EXPECT_DOUBLE_EQ(q["sweep"][0]["simulated"]["ppl"].get<double>(), j["eval"]["quantized"]["ppl"].get<double>());
  EXPECT_LT(q["sweep"][8]["simulated"]["ppl"].get<double>(), q["sweep"][0]["simulated"]["ppl"].get<double>());
  // The file carries the section and the tuned k; the report says the same.
  const PackedModel pm(out);
  ASSERT_NE(pm.qdec(), nullptr);
  EXPECT_EQ(pm.qdec_k().describe(), q["k_chunk_text"].get<std::string>());
  EXPECT_EQ(pm.qdec()->bytes(), q["residual_bytes"].get<uint64_t>());
  const std::string md = read_text(dir / "qd/s.q4.safetensors.report/report.md");
  EXPECT_NE(md.find("## QDEC"), std::string::npos);
  EXPECT_NE(md.find(q["k_chunk_text"].get<std::string>()), std::string::npos);
  // quarot-eval runs it with the file's k, or another; a model without the section refuses k > 0.
  const auto e0 = run_tool("quarot-eval", out + " --ids " + ids + " --ctx 512 --chunks 2 --qdec-k 0 --progress none");
  EXPECT_EQ(e0.exit_code, 0) << e0.stderr_text;
  EXPECT_EQ(run_tool("quarot-eval", out + " --ids " + ids + " --qdec-k x").exit_code, 2);
  EXPECT_EQ(run_tool("quarot-eval", model + " --ids " + ids + " --ctx 64 --chunks 1 --qdec-k 4").exit_code, 1);
}
