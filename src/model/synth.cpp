#include "quarot/synth.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <thread>

#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"

namespace quarot {

using detail::fnv1a;
using detail::Rng;
using detail::splitmix64;

namespace {

ModelConfig base_config(Family f, int hidden, int inter, int layers, int heads, int kv_heads,
                        int vocab, int max_pos, double theta, double eps, bool tied) {
  ModelConfig c;
  c.family = f;
  c.hidden = hidden;
  c.intermediate = inter;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.vocab = vocab;
  c.max_positions = max_pos;
  c.rope_theta = theta;
  c.rms_eps = eps;
  c.tied_embeddings = tied;
  c.rope_layout = RopeLayout::Half;
  return c;
}

}  // namespace

std::vector<std::string> synth_preset_names() {
  return {"tiny", "llama2-7b-layer", "llama3-8b-layer", "qwen2-small", "qwen3-small"};
}

SynthSpec synth_preset(const std::string& name) {
  SynthSpec s;
  if (name == "tiny") {
    s.config = base_config(Family::Llama, 64, 172, 2, 8, 4, 512, 512, 10000.0, 1e-5, false);
    s.residual_outliers = 2;
    s.ffn_outliers = 2;
  } else if (name == "llama2-7b-layer") {
    s.config = base_config(Family::Llama, 4096, 11008, 1, 32, 32, 32000, 4096, 10000.0, 1e-5, false);
  } else if (name == "llama3-8b-layer") {
    s.config = base_config(Family::Llama, 4096, 14336, 1, 32, 8, 128256, 8192, 500000.0, 1e-5, false);
    s.config.bos_id = 128000;
    s.config.eos_id = 128001;
  } else if (name == "qwen2-small") {
    s.config = base_config(Family::Qwen2, 896, 4864, 2, 14, 2, 151936, 32768, 1000000.0, 1e-6, true);
    s.config.q_bias = s.config.k_bias = s.config.v_bias = true;
    s.config.bos_id = 151643;
    s.config.eos_id = 151645;
  } else if (name == "qwen3-small") {
    // Qwen3-0.6B's shape (2 of its 28 layers): head_dim 128 with 16 heads, so the attention
    // width (2048) is twice the residual width; per-head q/k norms, no biases, tied.
    s.config = base_config(Family::Qwen3, 1024, 3072, 2, 16, 8, 151936, 40960, 1000000.0, 1e-6, true);
    s.config.head_dim = 128;
    s.config.qk_norm = true;
    s.config.bos_id = 151643;
    s.config.eos_id = 151645;
  } else {
    std::string known;
    for (const auto& n : synth_preset_names()) known += (known.empty() ? "" : ", ") + n;
    throw Error("--preset", "unknown synthetic preset '" + name + "' (known: " + known + ")");
  }
  return s;
}

PlantedOutliers planted_outliers(const SynthSpec& spec) {
  PlantedOutliers p;
  uint64_t state = spec.seed ^ 0x6f75746c69657273ull;  // "outliers"
  Rng rng(splitmix64(state));
  auto pick = [&](int count, int width, std::vector<int>& ch, std::vector<float>& sc) {
    count = std::min(count, width);
    while (int(ch.size()) < count) {
      const int c = int(rng.next() % uint64_t(width));
      if (std::find(ch.begin(), ch.end(), c) != ch.end()) continue;
      ch.push_back(c);
      sc.push_back(spec.outlier_min + (spec.outlier_max - spec.outlier_min) * rng.uniform());
    }
  };
  pick(spec.residual_outliers, spec.config.hidden, p.residual_channels, p.residual_scales);
  pick(spec.ffn_outliers, spec.config.intermediate, p.ffn_channels, p.ffn_scales);
  pick(spec.kv_outliers, spec.config.kv_dim(), p.kv_channels, p.kv_scales);
  return p;
}

void synthetic_tensor(const SynthSpec& spec, const PlantedOutliers& out, const std::string& name, const std::vector<int64_t>& shape,
                      std::span<float> data) {
  // Filled in chunks whose seeds depend only on (seed, name, chunk): the result does not depend
  // on the number of threads or on which other tensors are generated.
  constexpr std::size_t kChunk = std::size_t(1) << 20;
  const bool is_norm = name.ends_with("norm.weight");
  const bool is_bias = name.ends_with(".bias");
  const bool is_embed = name == "model.embed_tokens.weight";
  const float fan_in = shape.size() == 2 ? float(shape[1]) : 1.f;
  const float std = is_embed ? 1.0f : is_bias ? 0.1f : 1.0f / std::sqrt(fan_in);
  auto fill = [&](std::size_t begin) {
    uint64_t state = spec.seed ^ fnv1a(name) ^ (begin * 0x9e3779b97f4a7c15ull);
    Rng rng(splitmix64(state));
    const std::size_t end = std::min(data.size(), begin + kChunk);
    for (std::size_t i = begin; i < end; ++i) data[i] = is_norm ? 1.0f + 0.1f * rng.gaussian() : std * rng.gaussian();
  };
  const std::size_t chunks = (data.size() + kChunk - 1) / kChunk;
  std::atomic<std::size_t> next{0};
  auto worker = [&] {
    for (std::size_t i; (i = next++) < chunks;) fill(i * kChunk);
  };
  const unsigned n_threads = unsigned(std::min<std::size_t>(chunks, std::max(1u, std::min(std::thread::hardware_concurrency(), 8u))));
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < n_threads; ++i) threads.emplace_back(worker);
  worker();
  for (auto& th : threads) th.join();

  // The planted outliers. Residual channels: embedding columns and the rows of o_proj/down_proj
  // that add into them, so the channel stays large through every layer. FFN channels: rows of
  // up_proj, so gate*up (down_proj's input) is large there. Key and value channels: rows of
  // k_proj and v_proj (the value outliers reach o_proj's input).
  const int64_t cols = shape.size() == 2 ? shape[1] : 0;
  auto scale_rows = [&](const std::vector<int>& rows, const std::vector<float>& scales) {
    for (std::size_t k = 0; k < rows.size(); ++k)
      for (int64_t j = 0; j < cols; ++j) data[std::size_t(rows[k] * cols + j)] *= scales[k];
  };
  if (is_embed) {
    for (std::size_t k = 0; k < out.residual_channels.size(); ++k)
      for (int64_t v = 0; v < shape[0]; ++v) data[std::size_t(v * cols + out.residual_channels[k])] *= out.residual_scales[k];
  } else if (name.ends_with("self_attn.o_proj.weight") || name.ends_with("mlp.down_proj.weight")) {
    scale_rows(out.residual_channels, out.residual_scales);
  } else if (name.ends_with("mlp.up_proj.weight")) {
    scale_rows(out.ffn_channels, out.ffn_scales);
  } else if (name.ends_with("self_attn.k_proj.weight") || name.ends_with("self_attn.v_proj.weight")) {
    scale_rows(out.kv_channels, out.kv_scales);
  }
}

ModelWeights make_synthetic(const SynthSpec& spec, const std::function<void(uint64_t, uint64_t)>& progress) {
  ModelWeights m;
  m.config = spec.config;
  m.config.rope_layout = RopeLayout::Half;
  m.source = "synthetic(seed " + std::to_string(spec.seed) + ")";
  allocate(m);
  const PlantedOutliers out = planted_outliers(spec);
  std::vector<TensorRef> tensors;
  for_each_tensor(m, [&](const TensorRef& t) { tensors.push_back(t); });
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    synthetic_tensor(spec, out, tensors[i].name, tensors[i].shape, tensors[i].data);
    if (progress) progress(i + 1, tensors.size());
  }
  return m;
}

}  // namespace quarot
