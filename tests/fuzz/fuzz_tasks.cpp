// libFuzzer: the zero-shot task file parsers (HellaSwag text layout, PIQA jsonl + labels) on
// arbitrary bytes; the input is split at its first NUL into the PIQA jsonl and labels.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "quarot/error.hpp"
#include "quarot/tasks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto t = quarot::parse_hellaswag(text, "fuzz-hellaswag");
    for (const auto& item : t.items)
      if (item.endings.size() != 4 || item.gold < 0 || item.gold > 3 || item.context.empty()) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  const auto nul = text.find('\0');
  const std::string_view jsonl = text.substr(0, nul);
  const std::string_view labels = nul == std::string_view::npos ? std::string_view() : text.substr(nul + 1);
  try {
    const auto t = quarot::parse_piqa(jsonl, "fuzz-piqa", labels, "fuzz-labels");
    for (const auto& item : t.items)
      if (item.endings.size() != 2 || item.gold < 0 || item.gold > 1 || item.endings[0].empty()) __builtin_trap();
  } catch (const quarot::Error&) {
  }
  return 0;
}
