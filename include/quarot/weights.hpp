#pragma once
// Model weights in memory: fp32, row-major, [out][in] for every linear layer (as in both
// llama2.c and Hugging Face files). One struct per layer; tensors are enumerated by their
// Hugging Face names through for_each_tensor, which loaders, writers and generators share.
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "quarot/config.hpp"
#include "quarot/dtype.hpp"
#include "quarot/large_buffer.hpp"

namespace quarot {

struct Matrix {
  int64_t rows = 0, cols = 0;
  FloatBuffer data;  // rows * cols, row-major (huge-page backed when large)
  // Read-only weights used in place instead of `data` (empty then): the packed model's
  // embeddings and classifier, straight from its memory map. Only the forward pass reads it.
  const float* external = nullptr;
  const float* values() const { return external ? external : data.data(); }
  float* row(int64_t r) { return data.data() + r * cols; }
  const float* row(int64_t r) const { return data.data() + r * cols; }
};

struct LayerWeights {
  std::vector<float> attn_norm;       // [hidden]
  Matrix wq, wk, wv, wo;              // [q_dim][hidden], [kv_dim][hidden] x2, [hidden][q_dim]
  std::vector<float> bq, bk, bv, bo;  // empty unless the config has that bias
  std::vector<float> q_norm, k_norm;  // [head_dim] each, empty unless config.qk_norm (Qwen3)
  std::vector<float> ffn_norm;        // [hidden]
  Matrix w_gate, w_up, w_down;        // [inter][hidden] x2, [hidden][inter]
};

struct ModelWeights {
  ModelConfig config;
  Matrix tok_embeddings;  // [vocab][hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [hidden]
  Matrix lm_head;                 // [vocab][hidden]; empty when config.tied_embeddings
  DType source_dtype = DType::F32;
  std::string source;  // where it was loaded from, for messages
  // Free-form string metadata carried in the checkpoint (safetensors __metadata__), e.g.
  // "quarot.rotation": the online transforms a rotated model needs (see rotate.hpp).
  std::map<std::string, std::string> metadata;

  const Matrix& classifier() const { return config.tied_embeddings ? tok_embeddings : lm_head; }
};

struct TensorRef {
  std::string name;            // Hugging Face name, e.g. "model.layers.3.mlp.up_proj.weight"
  std::vector<int64_t> shape;  // [n] for vectors, [rows, cols] for matrices
  std::span<float> data;
};

// Sizes every tensor of `m` for m.config (zero-filled). Throws if the config is invalid.
void allocate(ModelWeights& m);
// Visits every tensor the config implies, in file order (embeddings, layers, norm, lm_head).
void for_each_tensor(ModelWeights& m, const std::function<void(const TensorRef&)>& fn);
void for_each_tensor(const ModelWeights& m, const std::function<void(const TensorRef&)>& fn);

int64_t parameter_count(const ModelWeights& m);
// Every tensor name the config implies with its shape, in for_each_tensor's order, without
// allocating anything.
std::vector<std::pair<std::string, std::vector<int64_t>>> tensor_shapes(const ModelConfig& c);  // tied embeddings counted once

// Permutes the q/k rows (and biases) between the two RoPE layouts, in place.
void convert_rope_layout(ModelWeights& m, RopeLayout target);

// A human summary: architecture, shapes, parameter count, dtype, bytes.
std::string describe(const ModelWeights& m);
// The same for a config alone (nothing loaded): shapes, the tensors it implies, parameters and
// bytes at 16 and 32 bits (quarot-inspect --config-only).
std::string describe_config(const ModelConfig& c);

// The metadata key under which a rotated checkpoint records its rotation (JSON: options, seed,
// online transforms; written by record_rotation in rotate.hpp). Its presence means "rotated".
inline constexpr const char* kRotationMetadataKey = "quarot.rotation";

}  // namespace quarot
