// GGUF reader (llama.cpp's gguf.cpp format, v2/v3, little-endian): header, metadata, tensor
// table, then the tensors' data from an aligned data section. Everything is checked against the
// file's size before use: counts are bounded by the bytes left (each entry takes at least a few
// bytes), string lengths by the bytes left, shapes by checked products, data by the file's end.
#include "quarot/gguf_reader.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <numbers>
#include <set>

#include "quarot/dtype.hpp"
#include "quarot/error.hpp"
#include "quarot/finite.hpp"
#include "quarot/mapped_file.hpp"

namespace quarot {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint64_t kMaxDims = 4;         // GGML_MAX_DIMS
constexpr uint64_t kMaxNameLength = 64;  // GGML_MAX_NAME (including the NUL)

// ggml_type codes with their block size (elements) and bytes per block; 0 bytes: not known here.
struct TypeInfo {
  const char* name;
  uint64_t block;
  uint64_t bytes;
};
TypeInfo type_info(uint32_t t) {
  switch (t) {
    case 0: return {"F32", 1, 4};
    case 1: return {"F16", 1, 2};
    case 2: return {"Q4_0", 32, 18};
    case 3: return {"Q4_1", 32, 20};
    case 6: return {"Q5_0", 32, 22};
    case 7: return {"Q5_1", 32, 24};
    case 8: return {"Q8_0", 32, 34};
    case 9: return {"Q8_1", 32, 36};
    case 10: return {"Q2_K", 256, 84};
    case 11: return {"Q3_K", 256, 110};
    case 12: return {"Q4_K", 256, 144};
    case 13: return {"Q5_K", 256, 176};
    case 14: return {"Q6_K", 256, 210};
    case 15: return {"Q8_K", 256, 292};
    case 16: return {"IQ2_XXS", 256, 66};
    case 17: return {"IQ2_XS", 256, 74};
    case 18: return {"IQ3_XXS", 256, 98};
    case 19: return {"IQ1_S", 256, 50};
    case 20: return {"IQ4_NL", 32, 18};
    case 21: return {"IQ3_S", 256, 110};
    case 22: return {"IQ2_S", 256, 82};
    case 23: return {"IQ4_XS", 256, 136};
    case 24: return {"I8", 1, 1};
    case 25: return {"I16", 1, 2};
    case 26: return {"I32", 1, 4};
    case 27: return {"I64", 1, 8};
    case 28: return {"F64", 1, 8};
    case 29: return {"IQ1_M", 256, 56};
    case 30: return {"BF16", 1, 2};
    case 34: return {"TQ1_0", 256, 54};
    case 35: return {"TQ2_0", 256, 66};
    default: return {nullptr, 0, 0};
  }
}

bool is_quantized(uint32_t t) { return t == 2 || t == 3 || t == 6 || t == 7 || t == 8 || t == 20 || t == 12 || t == 14; }
bool dequantizable(uint32_t t) { return t == 0 || t == 1 || t == 30 || is_quantized(t); }

// Bounds-checked little-endian cursor over the file.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> f, const std::string& label) : f_(f), label_(label) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return f_.size() - pos_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(label_, "GGUF " + what + " (at byte " + std::to_string(pos_) + ")");
  }
  const uint8_t* take(uint64_t n, const char* what) {
    if (n > left()) fail(std::string("is truncated: ") + what + " needs " + std::to_string(n) + " bytes, " + std::to_string(left()) + " left");
    const uint8_t* p = f_.data() + pos_;
    pos_ += n;
    return p;
  }
  template <class T>
  T get(const char* what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string string(const char* what, uint64_t max_length) {
    const uint64_t n = get<uint64_t>(what);
    if (n > left()) fail(std::string(what) + " has length " + std::to_string(n) + ", more than the " + std::to_string(left()) + " bytes left");
    if (n > max_length) fail(std::string(what) + " has length " + std::to_string(n) + ", over the limit " + std::to_string(max_length));
    const uint8_t* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
  }

 private:
  std::span<const uint8_t> f_;
  const std::string& label_;
  uint64_t pos_ = 0;
};

// Bytes a scalar of this type takes; 0 for STRING/ARRAY and unknown types.
uint64_t scalar_size(uint32_t t) {
  switch (GgufValueType(t)) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::BOOL: return 1;
    case GgufValueType::U16: case GgufValueType::I16: return 2;
    case GgufValueType::U32: case GgufValueType::I32: case GgufValueType::F32: return 4;
    case GgufValueType::U64: case GgufValueType::I64: case GgufValueType::F64: return 8;
    default: return 0;
  }
}

void read_scalar(Cursor& c, uint32_t t, GgufValue& v) {
  v.type = GgufValueType(t);
  switch (GgufValueType(t)) {
    case GgufValueType::U8: v.u = c.get<uint8_t>("a u8"); break;
    case GgufValueType::I8: v.i = c.get<int8_t>("an i8"); break;
    case GgufValueType::U16: v.u = c.get<uint16_t>("a u16"); break;
    case GgufValueType::I16: v.i = c.get<int16_t>("an i16"); break;
    case GgufValueType::U32: v.u = c.get<uint32_t>("a u32"); break;
    case GgufValueType::I32: v.i = c.get<int32_t>("an i32"); break;
    case GgufValueType::U64: v.u = c.get<uint64_t>("a u64"); break;
    case GgufValueType::I64: v.i = c.get<int64_t>("an i64"); break;
    case GgufValueType::F32: v.f = c.get<float>("an f32"); break;
    case GgufValueType::F64: v.f = c.get<double>("an f64"); break;
    case GgufValueType::BOOL: {
      const uint8_t b = c.get<uint8_t>("a bool");
      if (b > 1) c.fail("bool value " + std::to_string(b) + " is neither 0 nor 1");
      v.u = b;
      break;
    }
    default: c.fail("metadata value type " + std::to_string(t) + " is unknown");
  }
  switch (GgufValueType(t)) {
    case GgufValueType::U8: case GgufValueType::U16: case GgufValueType::U32: case GgufValueType::U64: case GgufValueType::BOOL:
      v.i = v.u <= uint64_t(INT64_MAX) ? int64_t(v.u) : -1;
      v.f = double(v.u);
      break;
    case GgufValueType::I8: case GgufValueType::I16: case GgufValueType::I32: case GgufValueType::I64:
      v.u = v.i >= 0 ? uint64_t(v.i) : 0;
      v.f = double(v.i);
      break;
    default: break;
  }
}

uint64_t checked_mul(uint64_t a, uint64_t b, const Cursor& c, const std::string& what) {
  if (a != 0 && b > UINT64_MAX / a) c.fail(what + " overflows");
  return a * b;
}

}  // namespace

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::U8: case GgufValueType::I8: case GgufValueType::U16: case GgufValueType::I16: case GgufValueType::U32:
    case GgufValueType::I32: case GgufValueType::U64: case GgufValueType::I64: return true;
    default: return false;
  }
}

const GgufTensorInfo* GgufFile::find(const std::string& name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::string ggml_type_name(uint32_t type) {
  const TypeInfo ti = type_info(type);
  return ti.name ? ti.name : "type " + std::to_string(type);
}

GgufFile parse_gguf(std::span<const uint8_t> file, const std::string& label) {
  Cursor c(file, label);
  GgufFile g;
  if (file.size() < 4 || c.get<uint32_t>("the magic") != kMagic) throw Error(label, "not a GGUF file (no 'GGUF' magic)");
  g.version = c.get<uint32_t>("the version");
  if (g.version != 2 && g.version != 3)
    throw Error(label, "GGUF version " + std::to_string(g.version) + " is not supported (only 2 and 3)");
  const uint64_t n_tensors = c.get<uint64_t>("the tensor count");
  const uint64_t n_kv = c.get<uint64_t>("the metadata count");
  // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor entry
  // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) + 8 per dim.
  if (n_kv > c.left() / 13) c.fail("metadata count " + std::to_string(n_kv) + " cannot fit in the file");
  if (n_tensors > c.left() / 32) c.fail("tensor count " + std::to_string(n_tensors) + " cannot fit in the file");

  for (uint64_t k = 0; k < n_kv; ++k) {
    std::string key = c.string("a metadata key", 65535);
    if (key.empty()) c.fail("metadata key " + std::to_string(k) + " is empty");
    if (g.metadata.count(key)) c.fail("metadata key '" + key + "' appears twice");
    const uint32_t t = c.get<uint32_t>("a metadata type");
    GgufValue v;
    if (GgufValueType(t) == GgufValueType::STRING) {
      v.type = GgufValueType::STRING;
      v.s = c.string(("the value of '" + key + "'").c_str(), UINT64_MAX);
    } else if (GgufValueType(t) == GgufValueType::ARRAY) {
      v.type = GgufValueType::ARRAY;
      const uint32_t et = c.get<uint32_t>("an array element type");
      const uint64_t n = c.get<uint64_t>("an array count");
      v.array_type = GgufValueType(et);
      v.array_count = n;
      if (GgufValueType(et) == GgufValueType::STRING) {
        if (n > c.left() / 8) c.fail("array '" + key + "' of " + std::to_string(n) + " strings cannot fit in the file");
        for (uint64_t e = 0; e < n; ++e) {
          const uint64_t len = c.get<uint64_t>("an array string length");
          if (len > c.left()) c.fail("a string of array '" + key + "' runs past the end of the file");
          c.take(len, "an array string");
        }
      } else {
        const uint64_t sz = scalar_size(et);
        if (sz == 0) c.fail("array '" + key + "' has element type " + std::to_string(et) + " (nested arrays and unknown types are not supported)");
        if (n > c.left() / sz) c.fail("array '" + key + "' of " + std::to_string(n) + " elements runs past the end of the file");
        c.take(n * sz, "array elements");
      }
    } else {
      if (scalar_size(t) == 0) c.fail("metadata '" + key + "' has unknown type " + std::to_string(t));
      read_scalar(c, t, v);
    }
    g.metadata.emplace(std::move(key), std::move(v));
  }

  if (auto it = g.metadata.find("general.alignment"); it != g.metadata.end()) {
    const GgufValue& a = it->second;
    if (a.type != GgufValueType::U32) throw Error(label, "GGUF general.alignment must be a u32");
    if (a.u == 0 || (a.u & (a.u - 1)) != 0 || a.u > (1u << 20))
      throw Error(label, "GGUF general.alignment " + std::to_string(a.u) + " is not a power of two up to 1 MiB");
    g.alignment = a.u;
  }

  std::set<std::string> names;
  g.tensors.reserve(std::size_t(n_tensors));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensorInfo t;
    t.name = c.string("a tensor name", kMaxNameLength - 1);
    if (t.name.empty()) c.fail("tensor " + std::to_string(k) + " has an empty name");
    if (!names.insert(t.name).second) c.fail("tensor '" + t.name + "' appears twice");
    const uint32_t n_dims = c.get<uint32_t>("a tensor's dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      c.fail("tensor '" + t.name + "' has " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
    t.elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t n = c.get<uint64_t>("a tensor dimension");
      if (n == 0 || n > file.size() * 8) c.fail("tensor '" + t.name + "' has dimension " + std::to_string(n) + " (out of range for this file)");
      t.ne.push_back(n);
      t.elements = checked_mul(t.elements, n, c, "tensor '" + t.name + "' element count");
    }
    t.ggml_type = c.get<uint32_t>("a tensor type");
    const TypeInfo ti = type_info(t.ggml_type);
    if (!ti.name || ti.bytes == 0) c.fail("tensor '" + t.name + "' has unknown ggml type " + std::to_string(t.ggml_type));
    if (t.ne[0] % ti.block != 0)
      c.fail("tensor '" + t.name + "' of type " + ti.name + " has " + std::to_string(t.ne[0]) + " columns, not a multiple of its block of " + std::to_string(ti.block));
    t.bytes = checked_mul(t.elements / ti.block, ti.bytes, c, "tensor '" + t.name + "' size");
    t.offset = c.get<uint64_t>("a tensor offset");
    if (t.offset % g.alignment != 0)
      c.fail("tensor '" + t.name + "' offset " + std::to_string(t.offset) + " is not a multiple of the alignment " + std::to_string(g.alignment));
    g.tensors.push_back(std::move(t));
  }

  const uint64_t pad = (g.alignment - c.pos() % g.alignment) % g.alignment;
  g.data_offset = c.pos() + pad;
  if (n_tensors > 0 && g.data_offset > file.size())
    throw Error(label, "GGUF is truncated: its data section would start at byte " + std::to_string(g.data_offset) + " of " + std::to_string(file.size()));
  const uint64_t data_size = g.data_offset <= file.size() ? file.size() - g.data_offset : 0;
  for (const auto& t : g.tensors) {
    if (t.offset > data_size || t.bytes > data_size - t.offset)
      throw Error(label, "GGUF is truncated: tensor '" + t.name + "' (" + std::to_string(t.bytes) + " bytes at data offset " +
                             std::to_string(t.offset) + ") runs past the end of the file");
  }
  // No two tensors share bytes (sorted by offset, each ends before the next; sums cannot
  // overflow: every tensor lies inside the file).
  std::vector<const GgufTensorInfo*> by_offset;
  for (const auto& t : g.tensors) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i - 1]->offset + by_offset[i - 1]->bytes > by_offset[i]->offset)
      throw Error(label, "GGUF tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name + "' overlap in the data section");
  return g;
}

namespace {

// Typed metadata lookups with one-line errors naming the key.
struct Meta {
  const GgufFile& g;
  const std::string& label;
  const GgufValue* find(const std::string& key) const {
    auto it = g.metadata.find(key);
    return it == g.metadata.end() ? nullptr : &it->second;
  }
  int64_t integer(const std::string& key, int64_t min, int64_t max) const {
    const GgufValue* v = find(key);
    if (!v) throw Error(label, "GGUF metadata lacks '" + key + "'");
    return integer_of(key, *v, min, max);
  }
  int64_t integer(const std::string& key, int64_t min, int64_t max, int64_t fallback) const {
    const GgufValue* v = find(key);
    return v ? integer_of(key, *v, min, max) : fallback;
  }
  int64_t integer_of(const std::string& key, const GgufValue& v, int64_t min, int64_t max) const {
    if (!v.is_integer()) throw Error(label, "GGUF metadata '" + key + "' is not an integer");
    if (v.type == GgufValueType::U64 && v.u > uint64_t(INT64_MAX)) throw Error(label, "GGUF metadata '" + key + "' is out of range");
    if (v.i < min || v.i > max)
      throw Error(label, "GGUF metadata '" + key + "' = " + std::to_string(v.i) + " is out of range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
    return v.i;
  }
  double number(const std::string& key, double fallback, double min, double max) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    if (v->type != GgufValueType::F32 && v->type != GgufValueType::F64 && !v->is_integer())
      throw Error(label, "GGUF metadata '" + key + "' is not a number");
    if (!std::isfinite(v->f) || v->f < min || v->f > max)
      throw Error(label, "GGUF metadata '" + key + "' = " + std::to_string(v->f) + " is out of range");
    return v->f;
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    const GgufValue* v = find(key);
    if (!v) return fallback;
    if (v->type != GgufValueType::STRING) throw Error(label, "GGUF metadata '" + key + "' is not a string");
    return v->s;
  }
};

void dequantize(const GgufTensorInfo& t, const uint8_t* src, float* dst) {
  static constexpr int8_t kIq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
  const uint64_t blocks = t.elements / 32;
  auto half = [](const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return f16_to_f32(h);
  };
  switch (t.ggml_type) {
    case 0: convert_to_f32(DType::F32, src, t.elements, dst); return;
    case 1: convert_to_f32(DType::F16, src, t.elements, dst); return;
    case 30: convert_to_f32(DType::BF16, src, t.elements, dst); return;
    case 8:  // Q8_0: fp16 d, 32 x int8
      for (uint64_t b = 0; b < blocks; ++b, src += 34, dst += 32) {
        const float d = half(src);
        for (int j = 0; j < 32; ++j) dst[j] = d * float(int8_t(src[2 + j]));
      }
      return;
    case 2:  // Q4_0: fp16 d, 16 bytes; low nibbles are elements 0..15, high nibbles 16..31
      for (uint64_t b = 0; b < blocks; ++b, src += 18, dst += 32) {
        const float d = half(src);
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * float(int(src[2 + j] & 0xF) - 8);
          dst[j + 16] = d * float(int(src[2 + j] >> 4) - 8);
        }
      }
      return;
    case 3:  // Q4_1: fp16 d, fp16 m, 16 bytes; x = q*d + m
      for (uint64_t b = 0; b < blocks; ++b, src += 20, dst += 32) {
        const float d = half(src), m = half(src + 2);
        for (int j = 0; j < 16; ++j) {
          dst[j] = float(src[4 + j] & 0xF) * d + m;
          dst[j + 16] = float(src[4 + j] >> 4) * d + m;
        }
      }
      return;
    case 6:  // Q5_0: fp16 d, 32 high bits, 16 bytes of nibbles; x = d*(q - 16)
    case 7:  // Q5_1: fp16 d, fp16 m, 32 high bits, 16 bytes of nibbles; x = d*q + m
      for (uint64_t b = 0; b < blocks; ++b, dst += 32) {
        const bool q51 = t.ggml_type == 7;
        const float d = half(src), m = q51 ? half(src + 2) : 0.f;
        const uint8_t* p = src + (q51 ? 4 : 2);
        uint32_t qh;
        std::memcpy(&qh, p, 4);
        const uint8_t* qs = p + 4;
        for (int j = 0; j < 16; ++j) {
          const int x0 = int((qs[j] & 0xF) | (((qh >> j) << 4) & 0x10));
          const int x1 = int((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10));
          if (q51) {
            dst[j] = float(x0) * d + m;
            dst[j + 16] = float(x1) * d + m;
          } else {
            dst[j] = float(x0 - 16) * d;
            dst[j + 16] = float(x1 - 16) * d;
          }
        }
        src += q51 ? 24 : 22;
      }
      return;
    case 12:  // Q4_K: per 256: fp16 d, fp16 dmin, 12 bytes of 6-bit (scale, min) pairs for 8 sub-blocks of 32, 128 bytes of nibbles
      for (uint64_t b = 0; b < t.elements / 256; ++b, src += 144, dst += 256) {
        const float d = half(src), dmin = half(src + 2);
        const uint8_t* sc = src + 4;
        const uint8_t* q = src + 16;
        auto scale_min = [&](int j, int& s6, int& m6) {
          if (j < 4) {
            s6 = sc[j] & 63;
            m6 = sc[j + 4] & 63;
          } else {
            s6 = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
            m6 = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
          }
        };
        float* y = dst;
        for (int j = 0; j < 256; j += 64, q += 32) {
          int s1, m1, s2, m2;
          scale_min(j / 32, s1, m1);
          scale_min(j / 32 + 1, s2, m2);
          const float d1 = d * float(s1), c1 = dmin * float(m1), d2 = d * float(s2), c2 = dmin * float(m2);
          for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - c1;
          for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - c2;
        }
      }
      return;
    case 14:  // Q6_K: per 256: 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 int8 scales, fp16 d (last)
      for (uint64_t b = 0; b < t.elements / 256; ++b, src += 210, dst += 256) {
        const float d = half(src + 208);
        const uint8_t* ql = src;
        const uint8_t* qh = src + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(src + 192);
        float* y = dst;
        for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = int((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = int((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = int((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = int((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * float(sc[is]) * float(q1);
            y[l + 32] = d * float(sc[is + 2]) * float(q2);
            y[l + 64] = d * float(sc[is + 4]) * float(q3);
            y[l + 96] = d * float(sc[is + 6]) * float(q4);
          }
        }
      }
      return;
    case 20:  // IQ4_NL: fp16 d, 16 bytes of indices into the non-uniform table
      for (uint64_t b = 0; b < blocks; ++b, src += 18, dst += 32) {
        const float d = half(src);
        for (int j = 0; j < 16; ++j) {
          dst[j] = d * float(kIq4nl[src[2 + j] & 0xF]);
          dst[j + 16] = d * float(kIq4nl[src[2 + j] >> 4]);
        }
      }
      return;
    default: break;
  }
}

// Llama-3's RoPE scaling recovered from llama.cpp's per-frequency factors (rope_freqs.weight:
// frequency i is divided by factor[i]; convert_hf_to_gguf.py writes 1 for wavelengths below
// original/high_freq_factor, `factor` above original/low_freq_factor, and 1 / ((1 - s) / factor + s)
// between, s linear in 1 / wavelength). The factors fix `factor` and the two wavelength
// thresholds (only their ratios to original_max_position_embeddings matter); the result must
// reproduce every factor, so any other table is refused rather than run differently.
RopeScaling llama3_scaling_of(const std::vector<float>& f, double theta, int head_dim, const std::string& label) {
  const std::size_t n = f.size();
  auto fail = [&](const std::string& why) -> RopeScaling {
    throw Error(label, "GGUF tensor 'rope_freqs.weight' " + why);
  };
  if (n == 0) fail("is empty");
  for (float x : f)
    if (!std::isfinite(x) || !(x >= 1.f) || x > 1e6f) fail("holds a factor that is not finite and in [1, 1e6]");
  std::vector<double> wavelen(n);
  for (std::size_t i = 0; i < n; ++i) wavelen[i] = 2 * std::numbers::pi / std::pow(theta, -2.0 * double(i) / head_dim);
  RopeScaling r;
  r.type = RopeScalingType::Llama3;
  r.factor = f[n - 1];
  const auto near = [](double a, double b) { return std::abs(a - b) <= 1e-6 * std::max(1.0, std::abs(b)); };
  // Indices with factor 1 come first, then the band, then `factor`.
  std::size_t ones = 0, band_end = n;
  while (ones < n && near(f[ones], 1.0)) ++ones;
  if (ones == n) fail("holds only ones (no scaling): not written by convert_hf_to_gguf.py");
  while (band_end > ones && near(f[band_end - 1], r.factor)) --band_end;
  const double F = r.factor;
  const auto smooth = [&](std::size_t i) { return (1.0 / f[i] - 1.0 / F) / (1.0 - 1.0 / F); };
  double inv_low, inv_high;  // 1 / low-frequency and 1 / high-frequency wavelength thresholds
  if (band_end - ones >= 2) {  // two points of the band: the line s(1/wavelen) through them
    const std::size_t a = ones, b = band_end - 1;
    const double slope = (smooth(a) - smooth(b)) / (1 / wavelen[a] - 1 / wavelen[b]);
    if (!(slope > 0)) fail("is not monotone in the wavelength as Llama-3's scaling is");
    inv_low = 1 / wavelen[a] - smooth(a) / slope;
    inv_high = inv_low + 1 / slope;
  } else {  // at most one band point: thresholds between the neighbouring wavelengths
    const double lo = ones > 0 ? wavelen[ones - 1] : wavelen[0] / 2;
    if (band_end == ones) {
      const double hi = band_end < n ? wavelen[band_end] : 2 * wavelen[n - 1];
      inv_high = 1 / (lo + (hi - lo) / 3);
      inv_low = 1 / (lo + 2 * (hi - lo) / 3);
    } else {
      // s = (x - 1/L) / (1/H - 1/L) at x = 1/wavelen[k]: 1/L in (1/hi, x], and 1/H must stay
      // below 1/lo, i.e. x - 1/L < (1/lo - x) s / (1 - s); 1/L halfway in what is left.
      const std::size_t k = ones;
      const double hi = k + 1 < n ? wavelen[k + 1] : 2 * wavelen[n - 1];
      const double x = 1 / wavelen[k], sk = smooth(k);
      if (!(sk > 0 && sk < 1)) fail("has a band factor outside (1, factor)");
      const double a_min = std::max(1 / hi, x - (1 / lo - x) * sk / (1 - sk));
      inv_low = (a_min + x) / 2;
      inv_high = inv_low + (x - inv_low) / sk;
    }
  }
  if (!(inv_low > 0) || !(inv_high > inv_low) || !std::isfinite(inv_high)) fail("has no consistent low/high frequency thresholds");
  // original_max_position_embeddings as the low threshold rounded, low/high factors around it.
  r.original_max_positions = int(std::clamp(std::round(1 / inv_low), 1.0, double(1 << 24)));
  r.low_freq_factor = r.original_max_positions * inv_low;
  r.high_freq_factor = r.original_max_positions * inv_high;
  for (std::size_t i = 0; i < n; ++i) {  // the recovered parameters must give back every factor
    const double w = wavelen[i];
    const double lw = r.original_max_positions / r.low_freq_factor, hw = r.original_max_positions / r.high_freq_factor;
    double want = 1;
    if (w > lw) want = F;
    else if (w >= hw) {
      const double s = (r.original_max_positions / w - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      want = 1 / ((1 - s) / F + s);
    }
    if (std::abs(want - f[i]) > 1e-5 * want)
      fail("is not Llama-3's scaling (factor " + std::to_string(i) + " is " + std::to_string(f[i]) + ", the fitted curve gives " + std::to_string(want) + ")");
  }
  return r;
}

}  // namespace

ModelConfig gguf_model_config(const GgufFile& g, std::span<const uint8_t> file, const std::string& label) {
  const Meta m{g, label};
  const std::string arch = m.string("general.architecture", "");
  if (arch.empty()) throw Error(label, "GGUF metadata lacks 'general.architecture'");
  if (g.tensors.empty())
    throw Error(label, "GGUF holds no tensors (a vocabulary-only file?); quarot needs a model");
  ModelConfig c;
  if (arch == "llama") {
    c.family = Family::Llama;
    c.rope_layout = RopeLayout::Interleaved;  // llama.cpp's converter permutes HF's q/k rows so
  } else if (arch == "qwen2") {
    c.family = Family::Qwen2;
    c.rope_layout = RopeLayout::Half;  // qwen2 runs NEOX-style RoPE: HF's layout, unpermuted
  } else {
    throw Error(label, "GGUF architecture '" + arch + "' is not supported (llama, qwen2)");
  }
  const std::string p = arch + ".";
  if (m.integer(p + "expert_count", 0, INT32_MAX, 0) > 0) throw Error(label, "GGUF " + p + "expert_count: mixture-of-experts models are not supported");
  c.hidden = int(m.integer(p + "embedding_length", 1, 1 << 20));
  c.intermediate = int(m.integer(p + "feed_forward_length", 1, 1 << 22));
  c.n_layers = int(m.integer(p + "block_count", 1, 1024));
  c.n_heads = int(m.integer(p + "attention.head_count", 1, 1024));
  c.n_kv_heads = int(m.integer(p + "attention.head_count_kv", 1, 1024, c.n_heads));
  c.head_dim = int(m.integer(p + "attention.key_length", 1, 1 << 16, c.hidden / c.n_heads));
  if (m.integer(p + "attention.value_length", 1, 1 << 16, c.head_dim) != c.head_dim)
    throw Error(label, "GGUF " + p + "attention.value_length differs from key_length (not supported)");
  if (m.integer(p + "rope.dimension_count", 1, 1 << 16, c.head_dim) != c.head_dim)
    throw Error(label, "GGUF " + p + "rope.dimension_count differs from the head size " + std::to_string(c.head_dim) + " (partial RoPE is not supported)");
  c.max_positions = int(m.integer(p + "context_length", 1, 1 << 24));
  c.rope_theta = m.number(p + "rope.freq_base", 10000.0, 1e-3, 1e12);
  c.rms_eps = m.number(p + "attention.layer_norm_rms_epsilon", 1e-5, 0, 1);
  const std::string scaling = m.string(p + "rope.scaling.type", "none");
  if (scaling == "linear") {
    c.rope_scaling.type = RopeScalingType::Linear;
    c.rope_scaling.factor = m.number(p + "rope.scaling.factor", 1.0, 1e-3, 1e6);
  } else if (scaling != "none") {
    throw Error(label, "GGUF " + p + "rope.scaling.type '" + scaling + "' is not supported (none, linear)");
  }
  if (const GgufTensorInfo* t = g.find("rope_freqs.weight")) {
    if (c.rope_scaling.type != RopeScalingType::None)
      throw Error(label, "GGUF has both " + p + "rope.scaling.type and tensor 'rope_freqs.weight'");
    if (t->ne != std::vector<uint64_t>{uint64_t(c.head_dim / 2)} || t->ggml_type != 0)
      throw Error(label, "GGUF tensor 'rope_freqs.weight' is not F32 [head_dim/2 = " + std::to_string(c.head_dim / 2) + "]");
    if (file.empty()) throw Error(label, "GGUF tensor 'rope_freqs.weight' needs the file's data");  // a caller bug
    std::vector<float> factors(c.head_dim / 2);
    std::memcpy(factors.data(), file.data() + g.data_offset + t->offset, factors.size() * sizeof(float));
    c.rope_scaling = llama3_scaling_of(factors, c.rope_theta, c.head_dim, label);
  }
  const GgufTensorInfo* emb = g.find("token_embd.weight");
  if (!emb) throw Error(label, "GGUF lacks tensor 'token_embd.weight'");
  if (emb->ne.size() != 2 || emb->ne[1] > (1u << 22))
    throw Error(label, "GGUF tensor 'token_embd.weight' is not a [hidden, vocab] matrix of a sane vocabulary");
  c.vocab = int(emb->ne[1]);
  if (const GgufValue* v = m.find(p + "vocab_size"); v && m.integer_of(p + "vocab_size", *v, 1, 1 << 22) != c.vocab)
    throw Error(label, "GGUF " + p + "vocab_size disagrees with token_embd.weight's " + std::to_string(c.vocab) + " rows");
  c.tied_embeddings = g.find("output.weight") == nullptr;
  c.bos_id = int(m.integer("tokenizer.ggml.bos_token_id", 0, c.vocab - 1, c.vocab > 1 ? 1 : 0));
  c.eos_id = int(m.integer("tokenizer.ggml.eos_token_id", 0, c.vocab - 1, c.vocab > 2 ? 2 : 0));
  const bool bq = g.find("blk.0.attn_q.bias"), bk = g.find("blk.0.attn_k.bias"), bv = g.find("blk.0.attn_v.bias");
  const bool bo = g.find("blk.0.attn_output.bias");
  c.q_bias = bq;
  c.k_bias = bk;
  c.v_bias = bv;
  c.o_bias = bo;
  if (c.family == Family::Qwen2 && (!(bq && bk && bv) || bo))
    throw Error(label, "GGUF qwen2 model must have q/k/v biases and no output bias");
  if (c.family == Family::Llama && (bq || bk || bv || bo) && !(bq && bk && bv && bo))
    throw Error(label, "GGUF llama model has only some of the attention biases (all or none supported)");
  c.validate(label);
  return c;
}

ModelWeights parse_gguf_model(std::span<const uint8_t> file, const std::string& label) {
  const GgufFile g = parse_gguf(file, label);
  ModelWeights m;
  m.config = gguf_model_config(g, file, label);
  m.source = label;
  const ModelConfig& c = m.config;
  std::set<std::string> used;
  std::set<uint32_t> types;
  std::map<uint32_t, uint64_t> elements_of_type;
  // Pass 1 (`fill_data` false, nothing allocated yet): every tensor the config implies is in the
  // file with its shape and a readable type. Tensors cannot overlap (parse_gguf), so the model
  // allocated below is paid for by the file's own bytes, whatever the metadata claims.
  // Pass 2: the data, converted to fp32.
  bool fill_data = false;
  auto fill = [&](const std::string& name, std::span<float> out, std::vector<uint64_t> ne) {
    const GgufTensorInfo* t = g.find(name);
    if (!t) throw Error(label, "GGUF lacks tensor '" + name + "'");
    if (t->ne != ne) {
      std::string want, got;
      for (auto n : ne) want += (want.empty() ? "" : ", ") + std::to_string(n);
      for (auto n : t->ne) got += (got.empty() ? "" : ", ") + std::to_string(n);
      throw Error(label, "GGUF tensor '" + name + "' has dims [" + got + "], the metadata implies [" + want + "]");
    }
    if (!dequantizable(t->ggml_type))
      throw Error(label, "GGUF tensor '" + name + "' has type " + ggml_type_name(t->ggml_type) +
                             ", which quarot cannot read (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q6_K)");
    if (!fill_data) return;
    if (out.size() != t->elements) throw Error(label, "GGUF tensor '" + name + "' has the wrong element count");
    dequantize(*t, file.data() + g.data_offset + t->offset, out.data());
    used.insert(name);
    types.insert(t->ggml_type);
    elements_of_type[t->ggml_type] += t->elements;
  };
  const uint64_t d = c.hidden, f = c.intermediate, q = c.q_dim(), kv = c.kv_dim(), V = c.vocab;
  auto mat = [&](const std::string& name, Matrix* x, uint64_t rows, uint64_t cols) {
    fill(name, x ? std::span<float>(x->data.data(), x->data.size()) : std::span<float>(), {cols, rows});
  };
  auto vec = [&](const std::string& name, std::vector<float>* v, uint64_t n) {
    fill(name, v ? std::span<float>(*v) : std::span<float>(), {n});
  };
  for (int pass = 0; pass < 2; ++pass) {
    fill_data = pass == 1;
    if (fill_data) allocate(m);
    ModelWeights* w = fill_data ? &m : nullptr;
    mat("token_embd.weight", w ? &w->tok_embeddings : nullptr, V, d);
    for (int l = 0; l < c.n_layers; ++l) {
      LayerWeights* L = w ? &w->layers[std::size_t(l)] : nullptr;
      const std::string b = "blk." + std::to_string(l) + ".";
      vec(b + "attn_norm.weight", L ? &L->attn_norm : nullptr, d);
      mat(b + "attn_q.weight", L ? &L->wq : nullptr, q, d);
      mat(b + "attn_k.weight", L ? &L->wk : nullptr, kv, d);
      mat(b + "attn_v.weight", L ? &L->wv : nullptr, kv, d);
      mat(b + "attn_output.weight", L ? &L->wo : nullptr, d, q);
      if (c.q_bias) vec(b + "attn_q.bias", L ? &L->bq : nullptr, q);
      if (c.k_bias) vec(b + "attn_k.bias", L ? &L->bk : nullptr, kv);
      if (c.v_bias) vec(b + "attn_v.bias", L ? &L->bv : nullptr, kv);
      if (c.o_bias) vec(b + "attn_output.bias", L ? &L->bo : nullptr, d);
      vec(b + "ffn_norm.weight", L ? &L->ffn_norm : nullptr, d);
      mat(b + "ffn_gate.weight", L ? &L->w_gate : nullptr, f, d);
      mat(b + "ffn_up.weight", L ? &L->w_up : nullptr, f, d);
      mat(b + "ffn_down.weight", L ? &L->w_down : nullptr, d, f);
    }
    vec("output_norm.weight", w ? &w->final_norm : nullptr, d);
    if (!c.tied_embeddings) mat("output.weight", w ? &w->lm_head : nullptr, V, d);
  }
  if (c.rope_scaling.type == RopeScalingType::Llama3) used.insert("rope_freqs.weight");  // read into the config
  for (const auto& t : g.tensors)
    if (!used.count(t.name))
      throw Error(label, "GGUF tensor '" + t.name + "' is not part of a " + family_name(c.family) + " model quarot runs (unsupported variant?)");

  std::string quantized;
  for (uint32_t t : types)
    if (is_quantized(t)) quantized += (quantized.empty() ? "" : ", ") + ggml_type_name(t);
  // The type of most weights (norms are F32 in every GGUF); quantized types read as F32.
  uint32_t dominant = 0;
  for (const auto& [t, n] : elements_of_type)
    if (n > elements_of_type[dominant]) dominant = t;
  m.source_dtype = dominant == 1 ? DType::F16 : dominant == 30 ? DType::BF16 : DType::F32;
  if (!quantized.empty()) {
    m.metadata["gguf.dequantized_types"] = quantized;
    static std::once_flag warned;
    std::call_once(warned, [&] {
      std::fprintf(stderr, "warning: %s: GGUF tensors of type %s are dequantized; quantizing this model again compounds the error\n",
                   label.c_str(), quantized.c_str());
    });
  }
  for (const auto& [key, v] : g.metadata)
    if (key.rfind("quarot.", 0) == 0 && v.type == GgufValueType::STRING) m.metadata[key] = v.s;
  check_finite(m, label);
  return m;
}

ModelWeights load_gguf(const std::string& path) {
  MappedFile f(path);
  return parse_gguf_model(f.bytes(), path);
}

}  // namespace quarot
