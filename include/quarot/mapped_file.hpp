#pragma once
// A read-only memory map of a whole file (RAII). Empty files map to an empty span.
#include <cstdint>
#include <span>
#include <string>

namespace quarot {

class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);  // throws quarot::Error naming the path
  ~MappedFile();
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  const std::string& path() const { return path_; }
  // Tells the kernel that [offset, offset+len) will be read once, front to back.
  void advise_sequential(std::size_t offset, std::size_t len) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace quarot
