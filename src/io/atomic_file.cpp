#include "quarot/atomic_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "quarot/error.hpp"
#include "quarot/file_identity.hpp"

namespace fs = std::filesystem;

namespace quarot {

namespace {

// Temporaries alive in this process, for the SIGINT/SIGTERM handler: fixed slots of strdup'ed
// paths, so that the handler only loads pointers and calls unlink (async-signal-safe).
constexpr std::size_t kSlots = 256;
std::array<std::atomic<char*>, kSlots> g_live{};

void on_signal(int sig) {
  for (auto& slot : g_live)
    if (char* p = slot.load()) ::unlink(p);
  // Die of the same signal (the shell then reports 128 + sig: 130 for Ctrl-C).
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

void register_live(const std::string& path) {
  char* copy = ::strdup(path.c_str());
  if (!copy) return;
  for (auto& slot : g_live) {
    char* expected = nullptr;
    if (slot.compare_exchange_strong(expected, copy)) return;
  }
  std::free(copy);  // all slots taken: the destructor still removes it on a normal exit
}

void unregister_live(const std::string& path) {
  for (auto& slot : g_live) {
    char* p = slot.load();
    if (p && path == p && slot.compare_exchange_strong(p, nullptr)) {
      std::free(p);
      return;
    }
  }
}

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
    throw Error(target, "exists and is " + kind_of(st.st_mode) + "; outputs only replace regular files");
}

std::string random_suffix() {
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
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 16; ++i) s += hex[(v >> (4 * i)) & 15];
  return s;
}

// A new file beside `target` (".NAME<infix><random>"): an unpredictable name, created
// exclusively, never through an existing file or link. Returns its descriptor, its path in `temp`.
int create_temporary_beside(const std::string& target, const char* infix, std::string& temp) {
  const fs::path t(target);
  const fs::path dir = t.has_parent_path() ? t.parent_path() : fs::path(".");
  int fd = -1;
  for (int attempt = 0; attempt < 100 && fd < 0; ++attempt) {
    temp = (dir / ("." + t.filename().string() + infix + random_suffix())).string();
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) throw Error(target, std::string("cannot create temporary file: ") + std::strerror(errno));
  return fd;
}

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
  register_live(temp_);
  f_ = ::fdopen(fd, "wb");
  if (!f_) {
    const int e = errno;
    ::close(fd);
    ::unlink(temp_.c_str());
    unregister_live(temp_);
    throw Error(target_, std::string("cannot create temporary file: ") + std::strerror(e));
  }
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) ::unlink(temp_.c_str());
  unregister_live(temp_);
}

void AtomicFile::write(const void* data, std::size_t n) {
  if (n && std::fwrite(data, 1, n, f_) != n)
    throw Error(target_, std::string("write failed: ") + std::strerror(errno));
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0)
    throw Error(target_, std::string("write failed: ") + std::strerror(errno));
  const int rc = std::fclose(f_);
  f_ = nullptr;
  if (rc != 0) throw Error(target_, std::string("close failed: ") + std::strerror(errno));
  refuse_non_regular_target(target_);  // again: it may have appeared while we wrote
  if (std::rename(temp_.c_str(), target_.c_str()) != 0)
    throw Error(target_, std::string("cannot rename temporary file into place: ") +
                             std::strerror(errno));
  committed_ = true;
}

StagedFile::StagedFile(std::string target) : target_(std::move(target)) {
  refuse_non_regular_target(target_);
  install_handlers_once();
  ::close(create_temporary_beside(target_, ".staged-", temp_));
  register_live(temp_);
}

StagedFile::~StagedFile() {
  if (!committed_) ::unlink(temp_.c_str());
  unregister_live(temp_);
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
  std::vector<int> locks;
  struct Unlock {
    std::vector<int>& fds;
    ~Unlock() {
      for (int fd : fds) ::close(fd);  // closing releases the flock
    }
  } unlock{locks};
  for (const auto& d : dirs) {
    const int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw Error(d, std::string("cannot open the output folder: ") + std::strerror(errno));
    locks.push_back(fd);
    while (::flock(fd, LOCK_EX) != 0)
      if (errno != EINTR) throw Error(d, std::string("cannot lock the output folder: ") + std::strerror(errno));
  }
  std::vector<StagedFile*> done;
  try {
    for (StagedFile* f : files) {
      refuse_non_regular_target(f->target_);  // again: it may have appeared while we worked
      if (std::rename(f->temp_.c_str(), f->target_.c_str()) != 0)
        throw Error(f->target_, std::string("cannot rename temporary file into place: ") + std::strerror(errno));
      f->committed_ = true;
      done.push_back(f);
    }
  } catch (...) {
    for (StagedFile* f : done) ::unlink(f->target_.c_str());  // all or none
    throw;
  }
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
