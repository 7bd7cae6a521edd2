#pragma once
// Output files are written to a temporary file beside the target and renamed into place on
// commit(), so a failure (or a crash) never leaves a partial or corrupted output. The temporary
// has an unpredictable name and is created with O_EXCL|O_NOFOLLOW; a target that exists and is
// not a regular file (a device such as /dev/null, a FIFO, a folder, a symbolic link) is refused.
// On SIGINT/SIGTERM/SIGHUP (when the program has no handler of its own) every live temporary
// is removed and the process dies of the signal (exit status 128 + signal: 130 for Ctrl-C).
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace quarot {

// Throws quarot::Error if `target` is (by identity) one of `inputs` or, for an input that is a
// folder (a Hugging Face checkpoint), one of the entries directly in it (empty entries ignored).
void refuse_overwriting_inputs(const std::string& target, const std::vector<std::string>& inputs);

class AtomicFile {
 public:
  explicit AtomicFile(std::string target);  // creates the temporary file; throws on failure
  ~AtomicFile();                            // removes the temporary file unless committed
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t n);
  void write(const std::string& s) { write(s.data(), s.size()); }
  void commit();  // flush, fsync, rename over the target
  const std::string& target() const { return target_; }

 private:
  std::string target_, temp_;
  std::FILE* f_ = nullptr;
  bool committed_ = false;
};

// One output of several that must appear together (a packed model and its report): staged in
// full under an unpredictable name beside its target (created empty with O_EXCL|O_NOFOLLOW,
// removed on SIGINT/SIGTERM/SIGHUP and by the destructor unless committed), written through
// path() by any writer that takes a path (AtomicFile onto it), then renamed into place by
// commit_together() with the others.
class StagedFile {
 public:
  explicit StagedFile(std::string target);  // refuses a target that exists and is not a regular file
  ~StagedFile();
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;
  const std::string& path() const { return temp_; }  // where to write it
  const std::string& target() const { return target_; }

 private:
  friend void commit_together(const std::vector<StagedFile*>& files);
  std::string target_, temp_;
  bool committed_ = false;
};

// Renames every staged file onto its target, in order, while holding an exclusive lock on each
// target's folder (so two runs writing the same outputs never pair one's packed file with the
// other's report). When one fails, the targets this call already renamed are removed again:
// the outputs appear together or not at all.
void commit_together(const std::vector<StagedFile*>& files);

// Whole-file convenience.
void write_file_atomic(const std::string& target, const std::string& contents);
std::string read_text_file(const std::string& path);  // throws quarot::Error naming the path

}  // namespace quarot
