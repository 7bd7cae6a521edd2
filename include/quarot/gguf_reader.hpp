#pragma once
// Reading GGUF files (llama.cpp's model format, versions 2 and 3) into quarot's ModelWeights.
// Architectures `llama` (q/k rows in the interleaved RoPE layout, as llama.cpp's converter
// writes them) and `qwen2` (q/k/v biases, rotate-half RoPE layout, kept as is). Tensor types
// F32, F16, BF16 are converted exactly; Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K and Q6_K are dequantized (a one-time
// warning says that quantizing an already-quantized model compounds the error); any other type
// is refused naming the tensor and the type. The file is untrusted: every count, length, offset
// and shape is checked against the file's size before it is used.
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "quarot/weights.hpp"

namespace quarot {

// GGUF metadata value types (the file's uint32 codes).
enum class GgufValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12
};

// One metadata value. Scalars keep their value; arrays keep their element type and count only
// (the reader never needs their contents; a tokenizer reads them from the file if it wants).
struct GgufValue {
  GgufValueType type = GgufValueType::U8;
  uint64_t u = 0;      // unsigned integers and bool
  int64_t i = 0;       // signed integers (and unsigned ones that fit)
  double f = 0;        // floats, and every integer as a double
  std::string s;       // strings
  GgufValueType array_type = GgufValueType::U8;
  uint64_t array_count = 0;
  bool is_integer() const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ggml's dims: ne[0] is the contiguous one (a matrix is [cols, rows])
  uint32_t ggml_type = 0;
  uint64_t offset = 0;       // from the start of the data section
  uint64_t bytes = 0;        // size of its data
  uint64_t elements = 0;
};

struct GgufFile {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // where the data section starts in the file
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> tensors;  // in file order
  const GgufTensorInfo* find(const std::string& name) const;
};

// ggml's name of a tensor type ("Q4_0", "F16", ...; "type N" when unknown).
std::string ggml_type_name(uint32_t type);

// Parses the header, metadata and tensor table, and checks that every tensor's data lies inside
// the file. Throws quarot::Error naming `label` on anything malformed.
GgufFile parse_gguf(std::span<const uint8_t> file, const std::string& label);
// The model description its metadata implies (checked against the token embedding's shape);
// `file` is the whole file, for the data of rope_freqs.weight (Llama-3 RoPE scaling).
ModelConfig gguf_model_config(const GgufFile& g, std::span<const uint8_t> file, const std::string& label);
// The whole model, in the file's RoPE layout (config.rope_layout says which).
ModelWeights parse_gguf_model(std::span<const uint8_t> file, const std::string& label);
ModelWeights load_gguf(const std::string& path);

}  // namespace quarot
