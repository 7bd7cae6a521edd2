#pragma once
// Text primitives of the Hugging Face tokenizer pipeline: UTF-8 walking, the byte-level alphabet
// (GPT-2's bytes_to_unicode), lossy UTF-8 repair, Unicode normalization (utf8proc) and the
// split regexes (PCRE2 with UTF + UCP, JIT-compiled when the platform has it).
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace quarot::tok {

// Length of the UTF-8 sequence starting with lead byte `b` (1 for a stray byte).
inline std::size_t utf8_len(unsigned char b) {
  if (b < 0x80) return 1;
  if ((b >> 5) == 0x6) return 2;
  if ((b >> 4) == 0xE) return 3;
  if ((b >> 3) == 0x1E) return 4;
  return 1;
}
// Decodes the code point at s[i] (valid UTF-8 assumed), advancing i.
char32_t utf8_next(std::string_view s, std::size_t& i);
void utf8_append(std::string& out, char32_t cp);
// Offset of the first invalid byte, or npos when `s` is valid UTF-8.
std::size_t utf8_invalid_at(std::string_view s);
// As Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);
// Rust's char::is_whitespace (Unicode White_Space).
bool is_unicode_whitespace(char32_t cp);

// GPT-2's byte-level alphabet: byte b -> one printable code point (as UTF-8).
const std::string& byte_to_unicode(unsigned char b);
// The reverse: -1 when `cp` is not one of the 256 byte-level code points.
int unicode_to_byte(char32_t cp);
// Appends the byte-level form of `bytes`.
void byte_level_encode(std::string_view bytes, std::string& out);

enum class NormalForm { NFC, NFD, NFKC, NFKD };
std::string normalize_unicode(std::string_view s, NormalForm form);
std::string lowercase_unicode(std::string_view s);

// A compiled PCRE2 pattern (UTF, UCP). find_all returns the [start, end) byte ranges of the
// successive non-overlapping matches (an empty match advances one character).
class Regex {
 public:
  Regex(const std::string& pattern, bool literal);  // throws std::runtime_error with PCRE2's message
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  void find_all(std::string_view subject, std::vector<std::pair<std::size_t, std::size_t>>& out) const;
  bool jit() const { return jit_; }  // compiled to machine code (PCRE2 JIT)

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace quarot::tok
