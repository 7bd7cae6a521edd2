// libFuzzer: the packed INT4 model reader (PackedModel: container, metadata records, config,
// recipe, rotation record, QDEC section, shapes, CRCs, finite values) on arbitrary bytes. The
// reader maps a path, so each input is written to one temporary file per process. Any input must
// either load or throw quarot::Error; ASan/UBSan catch everything else, and -rss_limit_mb /
// -timeout catch allocations and loops the bytes do not pay for. CRC verification stays on (a
// mutated tensor is refused at its CRC; mutated metadata reaches every check before the header CRC).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "quarot/error.hpp"
#include "quarot/packed.hpp"

namespace {

std::string temp_path() {
  const char* dir = std::getenv("TMPDIR");
  return std::string(dir && *dir ? dir : "/tmp") + "/fuzz_packed." + std::to_string(getpid()) + ".safetensors";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = temp_path();
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) __builtin_trap();
    if (size && std::fwrite(data, 1, size, f) != size) __builtin_trap();
    std::fclose(f);
  }
  try {
    const quarot::PackedModel m(path);
    // What the runtime relies on for an accepted file.
    const auto& c = m.config();
    for (int l = 0; l < c.n_layers; ++l)
      for (quarot::LinearModule mod : quarot::kLinearModules) {
        const auto w = m.linear(l, mod);
        if (!w.packed || !w.scales || w.rows <= 0 || w.cols <= 0) __builtin_trap();
      }
  } catch (const quarot::Error&) {
  }
  std::remove(path.c_str());
  return 0;
}
