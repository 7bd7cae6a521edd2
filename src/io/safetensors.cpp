#include "quarot/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "quarot/atomic_file.hpp"
#include "quarot/error.hpp"
#include "quarot/json_limits.hpp"

namespace quarot {

using nlohmann::json;

namespace {

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

constexpr uint64_t kAlign = 64;
// Tensors per file: real checkpoints hold hundreds to a few thousand per file (the largest MoE
// models ~100,000 in all, over many shards). A bound keeps a small hostile header from costing
// seconds of parsing and memory for entries that describe nothing.
constexpr std::size_t kMaxTensorsPerFile = 65536;

// A SAX pass that records the first duplicate among the top-level keys (and builds nothing).
struct TopLevelKeys : nlohmann::json_sax<json> {
  int depth = 0;
  std::set<std::string> seen;
  std::string duplicate;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return ++depth, true; }
  bool end_object() override { return --depth, true; }
  bool start_array(std::size_t) override { return ++depth, true; }
  bool end_array() override { return --depth, true; }
  bool key(string_t& k) override {
    if (depth != 1) return true;
    if (seen.size() > kMaxTensorsPerFile) return too_many = true, false;  // stop reading
    if (duplicate.empty() && !seen.insert(k).second) duplicate = k;
    return true;
  }
  bool too_many = false;
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;  // the DOM parse that follows reports it
  }
};

}  // namespace

uint64_t TensorInfo::numel() const {
  uint64_t n = 1;
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

uint64_t tensor_bytes(DType dtype, const std::vector<int64_t>& shape) {
  uint64_t n = dtype_size(dtype);
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

SafetensorsHeader parse_safetensors(std::span<const uint8_t> file, const std::string& label) {
  if (file.size() < 8)
    throw Error(label, "not a safetensors file: " + std::to_string(file.size()) +
                           " bytes, shorter than the 8-byte header length");
  const uint64_t header_len = read_u64_le(file.data());
  if (header_len > kMaxSafetensorsHeader)
    throw Error(label, "safetensors header length " + std::to_string(header_len) +
                           " exceeds the 100 MB limit (corrupt or not a safetensors file)");
  if (header_len > file.size() - 8)
    throw Error(label, "safetensors header length " + std::to_string(header_len) +
                           " runs past the end of the file (" + std::to_string(file.size()) +
                           " bytes): truncated?");
  const char* hdr = reinterpret_cast<const char*>(file.data() + 8);
  if (header_len == 0 || hdr[0] != '{')
    throw Error(label, "safetensors header does not start with '{'");
  // A header is an object of objects (depth 3); deep nesting would recurse in nlohmann::json.
  check_json_limits({hdr, std::size_t(header_len)}, label, {.max_depth = 16, .max_bytes = kMaxSafetensorsHeader});

  // nlohmann keeps the last of duplicate keys silently; the format forbids duplicates. They are
  // found by a first SAX pass (linear): nlohmann's callback parser would do it in O(n^2), since
  // it scans the whole parent object after every nested object (200,000 tensors: minutes).
  TopLevelKeys keys;
  std::string duplicate;
  json j;
  try {
    const bool valid = json::sax_parse(hdr, hdr + header_len, &keys);
    if (keys.too_many)
      throw Error(label, "safetensors header lists more than " + std::to_string(kMaxTensorsPerFile) +
                             " tensors (the limit per file; shard larger models)");
    if (!valid || keys.duplicate.empty()) j = json::parse(hdr, hdr + header_len);
    duplicate = keys.duplicate;
  } catch (const json::exception& e) {
    throw Error(label, std::string("safetensors header is not valid UTF-8 JSON: ") + e.what());
  }
  if (!duplicate.empty()) throw Error(label, "duplicate tensor name '" + duplicate + "'");
  if (!j.is_object()) throw Error(label, "safetensors header is not a JSON object");

  SafetensorsHeader h;
  h.data_start = 8 + header_len;
  const uint64_t buffer_size = file.size() - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw Error(label, "__metadata__ is not a JSON object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw Error(label, "__metadata__ value of '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string what = "tensor '" + name + "'";
    if (!v.is_object()) throw Error(label, what + " is not a JSON object");
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) throw Error(label, what + ": missing field '" + field + "'");
    TensorInfo t;
    t.name = name;
    if (!v["dtype"].is_string()) throw Error(label, what + ": dtype is not a string");
    const auto dname = v["dtype"].get<std::string>();
    const auto dt = parse_dtype(dname);
    if (!dt) throw Error(label, what + ": unknown dtype '" + dname + "'");
    t.dtype = *dt;
    if (!v["shape"].is_array()) throw Error(label, what + ": shape is not an array");
    uint64_t bytes = dtype_size(t.dtype);
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned())
        throw Error(label, what + ": shape holds " + d.dump() + ", not a non-negative integer");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > uint64_t(INT64_MAX) || __builtin_mul_overflow(bytes, dim, &bytes))
        throw Error(label, what + ": shape " + v["shape"].dump() + " overflows");
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      throw Error(label, what + ": data_offsets must be two non-negative integers");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.end < t.begin)
      throw Error(label, what + ": data_offsets [" + std::to_string(t.begin) + "," +
                             std::to_string(t.end) + "] end before they begin");
    if (t.end > buffer_size)
      throw Error(label, what + ": data_offsets end at " + std::to_string(t.end) +
                             ", past the end of the data (" + std::to_string(buffer_size) +
                             " bytes): truncated?");
    if (t.end - t.begin != bytes)
      throw Error(label, what + ": " + dname + " " + shape_str(t.shape) + " needs " +
                             std::to_string(bytes) + " bytes but data_offsets span " +
                             std::to_string(t.end - t.begin));
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  const TensorInfo* prev = nullptr;
  for (const auto& t : h.tensors) {
    if (t.begin < pos)
      throw Error(label, "tensor '" + t.name + "' overlaps tensor '" + prev->name + "'");
    if (t.begin > pos)
      throw Error(label, "unused bytes " + std::to_string(pos) + ".." + std::to_string(t.begin) +
                             " before tensor '" + t.name + "' (offsets must be contiguous)");
    pos = t.end;
    prev = &t;
  }
  if (pos != buffer_size)
    throw Error(label, "tensor data ends at byte " + std::to_string(pos) + " but the data buffer has " +
                           std::to_string(buffer_size) + " bytes (trailing garbage)");
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path)
    : map_(path), header_(parse_safetensors(map_.bytes(), path)) {
  for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const uint8_t> SafetensorsFile::data(const TensorInfo& t) const {
  return map_.bytes().subspan(header_.data_start + t.begin, t.end - t.begin);
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_safetensors(path, tensors, metadata, [&](std::size_t i) { return tensors[i].data; });
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata,
                       const std::function<const void*(std::size_t index)>& data) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (header.contains(t.name)) throw Error(output_name(path), "duplicate tensor name '" + t.name + "'");
    if (t.dtype != t.data_dtype && !(is_float(t.dtype) && is_float(t.data_dtype)))
      throw Error(output_name(path), "tensor '" + t.name + "': cannot convert " +
                            std::string(dtype_name(t.data_dtype)) + " to " +
                            std::string(dtype_name(t.dtype)));
    const uint64_t bytes = tensor_bytes(t.dtype, t.shape);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();  // keys sorted: deterministic
  const uint64_t padded = (8 + text.size() + kAlign - 1) / kAlign * kAlign - 8;
  text.append(padded - text.size(), ' ');

  AtomicFile out(path);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(padded >> (8 * i));
  out.write(len, 8);
  out.write(text);
  std::vector<uint8_t> buf;
  constexpr std::size_t kChunk = 1 << 20;  // elements converted per write
  for (std::size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    const void* elements = data(k);
    const uint64_t n = tensor_bytes(DType::U8, t.shape);  // element count
    if (t.dtype == t.data_dtype) {
      out.write(elements, n * dtype_size(t.dtype));
      continue;
    }
    for (uint64_t i = 0; i < n; i += kChunk) {
      const std::size_t m = std::min<uint64_t>(kChunk, n - i);
      std::vector<float> f32;
      const float* src;
      if (t.data_dtype == DType::F32) {
        src = static_cast<const float*>(elements) + i;
      } else {
        f32.resize(m);
        convert_to_f32(t.data_dtype,
                       static_cast<const uint8_t*>(elements) + i * dtype_size(t.data_dtype), m,
                       f32.data());
        src = f32.data();
      }
      buf.resize(m * dtype_size(t.dtype));
      convert_from_f32(t.dtype, src, m, buf.data());
      out.write(buf.data(), buf.size());
    }
  }
  out.commit();
}

}  // namespace quarot
