// libFuzzer: configuration documents. config.json (parse + every derived shape; marked rotated too) and
// the tools' option files (--config and batch plans: JSON or TOML via toml++, behind the
// size/nesting/binary pre-checks, every key and value checked against the option table).
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "config_file.hpp"  // tools/
#include "quarot/checkpoint.hpp"
#include "quarot/config.hpp"
#include "quarot/error.hpp"
#include "quarot/json_limits.hpp"
#include "quarot/weights.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto c = quarot::parse_hf_config(text, "fuzz-config.json");
    // Derived sizes must be representable: q_dim/kv_dim in int, tensors in int64.
    if (int64_t(c.n_heads) * c.head_dim != c.q_dim() || int64_t(c.n_kv_heads) * c.head_dim != c.kv_dim()) __builtin_trap();
    if (c.n_layers <= 64) (void)quarot::tensor_shapes(c);
  } catch (const quarot::Error&) {
  }
  try {  // the same as a rotated folder's config.json: marked names, the 'quarot_rotation' record
    std::string record;
    (void)quarot::parse_hf_config_with_rotation(text, "fuzz-config.json", &record);
  } catch (const quarot::Error&) {
  }
  try {  // a tool's --config FILE or a batch plan: the one option-file reader (tools/config_file.hpp)
    const auto doc = quarot::cli::parse_option_document(text, "fuzz-options.toml");
    quarot::cli::check_option_object("fuzz-options.toml", doc);
  } catch (const quarot::Error&) {
  }
  return 0;
}
