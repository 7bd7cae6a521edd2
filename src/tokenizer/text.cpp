#include "text.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <array>
#include <cstdlib>
#include <stdexcept>

namespace quarot::tok {

char32_t utf8_next(std::string_view s, std::size_t& i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  const std::size_t n = std::min(utf8_len(b0), s.size() - i);
  char32_t cp = n == 1 ? b0 : n == 2 ? (b0 & 0x1F) : n == 3 ? (b0 & 0x0F) : (b0 & 0x07);
  for (std::size_t k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void utf8_append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

namespace {
// Length of the valid UTF-8 sequence at s[i], or 0 with `prefix` = the length of the longest
// prefix that could still have been valid (the "maximal subpart" of Unicode's practice).
std::size_t valid_seq(std::string_view s, std::size_t i, std::size_t& prefix) {
  const auto b = static_cast<unsigned char>(s[i]);
  prefix = 1;
  if (b < 0x80) return 1;
  std::size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) need = 1;
  else if (b == 0xE0) need = 2, lo = 0xA0;
  else if (b >= 0xE1 && b <= 0xEC) need = 2;
  else if (b == 0xED) need = 2, hi = 0x9F;
  else if (b >= 0xEE && b <= 0xEF) need = 2;
  else if (b == 0xF0) need = 3, lo = 0x90;
  else if (b >= 0xF1 && b <= 0xF3) need = 3;
  else if (b == 0xF4) need = 3, hi = 0x8F;
  else return 0;
  for (std::size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return 0;
    const auto c = static_cast<unsigned char>(s[i + k]);
    if (c < lo || c > hi) return 0;
    lo = 0x80, hi = 0xBF;
    ++prefix;
  }
  return need + 1;
}
}  // namespace

std::size_t utf8_invalid_at(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    std::size_t prefix;
    const std::size_t n = valid_seq(s, i, prefix);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

std::string utf8_lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    std::size_t prefix;
    const std::size_t n = valid_seq(s, i, prefix);
    if (n) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += prefix;
    }
  }
  return out;
}

bool is_unicode_whitespace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

namespace {
struct ByteLevelTables {
  std::array<std::string, 256> to_unicode;
  std::array<int, 512> to_byte{};
  ByteLevelTables() {
    to_byte.fill(-1);
    // GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
    // 256, 257, ... in byte order.
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool keep = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = keep ? char32_t(b) : char32_t(256 + extra++);
      utf8_append(to_unicode[b], cp);
      to_byte[cp] = b;
    }
  }
};
const ByteLevelTables& byte_tables() {
  static const ByteLevelTables t;
  return t;
}
}  // namespace

const std::string& byte_to_unicode(unsigned char b) { return byte_tables().to_unicode[b]; }
int unicode_to_byte(char32_t cp) { return cp < 512 ? byte_tables().to_byte[cp] : -1; }
void byte_level_encode(std::string_view bytes, std::string& out) {
  const auto& t = byte_tables().to_unicode;
  for (char c : bytes) out += t[static_cast<unsigned char>(c)];
}

std::string normalize_unicode(std::string_view s, NormalForm form) {
  bool ascii = true;
  for (char c : s) ascii &= static_cast<unsigned char>(c) < 0x80;
  if (ascii) return std::string(s);  // every form leaves ASCII as it is
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::NFC: options |= UTF8PROC_COMPOSE; break;
    case NormalForm::NFD: options |= UTF8PROC_DECOMPOSE; break;
    case NormalForm::NFKC: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case NormalForm::NFKD: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* dst = nullptr;
  const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()), utf8proc_ssize_t(s.size()), &dst,
                              utf8proc_option_t(options));
  if (n < 0) throw std::runtime_error(std::string("Unicode normalization failed: ") + utf8proc_errmsg(n));
  std::string out(reinterpret_cast<const char*>(dst), std::size_t(n));
  std::free(dst);
  return out;
}

std::string lowercase_unicode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) utf8_append(out, char32_t(utf8proc_tolower(utf8proc_int32_t(utf8_next(s, i)))));
  return out;
}

Regex::Regex(const std::string& pattern, bool literal) {
  int err = 0;
  PCRE2_SIZE at = 0;
  // UCP makes \s, \w, \d Unicode-aware (as Oniguruma in the crate); PCRE2 refuses it with LITERAL.
  const uint32_t options = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err, &at, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw std::runtime_error("regex does not compile at offset " + std::to_string(at) + ": " +
                             reinterpret_cast<const char*>(msg));
  }
  code_ = code;
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view subject, std::vector<std::pair<std::size_t, std::size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(pcre2_match_data_create_from_pattern(code, nullptr),
                                                                        &pcre2_match_data_free);
  if (!md) throw std::bad_alloc();
  const auto* subj = reinterpret_cast<PCRE2_SPTR>(subject.data());
  const std::size_t n = subject.size();
  std::size_t off = 0;
  uint32_t no_jit = 0;
  while (off <= n) {
    // The subject was checked as UTF-8 once, by the caller.
    int rc = pcre2_match(code, subj, n, off, PCRE2_NO_UTF_CHECK | no_jit, md.get(), nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !no_jit) {
      no_jit = PCRE2_NO_JIT;  // the interpreter keeps its backtracking on the heap
      continue;
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw std::runtime_error(std::string("regex match failed: ") + reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const std::size_t s = ov[0], e = ov[1];
    if (e <= s) {  // empty match: it splits nothing; step over one character
      if (s >= n) break;
      off = s + utf8_len(static_cast<unsigned char>(subject[s]));
      continue;
    }
    out.emplace_back(s, e);
    off = e;
  }
}

}  // namespace quarot::tok
