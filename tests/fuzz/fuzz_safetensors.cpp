// libFuzzer: the safetensors header parser on arbitrary bytes. Any input must either parse or
// throw quarot::Error; ASan/UBSan catch everything else.
#include <cstddef>
#include <cstdint>

#include "quarot/error.hpp"
#include "quarot/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto h = quarot::parse_safetensors({data, size}, "fuzz");
    // Accepted files must satisfy what the loaders rely on.
    for (const auto& t : h.tensors)
      if (t.end > size - h.data_start || t.end - t.begin != quarot::tensor_bytes(t.dtype, t.shape)) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  return 0;
}
