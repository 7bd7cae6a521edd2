// The KV cache's dequantization (include/quarot/kv_kernels.hpp): a scalar reference and AVX2 /
// AVX-512 paths (function attributes, chosen at run time). Compiled with -ffp-contract=off
// (src/CMakeLists.txt) so that no path fuses the multiply into something else.
// GCC 12's avx512fintrin.h trips -W(maybe-)uninitialized on its own undefined-vector idiom (as in
// qdec_kernels.cpp): off for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "quarot/kv_kernels.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "quarot/error.hpp"

namespace quarot {

namespace {

inline int code_at(const uint8_t* c, int i, int bits) { return bits <= 4 ? (i % 2 ? c[i / 2] >> 4 : c[i / 2] & 0x0F) : c[i]; }

// Elements [from, dim) of one slot.
inline void slot_scalar(const uint8_t* c, float s, int z, int from, int dim, int bits, float* o) {
  for (int i = from; i < dim; ++i) o[i] = float(code_at(c, i, bits) - z) * s;
}

void dequant_scalar(const uint8_t* codes, const float* scale, const uint8_t* zero, int64_t s0, int64_t s1, int dim, int bits,
                    float* out) {
  const int sb = kv_slot_bytes(bits, dim);
  for (int64_t s = s0; s < s1; ++s) slot_scalar(codes + s * sb, scale[s], zero[s], 0, dim, bits, out + s * dim);
}

// 16 nibbles of 8 bytes in element order (low nibble first).
__attribute__((target("avx2"))) inline __m128i unpack_nibbles(__m128i b) {
  const __m128i mask = _mm_set1_epi8(0x0F);
  return _mm_unpacklo_epi8(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));
}
// The low 8 codes of `u` dequantized to o[0..8).
__attribute__((target("avx2"))) inline void emit8(__m128i u, __m256i z, __m256 s, float* o) {
  const __m256i v = _mm256_sub_epi32(_mm256_cvtepu8_epi32(u), z);
  _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_cvtepi32_ps(v), s));
}
// Elements [i, ...) of one slot in chunks of 8; returns where the scalar tail starts.
__attribute__((target("avx2"))) inline int slot_avx2(const uint8_t* c, __m256i z, __m256 s, int i, int dim, int bits, float* o) {
  if (bits <= 4) {
    for (; i + 16 <= dim; i += 16) {
      const __m128i u = unpack_nibbles(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + i / 2)));
      emit8(u, z, s, o + i);
      emit8(_mm_srli_si128(u, 8), z, s, o + i + 8);
    }
    for (; i + 8 <= dim; i += 8) {
      int32_t w;
      std::memcpy(&w, c + i / 2, 4);
      emit8(unpack_nibbles(_mm_cvtsi32_si128(w)), z, s, o + i);
    }
  } else {
    for (; i + 8 <= dim; i += 8) emit8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + i)), z, s, o + i);
  }
  return i;
}

__attribute__((target("avx2"))) void dequant_avx2(const uint8_t* codes, const float* scale, const uint8_t* zero, int64_t s0,
                                                  int64_t s1, int dim, int bits, float* out) {
  const int sb = kv_slot_bytes(bits, dim);
  for (int64_t s = s0; s < s1; ++s) {
    const uint8_t* c = codes + s * sb;
    float* o = out + s * dim;
    const int i = slot_avx2(c, _mm256_set1_epi32(zero[s]), _mm256_set1_ps(scale[s]), 0, dim, bits, o);
    slot_scalar(c, scale[s], zero[s], i, dim, bits, o);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void dequant_avx512(const uint8_t* codes, const float* scale,
                                                                         const uint8_t* zero, int64_t s0, int64_t s1, int dim,
                                                                         int bits, float* out) {
  const int sb = kv_slot_bytes(bits, dim);
  const __m128i mask = _mm_set1_epi8(0x0F);
  for (int64_t s = s0; s < s1; ++s) {
    const uint8_t* c = codes + s * sb;
    float* o = out + s * dim;
    const __m512i z = _mm512_set1_epi32(zero[s]);
    const __m512 sc = _mm512_set1_ps(scale[s]);
    auto emit16 = [&](__m128i u, float* dst) {
      const __m512i v = _mm512_sub_epi32(_mm512_cvtepu8_epi32(u), z);
      _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_cvtepi32_ps(v), sc));
    };
    int i = 0;
    if (bits <= 4) {
      for (; i + 32 <= dim; i += 32) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i / 2));
        const __m128i lo = _mm_and_si128(b, mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
        emit16(_mm_unpacklo_epi8(lo, hi), o + i);
        emit16(_mm_unpackhi_epi8(lo, hi), o + i + 16);
      }
    } else {
      for (; i + 16 <= dim; i += 16) emit16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + i)), o + i);
    }
    i = slot_avx2(c, _mm256_set1_epi32(zero[s]), _mm256_set1_ps(scale[s]), i, dim, bits, o);
    slot_scalar(c, scale[s], zero[s], i, dim, bits, o);
  }
}

}  // namespace

void kv_dequantize(const uint8_t* codes, const float* scale, const uint8_t* zero, int64_t slots, int dim, int bits, float* out,
                   Isa isa) {
  if (bits < 2 || bits > 8) throw Error("kv cache", "code bits must be 2..8, got " + std::to_string(bits));
  if (slots <= 0 || dim <= 0) return;
  auto run = [&](auto fn) {
    // Threads only for a cache worth waking them (a 7B layer at ctx 2048: 8M values).
#pragma omp parallel for schedule(static) if (slots * dim > (int64_t(1) << 18))
    for (int64_t b = 0; b < slots; b += 256) fn(codes, scale, zero, b, std::min<int64_t>(slots, b + 256), dim, bits, out);
  };
  if (!isa_supported(isa)) isa = best_isa();
  // A head too short for one zmm of codes (the 260K models' 8 and 16) gains nothing from the
  // AVX-512 loop: the AVX2 path does the same work without the extra broadcasts.
  if (isa == Isa::Avx512Vnni && dim < (bits <= 4 ? 32 : 16)) isa = Isa::Avx2;
  switch (isa) {
    case Isa::Avx512Vnni:
      run(dequant_avx512);
      break;
    case Isa::Avx2:
      run(dequant_avx2);
      break;
    case Isa::Scalar:
      run(dequant_scalar);
      break;
  }
}

void kv_dequantize_ref(const uint8_t* codes, const float* scale, const uint8_t* zero, int64_t slots, int dim, int bits, float* out) {
  if (bits < 2 || bits > 8) throw Error("kv cache", "code bits must be 2..8, got " + std::to_string(bits));
  for (int64_t s = 0; s < slots; ++s)
    for (int i = 0; i < dim; ++i)
      out[s * dim + i] = float(double(code_at(codes + s * kv_slot_bytes(bits, dim), i, bits) - zero[s]) * double(scale[s]));
}

}  // namespace quarot
