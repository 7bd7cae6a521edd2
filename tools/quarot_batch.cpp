// quarot-batch: a grid of quarot-quantize runs (models x runs) from a JSON or TOML plan, one
// folder per run, a combined summary (Markdown, CSV, JSON, SVG) and gates that set the exit
// code; --shard i/N splits a plan across CI machines and `quarot-batch merge` joins the shards.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cctype>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cli.hpp"
#include "config_file.hpp"
#include "quarot/atomic_file.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/packed.hpp"
#include "quarot/report.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Ctrl-C / SIGTERM stop the batch: the running quantize runs get the signal (Ctrl-C reaches
// them through the terminal's process group anyway; a SIGTERM sent to the batch alone is
// forwarded), clean up and exit 130; no new run starts, no summary is written, and the batch
// exits 130. `--resume` later skips the finished runs and continues. (std::system, used before,
// ignores SIGINT in the caller, so Ctrl-C only failed the running run and the batch went on.)
std::atomic<int> g_stop_signal{0};
std::array<std::atomic<pid_t>, 64> g_children{};  // --jobs is at most 64

extern "C" void on_stop_signal(int sig) {
  g_stop_signal = sig;
  for (auto& c : g_children)
    if (const pid_t p = c.load(); p > 0) ::kill(p, sig);
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &sa, nullptr);
}

// `/bin/sh -c "exec CMD"` in slot `slot` of g_children (so a stop signal reaches it), waited for;
// returns the shell's status as std::system does.
int run_child(const std::string& cmd, std::size_t slot) {
  const std::string line = "exec " + cmd;  // before fork: the child of a threaded process only calls async-signal-safe functions
  // The stop signals stay blocked from before the fork until the child has its default actions
  // back and the parent has noted its pid: a signal in between would otherwise run the batch's
  // handler inside the child, which then went on to exec the run (seen under load: the next run
  // started and completed after the batch was told to stop).
  sigset_t stops, old_mask;
  sigemptyset(&stops);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&stops, sig);
  ::pthread_sigmask(SIG_BLOCK, &stops, &old_mask);
  const pid_t pid = ::fork();
  if (pid == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) ::sigaction(sig, &dfl, nullptr);
    ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);  // a pending stop now ends the child (async-signal-safe)
    ::execl("/bin/sh", "sh", "-c", line.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (pid > 0) g_children[slot] = pid;
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid < 0) return -1;
  if (const int sig = g_stop_signal.load()) ::kill(pid, sig);  // a stop that came before the slot was set
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  g_children[slot] = 0;
  // A run that was stopped (died of a stop signal, or cleaned up and exited 130) stops the batch,
  // also when this thread sees the child's end before the signal's handler has run on another
  // thread of the batch.
  int stopped_by = 0;
  if (WIFSIGNALED(status) && (WTERMSIG(status) == SIGINT || WTERMSIG(status) == SIGTERM || WTERMSIG(status) == SIGHUP))
    stopped_by = WTERMSIG(status);
  else if (WIFEXITED(status) && WEXITSTATUS(status) == 130)
    stopped_by = SIGINT;
  if (stopped_by) {
    int none = 0;
    g_stop_signal.compare_exchange_strong(none, stopped_by);
  }
  return status;
}

constexpr const char* kGateNames[] = {"max_ppl_ratio", "max_ppl", "max_kld", "min_top1"};

// ${NAME} and ${NAME:-default} from the environment.
std::string expand_env(const std::string& s) {
  std::string out;
  for (std::size_t i = 0; i < s.size();) {
    if (s.compare(i, 2, "${") == 0) {
      const std::size_t e = s.find('}', i);
      if (e == std::string::npos) throw quarot::Error("plan", "unterminated ${ in '" + s + "'");
      std::string name = s.substr(i + 2, e - i - 2), def;
      if (const auto d = name.find(":-"); d != std::string::npos) {
        def = name.substr(d + 2);
        name = name.substr(0, d);
      }
      const char* v = std::getenv(name.c_str());
      out += v && *v ? v : def;
      i = e + 1;
    } else {
      out += s[i++];
    }
  }
  return out;
}

// The plan through the one option-file reader (config_file.hpp: the same JSON/TOML rules as
// quarot-quantize --config), then its structure: every key known, every value of its type.
json read_plan(const std::string& path) {
  const json plan = quarot::cli::read_option_document(path);
  auto fail = [&](const std::string& why) { throw quarot::UsageError(path, why); };
  for (auto it = plan.begin(); it != plan.end(); ++it) {
    static const std::vector<std::string_view> top = {"name", "defaults", "gates", "models", "runs"};
    if (std::find(top.begin(), top.end(), it.key()) == top.end()) {
      const std::string near = quarot::closest_name(it.key(), top);
      fail("unknown key '" + it.key() + "'" + (near.empty() ? " (a plan has name, defaults, gates, models, runs)" : " (did you mean '" + near + "'?)"));
    }
  }
  if (plan.contains("name") && !plan["name"].is_string()) fail("'name' must be a string");
  for (const char* k : {"defaults", "gates"})
    if (plan.contains(k) && !plan[k].is_object()) fail(std::string("'") + k + "' must be a table/object");
  if (!plan.contains("models") || !plan["models"].is_array() || plan["models"].empty() || !plan.contains("runs") || !plan["runs"].is_array() ||
      plan["runs"].empty())
    fail("a plan needs non-empty 'models' and 'runs' arrays");
  return plan;
}

// A gates table: known gate names, numbers.
void check_gates(const json& gates, const std::string& where) {
  if (!gates.is_object()) throw quarot::UsageError(where, "'gates' must be a table/object");
  for (auto it = gates.begin(); it != gates.end(); ++it) {
    if (std::find(std::begin(kGateNames), std::end(kGateNames), it.key()) == std::end(kGateNames)) {
      const std::string near = quarot::closest_name(it.key(), {std::begin(kGateNames), std::end(kGateNames)});
      throw quarot::UsageError(where, "unknown gate '" + it.key() + "' (" + (near.empty() ? "" : "did you mean '" + near + "'? ") +
                                          "known: max_ppl_ratio, max_ppl, max_kld, min_top1)");
    }
    if (!it.value().is_number()) throw quarot::UsageError(where, "gate '" + it.key() + "' must be a number, got " + it.value().dump());
  }
}

// Model and run names become folder names under -o: plain names only, so a plan cannot write
// outside its output folder ("../x", "/abs", "a/b") or into a hidden or special entry.
void check_plain_name(const std::string& name, const std::string& what, const std::string& plan_path) {
  bool ok = !name.empty() && name.size() <= 128 && name != "." && name != ".." && name[0] != '.' && name[0] != '-';
  for (const unsigned char c : name)
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '+')) ok = false;
  if (!ok)
    throw quarot::Error(plan_path, what + " name '" + name + "' is not a plain name (letters, digits, '-', '_', '.', '+'; not starting with '.' or '-')");
}

struct Run {
  int index = 0;
  std::string model, name, dir;
  json options;  // quarot-quantize options (long names)
  json gates;
};

// Values that name files: relative to the plan's folder, with ${VAR} expanded.
bool is_path_key(const std::string& k) {
  return k == "path" || k == "calib" || k == "eval-ids" || k == "eval-text" || k == "tokenizer" || k == "task-file" || k == "task-labels";
}

std::vector<Run> expand(const json& plan, const std::string& plan_path, const std::string& out) {
  const fs::path base = fs::absolute(plan_path).parent_path();
  auto resolve = [&](const json& o) {
    json r = json::object();
    for (auto it = o.begin(); it != o.end(); ++it) {
      if (it.key() == "name" || it.key() == "gates") continue;
      json v = it.value();
      if (v.is_string()) {
        std::string s = expand_env(v.get<std::string>());
        if (is_path_key(it.key()) && !s.empty() && fs::path(s).is_relative()) s = (base / s).lexically_normal().string();
        v = s;
      }
      r[it.key()] = v;
    }
    return r;
  };
  const json defaults = resolve(plan.value("defaults", json::object()));
  quarot::cli::check_option_object(plan_path + ": defaults", defaults);
  const json default_gates = plan.value("gates", json::object());
  check_gates(default_gates, plan_path + ": gates");
  std::vector<Run> runs;
  std::set<std::string> seen_models;
  for (const auto& m : plan["models"]) {
    if (!m.is_object() || !m.contains("name") || !m.contains("path") || !m["name"].is_string() || !m["path"].is_string())
      throw quarot::Error(plan_path, "every model needs 'name' and 'path' (strings)");
    check_plain_name(m["name"].get<std::string>(), "model", plan_path);
    if (!seen_models.insert(m["name"].get<std::string>()).second)
      throw quarot::Error(plan_path, "model name '" + m["name"].get<std::string>() + "' appears twice (each model needs its own folder)");
    const json mo = resolve(m);
    quarot::cli::check_option_object(plan_path + ": model '" + m["name"].get<std::string>() + "'", mo, {"name", "path"});
    for (const auto& r : plan["runs"]) {
      if (!r.is_object() || !r.contains("name") || !r["name"].is_string()) throw quarot::Error(plan_path, "every run needs a 'name' (a string)");
      check_plain_name(r["name"].get<std::string>(), "run", plan_path);
      for (const auto& earlier : runs)
        if (earlier.model == m["name"].get<std::string>() && earlier.name == r["name"].get<std::string>())
          throw quarot::Error(plan_path, "run name '" + earlier.name + "' appears twice (each run needs its own folder)");
      Run x;
      x.index = int(runs.size());
      x.model = m["name"].get<std::string>();
      x.name = r["name"].get<std::string>();
      x.dir = (fs::path(out) / x.model / x.name).string();
      x.options = defaults;
      for (auto it = mo.begin(); it != mo.end(); ++it) x.options[it.key()] = it.value();
      const json ro = resolve(r);
      const std::string where = plan_path + ": run '" + x.name + "'";
      quarot::cli::check_option_object(where, ro, {"name", "gates"});
      if (r.contains("gates")) check_gates(r["gates"], where);
      for (auto it = ro.begin(); it != ro.end(); ++it) x.options[it.key()] = it.value();
      x.gates = default_gates;
      const json run_gates = r.value("gates", json::object());
      for (auto it = run_gates.begin(); it != run_gates.end(); ++it) x.gates[it.key()] = it.value();
      runs.push_back(x);
    }
  }
  return runs;
}

bool packs(const json& options) {
  const std::string preset = options.value("preset", std::string("w4a4kv4"));
  const std::string method = options.value("w-method", std::string());
  return !(preset == "none" && method.empty()) && method != "none";
}

std::string self_dir() {
  std::error_code ec;
  const auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

std::string shell_quote(const std::string& s) {
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// The quarot-quantize config of a run (model path as the positional argument).
json run_config(const Run& r) {
  json c = r.options;
  c.erase("path");
  return c;
}

bool report_verifies(const Run& r) {
  const fs::path d(r.dir);
  std::error_code ec;
  if (!fs::exists(d / "report.json", ec) || !fs::exists(d / "config.json", ec)) return false;
  try {
    if (json::parse(quarot::read_text_file((d / "config.json").string())) != run_config(r)) return false;
    if (!json::parse(quarot::read_text_file((d / "report.json").string())).contains("eval")) return false;
    if (packs(r.options)) quarot::PackedModel p((d / "model.q4.safetensors").string());  // CRCs and all
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// One row of the summary from a run's report (or its failure).
json row_of(const Run& r, bool ok, const std::string& failure) {
  json row = {{"index", r.index}, {"model", r.model}, {"run", r.name}, {"ok", ok}, {"failure", failure}, {"gates", r.gates}};
  if (!ok) return row;
  const auto rep = quarot::RunReport::from_json(quarot::read_text_file((fs::path(r.dir) / "report.json").string()));
  const json config = json::parse(rep.config_json);
  row["preset"] = config["preset"];
  row["rotate"] = config["rotate"];
  row["bits_per_weight"] = rep.sizes.bits_per_weight;
  row["packed_bytes"] = rep.sizes.packed_bytes ? json(*rep.sizes.packed_bytes) : json(nullptr);
  if (const quarot::EvalFigures* q = rep.headline_eval()) {
    const auto& ev = *rep.eval;
    row["ppl_float"] = ev.float_model ? json(ev.float_model->ppl) : json(nullptr);
    row["ppl"] = q->ppl;
    auto kld_or_null = [&](double v) { return q->kld == quarot::EvalFigures::Kld::Present ? json(v) : json(nullptr); };
    row["kld"] = kld_or_null(q->kld_mean);
    row["top1"] = kld_or_null(q->top1_agreement);
    row["measured_on"] = ev.packed ? "packed integer model" : "simulation";
  }
  row["seconds"] = rep.timings.at("total");
  return row;
}

// Applies the gates; returns the failures ("model/run: figure value > limit").
std::vector<std::string> apply_gates(json& row) {
  std::vector<std::string> fails;
  const std::string who = row["model"].get<std::string>() + "/" + row["run"].get<std::string>();
  if (!row["ok"].get<bool>()) {
    fails.push_back(who + ": run failed: " + row["failure"].get<std::string>());
    row["verdict"] = "FAILED";
    return fails;
  }
  auto check = [&](const char* gate, const char* figure, double value, bool max) {
    if (!row["gates"].contains(gate)) return;
    const double limit = row["gates"][gate].get<double>();
    if (std::isnan(value) || (max ? value > limit : value < limit)) {
      char b[256];
      std::snprintf(b, sizeof b, "%s: %s %.4f %s %s %.4f", who.c_str(), figure, value, max ? ">" : "<", gate, limit);
      fails.push_back(b);
    }
  };
  const bool has_eval = row.contains("ppl");
  if (!has_eval && !row["gates"].empty()) fails.push_back(who + ": gates need an evaluation (eval-ids)");
  if (has_eval) {
    const double ppl = row["ppl"].get<double>(), ppl_f = row["ppl_float"].get<double>();
    check("max_ppl_ratio", "perplexity ratio", ppl / ppl_f, true);
    check("max_ppl", "perplexity", ppl, true);
    check("max_kld", "KLD", row["kld"].get<double>(), true);
    check("min_top1", "top-1 agreement", row["top1"].get<double>(), false);
  }
  row["verdict"] = fails.empty() ? "pass" : "FAIL";
  return fails;
}

std::string fmt(const json& v, const char* f) {
  if (!v.is_number()) return "";
  char b[64];
  std::snprintf(b, sizeof b, f, v.get<double>());
  return b;
}

// Writes summary.md / .csv / .json and ppl_vs_bits.svg for the rows; returns the gate failures.
std::vector<std::string> write_summary(json rows, const std::string& out, const std::string& title) {
  std::sort(rows.begin(), rows.end(), [](const json& a, const json& b) { return a["index"].get<int>() < b["index"].get<int>(); });
  std::vector<std::string> fails;
  for (auto& r : rows) {
    const auto f = apply_gates(r);
    fails.insert(fails.end(), f.begin(), f.end());
  }
  std::ostringstream md, csv;
  md << "# " << title << "\n\n| model | run | preset | rotation | bits/weight | PPL float | PPL | PPL ratio | KLD | top-1 | measured on | gates | verdict |\n"
     << "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  csv << "model,run,preset,rotate,bits_per_weight,ppl_float,ppl,ppl_ratio,kld,top1,measured_on,verdict\n";
  std::map<std::string, quarot::ChartSeries> series;
  for (const auto& r : rows) {
    const bool ev = r.contains("ppl");
    const std::string ratio = ev ? fmt(json(r["ppl"].get<double>() / r["ppl_float"].get<double>()), "%.4f") : "";
    std::string gates;
    for (auto it = r["gates"].begin(); it != r["gates"].end(); ++it) gates += (gates.empty() ? "" : ", ") + it.key() + " " + it.value().dump();
    md << "| " << r["model"].get<std::string>() << " | " << r["run"].get<std::string>() << " | " << r.value("preset", std::string()) << " | "
       << (r.contains("rotate") ? (r["rotate"].get<bool>() ? "on" : "off") : "") << " | " << fmt(r.value("bits_per_weight", json()), "%.3f")
       << " | " << fmt(r.value("ppl_float", json()), "%.4f") << " | " << fmt(r.value("ppl", json()), "%.4f") << " | " << ratio << " | "
       << fmt(r.value("kld", json()), "%.5f") << " | " << (ev ? fmt(json(100 * r["top1"].get<double>()), "%.2f%%") : "") << " | "
       << r.value("measured_on", std::string()) << " | " << gates << " | " << r["verdict"].get<std::string>() << " |\n";
    csv << r["model"].get<std::string>() << "," << r["run"].get<std::string>() << "," << r.value("preset", std::string()) << ","
        << (r.contains("rotate") ? (r["rotate"].get<bool>() ? "on" : "off") : "") << "," << fmt(r.value("bits_per_weight", json()), "%.3f")
        << "," << fmt(r.value("ppl_float", json()), "%.4f") << "," << fmt(r.value("ppl", json()), "%.4f") << "," << ratio << ","
        << fmt(r.value("kld", json()), "%.5f") << "," << (ev ? fmt(r["top1"], "%.4f") : "") << "," << r.value("measured_on", std::string())
        << "," << r["verdict"].get<std::string>() << "\n";
    if (ev) {
      auto& s = series[r["model"].get<std::string>()];
      s.name = r["model"].get<std::string>();
      s.x.push_back(r["bits_per_weight"].get<double>());
      s.y.push_back(r["ppl"].get<double>());
      s.labels.push_back(r["run"].get<std::string>());
    }
  }
  if (!fails.empty()) {
    md << "\n## Gate failures\n\n";
    for (const auto& f : fails) md << "- " << f << "\n";
  }
  md << "\n![perplexity against bits per weight](ppl_vs_bits.svg)\n";
  fs::create_directories(out);
  quarot::write_file_atomic((fs::path(out) / "summary.md").string(), md.str());
  quarot::write_file_atomic((fs::path(out) / "summary.csv").string(), csv.str());
  quarot::write_file_atomic((fs::path(out) / "summary.json").string(), json{{"title", title}, {"rows", rows}}.dump(2) + "\n");
  std::vector<quarot::ChartSeries> ss;
  for (auto& [k, s] : series) ss.push_back(s);
  quarot::ChartOptions o{"Perplexity against bits per weight", "bits per linear weight (scales included)", "perplexity"};
  o.lines = false;
  o.log_y = true;
  quarot::write_file_atomic((fs::path(out) / "ppl_vs_bits.svg").string(), quarot::svg_chart(ss, o));
  return fails;
}

// A row of a shard's summary.json, checked before merge uses it: the file comes from another
// machine's run and may be damaged or hand-edited, so every field merge reads must be present
// with the right type (a missing key would otherwise be read through a null json).
void check_summary_row(const json& r, const std::string& path) {
  auto fail = [&](const std::string& why) { throw quarot::Error(path, "summary row " + (r.is_object() ? r.value("model", json()).dump() + "/" + r.value("run", json()).dump() : std::string("?")) + ": " + why); };
  if (!r.is_object()) throw quarot::Error(path, "every summary row must be an object");
  if (!r.contains("index") || !r["index"].is_number_integer() || r["index"].get<int64_t>() < 0 || r["index"].get<int64_t>() > 1000000)
    fail("'index' must be an integer in 0..1000000");
  for (const char* k : {"model", "run", "failure"})
    if (!r.contains(k) || !r[k].is_string()) fail(std::string("'") + k + "' must be a string");
  check_plain_name(r["model"].get<std::string>(), "model", path);
  check_plain_name(r["run"].get<std::string>(), "run", path);
  if (!r.contains("ok") || !r["ok"].is_boolean()) fail("'ok' must be true or false");
  if (!r.contains("gates") || !r["gates"].is_object()) fail("'gates' must be an object");
  for (auto it = r["gates"].begin(); it != r["gates"].end(); ++it) {
    if (std::find(std::begin(kGateNames), std::end(kGateNames), it.key()) == std::end(kGateNames)) fail("unknown gate '" + it.key() + "'");
    if (!it.value().is_number()) fail("gate '" + it.key() + "' must be a number");
  }
  for (const char* k : {"preset", "measured_on", "verdict"})
    if (r.contains(k) && !r[k].is_string()) fail(std::string("'") + k + "' must be a string");
  if (r.contains("rotate") && !r["rotate"].is_boolean()) fail("'rotate' must be true or false");
  for (const char* k : {"bits_per_weight", "packed_bytes", "seconds", "ppl_float", "ppl", "kld", "top1"})
    if (r.contains(k) && !r[k].is_number() && !r[k].is_null()) fail(std::string("'") + k + "' must be a number");
  if (r.contains("ppl"))
    for (const char* k : {"ppl", "ppl_float", "kld", "top1", "bits_per_weight"})
      if (!r.contains(k) || !r[k].is_number()) fail(std::string("an evaluated row needs a number '") + k + "'");
}

// What write_summary writes into the output folder.
constexpr const char* kSummaryFiles[] = {"summary.md", "summary.csv", "summary.json", "ppl_vs_bits.svg"};

// Every file the batch writes, against every file it reads (by identity: a model folder's files
// included) and against anything that is not a regular file, before any run starts.
void refuse_unsafe_outputs(const std::vector<std::string>& outputs, const std::vector<std::string>& inputs) {
  for (const auto& o : outputs) quarot::refuse_unsafe_output(o, inputs);
}

int finish(const std::vector<std::string>& fails, const std::string& out) {
  for (const auto& f : fails) std::fprintf(stderr, "quarot-batch: gate failed: %s\n", f.c_str());
  std::printf("summary: %s/summary.md (%s)\n", out.c_str(), fails.empty() ? "all gates pass" : (std::to_string(fails.size()) + " gate failures").c_str());
  return fails.empty() ? 0 : quarot::cli::kExitFailure;
}

}  // namespace

int main(int argc, char** argv) {
  std::string plan_path, out, shard = "1/1", progress = "plain";
  std::vector<std::string> merge_dirs;
  int jobs = 1;
  bool resume = false, list = false, quiet = false;
  CLI::App app{
      "Runs a plan (JSON or TOML): every model x every run through quarot-quantize, each into OUT/MODEL/RUN\n"
      "(packed model, report.json/.md, plots, log.txt), then OUT/summary.md, summary.csv, summary.json and\n"
      "ppl_vs_bits.svg. Gates in the plan (max_ppl_ratio, max_ppl, max_kld, min_top1; per run or for all)\n"
      "make the exit code 1 when any fails, naming the run and the figure.\n"
      "Plan keys: name; defaults {quarot-quantize options}; gates {...}; models [{name, path, options...}];\n"
      "runs [{name, options..., gates {...}}]. Paths are relative to the plan; ${VAR} and ${VAR:-default}\n"
      "come from the environment. Example: examples/ci-plan.toml.\n"
      "CI matrix: quarot-batch PLAN -o out/shard-$I --shard $I/N on N machines, then\n"
      "quarot-batch merge -o out/all out/shard-*.",
      "quarot-batch"};
  app.require_subcommand(0, 1);
  app.add_option("plan", plan_path, "the plan file (.json or .toml)");
  app.add_option("-o,--output", out, "output folder (required)");
  app.add_option("--jobs", jobs, "runs at once (threads are split between them)")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--shard", shard, "run every N-th run starting at the i-th (i/N, 1 <= i <= N)")->capture_default_str();
  app.add_flag("--resume", resume, "skip runs whose output and report exist, verify and match the plan");
  app.add_flag("--list", list, "list the runs of this shard and exit");
  app.add_option("--progress", progress, "plain: one line per run start/end; none")->check(CLI::IsMember({"plain", "none"}))->capture_default_str();
  quarot::cli::add_quiet(app, quiet);
  auto* merge = app.add_subcommand("merge", "combine the summaries of shard folders into one (gates applied again)");
  merge->add_option("dirs", merge_dirs, "shard output folders")->required();
  merge->add_option("-o,--output", out, "output folder")->required();
  if (int rc = quarot::cli::parse(app, argc, argv); rc >= 0) return rc;

  if (quiet) progress = "none";
  if (merge->parsed()) {
    return quarot::cli::run("quarot-batch", [&] {
      json rows = json::array();
      std::string title = "quarot batch";
      for (const auto& d : merge_dirs) {
        const std::string p = (fs::path(d) / "summary.json").string();
        const std::string text = quarot::read_text_file(p);
        quarot::check_json_limits(text, p);
        json s;
        try {
          s = json::parse(text);
        } catch (const std::exception& e) {
          throw quarot::Error(p, std::string("invalid JSON: ") + e.what());
        }
        if (!s.is_object() || !s.contains("rows") || !s["rows"].is_array()) throw quarot::Error(p, "not a quarot-batch summary (needs a 'rows' array)");
        if (s.contains("title") && !s["title"].is_string()) throw quarot::Error(p, "'title' must be a string");
        title = s.value("title", title);
        for (const auto& r : s["rows"]) {
          check_summary_row(r, p);
          rows.push_back(r);
        }
      }
      std::vector<std::string> inputs, outputs;
      for (const auto& d : merge_dirs) inputs.push_back((fs::path(d) / "summary.json").string());
      for (const char* f : kSummaryFiles) outputs.push_back((fs::path(out) / f).string());
      refuse_unsafe_outputs(outputs, inputs);
      std::sort(rows.begin(), rows.end(), [](const json& a, const json& b) { return a["index"].get<int>() < b["index"].get<int>(); });
      for (std::size_t i = 1; i < rows.size(); ++i)
        if (rows[i]["index"] == rows[i - 1]["index"])
          throw quarot::Error("merge", "run " + rows[i]["model"].get<std::string>() + "/" + rows[i]["run"].get<std::string>() + " appears in two shards");
      return finish(write_summary(rows, out, title), out);
    });
  }
  if (plan_path.empty() || out.empty()) {
    std::fprintf(stderr, "quarot-batch: error: %s is required (see --help)\n", plan_path.empty() ? "a plan file" : "--output");
    return quarot::cli::kExitUsage;
  }
  int shard_i = 0, shard_n = 0;
  if (std::sscanf(shard.c_str(), "%d/%d", &shard_i, &shard_n) != 2 || shard_n < 1 || shard_i < 1 || shard_i > shard_n) {
    std::fprintf(stderr, "quarot-batch: error: --shard must be i/N with 1 <= i <= N, got '%s' (see --help)\n", shard.c_str());
    return quarot::cli::kExitUsage;
  }

  return quarot::cli::run("quarot-batch", [&] {
    const json plan = read_plan(plan_path);
    const std::string title = plan.value("name", std::string("quarot batch"));
    std::vector<Run> all, mine;
    try {
      all = expand(plan, plan_path, out);
    } catch (const quarot::UsageError&) {
      throw;
    } catch (const quarot::Error& e) {  // names, duplicates, ${...}: the plan's content, a usage error
      throw quarot::UsageError("", e.what());
    }
    for (const auto& r : all)
      if (r.index % shard_n == shard_i - 1) mine.push_back(r);
    if (list) {
      for (const auto& r : mine) std::printf("%d %s/%s\n", r.index, r.model.c_str(), r.name.c_str());
      return 0;
    }
    {
      std::vector<std::string> inputs = {plan_path}, outputs;
      for (const char* f : kSummaryFiles) outputs.push_back((fs::path(out) / f).string());
      for (const auto& r : all) {
        for (auto it = r.options.begin(); it != r.options.end(); ++it)
          if (is_path_key(it.key()) && it.value().is_string()) inputs.push_back(it.value().get<std::string>());
      }
      for (const auto& r : mine)
        for (const char* f : {"config.json", "log.txt", "model.q4.safetensors", "report.json", "report.md", "error_per_layer.svg", "outliers.svg"})
          outputs.push_back((fs::path(r.dir) / f).string());
      refuse_unsafe_outputs(outputs, inputs);
    }
    const std::string quantize = (fs::path(self_dir()) / "quarot-quantize").string();
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    const int threads = int(std::max(1u, cores / unsigned(jobs)));
    install_stop_handlers();
    // Every run's options through quarot-quantize's own plan check (make_plan and the model's
    // shapes: --dry-run) before any run starts, so that a combination the options table cannot
    // see (a preset's group on a narrow model, 8-bit weights with -o) is reported up front naming
    // the run, not after earlier runs have spent their time. Only usage errors stop the batch
    // here; a run that cannot load its model fails as a run (summary row), as before.
    {
      char tmpl[] = "/tmp/quarot-batch-check-XXXXXX";
      if (!::mkdtemp(tmpl)) throw quarot::Error("/tmp", std::string("cannot create a scratch folder: ") + std::strerror(errno));
      struct Scratch {
        std::string dir;
        ~Scratch() {
          std::error_code ec;
          fs::remove_all(dir, ec);
        }
      } scratch{tmpl};
      for (const auto& r : mine) {
        const std::string cfg = scratch.dir + "/config.json", log = scratch.dir + "/log.txt";
        quarot::write_file_atomic(cfg, run_config(r).dump(2) + "\n");
        std::string cmd = shell_quote(quantize) + " " + shell_quote(r.options.value("path", std::string())) + " --config " +
                          shell_quote(cfg) + " --dry-run -q";
        if (packs(r.options)) cmd += " -o " + shell_quote(scratch.dir + "/model.q4.safetensors");
        cmd += " >" + shell_quote(log) + " 2>&1 </dev/null";
        const int status = run_child(cmd, 0);
        if (g_stop_signal) return 130;
        if (WIFEXITED(status) && WEXITSTATUS(status) == quarot::cli::kExitUsage) {
          std::string problem;
          std::ifstream in(log);
          for (std::string line; std::getline(in, line);)
            if (const auto at = line.find("error: "); at != std::string::npos) problem = line.substr(at + 7);
          if (const auto see = problem.rfind(" (see --help)"); see != std::string::npos) problem.erase(see);
          throw quarot::UsageError(plan_path, "run '" + r.model + "/" + r.name + "': " + (problem.empty() ? "refused by quarot-quantize --dry-run" : problem));
        }
      }
    }
    std::vector<json> rows(mine.size());
    std::atomic<std::size_t> next{0};
    std::mutex io;
    auto work = [&](std::size_t slot) {
      for (std::size_t k; !g_stop_signal && (k = next++) < mine.size();) {
        const Run& r = mine[k];
        const std::string label = r.model + "/" + r.name;
        if (resume && report_verifies(r)) {
          std::lock_guard<std::mutex> lock(io);
          if (progress == "plain") std::fprintf(stderr, "quarot-batch: [%zu/%zu] %s: up to date, skipped\n", k + 1, mine.size(), label.c_str());
          rows[k] = row_of(r, true, "");
          continue;
        }
        fs::create_directories(r.dir);
        // Remove a previous run's results first: a failed run must not leave an old report behind.
        for (const char* f : {"report.json", "report.md", "model.q4.safetensors"}) fs::remove(fs::path(r.dir) / f);
        quarot::write_file_atomic((fs::path(r.dir) / "config.json").string(), run_config(r).dump(2) + "\n");
        std::string cmd = shell_quote(quantize) + " " + shell_quote(r.options.value("path", std::string())) + " --config " +
                          shell_quote((fs::path(r.dir) / "config.json").string()) + " --report-dir " + shell_quote(r.dir) +
                          " --threads " + std::to_string(threads) + " --progress plain";
        if (packs(r.options)) cmd += " -o " + shell_quote((fs::path(r.dir) / "model.q4.safetensors").string());
        cmd += " >" + shell_quote((fs::path(r.dir) / "log.txt").string()) + " 2>&1 </dev/null";
        {
          std::lock_guard<std::mutex> lock(io);
          if (progress == "plain") std::fprintf(stderr, "quarot-batch: [%zu/%zu] %s: running\n", k + 1, mine.size(), label.c_str());
        }
        const int status = run_child(cmd, slot);
        if (g_stop_signal) break;  // interrupted: neither a result nor a failure
        const bool ok = status == 0 && fs::exists(fs::path(r.dir) / "report.json");
        std::string failure;
        if (!ok) {
          // The run's own one-line error, from its log.
          std::ifstream log(fs::path(r.dir) / "log.txt");
          for (std::string line; std::getline(log, line);)
            if (line.find("error:") != std::string::npos) failure = line;
          if (failure.empty()) failure = "exit status " + std::to_string(status);
        }
        rows[k] = row_of(r, ok, failure);
        std::lock_guard<std::mutex> lock(io);
        if (progress == "plain")
          std::fprintf(stderr, "quarot-batch: [%zu/%zu] %s: %s%s\n", k + 1, mine.size(), label.c_str(), ok ? "done" : "FAILED: ",
                       failure.c_str());
      }
    };
    std::vector<std::thread> pool;
    for (int j = 0; j < jobs; ++j) pool.emplace_back(work, std::size_t(j));
    for (auto& t : pool) t.join();
    if (g_stop_signal) {
      std::fprintf(stderr, "quarot-batch: interrupted (signal %d); no summary written; run again with --resume to continue\n",
                   g_stop_signal.load());
      return 130;
    }
    const int rc = finish(write_summary(json(rows), out, title), out);
    return g_stop_signal ? 130 : rc;
  });
}
