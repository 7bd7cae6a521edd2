// libFuzzer: llama2.c tokenizer.bin (reader, then the BPE encoder and decoder built from it).
// Found before: a tokenizer with fewer than 259 pieces made byte fallback read out of bounds.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"
#include "quarot/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto pieces = quarot::parse_llama2c_tokenizer({data, size}, "fuzz-tok.bin");
    const auto tok = quarot::make_llama2c_bpe(std::move(pieces), "fuzz-tok.bin");
    // Text with ASCII, multi-byte UTF-8, invalid UTF-8 (byte fallback) and repeats, plus the
    // tail of the input itself as text.
    std::string text = "Once upon a time, caf\xc3\xa9 \xe2\x82\xac\xff\xfe aaaa  bb";
    text.append(reinterpret_cast<const char*>(data) + size - std::min<size_t>(size, 64), std::min<size_t>(size, 64));
    const auto ids = tok->encode(text);
    for (int id : ids)
      if (id < 0 || id >= tok->vocab_size()) __builtin_trap();
    (void)tok->decode(ids);
  } catch (const quarot::Error&) {
  }
  return 0;
}
