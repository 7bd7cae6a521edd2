#include "quarot/weights.hpp"
#include "quarot/finite.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "quarot/error.hpp"
#include "quarot/forward.hpp"

namespace quarot {

namespace {

// The RMSNorm in front of each block of linears (LinearSpec::block), as Hugging Face names it.
struct BlockNorm {
  const char* name;
  std::vector<float> LayerWeights::*scales;
};
BlockNorm block_norm(const char* block) {
  return std::strcmp(block, "self_attn") == 0 ? BlockNorm{"input_layernorm.weight", &LayerWeights::attn_norm}
                                              : BlockNorm{"post_attention_layernorm.weight", &LayerWeights::ffn_norm};
}
// True for the first linear of its block: the block's norm comes before it in file order.
bool starts_block(const LinearSpec& s) {
  return &s == kLinearSpecs || std::strcmp((&s - 1)->block, s.block) != 0;
}
// Qwen3's per-head norm on the output of q_proj / k_proj (named as Hugging Face names it; it
// follows its projection in file order). nullptr for the other linears.
std::vector<float> LayerWeights::*head_norm(LinearModule m) {
  return m == LinearModule::Q ? &LayerWeights::q_norm : m == LinearModule::K ? &LayerWeights::k_norm : nullptr;
}
const char* head_norm_name(LinearModule m) { return m == LinearModule::Q ? "self_attn.q_norm.weight" : "self_attn.k_norm.weight"; }

void size_matrix(Matrix& m, int64_t rows, int64_t cols) {
  m.rows = rows;
  m.cols = cols;
  m.data.assign(static_cast<std::size_t>(rows * cols), 0.f);
}

template <class M, class Fn>
void visit(M& m, const Fn& fn) {
  const auto& c = m.config;
  auto mat = [&](const std::string& name, auto& x) {
    fn(TensorRef{name, {x.rows, x.cols}, {const_cast<float*>(x.data.data()), x.data.size()}});
  };
  auto vec = [&](const std::string& name, auto& v) {
    fn(TensorRef{name, {static_cast<int64_t>(v.size())}, {const_cast<float*>(v.data()), v.size()}});
  };
  mat("model.embed_tokens.weight", m.tok_embeddings);
  for (int i = 0; i < c.n_layers; ++i) {
    auto& L = m.layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const LinearSpec& s : kLinearSpecs) {
      if (starts_block(s)) {
        const BlockNorm n = block_norm(s.block);
        vec(p + n.name, L.*n.scales);
      }
      const std::string name = p + s.block + "." + s.name;
      mat(name + ".weight", L.*s.weight);
      if (s.bias && c.*s.has_bias) vec(name + ".bias", L.*s.bias);
      if (c.qk_norm && head_norm(s.module)) vec(p + head_norm_name(s.module), L.*head_norm(s.module));
    }
  }
  vec("model.norm.weight", m.final_norm);
  if (!c.tied_embeddings) mat("lm_head.weight", m.lm_head);
}

// Row permutation of one head's rows between RoPE layouts. Interleaved pair (2j, 2j+1) sits at
// Half rows (j, j + d/2): this is the permutation Hugging Face's conversion script applies.
void permute_heads(float* rows, int64_t cols, int n_heads, int head_dim, RopeLayout target) {
  std::vector<float> tmp(static_cast<std::size_t>(head_dim * cols));
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* head = rows + int64_t(h) * head_dim * cols;
    for (int j = 0; j < half; ++j) {
      for (int k = 0; k < 2; ++k) {
        const int inter = 2 * j + k, halfrow = j + k * half;
        const int src = target == RopeLayout::Half ? inter : halfrow;
        const int dst = target == RopeLayout::Half ? halfrow : inter;
        std::copy(head + src * cols, head + (src + 1) * cols, tmp.data() + dst * cols);
      }
    }
    std::copy(tmp.begin(), tmp.end(), head);
  }
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f %s" : "%.0f %s", b, units[u]);
  return buf;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

}  // namespace

void allocate(ModelWeights& m) {
  const auto& c = m.config;
  c.validate(m.source);
  size_matrix(m.tok_embeddings, c.vocab, c.hidden);
  m.layers.assign(c.n_layers, LayerWeights{});
  for (auto& L : m.layers) {
    L.attn_norm.assign(c.hidden, 0.f);
    L.ffn_norm.assign(c.hidden, 0.f);
    for (const LinearSpec& s : kLinearSpecs) {
      size_matrix(L.*s.weight, linear_rows(c, s.module), linear_cols(c, s.module));
      if (s.bias) (L.*s.bias).assign(c.*s.has_bias ? std::size_t(linear_rows(c, s.module)) : 0, 0.f);
    }
    L.q_norm.assign(c.qk_norm ? std::size_t(c.head_dim) : 0, 0.f);
    L.k_norm.assign(c.qk_norm ? std::size_t(c.head_dim) : 0, 0.f);
  }
  m.final_norm.assign(c.hidden, 0.f);
  if (c.tied_embeddings) m.lm_head = Matrix{};
  else size_matrix(m.lm_head, c.vocab, c.hidden);
}

int64_t first_nonfinite(std::span<const float> values) {
  // An OR over the exponent test vectorizes; the position is searched only when there is one.
  constexpr uint32_t kExp = 0x7f800000u;
  constexpr std::size_t kBlock = 4096;
  for (std::size_t b = 0; b < values.size(); b += kBlock) {
    const std::size_t e = std::min(values.size(), b + kBlock);
    uint32_t any = 0;
    for (std::size_t i = b; i < e; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &values[i], 4);
      any |= uint32_t((bits & kExp) == kExp);
    }
    if (any)
      for (std::size_t i = b; i < e; ++i)
        if (!std::isfinite(values[i])) return int64_t(i);
  }
  return -1;
}

bool nonfinite_weights_allowed() {
  const char* v = std::getenv("QUAROT_ALLOW_NONFINITE");
  return v && std::strcmp(v, "1") == 0;
}

std::string nonfinite_message(const std::string& file, const std::string& tensor, std::size_t index, float value) {
  return file + ": tensor '" + tensor + "' holds " + (std::isnan(value) ? "NaN" : value > 0 ? "+Inf" : "-Inf") +
         " at element " + std::to_string(index) + " (QUAROT_ALLOW_NONFINITE=1 loads it anyway)";
}

void check_finite(const ModelWeights& m, const std::string& file) {
  if (nonfinite_weights_allowed()) return;
  for_each_tensor(m, [&](const TensorRef& t) {
    if (const int64_t at = first_nonfinite(t.data); at >= 0)
      throw Error("", nonfinite_message(file, t.name, std::size_t(at), t.data[std::size_t(at)]));
  });
}

void for_each_tensor(ModelWeights& m, const std::function<void(const TensorRef&)>& fn) {
  visit(m, fn);
}
void for_each_tensor(const ModelWeights& m, const std::function<void(const TensorRef&)>& fn) {
  visit(m, fn);
}

std::vector<std::pair<std::string, std::vector<int64_t>>> tensor_shapes(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> t;
  const int64_t d = c.hidden;
  t.push_back({"model.embed_tokens.weight", {c.vocab, d}});
  for (int i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    for (const LinearSpec& s : kLinearSpecs) {
      if (starts_block(s)) t.push_back({p + block_norm(s.block).name, {d}});
      const std::string name = p + s.block + "." + s.name;
      const int64_t rows = linear_rows(c, s.module);
      t.push_back({name + ".weight", {rows, linear_cols(c, s.module)}});
      if (s.bias && c.*s.has_bias) t.push_back({name + ".bias", {rows}});
      if (c.qk_norm && head_norm(s.module)) t.push_back({p + head_norm_name(s.module), {c.head_dim}});
    }
  }
  t.push_back({"model.norm.weight", {d}});
  if (!c.tied_embeddings) t.push_back({"lm_head.weight", {c.vocab, d}});
  return t;
}

int64_t parameter_count(const ModelWeights& m) {
  int64_t n = 0;
  for_each_tensor(m, [&](const TensorRef& t) { n += static_cast<int64_t>(t.data.size()); });
  return n;
}

void convert_rope_layout(ModelWeights& m, RopeLayout target) {
  auto& c = m.config;
  if (c.rope_layout == target) return;
  for (auto& L : m.layers) {
    permute_heads(L.wq.data.data(), L.wq.cols, c.n_heads, c.head_dim, target);
    permute_heads(L.wk.data.data(), L.wk.cols, c.n_kv_heads, c.head_dim, target);
    if (!L.bq.empty()) permute_heads(L.bq.data(), 1, c.n_heads, c.head_dim, target);
    if (!L.bk.empty()) permute_heads(L.bk.data(), 1, c.n_kv_heads, c.head_dim, target);
  }
  c.rope_layout = target;
}

namespace {

// What a config implies, in the words of describe(): architecture, shapes, RoPE, norms, and the
// tensors of the first layer.
void describe_architecture(std::ostream& o, const ModelConfig& c) {
  o << "architecture: " << family_name(c.family) << " (" << c.n_layers << " layers, hidden "
    << c.hidden << ", FFN " << c.intermediate << ", " << c.n_heads << " heads, " << c.n_kv_heads
    << " KV heads";
  if (c.n_heads != c.n_kv_heads) o << ", GQA " << c.n_heads / c.n_kv_heads << ":1";
  o << ", head_dim " << c.head_dim << ", vocab " << c.vocab << ")\n"
    << "attention:    q " << c.q_dim() << ", k/v " << c.kv_dim() << " wide"
    << (c.q_dim() != c.hidden ? " (head_dim x heads != hidden)" : "") << "\n"
    << "embeddings:   " << (c.tied_embeddings ? "tied (classifier = embedding)" : "untied") << "\n"
    << "biases:       " << (c.q_bias ? "q " : "") << (c.k_bias ? "k " : "") << (c.v_bias ? "v " : "")
    << (c.o_bias ? "o " : "") << (c.q_bias || c.k_bias || c.v_bias || c.o_bias ? "" : "none") << "\n"
    << (c.qk_norm ? "q/k norm:     per-head RMSNorm on queries and keys before RoPE (weights [head_dim], kept float)\n" : "")
    << "rope:         theta " << c.rope_theta << ", layout " << rope_layout_name(c.rope_layout);
  if (c.rope_scaling.type == RopeScalingType::Linear) o << ", linear scaling x" << c.rope_scaling.factor;
  if (c.rope_scaling.type == RopeScalingType::Llama3)
    o << ", llama3 scaling x" << c.rope_scaling.factor << " (low/high freq factors " << c.rope_scaling.low_freq_factor << "/"
      << c.rope_scaling.high_freq_factor << ", original " << c.rope_scaling.original_max_positions << " positions)";
  o << "\n"
    << "norm:         RMSNorm eps " << c.rms_eps << "\n"
    << "positions:    max " << c.max_positions << "; bos " << c.bos_id << ", eos " << c.eos_id << "\n";
  o << "tensors (per layer, layer 0 shown):\n";
  for (const auto& [name, shape] : tensor_shapes(c)) {
    const bool layer = name.rfind("model.layers.", 0) == 0;
    if (layer && name.rfind("model.layers.0.", 0) != 0) continue;
    char line[160];
    std::snprintf(line, sizeof line, "  %-48s %s\n", name.c_str(), shape_str(shape).c_str());
    o << line;
  }
}

}  // namespace

std::string describe_config(const ModelConfig& c) {
  std::ostringstream o;
  describe_architecture(o, c);
  int64_t params = 0;
  for (const auto& [name, shape] : tensor_shapes(c)) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    params += n;
  }
  o << "parameters:   " << params << " (" << (double(params) / 1e6) << " M)\n"
    << "bytes:        " << human_bytes(double(params) * 2) << " as BF16/F16, " << human_bytes(double(params) * 4) << " as F32\n";
  return o.str();
}

std::string describe(const ModelWeights& m) {
  std::ostringstream o;
  const int64_t params = parameter_count(m);
  o << "model:        " << m.source << "\n";
  describe_architecture(o, m.config);
  const auto src_bytes = double(params) * double(dtype_size(m.source_dtype));
  o << "parameters:   " << params << " (" << (double(params) / 1e6) << " M)\n"
    << "dtype:        " << dtype_name(m.source_dtype) << " on disk, F32 in memory\n"
    << (m.metadata.count("quarot.rotation") ? "rotation:     " + m.metadata.at("quarot.rotation") + "\n" : std::string())
    << "bytes:        " << human_bytes(src_bytes) << " as " << dtype_name(m.source_dtype) << ", "
    << human_bytes(double(params) * 4) << " as F32\n";
  return o.str();
}

}  // namespace quarot
