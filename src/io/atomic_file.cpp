#include "quarot/atomic_file.hpp"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "quarot/error.hpp"

namespace fs = std::filesystem;

namespace quarot {

void refuse_overwriting_inputs(const std::string& target, const std::vector<std::string>& inputs) {
  std::error_code ec;
  if (!fs::exists(target, ec)) return;
  for (const auto& in : inputs) {
    if (fs::exists(in, ec) && fs::equivalent(target, in, ec))
      throw Error(target, "refusing to overwrite an input file (" + in + ")");
  }
}

AtomicFile::AtomicFile(std::string target) : target_(std::move(target)) {
  static std::atomic<unsigned> counter{0};
  const fs::path t(target_);
  const fs::path dir = t.has_parent_path() ? t.parent_path() : fs::path(".");
  temp_ = (dir / ("." + t.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" +
                  std::to_string(counter++)))
              .string();
  f_ = std::fopen(temp_.c_str(), "wb");
  if (!f_) throw Error(target_, std::string("cannot create temporary file: ") + std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (f_) std::fclose(f_);
  if (!committed_) std::remove(temp_.c_str());
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
  if (std::rename(temp_.c_str(), target_.c_str()) != 0)
    throw Error(target_, std::string("cannot rename temporary file into place: ") +
                             std::strerror(errno));
  committed_ = true;
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
