#include "quarot/tokenizer.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <unordered_map>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/hf_tokenizer.hpp"

namespace quarot {

namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) {
    if (!std::filesystem::exists(path)) throw Error(path, "no such file");
    const auto status = sp_.Load(path);
    if (!status.ok()) throw Error(path, "not a SentencePiece model: " + status.ToString());
  }
  std::vector<int> encode(const std::string& text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(text, &ids);
    if (!status.ok()) throw Error("sentencepiece", status.ToString());
    return ids;
  }
  std::string decode(std::span<const int> ids) const override {
    std::string out;
    const auto status = sp_.Decode(std::vector<int>(ids.begin(), ids.end()), &out);
    if (!status.ok()) throw Error("sentencepiece", status.ToString());
    return out;
  }
  int vocab_size() const override { return sp_.GetPieceSize(); }
  int bos_id() const override { return sp_.bos_id(); }
  int eos_id() const override { return sp_.eos_id(); }
  std::string kind() const override { return "sentencepiece"; }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

// llama2.c's tokenizer (run.c): pieces with scores; encoding starts from code points (with a
// dummy-prefix space and byte fallback to ids 3..258) and greedily merges the adjacent pair
// whose merged piece has the highest score, until no pair merges.
class Llama2cBpe final : public Tokenizer {
 public:
  explicit Llama2cBpe(const std::string& path) : t_(load_llama2c_tokenizer(path)) {
    for (std::size_t i = 0; i < t_.pieces.size(); ++i) lookup_.emplace(t_.pieces[i], int(i));
  }
  std::vector<int> encode(const std::string& text) const override {
    std::vector<int> ids;
    if (text.empty()) return ids;
    if (auto sp = find(" "); sp >= 0) ids.push_back(sp);  // dummy prefix, as SentencePiece
    for (std::size_t i = 0; i < text.size();) {
      std::size_t len = 1;
      while (i + len < text.size() && len < 4 && (uint8_t(text[i + len]) & 0xC0) == 0x80) ++len;
      const int id = find(text.substr(i, len));
      if (id >= 0) {
        ids.push_back(id);
      } else {
        for (std::size_t b = 0; b < len; ++b) ids.push_back(int(uint8_t(text[i + b])) + 3);
      }
      i += len;
    }
    for (;;) {
      float best = -1e30f;
      int best_id = -1;
      std::size_t best_at = 0;
      for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
        const int id = find(t_.pieces[ids[i]] + t_.pieces[ids[i + 1]]);
        if (id >= 0 && t_.scores[id] > best) {
          best = t_.scores[id];
          best_id = id;
          best_at = i;
        }
      }
      if (best_id < 0) break;
      ids[best_at] = best_id;
      ids.erase(ids.begin() + std::ptrdiff_t(best_at) + 1);
    }
    return ids;
  }
  std::string decode(std::span<const int> ids) const override {
    std::string out;
    int prev = -1;
    for (int id : ids) {
      if (id < 0 || id >= int(t_.pieces.size())) throw Error("llama2.c tokenizer", "id " + std::to_string(id) + " out of range");
      if (id == bos_id() || id == eos_id()) {
        prev = id;
        continue;
      }
      std::string_view piece = t_.pieces[id];
      if ((prev == bos_id() || prev == -1) && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
      unsigned byte = 0;
      if (piece.size() == 6 && std::sscanf(std::string(piece).c_str(), "<0x%02X>", &byte) == 1) out.push_back(char(byte));
      else out += piece;
      prev = id;
    }
    return out;
  }
  int vocab_size() const override { return int(t_.pieces.size()); }
  std::string kind() const override { return "llama2.c"; }

 private:
  int find(const std::string& s) const {
    auto it = lookup_.find(s);
    return it == lookup_.end() ? -1 : it->second;
  }
  Llama2cTokenizer t_;
  std::unordered_map<std::string, int> lookup_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::string& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}
std::unique_ptr<Tokenizer> load_llama2c_bpe(const std::string& path) { return std::make_unique<Llama2cBpe>(path); }

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (auto hf = load_hf_tokenizer(path)) return hf;  // *.json or a model folder
  if (std::filesystem::path(path).extension() == ".model") return load_sentencepiece(path);
  return load_llama2c_bpe(path);
}

std::string read_text_lf(const std::string& path, std::size_t* crlf_count) {
  std::string t = read_text_file(path);
  std::size_t out = 0, n = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (t[i] == '\r' && i + 1 < t.size() && t[i + 1] == '\n') {
      ++n;
      continue;
    }
    t[out++] = t[i];
  }
  t.resize(out);
  if (crlf_count) *crlf_count = n;
  return t;
}

std::vector<std::vector<int>> read_ids_file(const std::string& path, int vocab) {
  const std::string text = read_text_file(path);
  std::vector<std::vector<int>> seqs;
  std::size_t line_no = 0, pos = 0;
  auto is_sep = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == ','; };
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line_no;
    std::vector<int> ids;
    const char* p = text.data() + pos;
    const char* e = text.data() + end;
    while (p < e) {
      while (p < e && is_sep(*p)) ++p;
      if (p == e) break;
      int v = 0;
      auto [q, ec] = std::from_chars(p, e, v);
      if (ec != std::errc() || (q < e && !is_sep(*q)))
        throw Error(path, "line " + std::to_string(line_no) + ": not a token id: '" +
                              std::string(p, std::min<std::size_t>(20, std::size_t(e - p))) + "'");
      if (v < 0 || (vocab > 0 && v >= vocab))
        throw Error(path, "line " + std::to_string(line_no) + ": token id " + std::to_string(v) +
                              " outside the vocabulary (" + std::to_string(vocab) + ")");
      ids.push_back(v);
      p = q;
    }
    if (!ids.empty()) seqs.push_back(std::move(ids));
    pos = end + 1;
  }
  if (seqs.empty()) throw Error(path, "holds no token ids");
  return seqs;
}

}  // namespace quarot
