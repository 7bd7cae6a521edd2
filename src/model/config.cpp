#include "quarot/config.hpp"

#include <cmath>
#include <nlohmann/json.hpp>
#include <utility>

#include "quarot/error.hpp"
#include "quarot/json_limits.hpp"

namespace quarot {

using nlohmann::json;

namespace {

// Bounds validate() enforces, far above every real model (LLaMA-3 405B: hidden 16384, FFN 53248,
// 126 layers, vocab 128256), so that every derived size fits in int64 and the int products
// (q_dim(), kv_dim()) cannot overflow.
constexpr int64_t kMaxWidth = int64_t(1) << 20;            // hidden, FFN, heads x head_dim
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxVocab = int64_t(1) << 24;
constexpr int64_t kMaxPositions = int64_t(1) << 24;
constexpr int64_t kMaxTensorElements = int64_t(1) << 36;  // one tensor: 256 GiB of fp32

}  // namespace

std::string family_name(Family f) {
  switch (f) {
    case Family::Llama: return "llama";
    case Family::Mistral: return "mistral";
    case Family::Qwen2: return "qwen2";
    case Family::Qwen3: return "qwen3";
  }
  return "?";
}

std::string rope_layout_name(RopeLayout l) {
  return l == RopeLayout::Interleaved ? "interleaved (llama2.c pairs 2i,2i+1)"
                                      : "half (Hugging Face rotate_half pairs i,i+d/2)";
}

void ModelConfig::validate(const std::string& source) const {
  auto positive = [&](int v, const char* field) {
    if (v <= 0) throw Error(source, std::string("config field '") + field + "' must be positive, got " + std::to_string(v));
  };
  positive(hidden, "hidden_size");
  positive(intermediate, "intermediate_size");
  positive(n_layers, "num_hidden_layers");
  positive(n_heads, "num_attention_heads");
  positive(n_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(vocab, "vocab_size");
  positive(max_positions, "max_position_embeddings");
  // Upper bounds far above every real model (LLaMA-3 405B: hidden 16384, FFN 53248, 126 layers,
  // vocab 128256) that keep every derived size below in int64 range and reject a small file
  // that claims an absurd shape before anything is allocated or looped over.
  auto at_most = [&](int64_t v, int64_t limit, const std::string& what) {
    if (v > limit)
      throw Error(source, "config field " + what + " = " + std::to_string(v) + " is larger than the limit " +
                              std::to_string(limit) + " (corrupt config?)");
  };
  at_most(hidden, kMaxWidth, "'hidden_size'");
  at_most(intermediate, kMaxWidth, "'intermediate_size'");
  at_most(n_layers, kMaxLayers, "'num_hidden_layers'");
  at_most(n_heads, kMaxWidth, "'num_attention_heads'");
  at_most(n_kv_heads, kMaxWidth, "'num_key_value_heads'");
  at_most(head_dim, kMaxWidth, "'head_dim'");
  at_most(vocab, kMaxVocab, "'vocab_size'");
  at_most(max_positions, kMaxPositions, "'max_position_embeddings'");
  // Derived sizes, computed in int64 (the int products would overflow first).
  at_most(int64_t(n_heads) * head_dim, kMaxWidth, "'num_attention_heads' x 'head_dim'");
  at_most(int64_t(n_kv_heads) * head_dim, kMaxWidth, "'num_key_value_heads' x 'head_dim'");
  at_most(int64_t(vocab) * hidden, kMaxTensorElements, "'vocab_size' x 'hidden_size'");
  at_most(int64_t(intermediate) * hidden, kMaxTensorElements, "'intermediate_size' x 'hidden_size'");
  at_most(int64_t(max_positions) * head_dim, kMaxTensorElements, "'max_position_embeddings' x 'head_dim'");
  if (!std::isfinite(rms_eps)) throw Error(source, "config field 'rms_norm_eps' must be finite");
  if (!std::isfinite(rope_theta)) throw Error(source, "config field 'rope_theta' must be finite");
  if (!std::isfinite(rope_scaling.factor) || !std::isfinite(rope_scaling.low_freq_factor) ||
      !std::isfinite(rope_scaling.high_freq_factor))
    throw Error(source, "config field 'rope_scaling' holds a value that is not finite");
  if (n_heads % n_kv_heads != 0)
    throw Error(source, "config field 'num_key_value_heads' (" + std::to_string(n_kv_heads) +
                            ") must divide num_attention_heads (" + std::to_string(n_heads) + ")");
  if (head_dim % 2 != 0)
    throw Error(source, "config field 'head_dim' (" + std::to_string(head_dim) + ") must be even for RoPE");
  if (qk_norm != (family == Family::Qwen3))
    throw Error(source, "q/k norms come with model_type qwen3 (and qwen3 has them); this config has family " + family_name(family) +
                            (qk_norm ? " with" : " without") + " them");
  if (!(rms_eps > 0)) throw Error(source, "config field 'rms_norm_eps' must be positive");
  if (!(rope_theta > 0)) throw Error(source, "config field 'rope_theta' must be positive");
  if (rope_scaling.type != RopeScalingType::None && !(rope_scaling.factor > 0))
    throw Error(source, "config field 'rope_scaling.factor' must be positive");
  for (const auto& [id, field] : {std::pair{bos_id, "bos_token_id"}, std::pair{eos_id, "eos_token_id"}})
    if (id < -1 || id >= vocab)  // -1: none
      throw Error(source, std::string("config field '") + field + "' = " + std::to_string(id) +
                              " lies outside the vocabulary (vocab_size " + std::to_string(vocab) + ")");
}

namespace {

struct Reader {
  const json& j;
  const std::string& source;

  [[noreturn]] void bad(const std::string& field, const std::string& why) const {
    throw Error(source, "config field '" + field + "' " + why);
  }
  bool has(const char* f) const { return j.contains(f) && !j[f].is_null(); }
  int integer(const char* f, std::optional<int> dflt = std::nullopt) const {
    if (!has(f)) {
      if (dflt) return *dflt;
      bad(f, "is missing");
    }
    if (!j[f].is_number_integer()) bad(f, "must be an integer, got " + j[f].dump());
    const auto v = j[f].get<int64_t>();
    if (v < INT32_MIN || v > INT32_MAX) bad(f, "is out of range");
    return static_cast<int>(v);
  }
  double number(const char* f, double dflt) const {
    if (!has(f)) return dflt;
    if (!j[f].is_number()) bad(f, "must be a number, got " + j[f].dump());
    return j[f].get<double>();
  }
  bool boolean(const char* f, bool dflt) const {
    if (!has(f)) return dflt;
    if (!j[f].is_boolean()) bad(f, "must be true or false, got " + j[f].dump());
    return j[f].get<bool>();
  }
  int token_id(const char* f, int dflt) const {
    if (!j.contains(f)) return dflt;
    const json& v = j[f];
    if (v.is_null()) return -1;
    const json& id = v.is_array() && !v.empty() ? v[0] : v;  // eos lists: the first
    if (!id.is_number_integer()) bad(f, "must be an integer or a list of integers");
    // Range-checked here: get<int>() would wrap 2^32 + 1 to 1, a valid id.
    if (id.is_number_unsigned() ? id.get<uint64_t>() > uint64_t(INT32_MAX) : id.get<int64_t>() < -1)
      bad(f, "= " + id.dump() + " lies outside the vocabulary");
    return static_cast<int>(id.get<int64_t>());
  }
};

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& source) {
  check_json_limits(json_text, source);
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::exception& e) {
    throw Error(source, std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw Error(source, "not a JSON object");
  Reader r{j, source};
  ModelConfig c;

  std::string model_type;
  if (r.has("model_type")) {
    if (!j["model_type"].is_string()) r.bad("model_type", "must be a string");
    model_type = j["model_type"].get<std::string>();
  } else if (j.contains("architectures") && j["architectures"].is_array() &&
             !j["architectures"].empty() && j["architectures"][0].is_string()) {
    const auto a = j["architectures"][0].get<std::string>();
    model_type = a == "LlamaForCausalLM" ? "llama" : a == "MistralForCausalLM" ? "mistral"
               : a == "Qwen2ForCausalLM" ? "qwen2" : a == "Qwen3ForCausalLM" ? "qwen3" : a;
  } else {
    r.bad("model_type", "is missing (and no 'architectures' to infer it from)");
  }
  if (model_type == "llama") c.family = Family::Llama;
  else if (model_type == "mistral") c.family = Family::Mistral;
  else if (model_type == "qwen2") c.family = Family::Qwen2;
  else if (model_type == "qwen3") c.family = Family::Qwen3;
  else r.bad("model_type", "'" + model_type + "' is not a supported architecture (llama, mistral, qwen2, qwen3)");

  // An already-quantized checkpoint (bitsandbytes, GPTQ, AWQ, ...): its weights are not the
  // float tensors quarot starts from.
  if (r.has("quantization_config"))
    r.bad("quantization_config", "is present: this checkpoint is already quantized (" +
                                     (j["quantization_config"].is_object() && j["quantization_config"].contains("quant_method")
                                          ? j["quantization_config"]["quant_method"].dump()
                                          : std::string("unknown method")) +
                                     "); quarot needs the float (F32/F16/BF16) checkpoint");
  if (r.boolean("rope_interleaved", false))
    r.bad("rope_interleaved", "is true: only the Hugging Face rotate_half RoPE layout is supported");

  for (const char* moe : {"num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size"})
    if (r.has(moe) && !(j[moe].is_number() && j[moe].get<double>() == 0))
      r.bad(moe, "is set: mixture-of-experts models are not supported");
  for (const char* act : {"hidden_act", "hidden_activation"})
    if (r.has(act) && j[act] != "silu")
      r.bad(act, "is " + j[act].dump() + ": only silu (SwiGLU) is supported");
  if (r.boolean("mlp_bias", false)) r.bad("mlp_bias", "is true: MLP biases are not supported");

  c.hidden = r.integer("hidden_size");
  c.intermediate = r.integer("intermediate_size");
  c.n_layers = r.integer("num_hidden_layers");
  c.n_heads = r.integer("num_attention_heads");
  c.n_kv_heads = r.integer("num_key_value_heads", c.n_heads);
  c.head_dim = r.integer("head_dim", c.n_heads > 0 ? c.hidden / c.n_heads : 0);
  c.vocab = r.integer("vocab_size");
  c.max_positions = r.integer("max_position_embeddings", 2048);
  c.rope_theta = r.number("rope_theta", 10000.0);
  c.rms_eps = r.number("rms_norm_eps", 1e-6);
  c.tied_embeddings = r.boolean("tie_word_embeddings", false);
  c.bos_id = r.token_id("bos_token_id", 1);
  c.eos_id = r.token_id("eos_token_id", 2);
  c.rope_layout = RopeLayout::Half;
  if (c.family == Family::Qwen2) {
    c.q_bias = c.k_bias = c.v_bias = true;
  } else if (c.family == Family::Qwen3) {
    c.qk_norm = true;  // Qwen3's attention_bias defaults to false, as for LLaMA
    if (r.boolean("attention_bias", false)) c.q_bias = c.k_bias = c.v_bias = c.o_bias = true;
  } else if (r.boolean("attention_bias", false)) {
    c.q_bias = c.k_bias = c.v_bias = c.o_bias = true;
  }

  if (r.has("sliding_window")) {
    const bool used = c.family == Family::Qwen2 || c.family == Family::Qwen3 ? r.boolean("use_sliding_window", false)
                                                : r.boolean("use_sliding_window", true);
    const int window = r.integer("sliding_window");
    if (used && window <= 0) r.bad("sliding_window", "must be positive, got " + std::to_string(window));
    // A window shorter than the context (Mistral-7B v0.1: 4096 of 32768) only differs from full
    // causal attention past `window` positions: quarot runs the model up to there, exactly.
    if (used && window < c.max_positions) c.max_positions = window;
  }
  if (r.has("rope_scaling")) {
    const json& s = j["rope_scaling"];
    if (!s.is_object()) r.bad("rope_scaling", "must be an object or null");
    std::string type;
    for (const char* key : {"rope_type", "type"})
      if (s.contains(key) && s[key].is_string()) type = s[key].get<std::string>();
    Reader rs{s, source};
    if (type == "default" || type.empty()) {
      c.rope_scaling.type = RopeScalingType::None;
    } else if (type == "linear") {
      c.rope_scaling.type = RopeScalingType::Linear;
      c.rope_scaling.factor = rs.number("factor", 1.0);
    } else if (type == "llama3") {
      c.rope_scaling.type = RopeScalingType::Llama3;
      c.rope_scaling.factor = rs.number("factor", 8.0);
      c.rope_scaling.low_freq_factor = rs.number("low_freq_factor", 1.0);
      c.rope_scaling.high_freq_factor = rs.number("high_freq_factor", 4.0);
      c.rope_scaling.original_max_positions = rs.integer("original_max_position_embeddings", 8192);
    } else {
      r.bad("rope_scaling.rope_type", "'" + type + "' is not supported (none, linear, llama3)");
    }
  }
  c.validate(source);
  return c;
}

std::string hf_config_json(const ModelConfig& c, const std::string& torch_dtype) {
  json j;
  const char* arch = c.family == Family::Llama     ? "LlamaForCausalLM"
                   : c.family == Family::Mistral ? "MistralForCausalLM"
                   : c.family == Family::Qwen2   ? "Qwen2ForCausalLM"
                                                 : "Qwen3ForCausalLM";
  if (c.qk_norm != (c.family == Family::Qwen3))
    throw Error("config.json", "q/k norms are Qwen3's (and only Qwen3 has them); this model's family is " + family_name(c.family));
  j["architectures"] = {arch};
  j["model_type"] = family_name(c.family);
  j["hidden_size"] = c.hidden;
  j["intermediate_size"] = c.intermediate;
  j["num_hidden_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["num_key_value_heads"] = c.n_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab;
  j["max_position_embeddings"] = c.max_positions;
  j["rope_theta"] = c.rope_theta;
  j["rms_norm_eps"] = c.rms_eps;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["hidden_act"] = "silu";
  j["bos_token_id"] = c.bos_id >= 0 ? json(c.bos_id) : json(nullptr);
  j["eos_token_id"] = c.eos_id >= 0 ? json(c.eos_id) : json(nullptr);
  j["torch_dtype"] = torch_dtype;
  if (c.family == Family::Qwen2) {
    if (!(c.q_bias && c.k_bias && c.v_bias) || c.o_bias)
      throw Error("config.json", "qwen2 implies q/k/v biases and no o bias; this model differs");
    j["use_sliding_window"] = false;
  } else {
    if (c.family == Family::Qwen3) j["use_sliding_window"] = false;
    const bool any = c.q_bias || c.k_bias || c.v_bias || c.o_bias;
    const bool all = c.q_bias && c.k_bias && c.v_bias && c.o_bias;
    if (any && !all)
      throw Error("config.json", family_name(c.family) + " has one attention_bias flag for q/k/v/o; this model has only some");
    j["attention_bias"] = all;
  }
  switch (c.rope_scaling.type) {
    case RopeScalingType::None: j["rope_scaling"] = nullptr; break;
    case RopeScalingType::Linear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
      break;
    case RopeScalingType::Llama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", c.rope_scaling.factor},
                           {"low_freq_factor", c.rope_scaling.low_freq_factor},
                           {"high_freq_factor", c.rope_scaling.high_freq_factor},
                           {"original_max_position_embeddings", c.rope_scaling.original_max_positions}};
      break;
  }
  return j.dump(2) + "\n";
}

}  // namespace quarot
