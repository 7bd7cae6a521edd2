#pragma once
// A minimal GGUF v3 writer for tests only (the product's writer is src/gguf): a llama-arch model
// with every tensor in one chosen type (F32, F16, Q8_0, Q4_0 by plain round-to-nearest; tensors
// whose columns are not a multiple of 32 stay F32), and an optional llama2.c tokenizer as
// tokenizer.ggml.* metadata so llama.cpp can load it. q/k rows are written in the model's own
// layout, which must be interleaved (llama2.c) for arch llama.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "quarot/checkpoint.hpp"
#include "quarot/dtype.hpp"
#include "quarot/weights.hpp"

namespace quarot::test {

enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8 };

class GgufBytes {
 public:
  std::string out;
  void u32(uint32_t v) { raw(&v, 4); }
  void i32(int32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void f32(float v) { raw(&v, 4); }
  void str(const std::string& s) {
    u64(s.size());
    out += s;
  }
  void raw(const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); }
  void kv_str(const std::string& k, const std::string& v) { str(k), u32(8), str(v); }
  void kv_u32(const std::string& k, uint32_t v) { str(k), u32(4), u32(v); }
  void kv_f32(const std::string& k, float v) { str(k), u32(6), f32(v); }
};

// Encodes n floats (n % 32 == 0 for the block types) as `t`.
inline std::string encode(const float* x, uint64_t n, GgmlType t) {
  std::string s;
  auto put16 = [&](uint16_t h) { s.append(reinterpret_cast<const char*>(&h), 2); };
  if (t == GgmlType::F32) return std::string(reinterpret_cast<const char*>(x), n * 4);
  if (t == GgmlType::F16) {
    for (uint64_t i = 0; i < n; ++i) put16(f32_to_f16(x[i]));
    return s;
  }
  for (uint64_t b = 0; b < n; b += 32) {
    const float* v = x + b;
    if (t == GgmlType::Q8_0) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(v[j]));
      const float d = amax / 127.f, id = d ? 1 / d : 0;
      put16(f32_to_f16(d));
      for (int j = 0; j < 32; ++j) s.push_back(char(int8_t(std::lround(v[j] * id))));
    } else {  // Q4_0 as ggml's reference: d = max / -8 (signed max by magnitude)
      float amax = 0, mx = 0;
      for (int j = 0; j < 32; ++j)
        if (std::fabs(v[j]) > amax) amax = std::fabs(v[j]), mx = v[j];
      const float d = mx / -8, id = d ? 1 / d : 0;
      put16(f32_to_f16(d));
      for (int j = 0; j < 16; ++j) {
        const int lo = std::min(15, int(v[j] * id + 8.5f)), hi = std::min(15, int(v[j + 16] * id + 8.5f));
        s.push_back(char(uint8_t(lo | (hi << 4))));
      }
    }
  }
  return s;
}

struct GgufTensorOut {
  std::string name;
  std::vector<uint64_t> ne;
  GgmlType type;
  std::string data;
};

// The whole file. `tok` may be null (then no tokenizer metadata: quarot reads it, llama.cpp not).
inline std::string gguf_of(const ModelWeights& m, GgmlType type, const Llama2cTokenizer* tok) {
  const ModelConfig& c = m.config;
  std::vector<GgufTensorOut> ts;
  auto mat = [&](const std::string& name, const Matrix& x) {
    const GgmlType t = x.cols % 32 == 0 ? type : GgmlType::F32;
    ts.push_back({name, {uint64_t(x.cols), uint64_t(x.rows)}, t, encode(x.data.data(), uint64_t(x.rows * x.cols), t)});
  };
  auto vec = [&](const std::string& name, const std::vector<float>& v) {
    ts.push_back({name, {uint64_t(v.size())}, GgmlType::F32, encode(v.data(), v.size(), GgmlType::F32)});
  };
  mat("token_embd.weight", m.tok_embeddings);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = m.layers[std::size_t(l)];
    const std::string b = "blk." + std::to_string(l) + ".";
    vec(b + "attn_norm.weight", L.attn_norm);
    mat(b + "attn_q.weight", L.wq);
    mat(b + "attn_k.weight", L.wk);
    mat(b + "attn_v.weight", L.wv);
    mat(b + "attn_output.weight", L.wo);
    vec(b + "ffn_norm.weight", L.ffn_norm);
    mat(b + "ffn_gate.weight", L.w_gate);
    mat(b + "ffn_up.weight", L.w_up);
    mat(b + "ffn_down.weight", L.w_down);
  }
  vec("output_norm.weight", m.final_norm);
  if (!c.tied_embeddings) mat("output.weight", m.lm_head);

  GgufBytes g;
  g.u32(0x46554747);
  g.u32(3);
  g.u64(ts.size());
  const uint64_t n_kv = 11 + (tok ? 6 : 0);
  g.u64(n_kv);
  g.kv_str("general.architecture", "llama");
  g.kv_u32("general.alignment", 32);
  g.kv_u32("llama.context_length", uint32_t(c.max_positions));
  g.kv_u32("llama.embedding_length", uint32_t(c.hidden));
  g.kv_u32("llama.block_count", uint32_t(c.n_layers));
  g.kv_u32("llama.feed_forward_length", uint32_t(c.intermediate));
  g.kv_u32("llama.rope.dimension_count", uint32_t(c.head_dim));
  g.kv_u32("llama.attention.head_count", uint32_t(c.n_heads));
  g.kv_u32("llama.attention.head_count_kv", uint32_t(c.n_kv_heads));
  g.kv_f32("llama.attention.layer_norm_rms_epsilon", float(c.rms_eps));
  g.kv_f32("llama.rope.freq_base", float(c.rope_theta));
  if (tok) {
    g.kv_str("tokenizer.ggml.model", "llama");
    g.str("tokenizer.ggml.tokens"), g.u32(9), g.u32(8), g.u64(tok->pieces.size());
    for (const auto& p : tok->pieces) g.str(p);
    g.str("tokenizer.ggml.scores"), g.u32(9), g.u32(6), g.u64(tok->scores.size());
    for (float s : tok->scores) g.f32(s);
    g.str("tokenizer.ggml.token_type"), g.u32(9), g.u32(5), g.u64(tok->pieces.size());
    for (std::size_t i = 0; i < tok->pieces.size(); ++i) {
      const std::string& p = tok->pieces[i];
      const bool byte = p.size() == 6 && p.rfind("<0x", 0) == 0 && p.back() == '>';
      g.i32(i == 0 ? 2 : i <= 2 ? 3 : byte ? 6 : 1);  // unknown, control, byte, normal
    }
    g.kv_u32("tokenizer.ggml.bos_token_id", uint32_t(c.bos_id));
    g.kv_u32("tokenizer.ggml.eos_token_id", uint32_t(c.eos_id));
  }
  uint64_t offset = 0;
  for (const auto& t : ts) {
    g.str(t.name);
    g.u32(uint32_t(t.ne.size()));
    for (auto n : t.ne) g.u64(n);
    g.u32(uint32_t(t.type));
    g.u64(offset);
    offset += (t.data.size() + 31) / 32 * 32;
  }
  g.out.resize((g.out.size() + 31) / 32 * 32, '\0');
  for (const auto& t : ts) {
    g.out += t.data;
    g.out.resize((g.out.size() + 31) / 32 * 32, '\0');
  }
  return g.out;
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), std::streamsize(bytes.size()));
}

}  // namespace quarot::test
