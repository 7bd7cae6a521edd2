// llama2.c checkpoints and tokenizers (Karpathy's legacy export format).
#include <cstring>
#include <string>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/finite.hpp"
#include "quarot/mapped_file.hpp"

namespace quarot {

namespace {

int32_t read_i32(const uint8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

ModelConfig parse_llama2c_config(std::span<const uint8_t> file, const std::string& label) {
  constexpr std::size_t kHeader = 7 * 4;
  if (file.size() < kHeader)
    throw Error(label, "not a llama2.c checkpoint: " + std::to_string(file.size()) +
                           " bytes, shorter than its 28-byte header");
  int32_t h[7];
  for (int i = 0; i < 7; ++i) h[i] = read_i32(file.data() + 4 * i);
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    // Generous bounds that every real model satisfies; they keep the size arithmetic below
    // far from overflowing (the header is untrusted input).
    const int64_t v = i == 5 ? std::abs(int64_t(h[i])) : h[i];
    const int64_t limit = i == 2 || i == 3 || i == 4 ? 1024 : i == 5 ? (1 << 22) : i == 6 ? (1 << 24) : (1 << 20);
    if (v <= 0 || v > limit)
      throw Error(label, std::string("llama2.c header field '") + names[i] + "' = " +
                             std::to_string(h[i]) + " is out of range (corrupt header?)");
  }
  ModelConfig c;
  c.family = Family::Llama;
  c.hidden = h[0];
  c.intermediate = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_embeddings = h[5] > 0;
  c.vocab = std::abs(h[5]);
  c.max_positions = h[6];
  c.rope_theta = 10000.0;
  c.rms_eps = 1e-5;
  c.rope_layout = RopeLayout::Interleaved;
  c.bos_id = 1;
  c.eos_id = 2;
  if (c.hidden % c.n_heads != 0)
    throw Error(label, "llama2.c header: dim " + std::to_string(c.hidden) +
                           " is not a multiple of n_heads " + std::to_string(c.n_heads));
  c.head_dim = c.hidden / c.n_heads;
  c.validate(label);
  return c;
}

ModelWeights parse_llama2c(std::span<const uint8_t> file, const std::string& label) {
  constexpr std::size_t kHeader = 7 * 4;
  ModelWeights m;
  m.source = label;
  m.source_dtype = DType::F32;
  m.config = parse_llama2c_config(file, label);
  const ModelConfig& c = m.config;
  int32_t vocab_field;
  std::memcpy(&vocab_field, file.data() + 20, 4);

  // Expected size: every tensor, the freq_cis block (seq_len x head_dim/2, real and imaginary),
  // and the classifier when untied.
  const uint64_t d = c.hidden, f = c.intermediate, L = c.n_layers, V = c.vocab;
  const uint64_t kv = c.kv_dim(), q = c.q_dim();
  const uint64_t body = V * d + L * (d + q * d + 2 * kv * d + d * q + d + 3 * f * d) + d;
  const uint64_t freq = uint64_t(c.max_positions) * c.head_dim;  // two halves of head_dim/2
  const uint64_t expected = kHeader + 4 * (body + freq + (c.tied_embeddings ? 0 : V * d));
  if (file.size() != expected) {
    const bool shorter = file.size() < expected;
    throw Error(label, "llama2.c checkpoint has " + std::to_string(file.size()) +
                           " bytes but its header (dim " + std::to_string(c.hidden) + ", " +
                           std::to_string(c.n_layers) + " layers, vocab " + std::to_string(vocab_field) +
                           ") implies " + std::to_string(expected) +
                           (shorter ? ": truncated" : ": trailing bytes (wrong header?)"));
  }

  allocate(m);
  const uint8_t* p = file.data() + kHeader;
  auto take = [&](float* dst, uint64_t n) {
    std::memcpy(dst, p, n * 4);
    p += n * 4;
  };
  take(m.tok_embeddings.data.data(), V * d);
  for (auto& l : m.layers) take(l.attn_norm.data(), d);
  for (auto& l : m.layers) take(l.wq.data.data(), q * d);
  for (auto& l : m.layers) take(l.wk.data.data(), kv * d);
  for (auto& l : m.layers) take(l.wv.data.data(), kv * d);
  for (auto& l : m.layers) take(l.wo.data.data(), d * q);
  for (auto& l : m.layers) take(l.ffn_norm.data(), d);
  for (auto& l : m.layers) take(l.w_gate.data.data(), f * d);  // w1
  for (auto& l : m.layers) take(l.w_down.data.data(), d * f);  // w2
  for (auto& l : m.layers) take(l.w_up.data.data(), f * d);    // w3
  take(m.final_norm.data(), d);
  p += freq * 4;
  if (!c.tied_embeddings) take(m.lm_head.data.data(), V * d);
  check_finite(m, label);
  return m;
}

ModelWeights load_llama2c(const std::string& path) {
  MappedFile f(path);
  return parse_llama2c(f.bytes(), path);
}

Llama2cTokenizer parse_llama2c_tokenizer(std::span<const uint8_t> file, const std::string& label) {
  if (file.size() < 4) throw Error(label, "not a llama2.c tokenizer: shorter than its 4-byte header");
  Llama2cTokenizer t;
  t.max_token_length = read_i32(file.data());
  if (t.max_token_length <= 0 || t.max_token_length > 4096)
    throw Error(label, "llama2.c tokenizer: max_token_length " +
                           std::to_string(t.max_token_length) + " is out of range");
  std::size_t pos = 4;
  while (pos < file.size()) {
    const std::string at = " (piece " + std::to_string(t.pieces.size()) + " at byte " + std::to_string(pos) + ")";
    if (file.size() - pos < 8) throw Error(label, "llama2.c tokenizer is truncated" + at);
    float score;
    std::memcpy(&score, file.data() + pos, 4);
    const int32_t len = read_i32(file.data() + pos + 4);
    pos += 8;
    if (len < 0 || len > t.max_token_length)
      throw Error(label, "llama2.c tokenizer: piece length " + std::to_string(len) +
                             " exceeds max_token_length " + std::to_string(t.max_token_length) + at);
    if (file.size() - pos < std::size_t(len)) throw Error(label, "llama2.c tokenizer is truncated" + at);
    t.pieces.emplace_back(reinterpret_cast<const char*>(file.data() + pos), std::size_t(len));
    t.scores.push_back(score);
    pos += std::size_t(len);
  }
  if (t.pieces.empty()) throw Error(label, "llama2.c tokenizer holds no pieces");
  return t;
}

Llama2cTokenizer load_llama2c_tokenizer(const std::string& path) {
  MappedFile f(path);
  return parse_llama2c_tokenizer(f.bytes(), path);
}

}  // namespace quarot
