#include "quarot/atomic_file.hpp"

#include <fcntl.h>
#include <stdio.h>  // renameat2
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string_view>

#include "quarot/error.hpp"
#include "quarot/file_identity.hpp"
#include "quarot/signal_cleanup.hpp"

namespace fs = std::filesystem;

namespace quarot {

namespace {

// Temporaries alive in this process, for the SIGINT/SIGTERM handler: fixed slots of strdup'ed
// paths, so that the handler only loads pointers and calls unlink/rmdir (async-signal-safe).
constexpr std::size_t kSlots = 256;
std::array<std::atomic<char*>, kSlots> g_live{};       // files
std::array<std::atomic<char*>, kSlots> g_live_dirs{};  // staged folders (flat: files only)
std::array<std::atomic<char*>, kSlots> g_created_dirs{};  // output folders made by this process (rmdir when empty)

// Staged path -> the output it becomes, for error messages (output_name).
std::mutex g_names_mutex;
std::map<std::string, std::string> g_staged_files, g_staged_folders;

struct LinuxDirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

// Empties and removes a staged folder from inside a signal handler: open, getdents64, unlinkat,
// rmdir are async-signal-safe (std::filesystem is not). Another thread may still be creating a
// file in it, so a few passes.
void remove_folder_in_handler(const char* path) {
  for (int pass = 0; pass < 4; ++pass) {
    const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return;
    alignas(8) char buf[4096];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        const auto* d = reinterpret_cast<const LinuxDirent64*>(buf + off);
        const char* name = d->d_name;
        if (!(name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))) ::unlinkat(fd, name, 0);
        off += d->d_reclen;
      }
    }
    ::close(fd);
    if (::rmdir(path) == 0 || errno == ENOENT) return;
  }
}

// Set while commit_together renames (that thread blocks the signals meanwhile): a handler on
// another thread waits for it, so a signal never removes the rest of a half-committed set.
std::atomic<int> g_committing{0};

void on_signal(int sig) {
  while (g_committing.load() != 0) {
  }
  for (auto& slot : g_live)
    if (char* p = slot.load()) ::unlink(p);
  for (auto& slot : g_live_dirs)
    if (char* p = slot.load()) remove_folder_in_handler(p);
  for (std::size_t i = kSlots; i-- > 0;)  // the deepest (noted last) first
    if (char* p = g_created_dirs[i].load()) ::rmdir(p);
  // Issue 20 asks one status for "stopped, cleaned up, nothing written": 130, whether the stop
  // came as Ctrl-C (SIGINT) or from a supervisor (SIGTERM: timeout, kill, CI cancelling a job),
  // so scripts and quarot-batch tell an interrupted run (130) from a failed one (1) with one test.
  // SIGINT dies of the signal itself (status 130 too), so that a calling shell loop sees the
  // child was interrupted and stops as well (bash's wait-and-cooperative-exit); SIGTERM exits 130
  // (dying of it would read 143). SIGHUP (terminal gone) dies of the signal.
  if (sig == SIGTERM) ::_exit(130);
  // The signal is blocked while its handler runs: unblock it, or raise() would only queue it.
  ::signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
  ::raise(sig);
  ::_exit(128 + sig);  // not reached
}

void install_handlers_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL) continue;  // keep the program's own
      struct sigaction sa {};
      sa.sa_handler = on_signal;
      sigemptyset(&sa.sa_mask);
      ::sigaction(sig, &sa, nullptr);
    }
  });
}

void register_in(std::array<std::atomic<char*>, kSlots>& slots, const std::string& path) {
  char* copy = ::strdup(path.c_str());
  if (!copy) return;
  for (auto& slot : slots) {
    char* expected = nullptr;
    if (slot.compare_exchange_strong(expected, copy)) return;
  }
  std::free(copy);  // all slots taken: the destructor still removes it on a normal exit
}

void unregister_in(std::array<std::atomic<char*>, kSlots>& slots, const std::string& path) {
  for (auto& slot : slots) {
    char* p = slot.load();
    if (p && path == p && slot.compare_exchange_strong(p, nullptr)) {
      std::free(p);
      return;
    }
  }
}
void register_live(const std::string& path) { register_in(g_live, path); }
void unregister_live(const std::string& path) { unregister_in(g_live, path); }

std::string kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a folder";
  if (S_ISLNK(m)) return "a symbolic link";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  return "not a regular file";
}

// Outputs replace only regular files. A symbolic link is refused rather than followed: renaming
// onto it would replace the link itself (not what whoever made it meant), and following it would
// let a planted link redirect the write anywhere the user can write.
void refuse_non_regular_target(const std::string& target) {
  struct stat st {};
  if (::lstat(target.c_str(), &st) != 0) return;  // absent: fine
  if (!S_ISREG(st.st_mode))
    throw Error(output_name(target), "exists and is " + kind_of(st.st_mode) + "; outputs only replace regular files");
}

const char* kHex = "0123456789abcdef";

uint32_t host_hash() {
  static const uint32_t h = [] {
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    uint32_t v = 2166136261u;
    for (const char* c = name; *c; ++c) v = (v ^ uint8_t(*c)) * 16777619u;
    return v;
  }();
  return h;
}

// "HHHHHHHH-PID-RRRRRRRRRRRRRRRR": this host, this process, 64 unpredictable bits.
std::string temporary_tag() {
  uint8_t b[8];
  std::size_t got = 0;
  while (got < sizeof b) {
    const ssize_t r = ::getrandom(b + got, sizeof b - got, 0);
    if (r <= 0) break;
    got += std::size_t(r);
  }
  static std::atomic<uint64_t> counter{0};
  uint64_t v = counter++ ^ (uint64_t(::getpid()) << 32);
  for (std::size_t i = 0; i < got; ++i) v = v * 1099511628211ull ^ b[i];
  std::string s;
  const uint32_t h = host_hash();
  for (int i = 7; i >= 0; --i) s += kHex[(h >> (4 * i)) & 15];
  s += "-" + std::to_string(::getpid()) + "-";
  for (int i = 0; i < 16; ++i) s += kHex[(v >> (4 * i)) & 15];
  return s;
}

// The creating pid of a tag made by temporary_tag() on this host; nothing when `s` is not exactly
// such a tag or was made on another host.
std::optional<pid_t> tag_pid(std::string_view s) {
  auto hex = [](std::string_view x) {
    return !x.empty() && std::all_of(x.begin(), x.end(), [](char c) { return std::isxdigit(uint8_t(c)) && !std::isupper(uint8_t(c)); });
  };
  const auto a = s.find('-');
  if (a != 8 || !hex(s.substr(0, 8))) return std::nullopt;
  const auto b = s.find('-', a + 1);
  if (b == std::string_view::npos || s.size() - b - 1 != 16 || !hex(s.substr(b + 1))) return std::nullopt;
  const std::string_view pid = s.substr(a + 1, b - a - 1);
  if (pid.empty() || pid.size() > 9 || !std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  if (std::strtoul(std::string(s.substr(0, 8)).c_str(), nullptr, 16) != host_hash()) return std::nullopt;
  return pid_t(std::stol(std::string(pid)));
}

// Whether `entry` is a temporary of output `name` (".NAME.tmp-TAG", ".NAME.staged-TAG", or the
// writer's file onto a staged one "..NAME.staged-TAG.tmp-TAG") left by a process of this host
// that no longer exists.
bool is_stale_temporary(const std::string& entry, const std::string& name) {
  auto owner_gone = [](std::string_view tag) {
    const auto pid = tag_pid(tag);
    return pid && *pid != ::getpid() && ::kill(*pid, 0) != 0 && errno == ESRCH;
  };
  for (const char* infix : {".tmp-", ".staged-"}) {
    const std::string prefix = "." + name + infix;
    if (entry.compare(0, prefix.size(), prefix) == 0 && owner_gone(std::string_view(entry).substr(prefix.size()))) return true;
  }
  const std::string nested = ".." + name + ".staged-";
  if (entry.compare(0, nested.size(), nested) == 0) {
    const auto t = entry.find(".tmp-", nested.size());
    if (t != std::string::npos && tag_pid(std::string_view(entry).substr(nested.size(), t - nested.size())) &&
        owner_gone(std::string_view(entry).substr(t + 5)))
      return true;
  }
  return false;
}

// Completes a commit_together that kill -9 interrupted: its journal lists every staged file and
// its target, written (and fsync'ed) only once all of them were complete, so the renames left
// are finished rather than undone (the set then appears whole).
void roll_forward(const fs::path& journal) {
  std::ifstream in(journal);
  for (std::string line; std::getline(in, line);) {
    const auto tab = line.find('\t');
    if (tab == std::string::npos) continue;
    const std::string temp = line.substr(0, tab), target = line.substr(tab + 1);
    struct stat st {};
    if (::lstat(temp.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;  // renamed before the kill
    if (::lstat(target.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) continue;
    std::rename(temp.c_str(), target.c_str());
  }
  std::error_code ec;
  fs::remove(journal, ec);
}

// Removes what kill -9 left of earlier writes of `name` in `dir` (see atomic_file.hpp), after
// finishing an interrupted commit of it.
void sweep_stale_temporaries(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  const std::string journal_prefix = "." + name + ".commit-";
  for (const auto& e : fs::directory_iterator(dir.empty() ? fs::path(".") : dir, ec)) {
    const std::string entry = e.path().filename().string();
    if (entry.compare(0, journal_prefix.size(), journal_prefix) != 0) continue;
    const auto pid = tag_pid(std::string_view(entry).substr(journal_prefix.size()));
    std::error_code e2;
    if (pid && *pid != ::getpid() && ::kill(*pid, 0) != 0 && errno == ESRCH &&
        fs::symlink_status(e.path(), e2).type() == fs::file_type::regular)
      roll_forward(e.path());
  }
  for (const auto& e : fs::directory_iterator(dir.empty() ? fs::path(".") : dir, ec)) {
    const std::string entry = e.path().filename().string();
    if (entry.empty() || entry[0] != '.' || !is_stale_temporary(entry, name)) continue;
    std::error_code e2;
    const auto st = fs::symlink_status(e.path(), e2);
    if (e2) continue;
    if (st.type() == fs::file_type::regular) fs::remove(e.path(), e2);
    else if (st.type() == fs::file_type::directory) fs::remove_all(e.path(), e2);  // does not follow links inside
  }
}

// A new file beside `target` (".NAME<infix>TAG"): an unpredictable name, created exclusively,
// never through an existing file or link. Registered for the signal handler before it exists (a
// signal between creation and registration would leave it). Returns its descriptor, its path in
// `temp`.
int create_temporary_beside(const std::string& target, const char* infix, std::string& temp) {
  const fs::path t(target);
  const fs::path dir = t.has_parent_path() ? t.parent_path() : fs::path(".");
  sweep_stale_temporaries(dir, t.filename().string());
  int fd = -1, err = 0;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    temp = (dir / ("." + t.filename().string() + infix + temporary_tag())).string();
    register_live(temp);
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd >= 0) break;
    err = errno;
    unregister_live(temp);
    if (err != EEXIST) break;
  }
  if (fd < 0) throw Error(output_name(target), std::string("cannot create temporary file: ") + std::strerror(err));
  return fd;
}

void fsync_folder(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Test hooks (tests/test_faults.cpp), so that a test can signal or kill a tool at a known point
// instead of racing a timer: QUAROT_TEST_STALL_MS=N waits N ms before a commit (everything
// staged, nothing in place); QUAROT_TEST_STALL_MID_COMMIT_MS=N waits after commit_together's
// first rename (part of the set in place).
void test_stall(const char* variable) {
  const char* v = std::getenv(variable);
  if (!v || !*v) return;
  const long ms = std::strtol(v, nullptr, 10);
  if (ms <= 0) return;
  struct timespec t {ms / 1000, (ms % 1000) * 1000000L};
  while (::nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

// An exclusive flock on a folder, released by the destructor.
struct FolderLock {
  int fd = -1;
  explicit FolderLock(const std::string& d) {
    fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw Error(d, std::string("cannot open the output folder: ") + std::strerror(errno));
    while (::flock(fd, LOCK_EX) != 0)
      if (errno != EINTR) {
        const int e = errno;
        ::close(fd);
        throw Error(d, std::string("cannot lock the output folder: ") + std::strerror(e));
      }
  }
  ~FolderLock() { ::close(fd); }  // closing releases the flock
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;
};

}  // namespace

std::optional<FileIdentity> file_identity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  return FileIdentity{uint64_t(st.st_dev), uint64_t(st.st_ino)};
}

bool same_file(const std::string& a, const std::string& b) {
  const auto x = file_identity(a), y = file_identity(b);
  return x && y && *x == *y;
}

void refuse_overwriting_inputs(const std::string& target, const std::vector<std::string>& inputs) {
  const auto t = file_identity(target);
  if (!t) return;  // absent: it cannot be an input
  for (const auto& in : inputs) {
    if (in.empty()) continue;
    if (file_identity(in) == t) throw Error(target, "refusing to overwrite an input file (" + in + ")");
    std::error_code ec;
    if (fs::is_directory(in, ec))  // a checkpoint folder: its files are the inputs
      for (const auto& e : fs::directory_iterator(in, ec))
        if (file_identity(e.path().string()) == t)
          throw Error(target, "refusing to overwrite an input file (" + e.path().string() + ")");
  }
}

void refuse_unsafe_output(const std::string& target, const std::vector<std::string>& inputs) {
  refuse_non_regular_target(target);
  refuse_overwriting_inputs(target, inputs);
}

AtomicFile::AtomicFile(std::string target) : target_(std::move(target)) {
  refuse_non_regular_target(target_);
  install_handlers_once();
  const int fd = create_temporary_beside(target_, ".tmp-", temp_);
  f_ = ::fdopen(fd, "wb");
  if (!f_) {
    const int e = errno;
    ::close(fd);
    ::unlink(temp_.c_str());
    unregister_live(temp_);
    throw Error(output_name(target_), std::string("cannot create temporary file: ") + std::strerror(e));
  }
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) ::unlink(temp_.c_str());
  unregister_live(temp_);
}

void AtomicFile::write(const void* data, std::size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n)
    throw Error(output_name(target_), std::string("write failed: ") + std::strerror(errno));
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0)
    throw Error(output_name(target_), std::string("write failed: ") + std::strerror(errno));
  const int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) throw Error(output_name(target_), std::string("close failed: ") + std::strerror(errno));
  refuse_non_regular_target(target_);  // again: it may have appeared while we wrote
  if (std::rename(temp_.c_str(), target_.c_str()) != 0)
    throw Error(output_name(target_), std::string("cannot rename temporary file into place: ") +
                             std::strerror(errno));
  committed_ = true;
}

StagedFile::StagedFile(std::string target) : target_(std::move(target)) {
  refuse_non_regular_target(target_);
  install_handlers_once();
  ::close(create_temporary_beside(target_, ".staged-", temp_));
  std::lock_guard<std::mutex> lock(g_names_mutex);
  g_staged_files[temp_] = target_;
}

StagedFile::~StagedFile() {
  if (!committed_) ::unlink(temp_.c_str());
  unregister_live(temp_);
  std::lock_guard<std::mutex> lock(g_names_mutex);
  g_staged_files.erase(temp_);
}

void commit_together(const std::vector<StagedFile*>& files) {
  // Lock each folder once, in name order (two runs never wait on each other crosswise).
  std::vector<std::string> dirs;
  for (const StagedFile* f : files) {
    const fs::path t(f->target_);
    dirs.push_back(t.has_parent_path() ? t.parent_path().string() : std::string("."));
  }
  std::sort(dirs.begin(), dirs.end());
  dirs.erase(std::unique(dirs.begin(), dirs.end()), dirs.end());
  test_stall("QUAROT_TEST_STALL_MS");
  std::vector<std::unique_ptr<FolderLock>> locks;
  for (const auto& d : dirs) locks.push_back(std::make_unique<FolderLock>(d));
  if (files.empty()) return;
  // The journal: what is about to be renamed, beside the last target (the packed file), so that
  // a kill -9 between two renames is completed by the next write of that output (roll_forward).
  const fs::path last(files.back()->target_);
  const fs::path last_dir = last.has_parent_path() ? last.parent_path() : fs::path(".");
  std::string journal_text;
  for (const StagedFile* f : files)
    journal_text += fs::absolute(f->temp_).string() + "\t" + fs::absolute(f->target_).string() + "\n";
  std::string journal;
  {
    const int fd = create_temporary_beside(last.string(), ".commit-", journal);  // registered: a signal removes it
    const bool ok = ::write(fd, journal_text.data(), journal_text.size()) == ssize_t(journal_text.size()) && ::fsync(fd) == 0;
    const int e = errno;
    ::close(fd);
    if (!ok) {
      ::unlink(journal.c_str());
      unregister_live(journal);
      throw Error(files.back()->target_, std::string("cannot write the commit journal: ") + std::strerror(e));
    }
  }
  // The renames with this thread's signals blocked and g_committing set: a handler on another
  // thread waits until they are done (see on_signal).
  sigset_t block, old_mask;
  sigemptyset(&block);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&block, sig);
  ::pthread_sigmask(SIG_BLOCK, &block, &old_mask);
  g_committing = 1;
  std::vector<StagedFile*> done;
  std::exception_ptr failure;
  try {
    for (StagedFile* f : files) {
      refuse_non_regular_target(f->target_);  // again: it may have appeared while we worked
      if (std::rename(f->temp_.c_str(), f->target_.c_str()) != 0)
        throw Error(f->target_, std::string("cannot rename temporary file into place: ") + std::strerror(errno));
      f->committed_ = true;
      done.push_back(f);
      if (done.size() == 1) test_stall("QUAROT_TEST_STALL_MID_COMMIT_MS");
    }
  } catch (...) {
    for (StagedFile* f : done) ::unlink(f->target_.c_str());  // all or none
    failure = std::current_exception();
  }
  fsync_folder(last_dir.string());
  ::unlink(journal.c_str());
  unregister_live(journal);
  g_committing = 0;
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (failure) std::rethrow_exception(failure);
}

void install_signal_cleanup() { install_handlers_once(); }

void note_created_folder(const std::string& path) {
  install_handlers_once();
  register_in(g_created_dirs, path);
}

std::string output_name(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_names_mutex);
  if (auto it = g_staged_files.find(path); it != g_staged_files.end()) return it->second;
  for (const auto& [temp, target] : g_staged_folders)
    if (path.size() > temp.size() && path.compare(0, temp.size(), temp) == 0 && path[temp.size()] == '/')
      return target + path.substr(temp.size());
  return path;
}

namespace {

// What is at `target`: absent, or a folder StagedFolder may replace (throws otherwise).
std::optional<FileIdentity> check_replaceable_folder(const std::string& target, const std::function<bool(const std::string&)>& replaceable,
                                                     const std::vector<std::string>& inputs) {
  struct stat st {};
  if (::lstat(target.c_str(), &st) != 0) return std::nullopt;
  if (!S_ISDIR(st.st_mode)) throw Error(target, "exists and is " + kind_of(st.st_mode) + ", not a folder");
  for (const auto& in : inputs)
    if (!in.empty() && file_identity(in) == FileIdentity{uint64_t(st.st_dev), uint64_t(st.st_ino)})
      throw Error(target, "refusing to overwrite an input (" + in + ")");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(target, ec)) {
    const std::string n = e.path().filename().string();
    const std::string p = e.path().string();
    for (const auto& in : inputs)
      if (!in.empty() && file_identity(in) == file_identity(p)) throw Error(p, "refusing to overwrite an input file (" + in + ")");
    const bool ours_hidden = !n.empty() && n[0] == '.' && (n.find(".tmp-") != std::string::npos || n.find(".staged-") != std::string::npos);
    std::error_code e2;
    const bool regular = fs::symlink_status(e.path(), e2).type() == fs::file_type::regular;
    if (!(regular && (replaceable(n) || ours_hidden)))
      throw Error(target, "exists and holds '" + n + "', which this tool does not write; give a new or empty folder (the folder is replaced whole)");
  }
  if (ec) throw Error(target, "cannot list the folder: " + ec.message());
  return FileIdentity{uint64_t(st.st_dev), uint64_t(st.st_ino)};
}

}  // namespace

StagedFolder::StagedFolder(std::string target, const std::function<bool(const std::string&)>& replaceable,
                           const std::vector<std::string>& inputs)
    : replaceable_(replaceable), inputs_(inputs) {
  fs::path t = fs::path(target).lexically_normal();
  if (!t.has_filename() && t.has_parent_path()) t = t.parent_path();  // "out/" -> "out"
  if (t.filename() == "." || t.filename() == ".." || t.empty()) throw Error(target, "name the output folder itself (not . or ..)");
  target_ = t.string();
  if (const auto id = check_replaceable_folder(target_, replaceable_, inputs_)) {
    existed_ = true;
    device_ = id->device;
    inode_ = id->inode;
  }
  install_handlers_once();
  const fs::path dir = t.has_parent_path() ? t.parent_path() : fs::path(".");
  std::error_code ec;
  for (fs::path d = dir; !d.empty() && !fs::exists(d, ec); d = d.parent_path()) {
    created_parents_.push_back(d.string());  // deepest first: removed in this order on failure
    if (d == d.parent_path()) break;
  }
  fs::create_directories(dir, ec);
  if (ec) {
    created_parents_.clear();
    throw Error(target_, "cannot create its parent folder: " + ec.message());
  }
  for (auto it = created_parents_.rbegin(); it != created_parents_.rend(); ++it) register_in(g_created_dirs, *it);
  sweep_stale_temporaries(dir, t.filename().string());
  int err = 0;
  for (int attempt = 0; attempt < 100; ++attempt) {
    temp_ = (dir / ("." + t.filename().string() + ".tmp-" + temporary_tag())).string();
    register_in(g_live_dirs, temp_);  // before it exists (see create_temporary_beside)
    if (::mkdir(temp_.c_str(), 0777) == 0) {
      err = 0;
      break;
    }
    err = errno;
    unregister_in(g_live_dirs, temp_);
    if (err != EEXIST) break;
  }
  if (err) {
    for (const auto& d : created_parents_) fs::remove(d, ec);
    throw Error(target_, std::string("cannot create the staging folder beside it: ") + std::strerror(err));
  }
  std::lock_guard<std::mutex> lock(g_names_mutex);
  g_staged_folders[temp_] = target_;
}

StagedFolder::~StagedFolder() {
  std::error_code ec;
  if (!committed_) {
    fs::remove_all(temp_, ec);
    for (const auto& d : created_parents_) fs::remove(d, ec);  // only when empty
  }
  unregister_in(g_live_dirs, temp_);
  std::lock_guard<std::mutex> lock(g_names_mutex);
  g_staged_folders.erase(temp_);
}

void StagedFolder::commit() {
  test_stall("QUAROT_TEST_STALL_MS");
  fsync_folder(temp_);
  const fs::path t(target_);
  const std::string dir = t.has_parent_path() ? t.parent_path().string() : std::string(".");
  {
    FolderLock lock(dir);  // every StagedFolder commit into this parent, one at a time
    const auto now = check_replaceable_folder(target_, replaceable_, inputs_);
    if (now && !(existed_ && now->device == device_ && now->inode == inode_))
      throw Error(target_, existed_ ? "was replaced while this run wrote it (another run writing the same folder?); left as it is"
                                    : "appeared while this run wrote it (another run writing the same folder?); left as it is");
    if (!now) {
      if (::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_NOREPLACE) != 0) {
        if (errno != EINVAL && errno != ENOSYS)
          throw Error(target_, std::string("cannot move the staged folder into place: ") + std::strerror(errno));
        if (std::rename(temp_.c_str(), target_.c_str()) != 0)  // no RENAME_NOREPLACE here; we hold the lock
          throw Error(target_, std::string("cannot move the staged folder into place: ") + std::strerror(errno));
      }
      committed_ = true;
    } else if (::renameat2(AT_FDCWD, temp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
      committed_ = true;  // temp_ now holds the earlier output: removed below
    } else {
      if (errno != EINVAL && errno != ENOSYS)
        throw Error(target_, std::string("cannot move the staged folder into place: ") + std::strerror(errno));
      // No atomic exchange on this file system: the earlier output moves aside first (a moment
      // without the folder, never a mixed one).
      const std::string old = (fs::path(dir) / ("." + t.filename().string() + ".tmp-" + temporary_tag())).string();
      if (std::rename(target_.c_str(), old.c_str()) != 0)
        throw Error(target_, std::string("cannot move the earlier folder aside: ") + std::strerror(errno));
      if (std::rename(temp_.c_str(), target_.c_str()) != 0) {
        const int e = errno;
        std::rename(old.c_str(), target_.c_str());
        throw Error(target_, std::string("cannot move the staged folder into place: ") + std::strerror(e));
      }
      committed_ = true;
      std::error_code ec;
      fs::remove_all(old, ec);
    }
  }
  std::error_code ec;
  fs::remove_all(temp_, ec);  // the earlier output after an exchange; nothing otherwise
  fsync_folder(dir);
}

void write_file_atomic(const std::string& target, const std::string& contents) {
  AtomicFile f(target);
  f.write(contents);
  f.commit();
}

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw Error(path, "is a folder, expected a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, std::string("cannot open: ") + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace quarot
