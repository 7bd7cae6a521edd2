#pragma once
// The fast Walsh-Hadamard transform: unnormalized in-place butterflies on n = 2^k values
// (x <- H_n x), the power-of-two half of every Hadamard rotation (src/rotate/hadamard.cpp
// applies them per sub-row, then its K x K base). The vector paths run the first stages (stride
// below the vector width) in scalar code and the rest on whole vectors: each value is the same
// a + b or a - b of the same operands, stage by stage, so every path equals fwht_ref bit for bit.
#include "quarot/isa.hpp"

namespace quarot {

// The plain butterflies (and the double transform's only path). Inline: callers with tiny n
// (per-head transforms of 8 values, millions of calls) run it without a call per sub-row.
template <class T>
inline void fwht_ref(T* x, int n) {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

// AVX-512 (Isa::Avx512Vnni: its AVX-512F part) / AVX2 / scalar; an Isa this CPU lacks falls back
// to best_isa().
void fwht(float* x, int n, Isa isa = best_isa());
inline void fwht(double* x, int n) { fwht_ref(x, n); }
const char* fwht_isa();  // isa_name(best_isa()): the path fwht(float*) takes by default here

}  // namespace quarot
