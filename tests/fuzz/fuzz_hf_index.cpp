// libFuzzer: model.safetensors.index.json and config.json parsers on arbitrary text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "quarot/checkpoint.hpp"
#include "quarot/config.hpp"
#include "quarot/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto map = quarot::parse_hf_index(text, "fuzz-index");
    for (const auto& [name, file] : map)
      if (file.empty() || file.find('/') != std::string::npos) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  try {
    quarot::parse_hf_config(text, "fuzz-config").validate("fuzz-config");
  } catch (const quarot::Error&) {
  }
  return 0;
}
