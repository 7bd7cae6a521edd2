#pragma once
// A file's identity (device + inode): two paths name the same file when these are equal,
// whatever links, "..", or bind mounts lie between them. Output paths are checked against the
// inputs this way (refuse_overwriting_inputs in atomic_file.hpp), never by name.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace quarot {

struct FileIdentity {
  uint64_t device = 0, inode = 0;
  bool operator==(const FileIdentity&) const = default;
};
std::optional<FileIdentity> file_identity(const std::string& path);  // nothing when absent
bool same_file(const std::string& a, const std::string& b);           // false when either is absent

// Checks an output path before any work: throws quarot::Error naming it when it exists and is not
// a regular file (a device, FIFO, folder or symbolic link: AtomicFile would refuse it at the end)
// or when it is (by identity) one of `inputs` (empty entries ignored).
void refuse_unsafe_output(const std::string& target, const std::vector<std::string>& inputs);

}  // namespace quarot
