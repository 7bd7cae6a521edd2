#include "quarot/hf_tokenizer.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "bpe.hpp"
#include "quarot/atomic_file.hpp"
#include "quarot/error.hpp"
#include "quarot/json_limits.hpp"
#include "text.hpp"

namespace quarot {

namespace fs = std::filesystem;
using nlohmann::json;
using tok::BpeModel;

namespace {

// Untrusted files: nlohmann's parser recurses once per nesting level, so the depth is checked
// first (base's JSON limits: brackets outside strings); real tokenizer.json files nest 6 deep.
// Sizes are bounded too (the largest real tokenizer.json files are ~35 MB).
constexpr DocumentLimits kTokenizerJsonLimits{.max_depth = 64, .max_bytes = uint64_t(1) << 30};
constexpr int kMaxTokenId = 1 << 24;

json parse_json(std::string_view text, const std::string& name) {
  check_json_limits(text, name, kTokenizerJsonLimits);
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw Error(name, std::string("not valid JSON: ") + e.what());
  }
}

// Field access that names the file and the field in every error.
struct Doc {
  std::string name;  // the file
  [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
    throw Error(name, field + ": " + problem);
  }
  const json& get(const json& obj, const std::string& where, const char* key) const {
    if (!obj.is_object()) fail(where, "expected an object");
    auto it = obj.find(key);
    if (it == obj.end()) fail(where.empty() ? key : where + "." + key, "missing");
    return *it;
  }
  const json* opt(const json& obj, const char* key) const {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    return it == obj.end() || it->is_null() ? nullptr : &*it;
  }
  std::string str(const json& v, const std::string& where) const {
    if (!v.is_string()) fail(where, "expected a string");
    return v.get<std::string>();
  }
  bool boolean(const json& obj, const std::string& where, const char* key, bool dflt) const {
    const json* v = opt(obj, key);
    if (!v) return dflt;
    if (!v->is_boolean()) fail(where + "." + key, "expected true or false");
    return v->get<bool>();
  }
  long long integer(const json& v, const std::string& where, long long lo, long long hi) const {
    if (!v.is_number_integer()) fail(where, "expected an integer");
    const long long x = v.get<long long>();
    if (x < lo || x > hi) fail(where, std::to_string(x) + " out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
  }
  std::string type(const json& obj, const std::string& where) const { return str(get(obj, where, "type"), where + ".type"); }
};

std::string unsupported(const std::string& what, const std::string& type, const char* supported) {
  return what + " '" + type + "' is not supported (supported: " + supported + ")";
}

// ---------------------------------------------------------------------------------------------
// Pattern of Split / Replace: {"String": s} (literal) or {"Regex": r}.
std::shared_ptr<tok::Regex> compile_pattern(const Doc& d, const json& node, const std::string& where) {
  const json& p = d.get(node, where, "pattern");
  try {
    if (const json* s = d.opt(p, "String")) return std::make_shared<tok::Regex>(d.str(*s, where + ".pattern.String"), true);
    if (const json* r = d.opt(p, "Regex")) return std::make_shared<tok::Regex>(d.str(*r, where + ".pattern.Regex"), false);
  } catch (const std::runtime_error& e) {
    if (dynamic_cast<const Error*>(&e)) throw;
    d.fail(where + ".pattern", e.what());
  }
  d.fail(where + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
}

using Ranges = std::vector<std::pair<std::size_t, std::size_t>>;

void replace_all(std::string& s, const tok::Regex& re, const std::string& content) {
  Ranges m;
  re.find_all(s, m);
  if (m.empty()) return;
  std::string out;
  out.reserve(s.size() + m.size() * content.size());
  std::size_t at = 0;
  for (auto [b, e] : m) {
    out.append(s, at, b - at);
    out += content;
    at = e;
  }
  out.append(s, at, std::string::npos);
  s = std::move(out);
}

// ---------------------------------------------------------------------------------------------
// Normalizers.
struct Normalizer {
  virtual ~Normalizer() = default;
  virtual void apply(std::string& s) const = 0;
};
struct UnicodeNormalizer final : Normalizer {
  tok::NormalForm form;
  explicit UnicodeNormalizer(tok::NormalForm f) : form(f) {}
  void apply(std::string& s) const override { s = tok::normalize_unicode(s, form); }
};
struct PrependNormalizer final : Normalizer {
  std::string prefix;
  void apply(std::string& s) const override {
    if (!s.empty()) s.insert(0, prefix);
  }
};
struct ReplaceNormalizer final : Normalizer {
  std::shared_ptr<tok::Regex> pattern;
  std::string content;
  void apply(std::string& s) const override { replace_all(s, *pattern, content); }
};
struct LowercaseNormalizer final : Normalizer {
  void apply(std::string& s) const override { s = tok::lowercase_unicode(s); }
};
struct StripNormalizer final : Normalizer {
  bool left = false, right = false;
  void apply(std::string& s) const override {
    std::size_t b = 0, e = s.size();
    if (left)
      for (std::size_t i = 0; i < s.size();) {
        if (!tok::is_unicode_whitespace(tok::utf8_next(s, i))) break;
        b = i;
      }
    if (right) {
      std::size_t i = b, last_non_ws = b;
      while (i < s.size())
        if (!tok::is_unicode_whitespace(tok::utf8_next(s, i))) last_non_ws = i;
      e = last_non_ws;
    }
    s = s.substr(b, e - b);
  }
};
struct SequenceNormalizer final : Normalizer {
  std::vector<std::unique_ptr<Normalizer>> parts;
  void apply(std::string& s) const override {
    for (const auto& p : parts) p->apply(s);
  }
};

std::unique_ptr<Normalizer> make_normalizer(const Doc& d, const json& n, const std::string& where) {
  const std::string t = d.type(n, where);
  if (t == "Sequence") {
    auto seq = std::make_unique<SequenceNormalizer>();
    const json& list = d.get(n, where, "normalizers");
    if (!list.is_array()) d.fail(where + ".normalizers", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      seq->parts.push_back(make_normalizer(d, list[i], where + ".normalizers[" + std::to_string(i) + "]"));
    return seq;
  }
  if (t == "NFC") return std::make_unique<UnicodeNormalizer>(tok::NormalForm::NFC);
  if (t == "NFD") return std::make_unique<UnicodeNormalizer>(tok::NormalForm::NFD);
  if (t == "NFKC") return std::make_unique<UnicodeNormalizer>(tok::NormalForm::NFKC);
  if (t == "NFKD") return std::make_unique<UnicodeNormalizer>(tok::NormalForm::NFKD);
  if (t == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (t == "Prepend") {
    auto p = std::make_unique<PrependNormalizer>();
    p->prefix = d.str(d.get(n, where, "prepend"), where + ".prepend");
    return p;
  }
  if (t == "Replace") {
    auto r = std::make_unique<ReplaceNormalizer>();
    r->pattern = compile_pattern(d, n, where);
    r->content = d.str(d.get(n, where, "content"), where + ".content");
    return r;
  }
  if (t == "Strip") {
    auto s = std::make_unique<StripNormalizer>();
    s->left = d.boolean(n, where, "strip_left", false);
    s->right = d.boolean(n, where, "strip_right", false);
    return s;
  }
  d.fail(where + ".type", unsupported("normalizer", t, "Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip"));
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers: each turns the current pieces into finer ones.
struct Piece {
  std::string text;
  bool first;  // starts at offset 0 of the original text (Metaspace's prepend_scheme "first")
};
using Pieces = std::vector<Piece>;

struct PreTokenizer {
  virtual ~PreTokenizer() = default;
  virtual void apply(Pieces& pieces) const = 0;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// HF's NormalizedString::split: the matches and the gaps between them, combined by `behavior`.
void split_by(const Piece& piece, const Ranges& matches, bool invert, SplitBehavior behavior, Pieces& out) {
  const std::string& s = piece.text;
  struct Seg {
    std::size_t b, e;
    bool match;
  };
  std::vector<Seg> segs;
  std::size_t prev = 0;
  for (auto [b, e] : matches) {
    if (b > prev) segs.push_back({prev, b, false});
    segs.push_back({b, e, true});
    prev = e;
  }
  if (prev < s.size()) segs.push_back({prev, s.size(), false});
  if (invert)
    for (auto& g : segs) g.match = !g.match;
  std::vector<std::pair<std::size_t, std::size_t>> kept;
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const auto& g : segs) kept.emplace_back(g.b, g.e);
      break;
    case SplitBehavior::Removed:
      for (const auto& g : segs)
        if (!g.match) kept.emplace_back(g.b, g.e);
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const auto& g : segs) {
        if (g.match && !prev_match && !kept.empty()) kept.back().second = g.e;
        else kept.emplace_back(g.b, g.e);
        prev_match = g.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !prev_match && !kept.empty()) kept.back().first = it->b;
        else kept.emplace_back(it->b, it->e);
        prev_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (const auto& g : segs) {
        if (g.match && prev_match && !kept.empty()) kept.back().second = g.e;
        else kept.emplace_back(g.b, g.e);
        prev_match = g.match;
      }
      break;
    }
  }
  for (auto [b, e] : kept)
    if (e > b) out.push_back(Piece{s.substr(b, e - b), piece.first && b == 0});
}

struct SplitPreTokenizer final : PreTokenizer {
  std::shared_ptr<tok::Regex> pattern;
  bool invert = false;
  SplitBehavior behavior = SplitBehavior::Isolated;
  void apply(Pieces& pieces) const override {
    Pieces out;
    out.reserve(pieces.size() * 2);
    Ranges m;
    for (const auto& p : pieces) {
      m.clear();
      pattern->find_all(p.text, m);
      split_by(p, m, invert, behavior, out);
    }
    pieces = std::move(out);
  }
};

// GPT-2's split, used by ByteLevel with use_regex.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// Qwen2's split (its slow tokenizer's pattern, also in Qwen's tokenizer.json).
constexpr const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct ByteLevelPreTokenizer final : PreTokenizer {
  bool add_prefix_space = false;
  std::shared_ptr<tok::Regex> gpt2;  // when use_regex
  void apply(Pieces& pieces) const override {
    Pieces split;
    Ranges m;
    for (auto& p : pieces) {
      if (add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (gpt2) {
        m.clear();
        gpt2->find_all(p.text, m);
        split_by(p, m, false, SplitBehavior::Isolated, split);
      } else {
        split.push_back(std::move(p));
      }
    }
    for (auto& p : split) {
      std::string enc;
      enc.reserve(p.text.size() * 2);
      tok::byte_level_encode(p.text, enc);
      p.text = std::move(enc);
    }
    pieces = std::move(split);
  }
};

enum class PrependScheme { Always, First, Never };

struct MetaspacePreTokenizer final : PreTokenizer {
  std::string replacement;  // one character, as UTF-8
  PrependScheme scheme = PrependScheme::Always;
  bool split = true;
  std::shared_ptr<tok::Regex> space, repl;
  void apply(Pieces& pieces) const override {
    Pieces out;
    Ranges m;
    for (auto& p : pieces) {
      replace_all(p.text, *space, replacement);
      const bool starts = p.text.compare(0, replacement.size(), replacement) == 0;
      if (!starts && (scheme == PrependScheme::Always || (scheme == PrependScheme::First && p.first)))
        p.text.insert(0, replacement);
      if (split) {
        m.clear();
        repl->find_all(p.text, m);
        split_by(p, m, false, SplitBehavior::MergedWithNext, out);
      } else {
        out.push_back(std::move(p));
      }
    }
    pieces = std::move(out);
  }
};

struct SequencePreTokenizer final : PreTokenizer {
  std::vector<std::unique_ptr<PreTokenizer>> parts;
  void apply(Pieces& pieces) const override {
    for (const auto& p : parts) p->apply(pieces);
  }
};

SplitBehavior parse_behavior(const Doc& d, const json& n, const std::string& where) {
  const std::string b = d.str(d.get(n, where, "behavior"), where + ".behavior");
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  d.fail(where + ".behavior", unsupported("split behavior", b, "Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous"));
}

std::unique_ptr<PreTokenizer> regex_split(const char* pattern, bool invert, SplitBehavior b) {
  auto s = std::make_unique<SplitPreTokenizer>();
  s->pattern = std::make_shared<tok::Regex>(pattern, false);
  s->invert = invert;
  s->behavior = b;
  return s;
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Doc& d, const json& n, const std::string& where) {
  const std::string t = d.type(n, where);
  if (t == "Sequence") {
    auto seq = std::make_unique<SequencePreTokenizer>();
    const json& list = d.get(n, where, "pretokenizers");
    if (!list.is_array()) d.fail(where + ".pretokenizers", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      seq->parts.push_back(make_pre_tokenizer(d, list[i], where + ".pretokenizers[" + std::to_string(i) + "]"));
    return seq;
  }
  if (t == "Split") {
    auto s = std::make_unique<SplitPreTokenizer>();
    s->pattern = compile_pattern(d, n, where);
    s->invert = d.boolean(n, where, "invert", false);
    s->behavior = parse_behavior(d, n, where);
    return s;
  }
  if (t == "ByteLevel") {
    auto b = std::make_unique<ByteLevelPreTokenizer>();
    b->add_prefix_space = d.boolean(n, where, "add_prefix_space", true);
    if (d.boolean(n, where, "use_regex", true)) b->gpt2 = std::make_shared<tok::Regex>(kGpt2Pattern, false);
    return b;
  }
  if (t == "Metaspace") {
    auto m = std::make_unique<MetaspacePreTokenizer>();
    m->replacement = d.str(d.get(n, where, "replacement"), where + ".replacement");
    std::size_t i = 0;
    if (m->replacement.empty() || (tok::utf8_next(m->replacement, i), i != m->replacement.size()))
      d.fail(where + ".replacement", "expected one character");
    if (const json* ps = d.opt(n, "prepend_scheme")) {
      const std::string s = d.str(*ps, where + ".prepend_scheme");
      if (s == "always") m->scheme = PrependScheme::Always;
      else if (s == "first") m->scheme = PrependScheme::First;
      else if (s == "never") m->scheme = PrependScheme::Never;
      else d.fail(where + ".prepend_scheme", unsupported("prepend_scheme", s, "always, first, never"));
    } else {
      m->scheme = d.boolean(n, where, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
    }
    m->split = d.boolean(n, where, "split", true);
    m->space = std::make_shared<tok::Regex>(" ", true);
    m->repl = std::make_shared<tok::Regex>(m->replacement, true);
    return m;
  }
  if (t == "Digits") {
    const bool individual = d.boolean(n, where, "individual_digits", false);
    return regex_split(individual ? R"(\p{N})" : R"(\p{N}+)", false, SplitBehavior::Isolated);
  }
  if (t == "Whitespace") return regex_split(R"(\w+|[^\w\s]+)", true, SplitBehavior::Removed);
  if (t == "WhitespaceSplit") return regex_split(R"(\s+)", false, SplitBehavior::Removed);
  d.fail(where + ".type", unsupported("pre-tokenizer", t, "Sequence, Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit"));
}

// ---------------------------------------------------------------------------------------------
// Decoders: a chain over the tokens' strings (the crate's decode_chain), joined at the end.
struct Decoder {
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string>& tokens) const = 0;
};
struct ByteLevelDecoder final : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens) {
      // A token with a character outside the byte-level alphabet (an added token) is kept as is.
      const std::size_t mark = bytes.size();
      bool all = true;
      for (std::size_t i = 0; i < t.size() && all;) {
        const int b = tok::unicode_to_byte(tok::utf8_next(t, i));
        if (b < 0) all = false;
        else bytes.push_back(char(b));
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, tok::utf8_lossy(bytes));
  }
};
struct MetaspaceDecoder final : Decoder {
  std::string replacement;
  bool strip_first = true;  // prepend_scheme != never
  void apply(std::vector<std::string>& tokens) const override {
    for (std::size_t k = 0; k < tokens.size(); ++k) {
      std::string out;
      const std::string& t = tokens[k];
      for (std::size_t i = 0; i < t.size();) {
        if (t.compare(i, replacement.size(), replacement) == 0) {
          if (!(k == 0 && strip_first)) out.push_back(' ');
          i += replacement.size();
        } else {
          out.push_back(t[i++]);
        }
      }
      tokens[k] = std::move(out);
    }
  }
};
struct ReplaceDecoder final : Decoder {
  std::shared_ptr<tok::Regex> pattern;
  std::string content;
  void apply(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) replace_all(t, *pattern, content);
  }
};
struct ByteFallbackDecoder final : Decoder {
  static int byte_of(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; ++i) {
      const char c = t[i];
      const int h = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (h < 0) return -1;
      v = v * 16 + h;
    }
    return v;
  }
  void apply(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (tok::utf8_invalid_at(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (std::size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (auto& t : tokens) {
      const int b = byte_of(t);
      if (b >= 0) {
        pending.push_back(char(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens = std::move(out);
  }
};
struct FuseDecoder final : Decoder {
  void apply(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};
struct StripDecoder final : Decoder {
  std::string content;  // one character
  std::size_t start = 0, stop = 0;
  void apply(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::size_t b = 0, e = t.size();
      for (std::size_t k = 0; k < start && t.compare(b, content.size(), content) == 0 && b < e; ++k) b += content.size();
      for (std::size_t k = 0; k < stop && e >= b + content.size() && t.compare(e - content.size(), content.size(), content) == 0; ++k)
        e -= content.size();
      t = t.substr(b, e - b);
    }
  }
};
struct SequenceDecoder final : Decoder {
  std::vector<std::unique_ptr<Decoder>> parts;
  void apply(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts) p->apply(tokens);
  }
};

std::unique_ptr<Decoder> make_decoder(const Doc& d, const json& n, const std::string& where) {
  const std::string t = d.type(n, where);
  if (t == "Sequence") {
    auto seq = std::make_unique<SequenceDecoder>();
    const json& list = d.get(n, where, "decoders");
    if (!list.is_array()) d.fail(where + ".decoders", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i)
      seq->parts.push_back(make_decoder(d, list[i], where + ".decoders[" + std::to_string(i) + "]"));
    return seq;
  }
  if (t == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (t == "Fuse") return std::make_unique<FuseDecoder>();
  if (t == "Replace") {
    auto r = std::make_unique<ReplaceDecoder>();
    r->pattern = compile_pattern(d, n, where);
    r->content = d.str(d.get(n, where, "content"), where + ".content");
    return r;
  }
  if (t == "Strip") {
    auto s = std::make_unique<StripDecoder>();
    s->content = d.str(d.get(n, where, "content"), where + ".content");
    if (s->content.empty()) d.fail(where + ".content", "expected one character");
    s->start = std::size_t(d.integer(d.get(n, where, "start"), where + ".start", 0, 1 << 20));
    s->stop = std::size_t(d.integer(d.get(n, where, "stop"), where + ".stop", 0, 1 << 20));
    return s;
  }
  if (t == "Metaspace") {
    auto m = std::make_unique<MetaspaceDecoder>();
    m->replacement = d.str(d.get(n, where, "replacement"), where + ".replacement");
    if (m->replacement.empty()) d.fail(where + ".replacement", "expected one character");
    if (const json* ps = d.opt(n, "prepend_scheme")) m->strip_first = d.str(*ps, where + ".prepend_scheme") != "never";
    else m->strip_first = d.boolean(n, where, "add_prefix_space", true);
    return m;
  }
  d.fail(where + ".type", unsupported("decoder", t, "Sequence, ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace"));
}

// ---------------------------------------------------------------------------------------------
// Added tokens, matched before the model: leftmost-longest over the set (the crate's
// aho-corasick), then lstrip / rstrip / single_word as the crate applies them.
struct AddedToken {
  int id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

class AddedMatcher {
 public:
  void add(std::string pattern, const AddedToken* token) {
    if (pattern.empty()) return;
    auto& list = by_first_[static_cast<unsigned char>(pattern[0])];
    list.push_back({std::move(pattern), token});
    any_ = true;
  }
  void finish() {
    for (auto& l : by_first_)
      std::stable_sort(l.begin(), l.end(), [](const Entry& a, const Entry& b) { return a.pattern.size() > b.pattern.size(); });
  }
  bool empty() const { return !any_; }
  struct Segment {
    std::size_t b, e;
    int id;  // -1: text for the next stage
  };
  // Splits `s` into added-token matches and the text between them.
  void split(const std::string& s, std::vector<Segment>& out) const {
    out.clear();
    std::size_t prev_stop = 0;
    std::size_t i = 0;
    while (i < s.size()) {
      const auto& cands = by_first_[static_cast<unsigned char>(s[i])];
      const Entry* hit = nullptr;
      for (const auto& c : cands)
        if (s.compare(i, c.pattern.size(), c.pattern) == 0) {
          hit = &c;
          break;
        }
      if (!hit) {
        ++i;
        continue;
      }
      std::size_t start = i, stop = i + hit->pattern.size();
      i = stop;
      const AddedToken& t = *hit->token;
      if (t.single_word) {
        const bool start_ok = start == 0 || !ends_with_word(s, start);
        const bool stop_ok = stop == s.size() || !starts_with_word(s, stop);
        if (!start_ok || !stop_ok) continue;
      }
      if (t.lstrip) {
        std::size_t ns = start;
        while (ns > 0) {
          std::size_t k = ns - 1;
          while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
          std::size_t j = k;
          if (!tok::is_unicode_whitespace(tok::utf8_next(s, j))) break;
          ns = k;
        }
        start = std::max(ns, prev_stop);
      }
      if (t.rstrip) {
        while (stop < s.size()) {
          std::size_t j = stop;
          if (!tok::is_unicode_whitespace(tok::utf8_next(s, j))) break;
          stop = j;
        }
        i = std::max(i, stop);
      }
      if (start > prev_stop) out.push_back({prev_stop, start, -1});
      out.push_back({start, stop, t.id});
      prev_stop = stop;
    }
    if (prev_stop < s.size()) out.push_back({prev_stop, s.size(), -1});
  }

 private:
  static bool is_word_char(char32_t c) {
    if (c == '_') return true;
    const auto cat = utf8proc_category(utf8proc_int32_t(c));
    return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) || (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
  }
  static bool ends_with_word(const std::string& s, std::size_t end) {
    std::size_t k = end - 1;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    return is_word_char(tok::utf8_next(s, k));
  }
  static bool starts_with_word(const std::string& s, std::size_t at) { return is_word_char(tok::utf8_next(s, at)); }
  struct Entry {
    std::string pattern;
    const AddedToken* token;
  };
  std::vector<Entry> by_first_[256];
  bool any_ = false;
};

std::string cleanup_spaces(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {{" .", "."},   {" ?", "?"},     {" !", "!"},   {" ,", ","},
                                                               {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"},
                                                               {" 've", "'ve"}, {" 're", "'re"}};
  for (auto [from, to] : kRules) {
    const std::string f = from, t = to;
    std::string out;
    std::size_t at = 0;
    for (std::size_t hit; (hit = s.find(f, at)) != std::string::npos; at = hit + f.size()) out.append(s, at, hit - at).append(t);
    out.append(s, at, std::string::npos);
    s = std::move(out);
  }
  return s;
}

std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
struct HfTokenizer::Impl {
  std::string source;  // what kind() reports
  std::string file;    // the file (tokenizer.json) or folder (vocab.json + merges.txt) it came from
  BpeModel model;
  std::vector<AddedToken> added;
  std::unordered_map<int, std::size_t> added_by_id;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Decoder> decoder;
  AddedMatcher raw_matcher, normalized_matcher;
  std::vector<int> prefix, suffix;  // what the post-processor puts around a single sequence
  std::string policy_source;        // which setting decided prefix/suffix
  int bos = -1, eos = -1, vocab = 0;
  bool cleanup = false;
  std::string normalizer_json, pre_tokenizer_json, decoder_json;  // for vocabulary()

  void finish() {
    model.finish();
    vocab = int(model.id_to_piece.size());
    for (std::size_t i = 0; i < added.size(); ++i) {
      added_by_id[added[i].id] = i;
      vocab = std::max(vocab, added[i].id + 1);
    }
    for (const auto& t : added) {
      if (!t.normalized) {
        raw_matcher.add(t.content, &t);
      } else {
        std::string n = t.content;  // the crate matches normalized tokens by their normalized form
        if (normalizer) normalizer->apply(n);
        normalized_matcher.add(std::move(n), &t);
      }
    }
    raw_matcher.finish();
    normalized_matcher.finish();
  }

  std::optional<int> find(std::string_view piece) const {
    for (const auto& t : added)
      if (t.content == piece) return t.id;
    if (auto it = model.vocab.find(piece); it != model.vocab.end()) return it->second;
    return std::nullopt;
  }

  void model_pieces(Pieces& pieces, std::unordered_map<std::string, std::vector<int>>& cache, std::vector<int>& out) const {
    if (pre_tokenizer) pre_tokenizer->apply(pieces);
    for (const auto& p : pieces) {
      if (p.text.size() > 256) {  // long words (whole texts without a pre-tokenizer) are not cached
        model.tokenize(p.text, out);
        continue;
      }
      auto it = cache.find(p.text);
      if (it == cache.end()) {
        std::vector<int> ids;
        model.tokenize(p.text, ids);
        it = cache.emplace(p.text, std::move(ids)).first;
      }
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
  }

  std::vector<int> encode(const std::string& text) const {
    if (const auto bad = tok::utf8_invalid_at(text); bad != std::string::npos)
      throw Error("text", "not valid UTF-8 (byte " + std::to_string(bad) + ")");
    std::vector<int> out;
    out.reserve(text.size() / 3 + 8);
    std::unordered_map<std::string, std::vector<int>> cache;
    std::vector<AddedMatcher::Segment> raw, norm;
    raw_matcher.split(text, raw);
    if (raw_matcher.empty()) raw.assign(1, {0, text.size(), -1});
    for (const auto& seg : raw) {
      if (seg.id >= 0) {
        out.push_back(seg.id);
        continue;
      }
      std::string piece = text.substr(seg.b, seg.e - seg.b);
      if (normalizer) normalizer->apply(piece);
      if (normalized_matcher.empty()) norm.assign(1, {0, piece.size(), -1});
      else normalized_matcher.split(piece, norm);
      for (const auto& sub : norm) {
        if (sub.id >= 0) {
          out.push_back(sub.id);
          continue;
        }
        if (sub.e == sub.b) continue;
        Pieces pieces;
        pieces.push_back(Piece{piece.substr(sub.b, sub.e - sub.b), seg.b == 0 && sub.b == 0});
        model_pieces(pieces, cache, out);
      }
    }
    return out;
  }

  std::string decode(std::span<const int> ids, bool skip_special) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int id : ids) {
      if (auto it = added_by_id.find(id); it != added_by_id.end()) {
        const auto& t = added[it->second];
        if (!(skip_special && t.special)) tokens.push_back(t.content);
        continue;
      }
      if (id < 0 || id >= int(model.id_to_piece.size()) || model.id_to_piece[id].empty())
        throw Error("token ids", "id " + std::to_string(id) + " is outside the vocabulary (" + std::to_string(vocab) + ")");
      tokens.push_back(model.id_to_piece[id]);
    }
    if (!decoder) {
      std::string out;
      for (std::size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
      return out;
    }
    decoder->apply(tokens);
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }
};

HfTokenizer::HfTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HfTokenizer::~HfTokenizer() = default;
std::vector<int> HfTokenizer::encode(const std::string& text) const { return impl_->encode(text); }
std::vector<int> HfTokenizer::encode_with_special(const std::string& text) const {
  std::vector<int> ids = impl_->prefix;
  const auto body = impl_->encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  return ids;
}
std::string HfTokenizer::decode(std::span<const int> ids) const { return impl_->decode(ids, false); }
std::string HfTokenizer::decode(std::span<const int> ids, bool skip_special_tokens, bool clean_up_spaces) const {
  std::string s = impl_->decode(ids, skip_special_tokens);
  return clean_up_spaces ? cleanup_spaces(std::move(s)) : s;
}
bool HfTokenizer::clean_up_spaces_default() const { return impl_->cleanup; }
int HfTokenizer::vocab_size() const { return impl_->vocab; }
int HfTokenizer::bos_id() const { return impl_->bos; }
int HfTokenizer::eos_id() const { return impl_->eos; }
std::string HfTokenizer::kind() const { return impl_->source; }
std::string HfTokenizer::special_policy() const {
  auto names = [&](const std::vector<int>& ids) {
    std::string s;
    for (int id : ids) s += (s.empty() ? "" : ", ") + std::to_string(id) + " " + id_to_token(id);
    return s;
  };
  std::string s;
  if (!impl_->prefix.empty()) s += names(impl_->prefix) + " in front";
  if (!impl_->suffix.empty()) s += (s.empty() ? "" : ", ") + names(impl_->suffix) + " at the end";
  if (s.empty()) s = "nothing";
  return s + " (" + impl_->policy_source + ")";
}
std::optional<int> HfTokenizer::token_to_id(std::string_view piece) const { return impl_->find(piece); }
std::string HfTokenizer::id_to_token(int id) const {
  if (auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) return impl_->added[it->second].content;
  if (id >= 0 && id < int(impl_->model.id_to_piece.size())) return impl_->model.id_to_piece[id];
  return {};
}

HfTokenizer::Vocabulary HfTokenizer::vocabulary() const {
  const Impl& m = *impl_;
  Vocabulary v;
  v.pieces = m.model.id_to_piece;
  v.merge_ids = m.model.merges_by_rank();
  for (const auto& [a, b] : v.merge_ids) v.merges.push_back(m.model.id_to_piece[std::size_t(a)] + " " + m.model.id_to_piece[std::size_t(b)]);
  for (const auto& t : m.added) v.added.push_back({t.id, t.content, t.special});
  v.normalizer = m.normalizer_json;
  v.pre_tokenizer = m.pre_tokenizer_json;
  v.decoder = m.decoder_json;
  v.byte_fallback = m.model.byte_fallback;
  v.ignore_merges = m.model.ignore_merges;
  v.unk = m.model.unk_id;
  v.file = m.file;
  v.prefix = m.prefix;
  v.suffix = m.suffix;
  return v;
}

namespace {

void read_vocab(const Doc& d, const json& v, const std::string& where, BpeModel& m) {
  if (!v.is_object()) d.fail(where, "expected an object {piece: id}");
  m.vocab.reserve(v.size());
  int max_id = -1;
  for (auto it = v.begin(); it != v.end(); ++it) {
    const json& value = it.value();
    const bool ok = value.is_number_integer() && value.get<long long>() >= 0 && value.get<long long>() <= kMaxTokenId;
    const int id = ok ? int(value.get<long long>()) : int(d.integer(value, where + "['" + it.key() + "']", 0, kMaxTokenId));
    m.vocab[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  m.id_to_piece.assign(std::size_t(max_id + 1), std::string());
  for (const auto& [piece, id] : m.vocab) m.id_to_piece[std::size_t(id)] = piece;
}

void read_merges(const Doc& d, const json& v, const std::string& where, BpeModel& m) {
  if (!v.is_array()) d.fail(where, "expected an array");
  m.reserve_merges(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    const auto at = [&] { return where + "[" + std::to_string(i) + "]"; };  // built only for an error
    const json& e = v[i];
    if (e.is_string()) {
      const auto& s = e.get_ref<const std::string&>();
      const auto sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) d.fail(at(), "expected \"a b\"");
      if (!m.add_merge(std::string_view(s).substr(0, sp), std::string_view(s).substr(sp + 1), int(i)))
        d.fail(at(), "merge '" + s + "' uses a piece that is not in the vocabulary");
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      const auto &a = e[0].get_ref<const std::string&>(), &b = e[1].get_ref<const std::string&>();
      if (!m.add_merge(a, b, int(i))) d.fail(at(), "merge '" + a + " " + b + "' uses a piece that is not in the vocabulary");
    } else {
      d.fail(at(), "expected \"a b\" or [\"a\", \"b\"]");
    }
  }
}

// tokenizer_config.json: the settings transformers layers over the tokenizer.
struct TokenizerConfig {
  bool present = false;
  std::string name, tokenizer_class, bos_token, eos_token;
  std::optional<bool> add_bos, add_eos, add_prefix_space;
  bool cleanup = false;
  json added_tokens_decoder;
};

TokenizerConfig read_config(std::string_view text, const std::string& name) {
  TokenizerConfig c;
  if (text.empty()) return c;
  c.present = true;
  c.name = name;
  const json j = parse_json(text, name);
  const Doc d{name};
  if (!j.is_object()) d.fail("(top level)", "expected an object");
  if (const json* v = d.opt(j, "tokenizer_class")) c.tokenizer_class = d.str(*v, "tokenizer_class");
  if (const json* v = d.opt(j, "bos_token")) c.bos_token = token_content(*v);
  if (const json* v = d.opt(j, "eos_token")) c.eos_token = token_content(*v);
  if (d.opt(j, "add_bos_token")) c.add_bos = d.boolean(j, "", "add_bos_token", false);
  if (d.opt(j, "add_eos_token")) c.add_eos = d.boolean(j, "", "add_eos_token", false);
  if (d.opt(j, "add_prefix_space")) c.add_prefix_space = d.boolean(j, "", "add_prefix_space", false);
  c.cleanup = d.boolean(j, "", "clean_up_tokenization_spaces", false);
  if (const json* v = d.opt(j, "added_tokens_decoder")) c.added_tokens_decoder = *v;
  return c;
}

AddedToken read_added_token(const Doc& d, const json& t, const std::string& where, bool with_id) {
  AddedToken a;
  if (with_id) a.id = int(d.integer(d.get(t, where, "id"), where + ".id", 0, kMaxTokenId));
  a.content = d.str(d.get(t, where, "content"), where + ".content");
  a.special = d.boolean(t, where, "special", false);
  a.single_word = d.boolean(t, where, "single_word", false);
  a.lstrip = d.boolean(t, where, "lstrip", false);
  a.rstrip = d.boolean(t, where, "rstrip", false);
  a.normalized = d.boolean(t, where, "normalized", !a.special);
  return a;
}

// BOS/EOS and what encode_with_special adds, from the post-processor and the config.
void settle_specials(HfTokenizer::Impl& impl, const TokenizerConfig& cfg) {
  auto id_of = [&](const std::string& s) -> int {
    if (s.empty()) return -1;
    auto id = impl.find(s);
    return id ? *id : -1;
  };
  const bool llama_class = cfg.tokenizer_class.rfind("LlamaTokenizer", 0) == 0 || cfg.tokenizer_class.rfind("CodeLlamaTokenizer", 0) == 0;
  if (cfg.present && llama_class && (cfg.add_bos || cfg.add_eos)) {
    // transformers' LlamaTokenizerFast rebuilds the post-processor from these two settings.
    impl.prefix.clear();
    impl.suffix.clear();
    if (cfg.add_bos.value_or(true) && id_of(cfg.bos_token) >= 0) impl.prefix.push_back(id_of(cfg.bos_token));
    if (cfg.add_eos.value_or(false) && id_of(cfg.eos_token) >= 0) impl.suffix.push_back(id_of(cfg.eos_token));
    impl.policy_source = fs::path(cfg.name).filename().string() + " add_bos_token/add_eos_token";
  }
  impl.bos = !impl.prefix.empty() ? impl.prefix.front() : id_of(cfg.bos_token);
  impl.eos = id_of(cfg.eos_token);
  if (impl.eos < 0 && !impl.suffix.empty()) impl.eos = impl.suffix.back();
  impl.cleanup = cfg.cleanup;
}

void read_post_processor(const Doc& d, const json& n, const std::string& where, HfTokenizer::Impl& impl) {
  const std::string t = d.type(n, where);
  if (t == "Sequence") {
    const json& list = d.get(n, where, "processors");
    if (!list.is_array()) d.fail(where + ".processors", "expected an array");
    for (std::size_t i = 0; i < list.size(); ++i) read_post_processor(d, list[i], where + ".processors[" + std::to_string(i) + "]", impl);
    return;
  }
  if (t == "ByteLevel") return;  // offsets only
  if (t == "TemplateProcessing") {
    const json& single = d.get(n, where, "single");
    const json& specials = d.get(n, where, "special_tokens");
    if (!single.is_array()) d.fail(where + ".single", "expected an array");
    std::vector<int> before, after;
    bool seen_a = false;
    for (std::size_t i = 0; i < single.size(); ++i) {
      const std::string at = where + ".single[" + std::to_string(i) + "]";
      if (const json* st = d.opt(single[i], "SpecialToken")) {
        const std::string name = d.str(d.get(*st, at + ".SpecialToken", "id"), at + ".SpecialToken.id");
        if (!specials.is_object() || !specials.contains(name)) d.fail(at, "special token '" + name + "' not in special_tokens");
        const json& ids = d.get(specials[name], where + ".special_tokens['" + name + "']", "ids");
        if (!ids.is_array()) d.fail(where + ".special_tokens['" + name + "'].ids", "expected an array");
        for (const auto& id : ids)
          (seen_a ? after : before).push_back(int(d.integer(id, where + ".special_tokens['" + name + "'].ids", 0, kMaxTokenId)));
      } else if (d.opt(single[i], "Sequence")) {
        seen_a = true;
      } else {
        d.fail(at, "expected SpecialToken or Sequence");
      }
    }
    impl.prefix = std::move(before);
    impl.suffix = std::move(after);
    impl.policy_source = "post_processor TemplateProcessing";
    return;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    auto id_of = [&](const char* key) {
      const json& p = d.get(n, where, key);
      if (!p.is_array() || p.size() != 2) d.fail(where + "." + key, "expected [token, id]");
      return int(d.integer(p[1], where + "." + key + "[1]", 0, kMaxTokenId));
    };
    impl.prefix = {id_of("cls")};
    impl.suffix = {id_of("sep")};
    impl.policy_source = "post_processor " + t;
    return;
  }
  d.fail(where + ".type", unsupported("post-processor", t, "Sequence, ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing"));
}

std::string config_beside(const std::string& path) {
  const fs::path p(path);
  std::string file = p.filename().string();
  const std::string tail = "tokenizer.json";
  if (file.size() < tail.size() || file.compare(file.size() - tail.size(), tail.size(), tail) != 0) return {};
  file.replace(file.size() - tail.size(), tail.size(), "tokenizer_config.json");
  const fs::path c = p.parent_path() / file;
  return fs::exists(c) ? c.string() : std::string();
}

}  // namespace

std::unique_ptr<HfTokenizer> parse_hf_tokenizer_json(std::string_view text, const std::string& name, std::string_view config_json) {
  const json j = parse_json(text, name);
  const Doc d{name};
  if (!j.is_object()) d.fail("(top level)", "expected an object");
  auto impl = std::make_unique<HfTokenizer::Impl>();
  std::string config_name = name;  // X.tokenizer.json -> X.tokenizer_config.json
  if (const auto at = config_name.rfind("tokenizer.json"); at != std::string::npos) config_name.replace(at, 14, "tokenizer_config.json");
  const TokenizerConfig cfg = read_config(config_json, config_name);

  const json& m = d.get(j, "", "model");
  std::string model_type = "BPE";
  if (const json* t = d.opt(m, "type")) model_type = d.str(*t, "model.type");
  else if (!d.opt(m, "merges")) d.fail("model.type", "missing");
  if (model_type != "BPE") d.fail("model.type", unsupported("model", model_type, "BPE"));
  if (const json* dr = d.opt(m, "dropout"); dr && !(dr->is_number() && dr->get<double>() == 0.0))
    d.fail("model.dropout", "BPE dropout makes tokenization random: not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (const json* v = d.opt(m, key); v && !d.str(*v, std::string("model.") + key).empty())
      d.fail(std::string("model.") + key, "not supported (byte-level and metaspace BPE do not use it)");
  read_vocab(d, d.get(m, "model", "vocab"), "model.vocab", impl->model);
  read_merges(d, d.get(m, "model", "merges"), "model.merges", impl->model);
  impl->model.fuse_unk = d.boolean(m, "model", "fuse_unk", false);
  impl->model.byte_fallback = d.boolean(m, "model", "byte_fallback", false);
  impl->model.ignore_merges = d.boolean(m, "model", "ignore_merges", false);
  if (const json* u = d.opt(m, "unk_token")) {
    const std::string unk = d.str(*u, "model.unk_token");
    auto it = impl->model.vocab.find(unk);
    if (it == impl->model.vocab.end()) d.fail("model.unk_token", "'" + unk + "' is not in model.vocab");
    impl->model.unk_id = it->second;
  }

  if (const json* at = d.opt(j, "added_tokens")) {
    if (!at->is_array()) d.fail("added_tokens", "expected an array");
    for (std::size_t i = 0; i < at->size(); ++i)
      impl->added.push_back(read_added_token(d, (*at)[i], "added_tokens[" + std::to_string(i) + "]", true));
  }
  if (const json* n = d.opt(j, "normalizer")) {
    impl->normalizer = make_normalizer(d, *n, "normalizer");
    impl->normalizer_json = n->dump();
  }
  if (const json* p = d.opt(j, "pre_tokenizer")) {
    impl->pre_tokenizer = make_pre_tokenizer(d, *p, "pre_tokenizer");
    impl->pre_tokenizer_json = p->dump();
  }
  if (const json* dec = d.opt(j, "decoder")) {
    impl->decoder = make_decoder(d, *dec, "decoder");
    impl->decoder_json = dec->dump();
  }
  impl->policy_source = "no post_processor";
  if (const json* pp = d.opt(j, "post_processor")) {
    impl->policy_source = "post_processor " + d.type(*pp, "post_processor");
    read_post_processor(d, *pp, "post_processor", *impl);
  }
  impl->finish();
  for (const auto* ids : {&impl->prefix, &impl->suffix})
    for (int id : *ids)
      if (!impl->added_by_id.count(id) && (id >= int(impl->model.id_to_piece.size()) || impl->model.id_to_piece[id].empty()))
        d.fail("post_processor", "token id " + std::to_string(id) + " is not in the vocabulary");
  settle_specials(*impl, cfg);
  impl->file = name;
  impl->source = "tokenizer.json BPE (" + std::to_string(impl->model.id_to_piece.size()) + " pieces, " +
                 std::to_string(impl->model.merge_count()) + " merges, " + std::to_string(impl->added.size()) + " added)";
  return std::make_unique<HfTokenizer>(std::move(impl));
}

std::unique_ptr<HfTokenizer> load_hf_tokenizer_json(const std::string& path) {
  if (!fs::exists(path)) throw Error(path, "no such file");
  const std::string text = read_text_file(path);
  const std::string config_path = config_beside(path);
  const std::string config = config_path.empty() ? std::string() : read_text_file(config_path);
  return parse_hf_tokenizer_json(text, path, config);
}

std::unique_ptr<HfTokenizer> load_hf_vocab_merges(const std::string& dir) {
  const fs::path d(dir);
  const std::string vocab_path = (d / "vocab.json").string(), merges_path = (d / "merges.txt").string();
  const std::string cfg_path = (d / "tokenizer_config.json").string(), added_path = (d / "added_tokens.json").string();
  for (const auto& p : {vocab_path, merges_path})
    if (!fs::exists(p)) throw Error(p, "no such file (the slow-tokenizer form needs vocab.json and merges.txt)");
  auto impl = std::make_unique<HfTokenizer::Impl>();
  const TokenizerConfig cfg = read_config(fs::exists(cfg_path) ? read_text_file(cfg_path) : std::string(), cfg_path);

  const Doc dv{vocab_path};
  read_vocab(dv, parse_json(read_text_file(vocab_path), vocab_path), "(top level)", impl->model);
  const Doc dm{merges_path};
  const std::string merges = read_text_file(merges_path);
  int rank = 0;
  std::size_t line_no = 0;
  for (std::size_t at = 0; at < merges.size();) {
    std::size_t end = merges.find('\n', at);
    if (end == std::string::npos) end = merges.size();
    std::string_view line(merges.data() + at, end - at);
    at = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const auto sp = line.find(' ');
    if (sp == std::string_view::npos || line.find(' ', sp + 1) != std::string_view::npos)
      dm.fail("line " + std::to_string(line_no), "expected \"a b\"");
    if (!impl->model.add_merge(line.substr(0, sp), line.substr(sp + 1), rank++))
      dm.fail("line " + std::to_string(line_no), "merge '" + std::string(line) + "' uses a piece that is not in the vocabulary");
  }

  // Added tokens: tokenizer_config.json's added_tokens_decoder (with flags), then any others of
  // added_tokens.json.
  const Doc dc{cfg_path};
  if (cfg.added_tokens_decoder.is_object()) {
    for (auto it = cfg.added_tokens_decoder.begin(); it != cfg.added_tokens_decoder.end(); ++it) {
      const std::string where = "added_tokens_decoder['" + it.key() + "']";
      AddedToken a = read_added_token(dc, it.value(), where, false);
      try {
        std::size_t used = 0;
        a.id = std::stoi(it.key(), &used);
        if (used != it.key().size() || a.id < 0 || a.id > kMaxTokenId) throw std::invalid_argument("id");
      } catch (const std::exception&) {
        dc.fail(where, "the key is not a token id");
      }
      impl->added.push_back(std::move(a));
    }
  }
  if (fs::exists(added_path)) {
    const Doc da{added_path};
    const json aj = parse_json(read_text_file(added_path), added_path);
    if (!aj.is_object()) da.fail("(top level)", "expected an object {token: id}");
    for (auto it = aj.begin(); it != aj.end(); ++it) {
      const int id = int(da.integer(it.value(), "['" + it.key() + "']", 0, kMaxTokenId));
      if (std::none_of(impl->added.begin(), impl->added.end(), [&](const AddedToken& t) { return t.id == id; }))
        impl->added.push_back(AddedToken{id, it.key(), false, false, false, false, true});
    }
  }

  // The pipeline transformers' converters give these slow tokenizers.
  const std::string cls = cfg.tokenizer_class;
  auto byte_level = std::make_unique<ByteLevelPreTokenizer>();
  if (cls == "Qwen2Tokenizer" || cls == "Qwen2TokenizerFast") {
    impl->normalizer = std::make_unique<UnicodeNormalizer>(tok::NormalForm::NFC);
    auto seq = std::make_unique<SequencePreTokenizer>();
    seq->parts.push_back(regex_split(kQwen2Pattern, false, SplitBehavior::Isolated));
    seq->parts.push_back(std::move(byte_level));
    impl->pre_tokenizer = std::move(seq);
    impl->normalizer_json = json{{"type", "NFC"}}.dump();
    impl->pre_tokenizer_json =
        json{{"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"}, {"pattern", {{"Regex", kQwen2Pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
               {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}}
            .dump();
  } else if (cls.empty() || cls == "GPT2Tokenizer" || cls == "GPT2TokenizerFast") {
    byte_level->add_prefix_space = cfg.add_prefix_space.value_or(false);
    byte_level->gpt2 = std::make_shared<tok::Regex>(kGpt2Pattern, false);
    impl->pre_tokenizer_json =
        json{{"type", "ByteLevel"}, {"add_prefix_space", byte_level->add_prefix_space}, {"trim_offsets", true}, {"use_regex", true}}.dump();
    impl->pre_tokenizer = std::move(byte_level);
  } else {
    dc.fail("tokenizer_class", unsupported("tokenizer class with vocab.json + merges.txt", cls, "GPT2Tokenizer, Qwen2Tokenizer"));
  }
  impl->decoder = std::make_unique<ByteLevelDecoder>();
  impl->decoder_json = json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}.dump();
  impl->policy_source = fs::path(cfg_path).filename().string() + " add_bos_token";
  impl->finish();
  settle_specials(*impl, cfg);
  // GPT2Tokenizer/Qwen2Tokenizer: BOS only when add_bos_token (false by default).
  impl->prefix.clear();
  if (cfg.add_bos.value_or(false) && impl->bos >= 0) impl->prefix.push_back(impl->bos);
  impl->file = dir;
  impl->source = "vocab.json + merges.txt BPE (" + std::to_string(impl->model.id_to_piece.size()) + " pieces, " +
                 std::to_string(impl->model.merge_count()) + " merges, " + std::to_string(impl->added.size()) + " added)";
  return std::make_unique<HfTokenizer>(std::move(impl));
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  const fs::path p(path);
  if (p.extension() == ".json") return load_hf_tokenizer_json(path);
  if (!fs::is_directory(p)) return nullptr;
  if (fs::exists(p / "tokenizer.json")) return load_hf_tokenizer_json((p / "tokenizer.json").string());
  if (fs::exists(p / "vocab.json") && fs::exists(p / "merges.txt")) return load_hf_vocab_merges(path);
  if (fs::exists(p / "tokenizer.model")) return load_sentencepiece((p / "tokenizer.model").string());
  throw Error(path, "a folder without tokenizer.json, vocab.json + merges.txt or tokenizer.model");
}

std::string find_model_tokenizer(const std::string& model_path) {
  std::error_code ec;
  fs::path dir(model_path);
  if (!fs::is_directory(dir, ec)) dir = dir.parent_path();
  if (dir.empty()) dir = ".";
  if (fs::exists(dir / "tokenizer.json", ec)) return (dir / "tokenizer.json").string();
  if (fs::exists(dir / "vocab.json", ec) && fs::exists(dir / "merges.txt", ec)) return dir.string();
  if (fs::exists(dir / "tokenizer.model", ec)) return (dir / "tokenizer.model").string();
  return {};
}

}  // namespace quarot
