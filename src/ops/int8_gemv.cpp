// The INT8 row tables' product and lookup (include/quarot/int8_gemv.hpp): a scalar reference
// and AVX2 / AVX-512 paths (function attributes, chosen at run time). The activations stay fp32,
// so there is no integer dot product to use (VNNI would need them quantized, which the
// simulation does not do): each path widens 8 or 16 codes to fp32 and accumulates with FMA.
// GCC 12's avx512fintrin.h trips -W(maybe-)uninitialized on its own undefined-vector idiom (as in
// kv_kernels.cpp): off for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "quarot/int8_gemv.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/fixed_chunks.hpp"

namespace quarot {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMat>;

// Rows [r0, r1) for up to kInt8GemvTokens tokens.
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

__attribute__((target("avx2,fma"))) void gemv_avx2(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1, float* y,
                                                   int64_t ldy) {
  const int64_t K = w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* c = w.codes + r * K;
    __m256 a0[kInt8GemvTokens], a1[kInt8GemvTokens];
    for (int t = 0; t < n; ++t) a0[t] = a1[t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + k));
      const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
      const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
      for (int t = 0; t < n; ++t) {
        a0[t] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x + t * K + k), a0[t]);
        a1[t] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x + t * K + k + 8), a1[t]);
      }
    }
    for (int t = 0; t < n; ++t) {
      float s = hsum256(_mm256_add_ps(a0[t], a1[t]));
      for (int64_t j = k; j < K; ++j) s += float(c[j]) * x[t * K + j];
      y[t * ldy + r] = s * w.scales[r];
    }
  }
}

__attribute__((target("avx512f,avx512bw"))) void gemv_avx512(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1,
                                                             float* y, int64_t ldy) {
  const int64_t K = w.cols;
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* c = w.codes + r * K;
    __m512 a0[kInt8GemvTokens], a1[kInt8GemvTokens];
    for (int t = 0; t < n; ++t) a0[t] = a1[t] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + k))));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + k + 16))));
      for (int t = 0; t < n; ++t) {
        a0[t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + t * K + k), a0[t]);
        a1[t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + t * K + k + 16), a1[t]);
      }
    }
    if (k + 16 <= K) {  // one more block of 16 (K = 64 * m + 16 ...)
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + k))));
      for (int t = 0; t < n; ++t) a0[t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + t * K + k), a0[t]);
      k += 16;
    }
    for (int t = 0; t < n; ++t) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(a0[t], a1[t]));
      for (int64_t j = k; j < K; ++j) s += float(c[j]) * x[t * K + j];
      y[t * ldy + r] = s * w.scales[r];
    }
  }
}

}  // namespace

void int8_gemv_ref(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  for (int t = 0; t < n; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      double s = 0;
      for (int64_t c = 0; c < w.cols; ++c) s += double(w.codes[r * w.cols + c]) * double(x[t * w.cols + c]);
      y[t * ldy + r] = float(s * double(w.scales[r]));
    }
}

void int8_gemv(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1, float* y, int64_t ldy, Isa isa) {
  for (int t0 = 0; t0 < n; t0 += kInt8GemvTokens) {  // at most kInt8GemvTokens accumulators per row
    const int m = std::min(kInt8GemvTokens, n - t0);
    const float* xt = x + int64_t(t0) * w.cols;
    float* yt = y + int64_t(t0) * ldy;
    switch (isa) {
      case Isa::Avx512Vnni: gemv_avx512(w, xt, m, r0, r1, yt, ldy); break;
      case Isa::Avx2: gemv_avx2(w, xt, m, r0, r1, yt, ldy); break;
      case Isa::Scalar: int8_gemv_ref(w, xt, m, r0, r1, yt, ldy); break;
    }
  }
}

bool int8_gemv_avx512_supported() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"); }
void int8_gemv_avx512(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1, float* y, int64_t ldy) {
  gemv_avx512(w, x, n, r0, r1, y, ldy);
}

void int8_dequantize_row(const Int8Rows& w, int64_t r, float* out) {
  const int8_t* c = w.codes + r * w.cols;
  const float s = w.scales[r];
  for (int64_t k = 0; k < w.cols; ++k) out[k] = float(c[k]) * s;
}

void int8_matmul(const Int8Rows& w, const float* x, int n, float* y, Isa isa) {
  const int64_t V = w.rows, d = w.cols;
  const bool parallel = double(n) * double(d) * double(V) >= detail::kParallelMacs;
  if (n <= kInt8GemvTokens) {
    detail::for_fixed_chunks(V, detail::kOutputChunk, parallel,
                             [&](int64_t r0, int64_t count) { int8_gemv(w, x, n, r0, r0 + count, y, V, isa); });
    return;
  }
  const ConstRowMap X(x, n, d);
  Eigen::Map<RowMat> Y(y, n, V);
  detail::for_fixed_chunks(V, detail::kOutputChunk, parallel, [&](int64_t r0, int64_t count) {
    thread_local std::vector<float> tile;
    tile.resize(std::size_t(count * d));
    for (int64_t r = 0; r < count; ++r) int8_dequantize_row(w, r0 + r, tile.data() + r * d);
    Y.middleCols(r0, count).noalias() = X * ConstRowMap(tile.data(), count, d).transpose();
  });
}

}  // namespace quarot
