#pragma once
// The instruction sets the hot kernels (src/ops) are written for, and the run-time choice among
// them: every kernel takes an Isa, and best_isa() is the default. Kernels are compiled for their
// targets with function attributes, so the library runs on any x86-64.
namespace quarot {

enum class Isa { Scalar, Avx2, Avx512Vnni };
Isa best_isa();  // the fastest path this CPU runs (QUAROT_ISA=scalar|avx2|avx512 caps it)
const char* isa_name(Isa isa);
bool isa_supported(Isa isa);
// Every Isa, slowest first (for tests and benches that loop over the supported ones).
inline constexpr Isa kAllIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni};

}  // namespace quarot
