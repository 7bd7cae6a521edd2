#include "quarot/tokenizer.hpp"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <queue>
#include <unordered_map>

#include "quarot/atomic_file.hpp"
#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/hf_tokenizer.hpp"

namespace quarot {

namespace {

// Protobuf wire-format reader for the checks below (varints, lengths inside the buffer).
struct WireReader {
  const uint8_t* p;
  const uint8_t* end;
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
      const uint8_t b = *p++;
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  // One field: its number, wire type, and (for LEN) the payload. False when the framing is bad.
  bool field(uint32_t& number, uint32_t& wire, std::string_view& payload) {
    uint64_t key = 0, len = 0;
    if (!varint(key) || (key >> 3) == 0 || (key >> 3) > UINT32_MAX) return false;
    number = uint32_t(key >> 3);
    wire = uint32_t(key & 7);
    switch (wire) {
      case 0: return varint(len);
      case 1: if (end - p < 8) return false; p += 8; return true;
      case 5: if (end - p < 4) return false; p += 4; return true;
      case 2:
        if (!varint(len) || len > uint64_t(end - p)) return false;
        payload = {reinterpret_cast<const char*>(p), std::size_t(len)};
        p += len;
        return true;
      default: return false;  // groups (3, 4) and undefined wire types
    }
  }
};

// libsentencepiece trusts its model: a piece that is empty or holds a NUL byte makes its trie
// builder (darts) throw through the library, which aborts the process (found by
// fuzz_sentencepiece). The framing of the ModelProto and of every piece is checked here first.
std::optional<std::string> sentencepiece_problem(std::string_view model) {
  WireReader top{reinterpret_cast<const uint8_t*>(model.data()), reinterpret_cast<const uint8_t*>(model.data()) + model.size()};
  std::size_t pieces = 0;
  while (top.p < top.end) {
    uint32_t number = 0, wire = 0;
    std::string_view payload;
    if (!top.field(number, wire, payload))
      return "not a SentencePiece model (corrupt protobuf framing at byte " +
             std::to_string(top.p - reinterpret_cast<const uint8_t*>(model.data())) + ")";
    if (number != 1) continue;
    if (wire != 2) return "not a SentencePiece model (field 'pieces' has the wrong wire type)";
    WireReader piece{reinterpret_cast<const uint8_t*>(payload.data()), reinterpret_cast<const uint8_t*>(payload.data()) + payload.size()};
    bool has_text = false;
    while (piece.p < piece.end) {
      uint32_t n = 0, w = 0;
      std::string_view text;
      if (!piece.field(n, w, text)) return "piece " + std::to_string(pieces) + " is corrupt";
      if (n != 1) continue;
      if (w != 2) return "piece " + std::to_string(pieces) + " has a text of the wrong wire type";
      if (text.empty() || text.find('\0') != std::string_view::npos)
        return "piece " + std::to_string(pieces) + " is empty or holds a NUL byte";
      has_text = true;
    }
    if (!has_text) return "piece " + std::to_string(pieces) + " has no text";
    ++pieces;
  }
  if (pieces == 0) return "not a SentencePiece model (no pieces)";
  return std::nullopt;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::string_view model, const std::string& label) {
    if (auto problem = sentencepiece_problem(model)) throw Error(label, *problem);
    const auto status = sp_.LoadFromSerializedProto(model);
    if (!status.ok()) throw Error(label, "not a SentencePiece model: " + status.ToString());
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
  std::vector<TokenPiece> pieces() const override {
    std::vector<TokenPiece> out(std::size_t(sp_.GetPieceSize()));
    for (int i = 0; i < sp_.GetPieceSize(); ++i) {
      auto& p = out[std::size_t(i)];
      p.text = sp_.IdToPiece(i);
      p.score = sp_.GetScore(i);
      p.type = sp_.IsUnknown(i) ? 2 : sp_.IsControl(i) ? 3 : sp_.IsUnused(i) ? 5 : sp_.IsByte(i) ? 6 : 1;
    }
    return out;
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

// llama2.c's tokenizer (run.c): pieces with scores; encoding starts from code points (with a
// dummy-prefix space and byte fallback to ids 3..258) and greedily merges the adjacent pair
// whose merged piece has the highest score (the leftmost among equals), until no pair merges.
// run.c rescans the whole sequence after every merge (O(n^2): minutes for WikiText-2); here the
// candidate pairs sit in a priority queue over a linked list of the current tokens, and stale
// entries are skipped when popped, which gives the same merges in O(n log n).
class Llama2cBpe final : public Tokenizer {
 public:
  Llama2cBpe(Llama2cTokenizer t, const std::string& label) : t_(std::move(t)) {
    // Byte fallback maps byte b to id b + 3 (<0x00> .. <0xFF> after <unk>, <s>, </s>).
    if (t_.pieces.size() < 259)
      throw Error(label, "llama2.c tokenizer has " + std::to_string(t_.pieces.size()) +
                             " pieces; it needs at least 259 (3 specials and the 256 byte pieces)");
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
    const std::size_t n = ids.size();
    constexpr std::size_t kNone = std::size_t(-1);
    std::vector<std::size_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = i == 0 ? kNone : i - 1;
      next[i] = i + 1 < n ? i + 1 : kNone;
    }
    struct Candidate {
      float score;
      std::size_t left;         // position of the left token (positions keep their order)
      int left_id, right_id, merged;
    };
    // Highest score first; the leftmost among equal scores (run.c's strict '>' scan).
    auto lower = [](const Candidate& a, const Candidate& b) {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower)> queue(lower);
    auto consider = [&](std::size_t left) {
      const std::size_t right = next[left];
      if (right == kNone) return;
      const int id = find(t_.pieces[std::size_t(ids[left])] + t_.pieces[std::size_t(ids[right])]);
      // run.c starts its best score at -1e30: lower (and NaN) scores never merge.
      if (id >= 0 && t_.scores[std::size_t(id)] > -1e30f)
        queue.push({t_.scores[std::size_t(id)], left, ids[left], ids[right], id});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) consider(i);
    std::vector<char> alive(n, 1);
    while (!queue.empty()) {
      const Candidate c = queue.top();
      queue.pop();
      // Stale unless the pair is still adjacent with the same ids (then it is the current pair).
      if (!alive[c.left] || ids[c.left] != c.left_id) continue;
      const std::size_t right = next[c.left];
      if (right == kNone || ids[right] != c.right_id) continue;
      ids[c.left] = c.merged;
      alive[right] = 0;
      next[c.left] = next[right];
      if (next[right] != kNone) prev[next[right]] = c.left;
      if (prev[c.left] != kNone) consider(prev[c.left]);
      consider(c.left);
    }
    std::vector<int> out;
    out.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
      if (alive[i]) out.push_back(ids[i]);
    return out;
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
  // In SentencePiece's convention (what llama2.c's exporter undid): U+2581 for spaces, <s>/</s>
  // for the "\n<s>\n"/"\n</s>\n" it stores, ids 3..258 byte pieces.
  std::vector<TokenPiece> pieces() const override {
    std::vector<TokenPiece> out(t_.pieces.size());
    for (std::size_t i = 0; i < out.size(); ++i) {
      auto& p = out[i];
      p.score = t_.scores[i];
      const int id = int(i);
      if (id == 0) {
        p.text = "<unk>";
        p.type = 2;
      } else if (id == bos_id() || id == eos_id()) {
        p.text = id == bos_id() ? "<s>" : "</s>";
        p.type = 3;
      } else if (id < 259) {
        p.text = t_.pieces[i];
        p.type = 6;
      } else {
        for (char c : t_.pieces[i]) p.text += c == ' ' ? std::string("\xe2\x96\x81") : std::string(1, c);
      }
    }
    return out;
  }

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
  if (!std::filesystem::exists(path)) throw Error(path, "no such file");
  return std::make_unique<SentencePieceTokenizer>(read_text_file(path), path);
}
std::unique_ptr<Tokenizer> make_sentencepiece(std::string_view model, const std::string& label) {
  return std::make_unique<SentencePieceTokenizer>(model, label);
}
std::unique_ptr<Tokenizer> load_llama2c_bpe(const std::string& path) {
  return std::make_unique<Llama2cBpe>(load_llama2c_tokenizer(path), path);
}
std::unique_ptr<Tokenizer> make_llama2c_bpe(Llama2cTokenizer pieces, const std::string& label) {
  return std::make_unique<Llama2cBpe>(std::move(pieces), label);
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  if (auto hf = load_hf_tokenizer(path)) return hf;  // *.json or a model folder
  if (std::filesystem::path(path).extension() == ".model") return load_sentencepiece(path);
  return load_llama2c_bpe(path);
}

void check_tokenizer_fits_model(const Tokenizer& tok, int model_vocab, const std::string& label) {
  if (tok.vocab_size() > model_vocab)
    throw Error(label, "the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens, more than the model's " +
                           std::to_string(model_vocab) + " embedding rows (a tokenizer of another model?)");
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
  return parse_ids(read_text_file(path), path, vocab);
}

std::vector<std::vector<int>> parse_ids(std::string_view text, const std::string& path, int vocab) {
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
