// libFuzzer: pre-tokenized ids files (quarot-eval --ids, quantize --eval-ids / --calib).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "quarot/error.hpp"
#include "quarot/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    for (const auto& seq : quarot::parse_ids(text, "fuzz.ids", 32000))
      for (int id : seq)
        if (id < 0 || id >= 32000) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  return 0;
}
