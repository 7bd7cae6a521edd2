// Zero-shot multiple-choice tasks: the file readers, and the scorer against a plain one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/report.hpp"
#include "quarot/tasks.hpp"
#include "quarot/tokenizer.hpp"
#include "test_support.hpp"

using namespace quarot;
using namespace quarot::test;

namespace {

std::string read_file_text(const std::string& path) {
  const auto b = read_bytes(path);
  return {b.begin(), b.end()};
}

void write_file_text(const std::string& path, const std::string& text) { write_bytes(path, {text.begin(), text.end()}); }

const char* kHellaswag =
    "Roof shingle removal: A man is sitting on a roof. he\n"
    "3\n"
    "is using wrap to wrap a pair of skis.\n"
    "is ripping level tiles off.\n"
    "is holding a rubik's cube.\n"
    "starts pulling up roofing on a roof.\n"
    "Clean and jerk: A lady walks to a barbell. the lady\r\n"
    "0\r\n"
    "swings.\r\n"
    "pulls.\r\n"
    "pulls a rope.\r\n"
    "stands.\r\n";

}  // namespace

TEST(Tasks, HellaswagParses) {
  const auto t = parse_hellaswag(kHellaswag, "hs.txt");
  EXPECT_EQ(t.name, "hellaswag");
  ASSERT_EQ(t.items.size(), 2u);
  EXPECT_EQ(t.items[0].context, "Roof shingle removal: A man is sitting on a roof. he");
  EXPECT_EQ(t.items[0].gold, 3);
  ASSERT_EQ(t.items[0].endings.size(), 4u);
  EXPECT_EQ(t.items[0].endings[3], "starts pulling up roofing on a roof.");
  EXPECT_EQ(t.items[1].context, "Clean and jerk: A lady walks to a barbell. the lady");  // CR dropped
  EXPECT_EQ(t.items[1].gold, 0);
  EXPECT_EQ(t.items[1].endings[2], "pulls a rope.");
}

TEST(Tasks, HellaswagMalformedNamesFileAndLine) {
  std::string text = kHellaswag;
  EXPECT_NE(error_of([&] { parse_hellaswag(text.substr(0, text.rfind("stands")), "hs.txt"); }).find("hs.txt: 11 lines: not a multiple of 6"),
            std::string::npos);
  std::string bad_label = text;
  bad_label.replace(bad_label.find("\n3\n"), 3, "\n4\n");
  EXPECT_EQ(error_of([&] { parse_hellaswag(bad_label, "hs.txt"); }), "hs.txt:2: label '4' is not one of 0..3");
  std::string empty_ending = text;
  empty_ending.replace(empty_ending.find("is ripping level tiles off."), 27, "");
  EXPECT_EQ(error_of([&] { parse_hellaswag(empty_ending, "hs.txt"); }), "hs.txt:4: empty ending");
  EXPECT_EQ(error_of([&] { parse_hellaswag("", "hs.txt"); }), "hs.txt: no tasks");
  EXPECT_NE(error_of([&] { parse_hellaswag("BZh91AY&SY...", "hs.txt.bz2"); }).find("bzip2-compressed"), std::string::npos);
}

TEST(Tasks, PiqaParses) {
  const std::string jsonl =
      "{\"goal\": \"dresser\", \"sol1\": \"replace drawer\", \"sol2\": \"finish, woodgrain\"}\n"
      "{\"goal\": \"How to \\u00e9?\", \"sol1\": \"a\", \"sol2\": \"b\", \"extra\": 1}\n";
  const auto t = parse_piqa(jsonl, "v.jsonl", "1\n0\n", "v-labels.lst");
  EXPECT_EQ(t.name, "piqa");
  ASSERT_EQ(t.items.size(), 2u);
  EXPECT_EQ(t.items[0].context, "Question: dresser\nAnswer:");
  EXPECT_EQ(t.items[0].endings, (std::vector<std::string>{"replace drawer", "finish, woodgrain"}));
  EXPECT_EQ(t.items[0].gold, 1);
  EXPECT_EQ(t.items[1].context, "Question: How to \xc3\xa9?\nAnswer:");
  EXPECT_EQ(t.items[1].gold, 0);
}

TEST(Tasks, PiqaMalformedNamesFileAndLine) {
  const std::string good = "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": \"b\"}\n";
  EXPECT_EQ(error_of([&] { parse_piqa(good + "{\"goal\": \"g\", \"sol1\": \"a\"\n", "v.jsonl", "0\n1\n", "l.lst"); }),
            "v.jsonl:2: not a JSON value");
  EXPECT_EQ(error_of([&] { parse_piqa(good + "[1]\n", "v.jsonl", "0\n1\n", "l.lst"); }), "v.jsonl:2: not a JSON object");
  EXPECT_EQ(error_of([&] { parse_piqa(good + "{\"goal\": \"g\", \"sol1\": \"a\", \"sol2\": 3}\n", "v.jsonl", "0\n1\n", "l.lst"); }),
            "v.jsonl:2: no string field \"sol2\"");
  EXPECT_EQ(error_of([&] { parse_piqa(good + good, "v.jsonl", "0\n2\n", "l.lst"); }), "l.lst:2: label '2' is not one of 0..1");
  EXPECT_EQ(error_of([&] { parse_piqa(good + good, "v.jsonl", "0\n", "l.lst"); }), "l.lst: 1 labels for 2 items in v.jsonl");
}

TEST(Tasks, AccuracyAndStandardError) {
  EXPECT_EQ(argmax_choice({-3.0, -1.0, -1.0, -2.0}), 1);  // first maximum, as numpy
  EXPECT_EQ(length_normalized({-4.0, -3.0}, {"abcd", "a\xc3\xa9"}), (std::vector<double>{-1.0, -1.0}));  // bytes
  TaskResult r;
  for (int i = 0; i < 10; ++i) {
    ItemScore s;
    s.gold = 1;
    s.pred = i < 3 ? 1 : 0;       // 3 of 10
    s.pred_norm = i < 6 ? 1 : 0;  // 6 of 10
    r.scores.push_back(s);
  }
  r.seconds = 2;
  summarize(r);
  EXPECT_DOUBLE_EQ(r.acc, 0.3);
  EXPECT_DOUBLE_EQ(r.acc_stderr, std::sqrt(0.3 * 0.7 / 9));
  EXPECT_DOUBLE_EQ(r.acc_norm, 0.6);
  EXPECT_DOUBLE_EQ(r.acc_norm_stderr, std::sqrt(0.6 * 0.4 / 9));
  EXPECT_DOUBLE_EQ(r.seconds_per_item, 0.2);
}

namespace {

// The plain scorer the library's is checked against: per ending, the full sequence
// encode_with_special(context + " " + ending) through a fresh fp64 transformer, the log-softmax
// of each continuation token (those after encode_with_special(context)'s count), summed.
std::vector<std::vector<double>> plain_logliks(const ModelWeights& w, const Tokenizer& tok, const ChoiceTask& task, int n) {
  std::vector<std::vector<double>> out;
  for (int i = 0; i < n; ++i) {
    const auto& item = task.items[i];
    const std::size_t nctx = tok.encode_with_special(item.context).size();
    std::vector<double> lls;
    for (const auto& e : item.endings) {
      const auto ids = tok.encode_with_special(item.context + " " + e);
      Transformer<double> fresh(w, int(ids.size()));
      std::vector<double> logits;
      fresh.forward(ids, logits);
      const int V = w.config.vocab;
      double ll = 0;
      for (std::size_t p = nctx; p < ids.size(); ++p) {
        const double* x = logits.data() + (p - 1) * V;
        double mx = x[0];
        for (int k = 1; k < V; ++k) mx = std::max(mx, x[k]);
        double z = 0;
        for (int k = 0; k < V; ++k) z += std::exp(x[k] - mx);
        ll += x[ids[p]] - (mx + std::log(z));
      }
      lls.push_back(ll);
    }
    out.push_back(lls);
  }
  return out;
}

void expect_matches_plain(const ChoiceTask& task, int n) {
  const auto w = load_model(data_file("stories260K/stories260K.bin"));
  const auto tok = load_tokenizer(data_file("stories260K/tok512.model"));
  const auto plain = plain_logliks(w, *tok, task, n);
  Transformer<double> model64(w, w.config.max_positions);
  const auto r64 = score_task(model64, *tok, task, n);
  Transformer<float> model32(w, w.config.max_positions);
  const auto r32 = score_task(model32, *tok, task, n);
  ASSERT_EQ(r64.items, n);
  ASSERT_EQ(r32.items, n);
  EXPECT_EQ(r64.truncated_items, 0);
  int hit = 0, hit_norm = 0;
  for (int i = 0; i < n; ++i) {
    const auto& item = task.items[i];
    ASSERT_EQ(r64.scores[i].loglik.size(), item.endings.size());
    int best = 0, best_norm = 0;
    for (std::size_t e = 0; e < item.endings.size(); ++e) {
      EXPECT_NEAR(r64.scores[i].loglik[e], plain[i][e], 1e-6) << "item " << i << " ending " << e;
      // fp32 forward: the same figure to fp32 accuracy over the continuation's tokens.
      EXPECT_NEAR(r32.scores[i].loglik[e], plain[i][e], 1e-3 + 1e-4 * std::abs(plain[i][e])) << "item " << i << " ending " << e;
      if (plain[i][e] > plain[i][best]) best = int(e);
      if (plain[i][e] / double(item.endings[e].size()) > plain[i][best_norm] / double(item.endings[best_norm].size()))
        best_norm = int(e);
    }
    EXPECT_EQ(r64.scores[i].pred, best);
    EXPECT_EQ(r64.scores[i].pred_norm, best_norm);
    hit += best == item.gold;
    hit_norm += best_norm == item.gold;
  }
  EXPECT_DOUBLE_EQ(r64.acc, double(hit) / n);
  EXPECT_DOUBLE_EQ(r64.acc_norm, double(hit_norm) / n);
  EXPECT_GT(r64.seconds_per_item, 0.0);
}

}  // namespace

TEST(Tasks, HellaswagScorerEqualsPlainScorer) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("eval/hellaswag/hellaswag_val_full.txt.bz2");
  TempDir t;
  const std::string cmd = "bzip2 -dc " + data_file("eval/hellaswag/hellaswag_val_full.txt.bz2") + " | head -n 60 > " + t / "hs.txt";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const auto task = read_hellaswag(t / "hs.txt");
  ASSERT_EQ(task.items.size(), 10u);
  expect_matches_plain(task, 10);
}

TEST(Tasks, PiqaScorerEqualsPlainScorer) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("eval/piqa/valid.jsonl");
  const auto task = read_piqa(data_file("eval/piqa/valid.jsonl"));
  ASSERT_EQ(task.items.size(), 1838u);
  expect_matches_plain(task, 10);
}

TEST(Tasks, QuarotEvalTask) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("eval/piqa/valid.jsonl");
  TempDir t;
  const std::string model = data_file("stories260K/stories260K.bin"), tok = data_file("stories260K/tok512.model");
  const auto r = run_tool("quarot-eval", model + " --tokenizer " + tok + " --task piqa --task-file " +
                                             data_file("eval/piqa/valid.jsonl") + " --limit 4 --progress none --json " + t / "o.json");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_NE(r.stdout_text.find("acc_norm:"), std::string::npos) << r.stdout_text;
  const auto j = nlohmann::json::parse(read_file_text(t / "o.json"));
  EXPECT_EQ(j["task"]["name"], "piqa");
  EXPECT_EQ(j["task"]["items"], 4);
  // The tool's figures are the library's.
  const auto w = load_model(model);
  const auto tk = load_tokenizer(tok);
  Transformer<float> m(w, w.config.max_positions);
  const auto lib = score_task(m, *tk, read_piqa(data_file("eval/piqa/valid.jsonl")), 4);
  EXPECT_DOUBLE_EQ(j["task"]["acc"].get<double>(), lib.acc);
  EXPECT_DOUBLE_EQ(j["task"]["acc_norm"].get<double>(), lib.acc_norm);

  // Bad files: one line naming the file, exit 1; a missing --task-file: usage, exit 2.
  write_file_text(t / "bad.txt", "ctx\n7\na\nb\nc\nd\n");
  const auto bad = run_tool("quarot-eval", model + " --tokenizer " + tok + " --task hellaswag --task-file " + t / "bad.txt");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.stderr_text.find(t / "bad.txt:2: label '7'"), std::string::npos) << bad.stderr_text;
  EXPECT_EQ(count_lines(bad.stderr_text), 1) << bad.stderr_text;
  const auto usage = run_tool("quarot-eval", model + " --tokenizer " + tok + " --task piqa");
  EXPECT_EQ(usage.exit_code, 2) << usage.stderr_text;
}

TEST(Tasks, LongSequencesKeepTheirLastTokens) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("eval/piqa/valid.jsonl");
  // A context of 12 positions: every PIQA sequence is cut on the left (lm-eval's
  // (context + continuation)[-(max_length + 1):][:-1]), longer endings are scored on their last 12.
  const int ctx = 12;
  const auto w = load_model(data_file("stories260K/stories260K.bin"));
  const auto tok = load_tokenizer(data_file("stories260K/tok512.model"));
  const auto task = read_piqa(data_file("eval/piqa/valid.jsonl"));
  Transformer<double> model(w, ctx);
  const auto r = score_task(model, *tok, task, 4);
  EXPECT_EQ(r.truncated_items, 4);
  bool ending_cut = false;
  for (int i = 0; i < 4; ++i) {
    const auto& item = task.items[i];
    const std::size_t nctx = tok->encode_with_special(item.context).size();
    for (std::size_t e = 0; e < 2; ++e) {
      const auto ids = tok->encode_with_special(item.context + " " + item.endings[e]);
      const std::vector<int> window(ids.end() - (ctx + 1), ids.end());
      const std::size_t cont = ids.size() - nctx;
      ending_cut |= cont > std::size_t(ctx);
      Transformer<double> fresh(w, ctx);
      std::vector<double> logits;
      fresh.forward(std::span<const int>(window.data(), ctx), logits);
      double ll = 0;
      for (long p = std::max(1L, long(ctx) + 1 - long(cont)); p <= ctx; ++p) {
        const double* x = logits.data() + std::size_t(p - 1) * w.config.vocab;
        double mx = x[0], z = 0;
        for (int k = 1; k < w.config.vocab; ++k) mx = std::max(mx, x[k]);
        for (int k = 0; k < w.config.vocab; ++k) z += std::exp(x[k] - mx);
        ll += x[window[p]] - (mx + std::log(z));
      }
      EXPECT_NEAR(r.scores[i].loglik[e], ll, 1e-6) << "item " << i << " ending " << e;
      EXPECT_EQ(r.scores[i].ending_tokens[e], int(cont));
    }
  }
  EXPECT_TRUE(ending_cut);  // at least one ending longer than the context
}

// quarot-quantize --task: the report holds acc, acc_norm and their standard errors of the float
// model, the simulation and the packed file, and retained = quantized / float; each equals
// quarot-eval --task on the same model (the float checkpoint, the packed file with --simulate,
// the packed file's integer path), so the run scored the same log-likelihoods.
TEST(Tasks, QuarotQuantizeReportsTaskAccuracyAsQuarotEvalScoresIt) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("eval/piqa/valid.jsonl");
  TempDir t;
  const std::string model = data_file("stories260K/stories260K.bin"), tok = data_file("stories260K/tok512.model");
  const std::string task = " --task piqa --task-file " + data_file("eval/piqa/valid.jsonl");
  const std::string packed = t / "m.q4.safetensors";
  // With --eval-text: the text tokenized as quarot-eval --text does.
  const std::string text = data_file("tinystories/validation_100.txt");
  const auto q = run_tool("quarot-quantize", model + " -o " + packed + " --preset w4a4kv4-rtn --tokenizer " + tok + task +
                                                 " --task-limit 4 --eval-text " + text + " --ctx 128 --chunks 2 --no-checksum --progress none");
  ASSERT_EQ(q.exit_code, 0) << q.stderr_text;
  // The log states the tokenizer and what a task sequence gets, and why.
  EXPECT_NE(q.stderr_text.find("tokenizer " + tok), std::string::npos) << q.stderr_text;
  EXPECT_NE(q.stderr_text.find("a task sequence gets BOS 1 in front (the SentencePiece / llama2.c default)"), std::string::npos)
      << q.stderr_text;
  EXPECT_NE(q.stdout_text.find("piqa retained by the packed model"), std::string::npos) << q.stdout_text;
  const std::string report_text = read_file_text(packed + ".report/report.json");  // one report folder per output
  const auto errs = validate_json_schema(read_file_text(std::string(QUAROT_SOURCE_DIR) + "/docs/report.schema.json"), report_text);
  EXPECT_TRUE(errs.empty()) << errs.front();
  const auto report = nlohmann::json::parse(report_text);
  EXPECT_EQ(report["tokenizer"]["path"], tok);
  EXPECT_EQ(report["tokenizer"]["bos_id"], 1);
  EXPECT_TRUE(report["tokenizer"]["calibration"].is_null());  // RTN: no calibration text
  EXPECT_EQ(report["tokenizer"]["evaluation"], "BOS 1 (the model's) once in front of the whole text, none per window (paper protocol)");
  EXPECT_EQ(report["eval"]["text"], text);
  EXPECT_EQ(report["eval"]["windows"], 2);
  for (const auto& [entry, m] : {std::pair<const char*, std::string>{"float", model}, {"packed", packed}}) {
    const auto r = run_tool("quarot-eval", m + " --tokenizer " + tok + " --text " + text + " --ctx 128 --chunks 2 --progress none --json " +
                                               t / "ppl.json");
    ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
    EXPECT_NE(r.stderr_text.find("BOS 1 (the model's) once in front of the whole text"), std::string::npos) << r.stderr_text;
    const auto e = nlohmann::json::parse(read_file_text(t / "ppl.json"));
    EXPECT_DOUBLE_EQ(report["eval"][entry]["ppl"].get<double>(), e["perplexity"].get<double>()) << entry;
  }
  ASSERT_EQ(report["tasks"].size(), 1u);
  const auto& rt = report["tasks"][0];
  EXPECT_EQ(rt["name"], "piqa");
  EXPECT_EQ(rt["items"], 4);
  EXPECT_EQ(RunReport::from_json(report_text).to_json(), report_text);  // the task section round-trips

  auto eval = [&](const std::string& m, const std::string& extra, const std::string& name) {
    const auto r = run_tool("quarot-eval", m + " --tokenizer " + tok + task + " --task-limit 4 --progress none --json " + t / name + extra);
    EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
    return nlohmann::json::parse(read_file_text(t / name))["task"];
  };
  const std::pair<const char*, nlohmann::json> runs[] = {
      {"float", eval(model, "", "f.json")}, {"quantized", eval(packed, " --simulate", "s.json")}, {"packed", eval(packed, "", "p.json")}};
  for (const auto& [entry, e] : runs) {
    SCOPED_TRACE(entry);
    ASSERT_TRUE(rt[entry].is_object()) << rt.dump();
    for (const char* k : {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}) EXPECT_DOUBLE_EQ(rt[entry][k].get<double>(), e[k].get<double>()) << k;
  }
  // quarot-eval's log-likelihoods differ between the models (the quantization is seen), so the
  // equalities above compared different numbers.
  EXPECT_NE(runs[0].second["per_item"][0]["loglik"], runs[2].second["per_item"][0]["loglik"]);
  for (const char* entry : {"quantized", "packed"})
    for (const char* k : {"acc", "acc_norm"}) {
      const double f = rt["float"][k].get<double>();
      ASSERT_GT(f, 0);
      EXPECT_DOUBLE_EQ(rt[entry]["retained"][k].get<double>(), rt[entry][k].get<double>() / f) << entry << " " << k;
    }
  const std::string md = read_file_text(packed + ".report/report.md");
  EXPECT_NE(md.find("## Zero-shot piqa"), std::string::npos) << md;
  EXPECT_NE(md.find("retained vs float"), std::string::npos) << md;

  // Usage: --task-file without --task, --task without --task-file (exit 2).
  EXPECT_EQ(run_tool("quarot-quantize", model + " --preset w4a4kv4-rtn --task-file x.jsonl").exit_code, 2);
  EXPECT_EQ(run_tool("quarot-quantize", model + " --preset w4a4kv4-rtn --task piqa").exit_code, 2);
}
