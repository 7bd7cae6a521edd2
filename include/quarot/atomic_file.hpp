#pragma once
// Output files are written to a temporary file beside the target and renamed into place on
// commit(), so a failure (or a crash) never leaves a partial or corrupted output. The temporary
// has an unpredictable name and is created with O_EXCL|O_NOFOLLOW; a target that exists and is
// not a regular file (a device such as /dev/null, a FIFO, a folder, a symbolic link) is refused.
// On SIGINT/SIGTERM/SIGHUP (when the program has no handler of its own) every live temporary
// (file or staged folder) is removed and the process exits with status 130 (see on_signal).
//
// Temporary names: ".NAME.tmp-HOST-PID-RANDOM" / ".NAME.staged-HOST-PID-RANDOM" beside NAME (HOST:
// 8 hex digits hashed from the host name, PID: the creating process). A kill -9 cannot clean up,
// so each new staged output sweeps the temporaries of its own NAME whose creator is gone: the
// name parses exactly as above, HOST is this host and PID no longer exists (kill(PID, 0) says
// ESRCH; a reused PID only keeps a stale temporary, never removes a live one). Hidden names that
// never parse as a checkpoint's or packed file's, so a leftover is never mistaken for an output.
#include <cstdint>
#include <cstdio>
#include <functional>
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

// A whole output folder (a Hugging Face checkpoint), staged as a hidden sibling folder
// ".NAME.tmp-HOST-PID-RANDOM" created with mkdir (exclusive; never through a link) in the target's
// parent (created if missing, and removed again on failure), written through path(), then moved
// into place by commit(): readers see no folder or a whole one. The target may already exist only
// as a folder whose entries are all regular files named as `replaceable` accepts (an earlier output of the same kind, or
// hidden temporaries of ours); it is then replaced whole (renameat2 RENAME_EXCHANGE, so there is
// no moment without it). commit() runs under an exclusive lock on the parent folder and refuses a
// target that appeared or changed (by identity) since construction: of two runs writing the same
// folder one succeeds and the other fails naming it, never a mix. Removed on SIGINT/SIGTERM/SIGHUP
// and by the destructor unless committed. `inputs`: files it must never replace (by identity).
class StagedFolder {
 public:
  StagedFolder(std::string target, const std::function<bool(const std::string&)>& replaceable,
               const std::vector<std::string>& inputs);
  ~StagedFolder();
  StagedFolder(const StagedFolder&) = delete;
  StagedFolder& operator=(const StagedFolder&) = delete;
  const std::string& path() const { return temp_; }  // write the folder's files here
  const std::string& target() const { return target_; }
  void commit();

 private:
  std::string target_, temp_;
  std::function<bool(const std::string&)> replaceable_;  // entry names of an earlier output
  std::vector<std::string> inputs_, created_parents_;
  bool existed_ = false, committed_ = false;
  uint64_t device_ = 0, inode_ = 0;
};

// A folder this process created for its outputs: SIGINT/SIGTERM/SIGHUP remove it again when it
// is empty (after the temporaries; folders noted later first), as a failing run's own clean-up
// does, so an interrupted run leaves no empty output folder behind.
void note_created_folder(const std::string& path);

// The name a user knows for `path`: a staged file's or staged folder's target (for error
// messages about writes into staging), otherwise `path` itself.
std::string output_name(const std::string& path);

// Whole-file convenience.
void write_file_atomic(const std::string& target, const std::string& contents);
std::string read_text_file(const std::string& path);  // throws quarot::Error naming the path

}  // namespace quarot
