// Run-time ISA dispatch (include/quarot/isa.hpp).
#include "quarot/isa.hpp"

#include <cstdlib>
#include <string>

namespace quarot {

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2: return __builtin_cpu_supports("avx2");
    case Isa::Avx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }
  return false;
}

Isa best_isa() {
  static const Isa best = [] {
    Isa cap = Isa::Avx512Vnni;
    if (const char* e = std::getenv("QUAROT_ISA")) {
      const std::string s = e;
      cap = s == "scalar" ? Isa::Scalar : s == "avx2" ? Isa::Avx2 : Isa::Avx512Vnni;
    }
    for (Isa i : {Isa::Avx512Vnni, Isa::Avx2})
      if (int(i) <= int(cap) && isa_supported(i)) return i;
    return Isa::Scalar;
  }();
  return best;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512Vnni: return "avx512-vnni";
  }
  return "?";
}

}  // namespace quarot
