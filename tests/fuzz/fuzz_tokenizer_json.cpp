// libFuzzer: tokenizer.json parsing on arbitrary bytes; when a tokenizer loads, a small text is
// encoded and its ids decoded (every component the file can configure runs once).
#include <cstddef>
#include <cstdint>
#include <string>

#include "quarot/error.hpp"
#include "quarot/hf_tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto tok = quarot::parse_hf_tokenizer_json(text, "fuzz-tokenizer.json");
    const std::string sample = "Hello  world! 123 caf\xC3\xA9 \xE2\x96\x81x <s>\n\t\xF0\x9F\xA6\x99";
    const auto ids = tok->encode_with_special(sample);
    for (int id : ids)
      if (id < 0 || id >= tok->vocab_size()) __builtin_trap();
    (void)tok->decode(ids, true, true);
    (void)tok->decode(ids);
  } catch (const quarot::Error&) {
  }
  return 0;
}
