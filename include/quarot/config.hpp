#pragma once
// The model description every module works from: one plain struct, validated once.
#include <cstdint>
#include <string>

namespace quarot {

enum class Family { Llama, Mistral, Qwen2, Qwen3 };

// How q/k rows pair up for RoPE. llama2.c (and Meta's original checkpoints) rotate adjacent
// pairs (2i, 2i+1) of each head; Hugging Face checkpoints are permuted so that pairs are
// (i, i + head_dim/2) ("rotate_half"). The weights differ by a row permutation of wq/wk.
enum class RopeLayout { Interleaved, Half };

enum class RopeScalingType { None, Linear, Llama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3 only
  double high_freq_factor = 4.0;  // llama3 only
  int original_max_positions = 8192;  // llama3 only
};

struct ModelConfig {
  Family family = Family::Llama;
  int hidden = 0;        // residual width (dim)
  int intermediate = 0;  // FFN width
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab = 0;
  double rope_theta = 10000.0;
  RopeLayout rope_layout = RopeLayout::Half;
  RopeScaling rope_scaling;
  double rms_eps = 1e-5;
  bool tied_embeddings = false;
  bool q_bias = false, k_bias = false, v_bias = false, o_bias = false;
  // Qwen3: an RMSNorm over each head of q and of k (weights [head_dim], the same for every head,
  // eps rms_eps) between the projection and RoPE. Its scales stay float and are never folded:
  // the norm is not linear, so nothing on its input side may change what it sees.
  bool qk_norm = false;
  int max_positions = 2048;
  int bos_id = 1;
  int eos_id = 2;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }

  // Throws quarot::Error naming `source` and the offending field when the description is not
  // one quarot can run (non-positive sizes, heads not dividing, odd head_dim, ...).
  void validate(const std::string& source) const;
};

std::string family_name(Family f);
std::string rope_layout_name(RopeLayout l);

// Hugging Face config.json <-> ModelConfig. Unsupported features (MoE, an active sliding window,
// other RoPE scalings, other activations) are refused with an error naming the field.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& source);
std::string hf_config_json(const ModelConfig& config, const std::string& torch_dtype);

}  // namespace quarot
