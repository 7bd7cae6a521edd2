// GGUF v3 export (docs/gguf.md): options, llama-quantize's per-tensor type rules,
// FFN padding, quantization onto the blocks (reference RTN, RTN with clip search, GPTQ onto the
// fixed block grids) and the file itself (header, key/values, tensor infos, aligned data).
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <numbers>
#include <optional>
#include <nlohmann/json.hpp>
#include <span>
#include <sstream>

#include "quarot/detail/eigen.hpp"  // first of quarot's: Eigen's GCC 12 warnings
#include "quarot/atomic_file.hpp"
#include "quarot/dtype.hpp"
#include "quarot/error.hpp"
#include "quarot/forward.hpp"
#include "quarot/gguf.hpp"
#include "quarot/hf_tokenizer.hpp"
#include "quarot/quant.hpp"
#include "quarot/rotate.hpp"
#include "quarot/tokenizer.hpp"
#include "quarot/version.hpp"

namespace quarot {

// ---------------------------------------------------------------- options

void validate_gguf_options(const GgufExportOptions& o) {
  if (!o.rotate) return;
  const auto& r = o.rotation;
  const char* why = " cannot be written to a GGUF file: llama.cpp's graph has no place for an online transform";
  if (r.r3) throw Error("--rotation", std::string("R3 (online Hadamard on queries and keys after RoPE)") + why);
  if (r.r4) throw Error("--rotation", std::string("R4 (online Hadamard on down_proj's input)") + why);
  if (r.r2 && r.r2_online_cross_head)
    throw Error("--rotation", std::string("R2's cross-head factor (online Hadamard across heads at o_proj's input)") + why +
                                  "; R2 within each head is exact offline");
  if (r.r1 && !r.fuse_norms) throw Error("--rotation", "R1 needs the RMSNorm scales fused first");
}

int pad_intermediate(ModelWeights& m, int multiple) {
  auto& c = m.config;
  const int old = c.intermediate;
  if (multiple <= 0 || old % multiple == 0) return old;
  const int width = (old + multiple - 1) / multiple * multiple;
  for (auto& L : m.layers) {
    for (Matrix* w : {&L.w_gate, &L.w_up}) {  // [inter][hidden]: zero rows appended
      FloatBuffer data(std::size_t(width) * std::size_t(w->cols));
      std::fill(data.begin(), data.end(), 0.f);
      std::copy(w->data.begin(), w->data.end(), data.begin());
      w->data = std::move(data);
      w->rows = width;
    }
    Matrix& d = L.w_down;  // [hidden][inter]: zero columns appended
    FloatBuffer data(std::size_t(d.rows) * std::size_t(width));
    std::fill(data.begin(), data.end(), 0.f);
    for (int64_t r = 0; r < d.rows; ++r) std::copy(d.row(r), d.row(r) + d.cols, data.data() + r * width);
    d.data = std::move(data);
    d.cols = width;
  }
  c.intermediate = width;
  return old;
}

namespace {

// The split regexes of the byte-level BPE families llama.cpp knows by tokenizer.ggml.pre, as
// their tokenizer.json files write them (llama.cpp's llama-vocab.cpp hard-codes the same
// splits for these names).
constexpr const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// tokenizer.ggml.pre for a byte-level BPE tokenizer, from its pre-tokenizer and normalizer;
// throws when the pipeline is not exactly one llama.cpp reproduces under that name.
std::string byte_level_pre_name(const HfTokenizer::Vocabulary& v, const std::string& kind) {
  using nlohmann::json;
  auto refuse = [&](const std::string& why) -> std::string {
    throw Error("gguf", "the " + kind + " tokenizer cannot be written as tokenizer.ggml.* (" + why + ")");
  };
  const json pre = v.pre_tokenizer.empty() ? json() : json::parse(v.pre_tokenizer);
  const json norm = v.normalizer.empty() ? json() : json::parse(v.normalizer);
  const json dec = v.decoder.empty() ? json() : json::parse(v.decoder);
  if (v.byte_fallback) refuse("byte-level BPE with byte_fallback");
  if (!dec.is_object() || dec.value("type", "") != "ByteLevel") refuse("its decoder is not ByteLevel");
  auto byte_level = [](const json& n, bool use_regex) {
    return n.is_object() && n.value("type", "") == "ByteLevel" && !n.value("add_prefix_space", true) &&
           n.value("use_regex", true) == use_regex;
  };
  if (byte_level(pre, true)) {  // GPT-2: ByteLevel's own split
    if (!norm.is_null()) refuse("GPT-2's pre-tokenizer with a normalizer");
    return "gpt-2";
  }
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].is_array() &&
      pre["pretokenizers"].size() == 2 && byte_level(pre["pretokenizers"][1], false)) {
    const json& split = pre["pretokenizers"][0];
    if (split.is_object() && split.value("type", "") == "Split" && split.value("behavior", "") == "Isolated" &&
        !split.value("invert", true) && split.contains("pattern") && split["pattern"].is_object() &&
        split["pattern"].contains("Regex") && split["pattern"]["Regex"].is_string()) {
      const std::string regex = split["pattern"]["Regex"].get<std::string>();
      if (regex == kLlama3Split) {
        if (!norm.is_null()) refuse("Llama-3's split with a normalizer");
        return "llama-bpe";
      }
      if (regex == kQwen2Split) {
        // Qwen's NFC normalizer: llama.cpp's qwen2 does not normalize; text already in NFC
        // (what editors and the web produce) tokenizes the same.
        if (!norm.is_null() && !(norm.is_object() && norm.value("type", "") == "NFC")) refuse("Qwen2's split with a normalizer other than NFC");
        return "qwen2";
      }
    }
  }
  return refuse("its pre-tokenizer is none of GPT-2's, Llama-3's or Qwen2's: " + v.pre_tokenizer.substr(0, 120));
}

GgufVocab byte_level_bpe_vocab(const HfTokenizer& t, const HfTokenizer::Vocabulary& hv) {
  GgufVocab v;
  v.model = "gpt2";
  v.pre = byte_level_pre_name(hv, t.kind());
  const int n = t.vocab_size();
  v.tokens.assign(std::size_t(n), std::string());
  v.token_types.assign(std::size_t(n), 1);
  std::vector<bool> present(std::size_t(n), false);
  for (std::size_t id = 0; id < hv.pieces.size(); ++id) {
    if (hv.pieces[id].empty()) continue;
    v.tokens[id] = hv.pieces[id];
    present[id] = true;
  }
  for (const auto& a : hv.added) {  // special -> control (3), else user-defined (4): text matched as is
    v.tokens[std::size_t(a.id)] = a.content;
    v.token_types[std::size_t(a.id)] = a.special ? 3 : 4;
    present[std::size_t(a.id)] = true;
  }
  for (int id = 0; id < n; ++id) {  // an id between the vocabulary's and the added tokens'
    if (present[std::size_t(id)]) continue;
    v.tokens[std::size_t(id)] = "[PAD" + std::to_string(id) + "]";
    v.token_types[std::size_t(id)] = 5;
  }
  v.merges = hv.merges;
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.add_bos = !hv.prefix.empty() && hv.prefix.front() == v.bos;
  v.add_eos = !hv.suffix.empty() && hv.suffix.back() == v.eos;
  return v;
}

// SentencePiece-style BPE in tokenizer.json form (LLaMA-2, Mistral, TinyLlama): the pipeline
// HF's converter writes for a SentencePiece BPE model, which llama.cpp's "llama" (SPM) tokenizer
// runs: add_space_prefix + spaces as U+2581, then merges by piece score, byte pieces for
// characters outside the vocabulary. Only that exact pipeline is accepted.
GgufVocab metaspace_bpe_vocab(const HfTokenizer& t, const HfTokenizer::Vocabulary& hv) {
  using nlohmann::json;
  auto refuse = [&](const std::string& why) {
    throw Error(hv.file.empty() ? t.kind() : hv.file, "cannot be written as tokenizer.ggml.* (" + why + ")");
  };
  const json norm = json::parse(hv.normalizer.empty() ? "null" : hv.normalizer);
  const json pre = json::parse(hv.pre_tokenizer.empty() ? "null" : hv.pre_tokenizer);
  const json dec = json::parse(hv.decoder.empty() ? "null" : hv.decoder);
  const json want_norm = json::parse(R"({"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"\u2581"},
      {"type":"Replace","pattern":{"String":" "},"content":"\u2581"}]})");
  const json want_dec = json::parse(R"({"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"\u2581"},"content":" "},
      {"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]})");
  if (norm != want_norm) refuse("metaspace BPE whose normalizer is not Prepend(U+2581) + Replace(' ', U+2581): " + hv.normalizer.substr(0, 120));
  if (!pre.is_null()) refuse("metaspace BPE with a pre-tokenizer (llama.cpp's SPM tokenizer has none): " + hv.pre_tokenizer.substr(0, 120));
  if (dec != want_dec) refuse("metaspace BPE whose decoder is not Replace + ByteFallback + Fuse + Strip: " + hv.decoder.substr(0, 120));
  if (!hv.byte_fallback) refuse("metaspace BPE without byte_fallback (llama.cpp's SPM tokenizer falls back to byte pieces)");
  if (hv.ignore_merges) refuse("metaspace BPE with ignore_merges");
  GgufVocab v;
  v.model = "llama";
  v.pre = "default";
  const int n = t.vocab_size();
  // llama.cpp merges the adjacent pair whose concatenation has the highest score; HF merges the
  // pair of lowest rank. A piece's score is minus the rank of the first merge that makes it, so
  // both pick the same pair; pieces no merge makes (single characters, bytes, specials) are
  // never looked up as a pair's result: they get the lowest score.
  const float floor = -float(hv.merge_ids.size() + 1);
  v.tokens.assign(std::size_t(n), std::string());
  v.scores.assign(std::size_t(n), floor);
  v.token_types.assign(std::size_t(n), 1);
  std::vector<bool> present(std::size_t(n), false);
  for (std::size_t id = 0; id < hv.pieces.size(); ++id) {
    const std::string& p = hv.pieces[id];
    if (p.empty()) continue;
    v.tokens[id] = p;
    present[id] = true;
    const auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
    if (p.size() == 6 && p.starts_with("<0x") && p.back() == '>' && hex(p[3]) && hex(p[4])) {
      v.token_types[id] = 6;  // byte piece, as SentencePiece marks them
      v.scores[id] = 0.f;
    }
  }
  std::vector<bool> scored(std::size_t(n), false);
  for (std::size_t rank = 0; rank < hv.merge_ids.size(); ++rank) {
    const auto [a, b] = hv.merge_ids[rank];
    const auto it = t.token_to_id(hv.pieces[std::size_t(a)] + hv.pieces[std::size_t(b)]);
    if (!it || *it >= n || scored[std::size_t(*it)]) continue;
    scored[std::size_t(*it)] = true;
    v.scores[std::size_t(*it)] = -float(rank);
  }
  if (hv.unk >= 0 && hv.unk < n) {
    v.unk = hv.unk;
    v.token_types[std::size_t(hv.unk)] = 2;
    v.scores[std::size_t(hv.unk)] = 0.f;
  }
  for (const auto& a : hv.added) {  // special -> control (3), else user-defined (4)
    v.tokens[std::size_t(a.id)] = a.content;
    present[std::size_t(a.id)] = true;
    if (a.id == hv.unk) continue;
    v.token_types[std::size_t(a.id)] = a.special ? 3 : 4;
    v.scores[std::size_t(a.id)] = 0.f;
  }
  for (int id = 0; id < n; ++id) {
    if (present[std::size_t(id)]) continue;
    v.tokens[std::size_t(id)] = "[PAD" + std::to_string(id) + "]";
    v.token_types[std::size_t(id)] = 5;
  }
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.add_bos = !hv.prefix.empty() && hv.prefix.front() == v.bos;
  v.add_eos = !hv.suffix.empty() && hv.suffix.back() == v.eos;
  if (hv.prefix.size() > std::size_t(v.add_bos ? 1 : 0) || hv.suffix.size() > std::size_t(v.add_eos ? 1 : 0))
    refuse("its post-processor adds tokens other than BOS/EOS, which llama.cpp cannot add");
  return v;
}

}  // namespace

void pad_gguf_vocab(GgufVocab& v, int model_vocab) {
  // As llama.cpp's convert_hf_to_gguf.py: ids the tokenizer lacks become "[PAD<id>]", unused (5).
  for (int id = int(v.tokens.size()); id < model_vocab; ++id) {
    v.tokens.push_back("[PAD" + std::to_string(id) + "]");
    v.token_types.push_back(5);
    if (!v.scores.empty()) v.scores.push_back(0.f);
  }
}

GgufVocab gguf_vocab_of(const Tokenizer& t) {
  if (const auto* hf = dynamic_cast<const HfTokenizer*>(&t)) {
    const HfTokenizer::Vocabulary hv = hf->vocabulary();
    if (hv.decoder.find("\"ByteLevel\"") != std::string::npos) return byte_level_bpe_vocab(*hf, hv);
    return metaspace_bpe_vocab(*hf, hv);
  }
  GgufVocab v;
  const auto pieces = t.pieces();
  if (pieces.empty())
    throw Error("gguf", "the " + t.kind() + " tokenizer cannot be written as tokenizer.ggml.* yet (llama2.c and SentencePiece can)");
  v.model = "llama";
  v.pre = "default";
  for (const auto& p : pieces) {
    v.tokens.push_back(p.text);
    v.scores.push_back(p.score);
    v.token_types.push_back(p.type);
    if (p.type == 2 && v.unk < 0) v.unk = int(v.tokens.size()) - 1;
  }
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.add_bos = t.bos_id() >= 0;
  return v;
}

// ---------------------------------------------------------------- the file

namespace {

enum class KvType : uint32_t { U8 = 0, I8, U16, I16, U32, I32, F32, Bool, String, Array, U64, I64, F64 };

class GgufFile {
 public:
  void put(const std::string& key, const std::string& value) {
    begin(key, KvType::String);
    str(kv_, value);
  }
  void put_u32(const std::string& key, uint32_t v) {
    begin(key, KvType::U32);
    pod(kv_, v);
  }
  void put_u64(const std::string& key, uint64_t v) {
    begin(key, KvType::U64);
    pod(kv_, v);
  }
  void put_f32(const std::string& key, float v) {
    begin(key, KvType::F32);
    pod(kv_, v);
  }
  void put_bool(const std::string& key, bool v) {
    begin(key, KvType::Bool);
    pod(kv_, uint8_t(v ? 1 : 0));
  }
  void put_strings(const std::string& key, const std::vector<std::string>& v) {
    begin(key, KvType::Array);
    pod(kv_, uint32_t(KvType::String));
    pod(kv_, uint64_t(v.size()));
    for (const auto& s : v) str(kv_, s);
  }
  void put_f32s(const std::string& key, const std::vector<float>& v) {
    begin(key, KvType::Array);
    pod(kv_, uint32_t(KvType::F32));
    pod(kv_, uint64_t(v.size()));
    for (float f : v) pod(kv_, f);
  }
  void put_i32s(const std::string& key, const std::vector<int32_t>& v) {
    begin(key, KvType::Array);
    pod(kv_, uint32_t(KvType::I32));
    pod(kv_, uint64_t(v.size()));
    for (int32_t i : v) pod(kv_, i);
  }
  void add_tensor(const std::string& name, std::vector<int64_t> dims, GgufType type, std::vector<uint8_t> data) {
    tensors_.push_back({name, std::move(dims), type, std::move(data)});
  }
  // Header, key/values, tensor infos, padding to the alignment, then each tensor padded to it.
  std::size_t write(const std::string& path) const {
    std::string head;
    pod(head, uint32_t(0x46554747));  // "GGUF"
    pod(head, uint32_t(3));
    pod(head, uint64_t(tensors_.size()));
    pod(head, n_kv_);
    head += kv_;
    uint64_t offset = 0;
    for (const auto& t : tensors_) {
      str(head, t.name);
      pod(head, uint32_t(t.dims.size()));
      for (int64_t d : t.dims) pod(head, uint64_t(d));
      pod(head, uint32_t(t.type));
      pod(head, offset);
      offset += pad(t.data.size());
    }
    head.resize(pad(head.size()), '\0');
    AtomicFile f(path);
    f.write(head);
    const std::string zeros(kAlignment, '\0');
    std::size_t total = head.size();
    for (const auto& t : tensors_) {
      f.write(t.data.data(), t.data.size());
      f.write(zeros.data(), pad(t.data.size()) - t.data.size());
      total += pad(t.data.size());
    }
    f.commit();
    return total;
  }
  static constexpr std::size_t kAlignment = 32;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> dims;
    GgufType type;
    std::vector<uint8_t> data;
  };
  template <class T>
  static void pod(std::string& out, T v) {
    char b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));  // little-endian hosts only (x86-64, aarch64)
    out.append(b, sizeof(T));
  }
  static void str(std::string& out, const std::string& s) {
    pod(out, uint64_t(s.size()));
    out += s;
  }
  static std::size_t pad(std::size_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }
  void begin(const std::string& key, KvType t) {
    str(kv_, key);
    pod(kv_, uint32_t(t));
    ++n_kv_;
  }
  std::string kv_;
  uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

// llama_ftype (llama.h) of a file whose main type is `t`.
uint32_t file_type_of(const GgufExportOptions& o) {
  switch (o.type) {
    case GgufType::F32: return 0;
    case GgufType::F16: return 1;
    case GgufType::Q4_0: return 2;
    case GgufType::Q4_1: return 3;
    case GgufType::Q8_0: return 7;
    case GgufType::Q5_0: return 8;
    case GgufType::Q4_K: return o.k_mix ? 15 : 14;  // Q4_K_M : Q4_K_S
    case GgufType::Q6_K: return 18;
    case GgufType::IQ4_NL: return 25;
  }
  return 0;
}

bool is_block_type(GgufType t) { return t != GgufType::F32 && t != GgufType::F16; }

enum class Category { TokenEmbd, Output, AttnV, FfnDown, Other };

// llama-quant.cpp's choice for one 2D weight, then its fallback for shapes the type cannot hold.
GgufType tensor_type(const GgufExportOptions& o, Category cat, int layer, int n_layers, int64_t cols, std::string* note) {
  const GgufType def = o.type;
  if (!is_block_type(def)) return def;
  auto use_more_bits = [](int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; };
  GgufType t = def;
  if (cat == Category::Output) {
    // An explicit type replaces llama-quantize's choice; the fallback below still applies (as in
    // llama-quant.cpp), since a type whose block does not divide the columns cannot be written.
    if (o.output_type) t = *o.output_type;
    else if (cols % gguf_block_elems(def) != 0) t = GgufType::Q8_0;
    else if (def != GgufType::Q8_0) t = GgufType::Q6_K;
  } else if (cat == Category::TokenEmbd) {
    if (o.embd_type) t = *o.embd_type;
  } else if (cat == Category::AttnV) {
    if (o.k_mix && use_more_bits(layer, n_layers)) t = GgufType::Q6_K;
  } else if (cat == Category::FfnDown) {
    if (o.k_mix && use_more_bits(layer, n_layers)) t = GgufType::Q6_K;
  }
  if (cols % gguf_block_elems(t) != 0) {
    GgufType f = GgufType::F16;
    if (t == GgufType::Q4_K) f = GgufType::Q5_0;
    else if (t == GgufType::Q6_K) f = GgufType::Q8_0;
    if (cols % gguf_block_elems(f) != 0) f = GgufType::F16;
    *note = "fell back from " + std::string(gguf_type_name(t)) + " to " + std::string(gguf_type_name(f)) + ": " +
            std::to_string(cols) + " columns are not a multiple of " + std::to_string(gguf_block_elems(t));
    t = f;
  }
  return t;
}

std::vector<uint8_t> encode_floats(GgufType t, const float* x, int64_t n) {
  std::vector<uint8_t> out(gguf_row_bytes(t, n));
  gguf_quantize_row(t, x, out.data(), n);
  return out;
}

// Quantizes a matrix row by row with llama-quantize's reference code (or converts it).
std::vector<uint8_t> encode_matrix_ref(GgufType t, const Matrix& w) {
  const std::size_t rb = gguf_row_bytes(t, w.cols);
  std::vector<uint8_t> out(rb * std::size_t(w.rows));
#pragma omp parallel for schedule(dynamic, 64) if (w.rows >= 256)
  for (int64_t r = 0; r < w.rows; ++r) gguf_quantize_row(t, w.row(r), out.data() + std::size_t(r) * rb, w.cols);
  return out;
}

void dequantize_into(GgufType t, const std::vector<uint8_t>& data, Matrix& w) {
  const std::size_t rb = gguf_row_bytes(t, w.cols);
  for (int64_t r = 0; r < w.rows; ++r) gguf_dequantize_row(t, data.data() + std::size_t(r) * rb, w.row(r), w.cols);
}

// The blocks of a matrix quantized onto fixed grids: each row's codes encoded by its grid.
std::vector<uint8_t> encode_on_grids(GgufType t, const std::vector<std::unique_ptr<BlockGridRow>>& rows, const QuantizedMatrix& q) {
  const std::size_t rb = gguf_row_bytes(t, q.cols);
  std::vector<uint8_t> data(rb * std::size_t(q.rows));
  std::vector<int> codes(std::size_t(q.cols));
  for (int64_t r = 0; r < q.rows; ++r) {
    for (int64_t j = 0; j < q.cols; ++j) codes[std::size_t(j)] = q.codes[std::size_t(r * q.cols + j)];
    rows[std::size_t(r)]->encode(codes.data(), data.data() + std::size_t(r) * rb);
  }
  return data;
}

// H = 2/N sum x x^T over every calibration token, x = the classifier's input: the final RMSNorm
// (times its weight) of m's last layer output, m as quantized so far (GPTQ's convention, as the
// decoder linears' Hessians in quantize_model.cpp).
std::vector<double> classifier_hessian(const ModelWeights& m, const std::vector<std::vector<int>>& calib) {
  const ModelConfig& c = m.config;
  const int d = c.hidden, last = c.n_layers - 1;
  std::size_t ctx = 1;
  for (const auto& w : calib) ctx = std::max(ctx, w.size());
  Transformer<float> t(m, int(ctx));
  Eigen::MatrixXd h = Eigen::MatrixXd::Zero(d, d);
  int64_t tokens = 0;
  t.set_hook([&](HookPoint p, int layer, const ActivationView<float>& v) {
    if (p != HookPoint::LayerOutput || layer != last) return;
    Eigen::MatrixXd x(v.rows, d);
    for (int r = 0; r < v.rows; ++r) {
      const float* row = v.row(r);
      double ms = 0;
      for (int i = 0; i < d; ++i) ms += double(row[i]) * row[i];
      const double inv = 1.0 / std::sqrt(ms / d + c.rms_eps);
      for (int i = 0; i < d; ++i) x(r, i) = double(row[i]) * inv * m.final_norm[std::size_t(i)];
    }
    h.selfadjointView<Eigen::Lower>().rankUpdate(x.transpose());
    tokens += v.rows;
  });
  t.set_stop_after(last, HookPoint::LayerOutput);
  std::vector<float> logits;
  for (const auto& w : calib) {
    t.reset();
    t.forward(w, logits);
  }
  h = h.selfadjointView<Eigen::Lower>();
  h *= 2.0 / double(std::max<int64_t>(tokens, 1));
  return std::vector<double>(h.data(), h.data() + h.size());  // symmetric: column-major = row-major
}

double rel_error(const float* a, const float* b, std::size_t n) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(a[i]) * a[i];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

std::vector<float> rope_freq_factors(const ModelConfig& c) {
  std::vector<float> f;
  const auto& s = c.rope_scaling;
  for (int i = 0; i < c.head_dim / 2; ++i) {
    const double freq = std::pow(c.rope_theta, -2.0 * i / c.head_dim);
    const double wavelen = 2 * std::numbers::pi / freq;
    const double low_wavelen = s.original_max_positions / s.low_freq_factor;
    const double high_wavelen = s.original_max_positions / s.high_freq_factor;
    double scaled = freq;
    if (wavelen > low_wavelen) {
      scaled = freq / s.factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (s.original_max_positions / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      scaled = (1 - smooth) * freq / s.factor + smooth * freq;
    }
    f.push_back(float(freq / scaled));  // llama.cpp divides each frequency by its factor
  }
  return f;
}

}  // namespace

GgufExportReport export_gguf(ModelWeights& m, const Tokenizer* tokenizer, const GgufExportOptions& opts,
                             const std::vector<std::vector<int>>& calib, const std::string& path, const GgufProgress& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  validate_gguf_options(opts);
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };
  GgufExportReport rep;
  rep.path = path;
  const std::string source = m.source.empty() ? "model" : m.source;
  auto& c = m.config;
  if (!online_transforms_of(m).empty())
    throw Error(source, "the model needs online transforms (a rotated checkpoint with R3/R4/cross-head R2): not expressible in GGUF");
  if (c.family == Family::Qwen2) {
    rep.arch = GgufArch::Qwen2;
    if (c.o_bias) throw Error(source, "Qwen2 with an o_proj bias has no GGUF tensor in llama.cpp's qwen2 architecture");
  }
  const std::string arch = rep.arch == GgufArch::Qwen2 ? "qwen2" : "llama";
  GgufVocab vocab;
  if (tokenizer) {
    try {
      vocab = gguf_vocab_of(*tokenizer);
    } catch (const Error& e) {  // a tokenizer llama.cpp would not reproduce: no keys rather than wrong ones
      rep.notes.push_back(std::string("no tokenizer.ggml.* keys: ") + e.what());
      tokenizer = nullptr;
    }
  }
  if (tokenizer) {
    if (vocab.model == "gpt2" && int(vocab.tokens.size()) < c.vocab) {
      rep.notes.push_back("tokenizer: " + std::to_string(c.vocab - int(vocab.tokens.size())) +
                          " embedding rows without a token written as [PAD<id>] (unused), as llama.cpp's converter does");
      pad_gguf_vocab(vocab, c.vocab);
    }
    if (int(vocab.tokens.size()) != c.vocab)
      throw Error(source, "the tokenizer has " + std::to_string(vocab.tokens.size()) + " pieces, the model " + std::to_string(c.vocab));
  }
  if (opts.method == WeightMethod::Gptq && is_block_type(opts.type) && calib.empty())
    throw Error("--calib", "GPTQ needs calibration windows");

  // llama-quantize sees the source model: a tied one has no output.weight, so its token_embd
  // takes the output's type (Q6_K/Q8_0) and keeps it after the rotation unties the classifier.
  const bool source_tied = c.tied_embeddings;
  // 1. Rotation: norm fusion, R1, R2 within each head (all offline).
  if (opts.rotate) {
    say("rotating");
    RotationReport rr;
    const auto online = rotate_model(m, opts.rotation, &rr);
    if (!online.empty()) throw Error("--rotation", "the rotation left online transforms (" + online.describe() + ")");
    for (const auto& s : rr.steps) rep.notes.push_back("rotation: " + s);
    for (const auto& s : rr.fallbacks) rep.notes.push_back("rotation: " + s);
  }
  // 2. RoPE layout: llama.cpp's llama architecture rotates adjacent pairs, qwen2 uses NEOX pairs.
  const RopeLayout want = rep.arch == GgufArch::Qwen2 ? RopeLayout::Half : RopeLayout::Interleaved;
  if (c.rope_layout != want) {
    convert_rope_layout(m, want);
    rep.notes.push_back(std::string("q/k rows permuted to ") + (want == RopeLayout::Interleaved ? "interleaved" : "rotate-half") +
                        " RoPE pairs (llama.cpp's " + arch + " layout)");
  }
  // 3. FFN padding: zero rows in gate/up, zero columns in down (the forward pass is unchanged).
  if (opts.pad_ffn && is_block_type(opts.type) && c.intermediate % 32 != 0) {
    const int old = pad_intermediate(m, 32);
    rep.padded_intermediate = c.intermediate;
    rep.notes.push_back("FFN width " + std::to_string(old) + " zero-padded to " + std::to_string(c.intermediate) +
                        " (no block type holds " + std::to_string(old) + " columns; exact)");
    say(rep.notes.back());
  }

  // 4. Types, llama-quantize's rules.
  const int n = c.n_layers;
  auto linear_type = std::vector<std::array<GgufType, kLinearsPerLayer>>(std::size_t(n));
  auto linear_note = std::vector<std::array<std::string, kLinearsPerLayer>>(std::size_t(n));
  for (int l = 0; l < n; ++l)
    for (const auto& s : kLinearSpecs) {
      const Category cat = s.module == LinearModule::V ? Category::AttnV : s.module == LinearModule::Down ? Category::FfnDown : Category::Other;
      linear_type[std::size_t(l)][std::size_t(s.module)] =
          tensor_type(opts, cat, l, n, linear_cols(c, s.module), &linear_note[std::size_t(l)][std::size_t(s.module)]);
    }
  const bool tied = c.tied_embeddings;
  std::string embd_note, out_note;
  // A tied source's embedding is llama-quantize's classifier (its rule) unless embd_type says
  // otherwise: the rotation unties the classifier, so the embedding alone can then take the
  // linears' type and keep the file near llama-quantize's size (docs/gguf.md).
  const GgufType embd_type =
      tensor_type(opts, source_tied && !opts.embd_type ? Category::Output : Category::TokenEmbd, 0, n, c.hidden, &embd_note);
  const GgufType out_type = tied ? embd_type : tensor_type(opts, Category::Output, 0, n, c.hidden, &out_note);
  if (is_block_type(opts.type)) {
    rep.notes.push_back("token_embd.weight " + std::string(gguf_type_name(embd_type)) + (opts.embd_type ? " (asked)" : " (llama-quantize's choice)") +
                        (tied ? "" : ", output.weight " + std::string(gguf_type_name(out_type))) +
                        (source_tied && !tied ? " (the source's tied classifier, untied by the rotation)" : ""));
    say(rep.notes.back());
  }

  // 5. Quantize the decoder linears.
  std::map<std::pair<int, int>, std::vector<uint8_t>> linear_data;
  std::optional<std::vector<uint8_t>> classifier_data;  // GPTQ's blocks of output.weight (else the reference RTN's)
  const bool block_file = is_block_type(opts.type);
  if (block_file && opts.method == WeightMethod::Gptq) {
    say("GPTQ onto the blocks");
    if (opts.importance_grid)
      rep.notes.push_back("block scales chosen with each input column weighted by its mean square on the calibration windows (the GPTQ Hessian's diagonal, llama-quantize's imatrix statistic)");
    // The grids, fixed from each weight before GPTQ touches it, kept to encode the codes after.
    std::map<std::pair<int, int>, std::vector<std::unique_ptr<BlockGridRow>>> grids;
    QuantConfig qc;
    qc.method = WeightMethod::Gptq;
    qc.rotate = false;
    qc.gptq.damp = opts.damp;
    qc.gptq.act_order = opts.act_order;
    qc.gptq.block_size = opts.gptq_block_size;
    qc.custom_grid = [&](int l, LinearModule mod, const Matrix& w, std::span<const double> energy) -> GridRounder {
      const GgufType t = linear_type[std::size_t(l)][std::size_t(mod)];
      if (!is_block_type(t))  // a fallback to F16: GPTQ still compensates the fp16 rounding
        return [t](int64_t, int64_t, double x, int* code) {
          *code = 0;
          return t == GgufType::F16 ? double(f16_to_f32(f32_to_f16(float(x)))) : double(float(x));
        };
      auto& rows = grids[{l, int(mod)}];
      rows.clear();
      rows.resize(std::size_t(w.rows));
      const std::vector<float> importance = opts.importance_grid ? std::vector<float>(energy.begin(), energy.end()) : std::vector<float>{};
      const float* imp = importance.empty() ? nullptr : importance.data();
      // Rows are independent (the clip search costs 80 trials per block): one per thread.
#pragma omp parallel for schedule(dynamic, 16) if (w.rows >= 64)
      for (int64_t r = 0; r < w.rows; ++r) rows[std::size_t(r)] = std::make_unique<BlockGridRow>(t, w.row(r), w.cols, opts.clip_search, imp);
      const auto* g = &rows;
      return [g](int64_t r, int64_t col, double x, int* code) { return double((*g)[std::size_t(r)]->round(col, float(x), code)); };
    };
    QuantizedSink sink = [&](int l, LinearModule mod, const QuantizedMatrix& q, const Matrix&) {
      const GgufType t = linear_type[std::size_t(l)][std::size_t(mod)];
      std::vector<uint8_t> data;
      if (!is_block_type(t)) {
        data = encode_floats(t, q.dequantized.data(), q.rows * q.cols);
      } else {
        data = encode_on_grids(t, grids.at({l, int(mod)}), q);
        grids.erase({l, int(mod)});
      }
      linear_data[{l, int(mod)}] = std::move(data);
    };
    const OnlineTransforms none;
    rep.stats = quantize_weights(m, none, qc, calib,
                                 [&](int l, int layers, const std::string& mod) { say("layer " + std::to_string(l + 1) + "/" + std::to_string(layers) + " " + mod); },
                                 sink);
    if (opts.gptq_classifier && !tied && is_block_type(out_type)) {
      say("GPTQ onto the classifier's blocks");
      const auto ts = std::chrono::steady_clock::now();
      const GptqOptions go = [&] {
        GptqOptions g;
        g.damp = opts.damp;
        g.act_order = opts.act_order;
        g.block_size = opts.gptq_block_size;
        return g;
      }();
      const Matrix& w = m.lm_head;
      std::vector<double> h = classifier_hessian(m, calib);
      std::vector<float> importance;
      if (opts.importance_grid)
        for (int64_t j = 0; j < w.cols; ++j) importance.push_back(float(h[std::size_t(j * w.cols + j)]));
      const float* imp = importance.empty() ? nullptr : importance.data();
      std::vector<std::unique_ptr<BlockGridRow>> rows(std::size_t(w.rows));
#pragma omp parallel for schedule(dynamic, 16) if (w.rows >= 64)
      for (int64_t r = 0; r < w.rows; ++r)
        rows[std::size_t(r)] = std::make_unique<BlockGridRow>(out_type, w.row(r), w.cols, opts.clip_search, imp);
      const GridRounder grid = [&rows](int64_t r, int64_t col, double x, int* code) { return double(rows[std::size_t(r)]->round(col, float(x), code)); };
      const GptqResult q = gptq_quantize_onto(w.data.data(), w.rows, w.cols, std::move(h), go, grid);
      std::vector<uint8_t> data = encode_on_grids(out_type, rows, q.q);
      ModuleQuantStats st{-1, "lm_head", rel_error(w.data.data(), q.q.dequantized.data(), q.q.dequantized.size())};
      st.gptq_loss = q.loss;
      st.damp_used = q.damp_used;
      st.dead_inputs = q.dead_inputs;
      classifier_data = std::move(data);
      std::copy(q.q.dequantized.begin(), q.q.dequantized.end(), m.lm_head.data.begin());
      st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
      rep.stats.push_back(st);
      rep.notes.push_back("output.weight: GPTQ onto its " + std::string(gguf_type_name(out_type)) + " blocks (Hessian of the final norm's output on the calibration windows)");
    }
  } else {
    say("rounding onto the blocks");
    for (int l = 0; l < n; ++l)
      for (const auto& s : kLinearSpecs) {
        Matrix& w = m.layers[std::size_t(l)].*(s.weight);
        const GgufType t = linear_type[std::size_t(l)][std::size_t(s.module)];
        const auto ts = std::chrono::steady_clock::now();
        std::vector<uint8_t> data;
        const bool uniform = t == GgufType::Q4_0 || t == GgufType::Q4_1 || t == GgufType::Q5_0 || t == GgufType::Q8_0;
        if (opts.method == WeightMethod::Rtn && opts.clip_search && uniform) {
          const std::size_t rb = gguf_row_bytes(t, w.cols);
          data.resize(rb * std::size_t(w.rows));
#pragma omp parallel for schedule(dynamic, 16) if (w.rows >= 64)
          for (int64_t r = 0; r < w.rows; ++r) {
            const BlockGridRow g(t, w.row(r), w.cols, true);
            std::vector<int> codes(std::size_t(w.cols));
            for (int64_t j = 0; j < w.cols; ++j) g.round(j, w.row(r)[j], &codes[std::size_t(j)]);
            g.encode(codes.data(), data.data() + std::size_t(r) * rb);
          }
        } else {
          data = encode_matrix_ref(t, w);
        }
        if (block_file || t == GgufType::F16) {
          std::vector<float> before(w.data.begin(), w.data.end());
          dequantize_into(t, data, w);
          ModuleQuantStats st{l, s.name, rel_error(before.data(), w.data.data(), before.size())};
          st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
          rep.stats.push_back(st);
        }
        linear_data[{l, int(s.module)}] = std::move(data);
      }
  }

  // 6. The file.
  say("writing " + path);
  std::string name = opts.name;
  if (name.empty()) {
    name = source;
    if (auto slash = name.find_last_of('/'); slash != std::string::npos) name = name.substr(slash + 1);
  }
  GgufFile g;
  g.put("general.architecture", arch);
  g.put("general.name", name);
  g.put_u32("general.file_type", file_type_of(opts));
  if (block_file) g.put_u32("general.quantization_version", 2);
  g.put_u32("general.alignment", uint32_t(GgufFile::kAlignment));
  g.put("general.quantized_by", "quarot " + quarot_version());
  g.put_u32(arch + ".context_length", uint32_t(c.max_positions));
  g.put_u32(arch + ".embedding_length", uint32_t(c.hidden));
  g.put_u32(arch + ".block_count", uint32_t(c.n_layers));
  g.put_u32(arch + ".feed_forward_length", uint32_t(c.intermediate));
  g.put_u32(arch + ".attention.head_count", uint32_t(c.n_heads));
  g.put_u32(arch + ".attention.head_count_kv", uint32_t(c.n_kv_heads));
  g.put_f32(arch + ".rope.freq_base", float(c.rope_theta));
  g.put_u32(arch + ".rope.dimension_count", uint32_t(c.head_dim));
  g.put_f32(arch + ".attention.layer_norm_rms_epsilon", float(c.rms_eps));
  g.put_u32(arch + ".vocab_size", uint32_t(c.vocab));
  if (c.head_dim * c.n_heads != c.hidden) {
    g.put_u32(arch + ".attention.key_length", uint32_t(c.head_dim));
    g.put_u32(arch + ".attention.value_length", uint32_t(c.head_dim));
  }
  if (c.rope_scaling.type == RopeScalingType::Linear) {
    g.put(arch + ".rope.scaling.type", "linear");
    g.put_f32(arch + ".rope.scaling.factor", float(c.rope_scaling.factor));
  }
  if (tokenizer) {
    g.put("tokenizer.ggml.model", vocab.model);
    g.put("tokenizer.ggml.pre", vocab.pre);
    g.put_strings("tokenizer.ggml.tokens", vocab.tokens);
    if (!vocab.scores.empty()) g.put_f32s("tokenizer.ggml.scores", vocab.scores);
    g.put_i32s("tokenizer.ggml.token_type", vocab.token_types);
    if (!vocab.merges.empty()) g.put_strings("tokenizer.ggml.merges", vocab.merges);
    if (vocab.bos >= 0) g.put_u32("tokenizer.ggml.bos_token_id", uint32_t(vocab.bos));
    if (vocab.eos >= 0) g.put_u32("tokenizer.ggml.eos_token_id", uint32_t(vocab.eos));
    if (vocab.unk >= 0) g.put_u32("tokenizer.ggml.unknown_token_id", uint32_t(vocab.unk));
    g.put_bool("tokenizer.ggml.add_bos_token", vocab.add_bos);
    g.put_bool("tokenizer.ggml.add_eos_token", vocab.add_eos);
    rep.notes.push_back("tokenizer: " + tokenizer->kind() + " as tokenizer.ggml.model " + vocab.model);
  } else {
    rep.notes.push_back("no tokenizer: the file has no tokenizer.ggml.* keys (llama.cpp needs them to load it)");
  }
  g.put("quantize.tool", "quarot");
  g.put("quantize.version", quarot_version());
  if (!opts.recipe.empty()) g.put("quantize.recipe", opts.recipe);
  g.put("quantize.method", !block_file ? "none" : opts.method == WeightMethod::Gptq ? "gptq" : opts.method == WeightMethod::Rtn ? "rtn" : "llama-quantize reference rtn");
  g.put("quantize.rotation", opts.rotate ? (opts.rotation.r1_kind == R1Kind::Hadamard ? "fused norms, R1 hadamard, R2 per head" : "fused norms, R1 random, R2 per head") : "none");
  if (opts.rotate) g.put_u64("quantize.rotation.seed", opts.rotation.seed);
  if (!opts.calibration_hash.empty()) g.put("quantize.calibration.sha256", opts.calibration_hash);
  if (opts.method == WeightMethod::Gptq && block_file) g.put_u32("quantize.calibration.windows", uint32_t(calib.size()));
  if (rep.padded_intermediate) g.put_u32("quantize.ffn_padded", uint32_t(rep.padded_intermediate));

  auto add = [&](const std::string& tname, std::vector<int64_t> dims, GgufType t, std::vector<uint8_t> data, const std::string& note) {
    int64_t elems = 1;
    for (int64_t d : dims) elems *= d;
    rep.weights += elems;
    rep.tensors.push_back({tname, dims, t, data.size(), note});
    if (!note.empty()) rep.fallbacks.push_back(tname + ": " + note);
    g.add_tensor(tname, std::move(dims), t, std::move(data));
  };
  auto add_vector = [&](const std::string& tname, const std::vector<float>& v) {
    add(tname, {int64_t(v.size())}, GgufType::F32, encode_floats(GgufType::F32, v.data(), int64_t(v.size())), "");
  };
  auto add_matrix_ref = [&](const std::string& tname, Matrix& w, GgufType t, const std::string& note) {
    auto data = encode_matrix_ref(t, w);
    if (t != GgufType::F32) dequantize_into(t, data, w);  // m holds what llama.cpp computes with
    add(tname, {w.cols, w.rows}, t, std::move(data), note);
  };
  if (c.rope_scaling.type == RopeScalingType::Llama3) add_vector("rope_freqs.weight", rope_freq_factors(c));
  add_matrix_ref("token_embd.weight", m.tok_embeddings, embd_type, embd_note);
  static const char* kNames[kLinearsPerLayer] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  for (int l = 0; l < n; ++l) {
    LayerWeights& L = m.layers[std::size_t(l)];
    const std::string blk = "blk." + std::to_string(l) + ".";
    add_vector(blk + "attn_norm.weight", L.attn_norm);
    for (const auto& s : kLinearSpecs) {
      const int i = int(s.module);
      if (s.block == std::string("mlp") && s.module == LinearModule::Gate) add_vector(blk + "ffn_norm.weight", L.ffn_norm);
      const Matrix& w = L.*(s.weight);
      add(blk + kNames[i] + ".weight", {w.cols, w.rows}, linear_type[std::size_t(l)][std::size_t(i)],
          std::move(linear_data.at({l, i})), linear_note[std::size_t(l)][std::size_t(i)]);
      if (s.bias && !(L.*(s.bias)).empty()) add_vector(blk + kNames[i] + ".bias", L.*(s.bias));
    }
  }
  add_vector("output_norm.weight", m.final_norm);
  if (!c.tied_embeddings) {
    if (classifier_data) add("output.weight", {m.lm_head.cols, m.lm_head.rows}, out_type, std::move(*classifier_data), out_note);
    else add_matrix_ref("output.weight", m.lm_head, out_type, out_note);
  }

  std::size_t tensor_bytes = 0;
  for (const auto& t : rep.tensors) tensor_bytes += t.bytes;
  rep.bits_per_weight = rep.weights ? 8.0 * double(tensor_bytes) / double(rep.weights) : 0;
  rep.file_bytes = g.write(path);
  for (const auto& fb : rep.fallbacks) say("fallback: " + fb);
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace quarot
