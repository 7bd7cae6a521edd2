// libFuzzer: a SentencePiece .model (a serialized ModelProto) through quarot's checks and then
// libsentencepiece, then used to encode and decode. Found: an empty piece (or one holding a NUL)
// made libsentencepiece's trie builder throw through the library and abort; such models are now
// refused before they reach it (make_sentencepiece).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quarot/error.hpp"
#include "quarot/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto tok = quarot::make_sentencepiece(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.model");
    const auto ids = tok->encode("Once upon a time, caf\xc3\xa9 \xe2\x82\xac aaaa  bb");
    for (int id : ids)
      if (id < 0 || id >= tok->vocab_size()) __builtin_trap();
    (void)tok->decode(ids);
  } catch (const quarot::Error&) {
  }
  return 0;
}
