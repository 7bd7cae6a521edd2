// libFuzzer: the GGUF reader (header, metadata, tensor table, model conversion with
// dequantization) on arbitrary bytes. Whatever it accepts must be paid for by the file: a model
// of more parameters than the file could encode (at 4.5 bits per weight, Q4_0) is a bug.
#include <cstddef>
#include <cstdint>

#include "quarot/error.hpp"
#include "quarot/gguf_reader.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto g = quarot::parse_gguf({data, size}, "fuzz.gguf");
    for (const auto& t : g.tensors)
      if (t.offset + t.bytes > size) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  try {
    const auto m = quarot::parse_gguf_model({data, size}, "fuzz.gguf");
    if (quarot::parameter_count(m) > int64_t(size) * 2) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  return 0;
}
