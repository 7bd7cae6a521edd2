#pragma once
// The safetensors container: an 8-byte little-endian header length N, N bytes of JSON
// ({name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}), then the byte buffer.
// The reader enforces the format's rules; the writer produces deterministic, aligned files.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "quarot/dtype.hpp"
#include "quarot/mapped_file.hpp"

namespace quarot {

inline constexpr uint64_t kMaxSafetensorsHeader = 100ull * 1000 * 1000;  // 100 MB, as the spec

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data buffer (after the header)
  uint64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by begin offset
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + header length
};

// Parses and validates a complete safetensors file held in memory. `label` names it in errors.
// Rules: header length <= 100 MB and inside the file; the header is a UTF-8 JSON object with
// no duplicate keys; known dtypes; non-negative shapes; dtype size x elements = byte span;
// offsets sorted, contiguous from 0, and ending exactly at the end of the file.
SafetensorsHeader parse_safetensors(std::span<const uint8_t> file, const std::string& label);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);  // maps and validates
  const std::string& path() const { return map_.path(); }
  const SafetensorsHeader& header() const { return header_; }
  const TensorInfo* find(const std::string& name) const;
  std::span<const uint8_t> data(const TensorInfo& t) const;

 private:
  MappedFile map_;
  SafetensorsHeader header_;
  std::map<std::string, std::size_t> index_;
};

struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;  // dtype in the file
  std::vector<int64_t> shape;
  const void* data = nullptr;     // elements in `data_dtype`
  DType data_dtype = DType::F32;  // converted to `dtype` while writing when they differ (floats)
};

// Writes a safetensors file atomically (temp + rename). The header's keys are sorted, the data
// buffer starts on a 64-byte boundary (padding the header with spaces, as the format allows),
// and tensors are laid out in the order given: the same inputs give the same bytes.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata);
// The same file, each tensor's elements (in its `data_dtype`; `data` is ignored) asked for only
// when that tensor is written: `data(i)` for tensors[i], in order, valid until the next call. A
// producer so holds one tensor at a time, not the file (a 7B-sized synthetic checkpoint).
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::function<const void*(std::size_t index)>& data);
uint64_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape);

}  // namespace quarot
