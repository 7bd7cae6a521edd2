// libFuzzer: the llama2.c checkpoint header (and body) and tokenizer parsers on arbitrary bytes.
#include <cstddef>
#include <cstdint>

#include "quarot/checkpoint.hpp"
#include "quarot/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto m = quarot::parse_llama2c({data, size}, "fuzz.bin");
    if (quarot::parameter_count(m) * 4 > int64_t(size)) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  try {
    quarot::parse_llama2c_tokenizer({data, size}, "fuzz-tok.bin");
  } catch (const quarot::Error&) {
  }
  return 0;
}
