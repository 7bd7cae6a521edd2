// The FWHT's vector paths (include/quarot/fwht.hpp), compiled for their targets with function
// attributes and chosen per call by the Isa argument.
#include "quarot/fwht.hpp"

#include <immintrin.h>

namespace quarot {

namespace {

// The first butterfly stages (stride < `width`) in scalar code, as fwht_ref runs them; returns
// the next stride.
int scalar_stages(float* x, int n, int width) {
  int h = 1;
  for (; h < n && h < width; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  return h;
}

// Stages with stride >= the vector width run on whole vectors: the same additions on the same
// operands as the reference, so bit-identical.
__attribute__((target("avx512f"))) void fwht_avx512(float* x, int n) {
  for (int h = scalar_stages(x, n, 16); h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; j += 16) {
        const __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(x + j + h);
        _mm512_storeu_ps(x + j, _mm512_add_ps(a, b));
        _mm512_storeu_ps(x + j + h, _mm512_sub_ps(a, b));
      }
}

__attribute__((target("avx2"))) void fwht_avx2(float* x, int n) {
  for (int h = scalar_stages(x, n, 8); h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; j += 8) {
        const __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
        _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
        _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
      }
}

}  // namespace

void fwht(float* x, int n, Isa isa) {
  if (!isa_supported(isa)) isa = best_isa();
  switch (isa) {
    case Isa::Avx512Vnni: fwht_avx512(x, n); return;
    case Isa::Avx2: fwht_avx2(x, n); return;
    case Isa::Scalar: break;
  }
  fwht_ref(x, n);
}

const char* fwht_isa() { return isa_name(best_isa()); }

}  // namespace quarot
