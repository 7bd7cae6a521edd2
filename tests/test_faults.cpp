// Faults while a tool writes (issue 20 item 6): SIGINT/SIGTERM, kill -9, two writers of one
// output, an interrupted commit, Ctrl-C in quarot-batch. Each test stops the tool at a known
// point with the QUAROT_TEST_STALL_MS / QUAROT_TEST_STALL_MID_COMMIT_MS hooks
// (src/io/atomic_file.cpp: everything staged, then the tool waits) instead of racing a timer,
// then checks the promise: exit 130, nothing partial and no temporary left (kill -9: nothing
// partial, and the next run sweeps its leftovers), inputs unchanged.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <functional>
#include <thread>

#include "quarot/atomic_file.hpp"
#include "quarot/packed.hpp"
#include "test_support.hpp"

using namespace quarot::test;

namespace {

// A tool started in its own process group (as a shell job), with extra environment variables.
struct Child {
  pid_t pid = -1;
  Child(const std::string& tool, const std::vector<std::string>& args, const std::vector<std::pair<std::string, std::string>>& env,
        const std::string& log) {
    std::vector<std::string> argv_s = {std::string(QUAROT_TOOL_DIR) + "/" + tool};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      if (FILE* f = std::freopen(log.c_str(), "w", stderr)) (void)f;
      if (FILE* f = std::freopen("/dev/null", "w", stdout)) (void)f;
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
  }
  // The exit status as a shell reports it (128 + signal when it died of one); -1 on timeout.
  int wait(int seconds = 120) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    int status = 0;
    while (std::chrono::steady_clock::now() < end) {
      const pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    return -1;
  }
};

// Polls until `ready()` holds (true) or `seconds` pass (false).
bool wait_for(const std::function<bool()>& ready, int seconds = 120) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// Hidden entries (temporaries) anywhere under `dir`.
std::vector<std::string> hidden_entries(const fs::path& dir) {
  std::vector<std::string> r;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->path().filename().string()[0] == '.') r.push_back(it->path().string());
  return r;
}

// The staged folder of output folder `name` in `dir` once it is complete (config.json is written
// last), or "".
std::string staged_folder_complete(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().rfind("." + name + ".tmp-", 0) == 0 && fs::exists(e.path() / "config.json", ec))
      return e.path().string();
  return "";
}

bool folder_loads(const std::string& dir) { return run_tool("quarot-inspect", dir + " --progress none").exit_code == 0; }

const std::pair<std::string, std::string> kStall = {"QUAROT_TEST_STALL_MS", "60000"};

}  // namespace

// SIGINT or SIGTERM while convert/rotate hold their whole output staged: exit 130, no output
// folder, no temporary, the folder the output was to go in removed again (it was created for it).
TEST(Faults, SignalsBeforeTheFolderCommitLeaveNothingAndExit130) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const std::string model = data_file("stories260K/stories260K.bin");
  const auto sha_before = read_bytes(model);
  TempDir dir;
  int i = 0;
  for (int sig : {SIGINT, SIGTERM}) {
    for (const auto& [tool, extra] : std::vector<std::pair<std::string, std::vector<std::string>>>{
             {"quarot-convert", {"--shard-size", "300K"}}, {"quarot-convert", {}}, {"quarot-rotate", {}}}) {
      const fs::path where = dir / ("case" + std::to_string(i++)), parent = where / "new";
      fs::create_directories(where);
      std::vector<std::string> args = {model, "-o", (parent / "out").string(), "--progress", "none"};
      args.insert(args.end(), extra.begin(), extra.end());
      Child c(tool, args, {kStall}, dir / "log");
      ASSERT_TRUE(wait_for([&] { return !staged_folder_complete(parent, "out").empty(); })) << tool;
      ::kill(-c.pid, sig);  // the whole job, as Ctrl-C does
      EXPECT_EQ(c.wait(), 130) << tool << " signal " << sig;
      EXPECT_FALSE(fs::exists(parent)) << tool << ": the folder made for the output stays after signal " << sig;
      EXPECT_TRUE(hidden_entries(where).empty()) << tool << " left " << hidden_entries(where).front();
    }
  }
  EXPECT_EQ(read_bytes(model), sha_before);
}

// kill -9 cannot clean up: the output is absent (never partial), the staged folder stays hidden,
// and the next run of the same output sweeps it and succeeds.
TEST(Faults, KillNineLeavesNoOutputAndTheNextRunSweepsItsLeftovers) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const std::string model = data_file("stories260K/stories260K.bin");
  TempDir dir;
  const std::vector<std::string> args = {model, "-o", dir / "out", "--shard-size", "300K", "--progress", "none"};
  Child c("quarot-convert", args, {kStall}, dir / "log");
  ASSERT_TRUE(wait_for([&] { return !staged_folder_complete(dir.path(), "out").empty(); }));
  ::kill(c.pid, SIGKILL);
  EXPECT_EQ(c.wait(), 137);
  EXPECT_FALSE(fs::exists(dir / "out"));
  ASSERT_EQ(hidden_entries(dir.path()).size(), 1u);  // the staged folder, whole inside
  Child again("quarot-convert", args, {}, dir / "log");
  ASSERT_EQ(again.wait(), 0);
  EXPECT_TRUE(folder_loads(dir / "out"));
  EXPECT_TRUE(hidden_entries(dir.path()).empty()) << hidden_entries(dir.path()).front();
}

// Two writers of one folder: the one that commits second finds a folder it did not start from
// and fails cleanly (one line, exit 1), leaving the first's whole output; a later run replaces
// an earlier output whole; a folder holding anything but a checkpoint's files is refused.
TEST(Faults, ConcurrentFolderWritersNeverMix) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const std::string model = data_file("stories260K/stories260K.bin");
  TempDir dir;
  const std::string out = dir / "o";
  Child slow("quarot-convert", {model, "-o", out, "--shard-size", "300K", "--progress", "none"},
             {{"QUAROT_TEST_STALL_MS", "4000"}}, dir / "slow.log");
  ASSERT_TRUE(wait_for([&] { return !staged_folder_complete(dir.path(), "o").empty(); }));
  auto r = run_tool("quarot-convert", model + " -o " + out + " --dtype f16 --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_EQ(slow.wait(), 1);
  const auto log = read_bytes(dir / "slow.log");
  const std::string err(log.begin(), log.end());
  EXPECT_EQ(count_lines(err), 1) << err;
  EXPECT_NE(err.find(out + ": appeared while this run wrote it"), std::string::npos) << err;
  auto config = read_bytes(out + "/config.json");
  EXPECT_NE(std::string(config.begin(), config.end()).find("float16"), std::string::npos);  // the f16 run's, whole
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_TRUE(folder_loads(out));
  // An earlier output is replaced whole (the single file goes, shards and index come).
  r = run_tool("quarot-convert", model + " -o " + out + " --shard-size 300K --progress none");
  ASSERT_EQ(r.exit_code, 0) << r.stderr_text;
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  EXPECT_TRUE(folder_loads(out));
  EXPECT_TRUE(hidden_entries(dir.path()).empty());
  // Not a checkpoint folder: refused, untouched.
  write_bytes(out + "/notes.txt", {'h', 'i'});
  r = run_tool("quarot-convert", model + " -o " + out + " --progress none");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(count_lines(r.stderr_text), 1) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("holds 'notes.txt'"), std::string::npos) << r.stderr_text;
  EXPECT_TRUE(fs::exists(out + "/notes.txt"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
}

namespace {
std::vector<std::string> quantize_args(const std::string& out) {
  return {data_file("stories260K/stories260K.bin"), "-o", out, "--preset", "w4a4kv4-rtn", "--progress", "none", "-q"};
}
bool any_staged_report(const fs::path& report_dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(report_dir, ec))
    if (e.path().filename().string().rfind(".report.json.staged-", 0) == 0) return true;
  return false;
}
}  // namespace

// quarot-quantize: SIGTERM with the packed file and report staged leaves neither, nor the
// folders made for them; SIGTERM between the renames of the commit waits for it (both appear);
// kill -9 between them leaves a journal that the next write of that output completes.
TEST(Faults, QuantizeOutputsAppearTogetherOrNotAtAll) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  TempDir dir;
  {
    const std::string out = dir / "a/new/m.q4.safetensors";
    Child c("quarot-quantize", quantize_args(out), {kStall}, dir / "log");
    ASSERT_TRUE(wait_for([&] { return any_staged_report(out + ".report"); }));
    ::kill(c.pid, SIGTERM);
    EXPECT_EQ(c.wait(), 130);
    EXPECT_FALSE(fs::exists(dir / "a/new")) << "the folders made for the outputs stay";
    EXPECT_TRUE(hidden_entries(dir / "a").empty()) << hidden_entries(dir / "a").front();
  }
  {
    const std::string out = dir / "b.q4.safetensors";
    Child c("quarot-quantize", quantize_args(out), {{"QUAROT_TEST_STALL_MID_COMMIT_MS", "3000"}}, dir / "log");
    ASSERT_TRUE(wait_for([&] { return fs::exists(out + ".report/report.json"); }));
    EXPECT_FALSE(fs::exists(out));  // the commit is half done
    ::kill(c.pid, SIGTERM);
    const int rc = c.wait();  // 130; 0 when the run's own exit beat the handler after the commit
    EXPECT_TRUE(rc == 130 || rc == 0) << rc;
    EXPECT_TRUE(fs::exists(out)) << "SIGTERM broke the commit in half";
    EXPECT_NO_THROW(quarot::PackedModel p(out));
    EXPECT_TRUE(hidden_entries(dir.path()).empty()) << hidden_entries(dir.path()).front();
  }
  {
    const std::string out = dir / "c.q4.safetensors";
    Child c("quarot-quantize", quantize_args(out), {{"QUAROT_TEST_STALL_MID_COMMIT_MS", "60000"}}, dir / "log");
    ASSERT_TRUE(wait_for([&] { return fs::exists(out + ".report/report.json"); }));
    ::kill(c.pid, SIGKILL);
    EXPECT_EQ(c.wait(), 137);
    ASSERT_FALSE(fs::exists(out));
    // The next write of this output (here: staging it again, as a rerun does first) finishes the
    // interrupted commit from its journal before anything else.
    { quarot::StagedFile next(out); }
    EXPECT_TRUE(fs::exists(out));
    EXPECT_NO_THROW(quarot::PackedModel p(out));
    EXPECT_TRUE(fs::exists(out + ".report/report.md"));
    EXPECT_TRUE(hidden_entries(dir / "c.q4.safetensors.report").empty());
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir.path(), ec))
      EXPECT_EQ(e.path().filename().string().find("c.q4.safetensors.commit-"), std::string::npos) << "journal left";
  }
}

// quarot-batch stops on Ctrl-C (to the whole job) and on a SIGTERM sent to it alone (forwarded to
// the running quantize): exit 130, no summary, no partial run; --resume then completes the plan.
TEST(Faults, BatchStopsOnSignalsAndResumes) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  QUAROT_REQUIRE_DATA("tinystories/validation_100.tok512.ids");
  TempDir dir;
  const std::string plan = dir / "plan.toml";
  const std::string text = "[defaults]\npreset = \"w4a4kv4-rtn\"\nctx = 32\nchunks = 1\n[[models]]\nname = \"s\"\npath = \"" +
                           data_file("stories260K/stories260K.bin") + "\"\neval-ids = \"" +
                           data_file("tinystories/validation_100.tok512.ids") +
                           "\"\n[[runs]]\nname = \"w4\"\n[[runs]]\nname = \"w3\"\nw-bits = 3\n";
  write_bytes(plan, std::vector<uint8_t>(text.begin(), text.end()));
  for (bool whole_job : {true, false}) {
    const std::string out = dir / (whole_job ? "int" : "term");
    Child c("quarot-batch", {plan, "-o", out}, {kStall}, dir / "batch.log");
    ASSERT_TRUE(wait_for([&] { return any_staged_report(out + "/s/w4"); }));
    if (whole_job)
      ::kill(-c.pid, SIGINT);
    else
      ::kill(c.pid, SIGTERM);
    EXPECT_EQ(c.wait(), 130) << (whole_job ? "SIGINT to the job" : "SIGTERM to the batch");
    EXPECT_FALSE(fs::exists(out + "/summary.json"));
    EXPECT_FALSE(fs::exists(out + "/s/w4/report.json"));
    EXPECT_FALSE(fs::exists(out + "/s/w4/model.q4.safetensors"));
    EXPECT_FALSE(fs::exists(out + "/s/w3")) << "the batch started the next run after the signal";
    EXPECT_TRUE(hidden_entries(out).empty()) << hidden_entries(out).front();
    const auto r = run_tool("quarot-batch", plan + " -o " + out + " --resume --progress none");
    EXPECT_EQ(r.exit_code, 0) << r.stderr_text;
    EXPECT_TRUE(fs::exists(out + "/summary.json"));
    EXPECT_TRUE(fs::exists(out + "/s/w3/model.q4.safetensors"));
  }
}

// Every tool runs with passive OpenMP waits unless the user chose a policy (tools/cli.hpp): read
// from the stalled tool's own environment, with the variable unset and with it set to "active".
TEST(Faults, ToolsRunWithPassiveOpenMpWaitsUnlessTheUserChose) {
  QUAROT_REQUIRE_DATA("stories260K/stories260K.bin");
  const std::string model = data_file("stories260K/stories260K.bin");
  TempDir dir;
  int i = 0;
  for (const char* given : {static_cast<const char*>(nullptr), "active"}) {
    const fs::path out = dir / ("out" + std::to_string(i++));
    std::string tool = std::string(QUAROT_TOOL_DIR) + "/quarot-convert", o = out.string(), none = "none", dash_o = "-o",
                progress = "--progress", m = model;
    char* argv[] = {tool.data(), m.data(), dash_o.data(), o.data(), progress.data(), none.data(), nullptr};
    const pid_t pid = ::fork();
    if (pid == 0) {
      if (given) ::setenv("OMP_WAIT_POLICY", given, 1);
      else ::unsetenv("OMP_WAIT_POLICY");
      ::setenv(kStall.first.c_str(), "4000", 1);
      if (FILE* f = std::freopen("/dev/null", "w", stderr)) (void)f;
      ::execv(argv[0], argv);
      ::_exit(127);
    }
    std::string env, comm;
    ASSERT_TRUE(wait_for([&] {
      if (staged_folder_complete(dir.path(), out.filename().string()).empty()) return false;
      std::ifstream f(fs::path("/proc") / std::to_string(pid) / "environ", std::ios::binary);  // size 0 in stat
      env.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
      std::ifstream c(fs::path("/proc") / std::to_string(pid) / "comm");
      std::getline(c, comm);
      return true;
    }));
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    const std::string want = std::string("OMP_WAIT_POLICY=") + (given ? given : "passive");
    EXPECT_NE(env.find(want + '\0'), std::string::npos) << "want " << want;
    EXPECT_EQ(comm, "quarot-convert");  // re-executed under its own name, not "exe": pgrep/killall find it
  }
}
