// libFuzzer: configuration documents. config.json (parse + every derived shape; marked rotated too), the tools'
// --config reader (JSON or TOML through CLI11) and batch plans (TOML via toml++ -> JSON), each
// behind the nesting/size pre-check (json_limits.hpp).
#include <toml++/toml.h>

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
  try {  // a tool's --config FILE
    std::istringstream in(text);
    (void)quarot::cli::JsonOrTomlConfig().from_config(in);
  } catch (const CLI::Error&) {
  } catch (const std::exception&) {
  }
  try {  // a batch plan (read_plan in tools/quarot_batch.cpp)
    quarot::check_toml_limits(text, "fuzz-plan.toml");
    const std::string label = "fuzz-plan.toml";
    const toml::table t = toml::parse(text, label);
    std::ostringstream s;
    s << toml::json_formatter{t};
    const std::string j = s.str();
    quarot::check_json_limits(j, "fuzz-plan.json");
    const auto plan = nlohmann::json::parse(j);
    (void)plan.size();
  } catch (const quarot::Error&) {
  } catch (const toml::parse_error&) {
  } catch (const nlohmann::json::exception&) {
  }
  return 0;
}
