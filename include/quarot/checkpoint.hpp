#pragma once
// Checkpoint loaders and writers: llama2.c .bin and Hugging Face folders (safetensors, sharded
// or not; F32/F16/BF16). Every loader memory-maps its files and converts each tensor once.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "quarot/weights.hpp"

namespace quarot {

// Called as tensors are converted: (bytes done, bytes total). May be empty.
using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;

// llama2.c legacy format: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
// (negative = untied classifier follows), seq_len), then fp32 tensors, the freq_cis block
// (skipped), and the classifier when untied. RoPE layout: interleaved pairs.
ModelWeights load_llama2c(const std::string& path);
ModelWeights parse_llama2c(std::span<const uint8_t> file, const std::string& label);
// The config of a llama2.c checkpoint from its header only (no size check).
ModelConfig parse_llama2c_config(std::span<const uint8_t> file, const std::string& label);

// A Hugging Face folder: config.json + model.safetensors, or model.safetensors.index.json and
// its shards. Tensors are checked against the shapes config.json implies.
ModelWeights load_hf(const std::string& dir, const LoadProgress& progress = {});

// The weight_map of model.safetensors.index.json: tensor name -> shard file name.
std::map<std::string, std::string> parse_hf_index(const std::string& json_text,
                                                  const std::string& label);

// Picks the loader from the path: a .gguf file is GGUF (gguf_reader.hpp); a folder (or a file inside one named config.json,
// model.safetensors or model.safetensors.index.json) is Hugging Face; a .bin file is llama2.c.
ModelWeights load_model(const std::string& path, const LoadProgress& progress = {});
// The config alone (config.json, or a llama2.c header), without reading the weights.
ModelConfig read_model_config(const std::string& path);

// A checkpoint read piece by piece, for models larger than memory: opening checks what
// load_model checks (config, every tensor's presence, shape and dtype) without converting
// anything; then the float parts and each decoder layer are converted to fp32 on demand from the
// memory map, whose pages are dropped after each read. A llama2.c file (laid out by tensor kind,
// not by layer) is loaded whole. Tensors come in the Hugging Face RoPE layout.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::string& path);
  ~CheckpointReader();
  const ModelConfig& config() const;
  const std::string& source() const;
  DType dtype() const;
  // The checkpoint's metadata (the rotation record of a rotated one included), without reading tensors.
  const std::map<std::string, std::string>& metadata() const;
  // Embeddings, final norm, classifier (untied only) and metadata; every layer sized with its
  // linear matrices empty (rows/cols set) and no norms or biases.
  ModelWeights float_parts() const;
  LayerWeights layer(int l) const;  // norms, biases and linear weights of decoder layer l

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct HfWriteOptions {
  DType dtype = DType::F32;         // F32, F16 or BF16
  uint64_t max_shard_bytes = 0;     // 0: one model.safetensors; else shards of at most this
  std::vector<std::string> inputs;  // files the writer must never overwrite
};

// Writes config.json and the safetensors file(s) as the folder `dir` (parents created if
// missing): the whole folder is staged beside it and moved into place at the end (StagedFolder:
// no partial folder after a kill, Ctrl-C or full disk; of two runs writing it one fails). An
// existing `dir` is replaced only when it holds nothing but a checkpoint's files. A model in the interleaved RoPE layout is permuted to
// Hugging Face's layout on the way out.
void save_hf(const ModelWeights& m, const std::string& dir, const HfWriteOptions& opts = {});
// The files save_hf writes for this config into `dir`: model.safetensors (or the shards and
// their index), then config.json. For checking the outputs against the inputs before any work;
// save_hf checks them all (by identity, and that none is a device, FIFO or link) before it
// writes the first.
std::vector<std::string> hf_output_paths(const ModelConfig& config, const std::string& dir, const HfWriteOptions& opts);
// The same layout for tensors produced on demand, one at a time: `tensor(name, scratch)` returns
// each tensor of tensor_shapes(config) in fp32 (Hugging Face RoPE layout), either data it holds
// or `scratch` filled (valid until the next call: the tensor is written before it). A generator
// so holds one tensor, not the model (e.g. a synthetic model larger than memory, in one file).
using TensorSource = std::function<std::span<const float>(const std::string& name, FloatBuffer& scratch)>;
void save_hf_tensors(const ModelConfig& config, const std::map<std::string, std::string>& metadata, const std::string& dir,
                     const HfWriteOptions& opts, const TensorSource& tensor);

// A rotated checkpoint's config.json is marked so that loaders which cannot apply its online
// transforms refuse it: "architectures" becomes ["QuarotRotated<Original>"], "model_type"
// "quarot_rotated_<original>", and "quarot_rotation" holds the rotation record (the metadata
// kRotationMetadataKey: options, seed, online transforms) plus the original "architectures" and
// "model_type". quarot reads it back as the original config with the record in m.metadata.
inline constexpr const char* kRotatedConfigKey = "quarot_rotation";
// config.json text for `config`; marked as above when `rotation_record` (JSON) is not empty.
std::string hf_config_json_with_rotation(const ModelConfig& config, const std::string& torch_dtype,
                                         const std::string& rotation_record);
// Parses a config.json text (marked or not). `rotation_record` receives the record of a marked
// one ("" otherwise). Throws quarot::Error naming `source` for a marked config without its
// record, a record that is not an object, or original names that are not strings.
ModelConfig parse_hf_config_with_rotation(const std::string& json_text, const std::string& source,
                                          std::string* rotation_record);

// llama2.c's tokenizer.bin: int32 max_token_length, then per piece: float score, int32 length,
// bytes. The file carries no count; it is read to its end.
struct Llama2cTokenizer {
  int max_token_length = 0;
  std::vector<std::string> pieces;
  std::vector<float> scores;
};
Llama2cTokenizer load_llama2c_tokenizer(const std::string& path);
Llama2cTokenizer parse_llama2c_tokenizer(std::span<const uint8_t> file, const std::string& label);

}  // namespace quarot
