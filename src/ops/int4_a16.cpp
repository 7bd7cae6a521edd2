// W4A16: float activations x packed INT4 weights, dequantized in registers inside the kernel.
//
// Every output is the fp32 dot product of a token with the row's dequantized weights
// w = float(u - z) * s (bit for bit Int4Weights::weight), in one fixed order on every path:
// 16 lanes, lane j accumulating with FMA, block by block, the columns 64b + 16h + 32k + j for
// h = 0, 1 and k = 0 (low nibbles), 1 (high nibbles) (the order in which one 16-byte half of a
// packed block yields its two 16-column chunks); then the 16 lanes added pairwise (lane i +
// lane i + 8, then + 4, + 2, + 1), then the bias. The padded columns take part with x = 0. So
// the AVX-512 and AVX2 paths equal the scalar reference bit for bit, and a token's output does
// not depend on how many tokens share the call, on the register block it falls into, or on the
// number of threads.
//
// The weights are dequantized by a 16-entry table per row and group (the 16 possible values
// float(u - z) * s in one zmm): a code is its own index into the table (vpermps reads the low 4
// bits of each dword, so the high nibble only needs a shift and the low one no mask). Per 16
// weights that is half a vpmovzxbd, half a shift and one vpermps, shared by T tokens of FMAs.
//
// This file is compiled with -ffp-contract=off (src/CMakeLists.txt): the scalar reference's
// multiply-adds are std::fma, never a contraction the compiler may or may not make.
// GCC 12's avx512fintrin.h trips -W(maybe-)uninitialized on its own undefined-vector idiom (as in
// qdec_kernels.cpp): off for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "quarot/act16.hpp"
#include "quarot/detail/fixed_chunks.hpp"
#include "quarot/error.hpp"
#include "quarot/int4.hpp"
#include "quarot/int4_a16.hpp"

namespace quarot {

namespace {

struct A16 {
  const Int4Weights& w;
  const float* x;  // [M][K] with the padded columns 0
  int M;
  const float* bias;
  float* y;
  int64_t K, G, bpg, nb, row_bytes;
  int64_t group_end(int64_t g) const { return std::min(nb, (g + 1) * bpg); }  // the last group runs to the padding
  int zero(int64_t o, int64_t g) const { return w.zeros ? w.zeros[o * G + g] : 8; }
  float scale(int64_t o, int64_t g) const { return w.scales[o * G + g]; }
  void store(int t, int64_t o, float total) const { y[int64_t(t) * w.rows + o] = bias ? total + bias[o] : total; }
};

// The pairwise total of 16 lanes.
float lanes_total(float (&lane)[16]) {
  for (int step = 8; step >= 1; step /= 2)
    for (int i = 0; i < step; ++i) lane[i] = lane[i] + lane[i + step];
  return lane[0];
}

void rows_scalar(const A16& c, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = c.w.packed + o * c.row_bytes;
    for (int t = 0; t < c.M; ++t) {
      const float* xt = c.x + int64_t(t) * c.K;
      float lane[16] = {};
      for (int64_t g = 0; g < c.G; ++g) {
        float lut[16];
        for (int u = 0; u < 16; ++u) lut[u] = float(u - c.zero(o, g)) * c.scale(o, g);
        for (int64_t b = g * c.bpg; b < c.group_end(g); ++b)
          for (int h = 0; h < 2; ++h)
            for (int k = 0; k < 2; ++k)
              for (int j = 0; j < 16; ++j) {
                const uint8_t byte = row[b * 32 + 16 * h + j];
                const int u = k ? byte >> 4 : byte & 0x0F;
                lane[j] = std::fma(lut[u], xt[b * 64 + 16 * h + 32 * k + j], lane[j]);
              }
      }
      c.store(t, o, lanes_total(lane));
    }
  }
}

// lanes_total on one zmm.
__attribute__((target("avx512f"))) inline float total_avx512(__m512 f) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(f), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 d = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

// A 4 x 4 tile's 16 totals to y (+ bias): 128-bit lane j, element e = row o0 + e, token t0 + j.
template <class Context>
__attribute__((target("avx512f"))) inline void store_totals_4x4(const Context& c, int64_t o0, int t0, __m512 total) {
  const __m128 b = c.bias ? _mm_loadu_ps(c.bias + o0) : _mm_setzero_ps();
  for (int t = 0; t < 4; ++t) {
    __m128 q;
    switch (t) {  // the lane index of vextractf32x4 is an immediate
      case 0: q = _mm512_extractf32x4_ps(total, 0); break;
      case 1: q = _mm512_extractf32x4_ps(total, 1); break;
      case 2: q = _mm512_extractf32x4_ps(total, 2); break;
      default: q = _mm512_extractf32x4_ps(total, 3); break;
    }
    if (c.bias) q = _mm_add_ps(q, b);
    _mm_storeu_ps(c.y + int64_t(t0 + t) * c.w.rows + o0, q);
  }
}

// The 16 totals of a 4 x 4 tile at once, each the same pairwise tree as lanes_total (lane i +
// lane i + 8, + 4, + 2, + 1), four accumulators per add: at width 64 the one-by-one totals cost
// as much as the products.
// (Also the int16 kernel's, whose context has the same y, bias and w.)
template <class Context>
__attribute__((target("avx512f"))) inline void store_4x4_avx512(const Context& c, int64_t o0, int t0, const __m512 (&acc)[4][4]) {
  const __m512* v = &acc[0][0];  // v[4 r + t]
  __m512 u[8], w[4], z[2];
  for (int m = 0; m < 8; ++m)  // lanes 0-7: v[2m]'s i + (i + 8); lanes 8-15: v[2m + 1]'s
    u[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x44), _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xEE));
  for (int n = 0; n < 4; ++n)  // 128-bit lane j: v[4n + j]'s i + (i + 4)
    w[n] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * n], u[2 * n + 1], 0x88), _mm512_shuffle_f32x4(u[2 * n], u[2 * n + 1], 0xDD));
  for (int a = 0; a < 2; ++a)  // 128-bit lane j: v[8a + j], v[8a + 4 + j]: i + (i + 2), 2 each
    z[a] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * a], w[2 * a + 1], 0x44), _mm512_shuffle_ps(w[2 * a], w[2 * a + 1], 0xEE));
  // 128-bit lane j, element e: the total of v[4e + j] = row o0 + e, token t0 + j.
  store_totals_4x4(c, o0, t0, _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD)));
}

// R rows x T tokens, all columns: R * T zmm accumulators.
template <int R, int T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void tile_avx512(const A16& c, int64_t o0, int t0) {
  __m512 acc[R][T];
  for (auto& r : acc)
    for (auto& a : r) a = _mm512_setzero_ps();
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = c.w.packed + (o0 + r) * c.row_bytes;
  const float* xs[T];
  for (int t = 0; t < T; ++t) xs[t] = c.x + int64_t(t0 + t) * c.K;
  for (int64_t g = 0; g < c.G; ++g) {
    __m512 lut[R];
    for (int r = 0; r < R; ++r)
      lut[r] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(iota, _mm512_set1_epi32(c.zero(o0 + r, g)))),
                             _mm512_set1_ps(c.scale(o0 + r, g)));
    const int64_t b1 = c.group_end(g);
    for (int64_t b = g * c.bpg; b < b1; ++b)
      for (int h = 0; h < 2; ++h) {
        __m512i idx[R];
        for (int r = 0; r < R; ++r)
          idx[r] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[r] + b * 32 + 16 * h)));
        for (int k = 0; k < 2; ++k) {
          __m512 wv[R];
          for (int r = 0; r < R; ++r) wv[r] = _mm512_permutexvar_ps(k ? _mm512_srli_epi32(idx[r], 4) : idx[r], lut[r]);
          const int64_t col = b * 64 + 16 * h + 32 * k;
          for (int t = 0; t < T; ++t) {
            __m512 xv = _mm512_loadu_ps(xs[t] + col);
            // In a register: folded into the FMAs as a memory operand it is loaded R times
            // (measured 1.7x slower at 4 x 5).
            asm("" : "+v"(xv));
            for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
          }
        }
      }
  }
  if constexpr (R == 4 && T == 4)
    store_4x4_avx512(c, o0, t0, acc);
  else
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) c.store(t0 + t, o0 + r, total_avx512(acc[r][t]));
}

// One row x T tokens on AVX2: each 16-lane accumulator is two ymm (lanes 0-7, 8-15); the weights
// are (float(u) - z) * s, the same value as the table's float(u - z) * s (both differences exact).
template <int T>
__attribute__((target("avx2,fma"))) void tile_avx2(const A16& c, int64_t o, int t0) {
  __m256 acc[T][2];
  for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
  const uint8_t* row = c.w.packed + o * c.row_bytes;
  const float* xs[T];
  for (int t = 0; t < T; ++t) xs[t] = c.x + int64_t(t0 + t) * c.K;
  const __m256i low = _mm256_set1_epi32(0x0F);
  for (int64_t g = 0; g < c.G; ++g) {
    const __m256 z = _mm256_set1_ps(float(c.zero(o, g))), s = _mm256_set1_ps(c.scale(o, g));
    const int64_t b1 = c.group_end(g);
    for (int64_t b = g * c.bpg; b < b1; ++b)
      for (int h = 0; h < 2; ++h) {
        __m256i idx[2];
        for (int q = 0; q < 2; ++q)
          idx[q] = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + b * 32 + 16 * h + 8 * q)));
        for (int k = 0; k < 2; ++k) {
          __m256 wv[2];
          for (int q = 0; q < 2; ++q) {
            const __m256i u = k ? _mm256_srli_epi32(idx[q], 4) : _mm256_and_si256(idx[q], low);
            wv[q] = _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(u), z), s);
          }
          const int64_t col = b * 64 + 16 * h + 32 * k;
          for (int t = 0; t < T; ++t)
            for (int q = 0; q < 2; ++q) acc[t][q] = _mm256_fmadd_ps(wv[q], _mm256_loadu_ps(xs[t] + col + 8 * q), acc[t][q]);
        }
      }
  }
  for (int t = 0; t < T; ++t) {
    alignas(32) float lane[16];
    _mm256_store_ps(lane, acc[t][0]);
    _mm256_store_ps(lane + 8, acc[t][1]);
    c.store(t0 + t, o, lanes_total(lane));
  }
}

// 4 x 4: 16 accumulators, 4 tables, 4 weight vectors, the codes and one token's activations fit
// the 32 zmm; 4 x 5 and 4 x 6 spilled and measured slower, 2 x 8 and 3 x 6 no faster.
constexpr int kRowsAvx512 = 4, kTokensAvx512 = 4, kTokensAvx2 = 4;

// Tokens [t0, t1) in register blocks of T, the last block narrower.
template <int R, int T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void tokens_avx512(const A16& c, int64_t o0, int t0, int t1) {
  int t = t0;
  for (; t + T <= t1; t += T) tile_avx512<R, T>(c, o0, t);
  switch (t1 - t) {
    case 1: return tile_avx512<R, 1>(c, o0, t);
    case 2: return tile_avx512<R, 2>(c, o0, t);
    case 3: return tile_avx512<R, 3>(c, o0, t);
    default: return;
  }
}
static_assert(kTokensAvx512 <= 4, "tokens_avx512 handles remainders up to 3");

// Tokens per pass over a row chunk: their activations stay in L2 while the chunk's rows
// (from L1) sweep them.
int token_block(int64_t K) { return int(std::clamp<int64_t>((256 << 10) / (K * 4), 8, 64)); }

void rows_avx512(const A16& c, int64_t o0, int64_t o1) {
  const int tb = token_block(c.K);
  for (int t0 = 0; t0 < c.M; t0 += tb) {
    const int t1 = std::min(c.M, t0 + tb);
    int64_t o = o0;
    for (; o + kRowsAvx512 <= o1; o += kRowsAvx512) tokens_avx512<kRowsAvx512, kTokensAvx512>(c, o, t0, t1);
    for (; o < o1; ++o) tokens_avx512<1, kTokensAvx512>(c, o, t0, t1);
  }
}

void rows_avx2(const A16& c, int64_t o0, int64_t o1) {
  const int tb = token_block(c.K);
  for (int t0 = 0; t0 < c.M; t0 += tb) {
    const int t1 = std::min(c.M, t0 + tb);
    for (int64_t o = o0; o < o1; ++o) {
      int t = t0;
      for (; t + kTokensAvx2 <= t1; t += kTokensAvx2) tile_avx2<kTokensAvx2>(c, o, t);
      switch (t1 - t) {
        case 1: tile_avx2<1>(c, o, t); break;
        case 2: tile_avx2<2>(c, o, t); break;
        case 3: tile_avx2<3>(c, o, t); break;
        default: break;
      }
    }
  }
}

constexpr int64_t kRowChunk = 64;  // output rows per unit of work handed to a thread
constexpr int64_t kDecodeRowChunk = 512;  // the same at M <= 4 (int4_gemm_a16_int16)

}  // namespace

void int4_gemm_f32(const Int4Weights& w, const float* x, int rows, const float* bias, float* y, Isa isa) {
  if (w.group_size < w.cols && (w.group_size % kInt4Block != 0 || w.cols % w.group_size != 0))
    throw Error("int4_gemm_f32",
                "group size " + std::to_string(w.group_size) + " must be a multiple of 64 dividing " + std::to_string(w.cols));
  if (rows <= 0 || w.rows == 0) return;
  if (!isa_supported(isa)) isa = best_isa();
  if (isa == Isa::Avx2 && !__builtin_cpu_supports("fma")) isa = Isa::Scalar;
  const int64_t K = w.cols_padded();
  const float* xp = x;
  thread_local std::vector<float> padded;
  if (K != w.cols) {  // the kernels read whole blocks: copy to rows of K with zeros after cols
    padded.assign(std::size_t(int64_t(rows) * K), 0.f);
    for (int t = 0; t < rows; ++t) std::copy(x + int64_t(t) * w.cols, x + int64_t(t + 1) * w.cols, padded.begin() + int64_t(t) * K);
    xp = padded.data();
  }
  const A16 c{w, xp, rows, bias, y, K, w.groups(), w.blocks_per_group(), K / kInt4Block, K / 2};
  auto run = [&](int64_t o0, int64_t n) {
    switch (isa) {
      case Isa::Avx512Vnni: return rows_avx512(c, o0, o0 + n);
      case Isa::Avx2: return rows_avx2(c, o0, o0 + n);
      case Isa::Scalar: return rows_scalar(c, o0, o0 + n);
    }
  };
  // Chunks of rows handed out one at a time (a thread that waits for a core does not hold back
  // a fixed half of the rows); each output's sum is the same whichever thread computes it.
  detail::for_fixed_chunks(w.rows, kRowChunk, double(rows) * double(K) * double(w.rows) >= detail::kParallelMacs, run);
}

// ------------------------------------------------------------ 16-bit integer activations
// (quarot/int4_a16.hpp): the products are exact int32 sums of vpdpwssd, the fp32 epilogue one
// fixed order.

namespace {

constexpr int64_t kSpanBlocks = 1024;  // 16 lanes x 4 columns x 1024 blocks x 15 x 32767 < 2^31

struct I16 {
  const Int4Weights& w;
  const int16_t* xq;  // [M][K] codes, the padded columns 0
  const float* sx;    // [M][G]
  const uint32_t* xsum;  // [M][nb + 1]: the sum of the codes of blocks < b (mod 2^32), for the zero points
  int M;
  const float* bias;
  float* y;
  int64_t K, G, bpg, nb, row_bytes;
  int64_t group_end(int64_t g) const { return std::min(nb, (g + 1) * bpg); }
  int zero(int64_t o, int64_t g) const { return w.zeros ? w.zeros[o * G + g] : 8; }
  uint32_t code_sum(int t, int64_t b0, int64_t b1) const { return xsum[int64_t(t) * (nb + 1) + b1] - xsum[int64_t(t) * (nb + 1) + b0]; }
  // The factor of a span's integer lanes: one rounding, the same on every path.
  float factor(int64_t o, int t, int64_t g) const { return w.scales[o * G + g] * sx[int64_t(t) * G + g]; }
  void store(int t, int64_t o, float total) const { y[int64_t(t) * w.rows + o] = bias ? total + bias[o] : total; }
};

void rows_i16_scalar(const I16& c, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const uint8_t* row = c.w.packed + o * c.row_bytes;
    for (int t = 0; t < c.M; ++t) {
      const int16_t* xt = c.xq + int64_t(t) * c.K;
      float total = 0.f;
      for (int64_t g = 0; g < c.G; ++g) {
        const int z = c.zero(o, g);
        const float f = c.factor(o, t, g);
        for (int64_t s0 = g * c.bpg; s0 < c.group_end(g); s0 += kSpanBlocks) {
          int32_t sum = 0;  // exact: any order gives the same integer
          for (int64_t b = s0; b < std::min(c.group_end(g), s0 + kSpanBlocks); ++b)
            for (int i = 0; i < 64; ++i) {  // column 64b + i: byte i % 32, low nibble for i < 32
              const uint8_t byte = row[b * 32 + i % 32];
              const int u = i < 32 ? byte & 0x0F : byte >> 4;
              sum += (u - z) * int32_t(xt[b * 64 + i]);
            }
          total = std::fma(float(sum), f, total);
        }
      }
      c.store(t, o, total);
    }
  }
}

// The 16 exact integer totals of a 4 x 4 tile in one vector, 128-bit lane j, element e: the
// total of acc[e][j] (row o0 + e, token t0 + j) -- store_4x4_avx512's transpose-and-add, in
// integers (so its order does not matter).
__attribute__((target("avx512f"))) inline __m512i totals_4x4_epi32(const __m512i (&acc)[4][4]) {
  const __m512i* v = &acc[0][0];  // v[4 r + t]
  auto ps = [](__m512i i) { return _mm512_castsi512_ps(i); };
  auto si = [](__m512 f) { return _mm512_castps_si512(f); };
  __m512i u[8], w[4], z[2];
  for (int m = 0; m < 8; ++m)
    u[m] = _mm512_add_epi32(si(_mm512_shuffle_f32x4(ps(v[2 * m]), ps(v[2 * m + 1]), 0x44)),
                            si(_mm512_shuffle_f32x4(ps(v[2 * m]), ps(v[2 * m + 1]), 0xEE)));
  for (int n = 0; n < 4; ++n)
    w[n] = _mm512_add_epi32(si(_mm512_shuffle_f32x4(ps(u[2 * n]), ps(u[2 * n + 1]), 0x88)),
                            si(_mm512_shuffle_f32x4(ps(u[2 * n]), ps(u[2 * n + 1]), 0xDD)));
  for (int a = 0; a < 2; ++a)
    z[a] = _mm512_add_epi32(si(_mm512_shuffle_ps(ps(w[2 * a]), ps(w[2 * a + 1]), 0x44)),
                            si(_mm512_shuffle_ps(ps(w[2 * a]), ps(w[2 * a + 1]), 0xEE)));
  return _mm512_add_epi32(si(_mm512_shuffle_ps(ps(z[0]), ps(z[1]), 0x88)), si(_mm512_shuffle_ps(ps(z[0]), ps(z[1]), 0xDD)));
}

// The 4 exact integer totals of 4 accumulators (rows o0 .. o0 + 3 of one token), element e: the
// total of a[e]. Integers, so the tree's order does not matter.
__attribute__((target("avx512f"))) inline __m128i totals_4x1_epi32(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  const __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));  // per 128-bit lane
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(t), _mm512_extracti64x4_epi64(t, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// R rows x T tokens: R * T int32 accumulators per span; at its end their exact totals, one FMA
// each with the span's factor (4 x 4: 16 totals in one vector, one cvt, one FMA).
template <int R, int T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) void tile_i16_avx512(const I16& c, int64_t o0, int t0) {
  constexpr bool kFull = R == 4 && T == 4;
  constexpr bool kRows4 = R == 4 && T < 4;  // decode and remainders: 4 rows' totals per token in one vector
  __m512 total16 = _mm512_setzero_ps();  // kFull: lane 4 j + e = row o0 + e, token t0 + j
  __m128 total4[T];                      // kRows4: lane e = row o0 + e
  for (auto& v : total4) v = _mm_setzero_ps();
  float total[R][T] = {};
  const __m512i low = _mm512_set1_epi16(0x0F);
  const __m512i token_of_lane = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i eight = _mm512_set1_epi32(8);
  const uint8_t* rows[R];
  for (int r = 0; r < R; ++r) rows[r] = c.w.packed + (o0 + r) * c.row_bytes;
  const int16_t* xs[T];
  for (int t = 0; t < T; ++t) xs[t] = c.xq + int64_t(t0 + t) * c.K;
  for (int64_t g = 0; g < c.G; ++g) {
    const int64_t g1 = c.group_end(g);
    for (int64_t s0 = g * c.bpg; s0 < g1; s0 += kSpanBlocks) {
      // The sums of u * q (wrapping mod 2^32); z * (the span's code sum) comes off at the span's
      // end, so the exact sum of (u - z) * q, in range, is what remains.
      __m512i acc[R][T];
      for (auto& r : acc)
        for (auto& a : r) a = _mm512_setzero_si512();
      const int64_t s1 = std::min(g1, s0 + kSpanBlocks);
      for (int64_t b = s0; b < s1; ++b) {
        __m512i raw[R];
        for (int r = 0; r < R; ++r) raw[r] = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + b * 32)));
        for (int k = 0; k < 2; ++k) {
          __m512i wv[R];  // words i: column 64b + 32k + i, u
          for (int r = 0; r < R; ++r) wv[r] = k ? _mm512_srli_epi16(raw[r], 4) : _mm512_and_si512(raw[r], low);
          for (int t = 0; t < T; ++t) {
            __m512i xv = _mm512_loadu_si512(xs[t] + b * 64 + 32 * k);
            asm("" : "+v"(xv));  // one load shared by the R rows (as in tile_avx512)
            for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], wv[r], xv);
          }
        }
      }
      if constexpr (kFull) {
        // lane 4 j + e: s_w[o0 + e][g] * s_x[t0 + j][g], the same fp32 product as I16::factor
        const __m512 sw = _mm512_broadcast_f32x4(_mm_setr_ps(c.w.scales[o0 * c.G + g], c.w.scales[(o0 + 1) * c.G + g],
                                                             c.w.scales[(o0 + 2) * c.G + g], c.w.scales[(o0 + 3) * c.G + g]));
        const __m512 sx = _mm512_permutexvar_ps(
            token_of_lane, _mm512_castps128_ps512(_mm_setr_ps(c.sx[int64_t(t0) * c.G + g], c.sx[int64_t(t0 + 1) * c.G + g],
                                                              c.sx[int64_t(t0 + 2) * c.G + g], c.sx[int64_t(t0 + 3) * c.G + g])));
        const __m512i qs = _mm512_permutexvar_epi32(
            token_of_lane, _mm512_castsi128_si512(_mm_setr_epi32(int(c.code_sum(t0, s0, s1)), int(c.code_sum(t0 + 1, s0, s1)),
                                                                 int(c.code_sum(t0 + 2, s0, s1)), int(c.code_sum(t0 + 3, s0, s1)))));
        const __m512i zq = c.w.zeros ? _mm512_mullo_epi32(_mm512_broadcast_i32x4(_mm_setr_epi32(c.zero(o0, g), c.zero(o0 + 1, g),
                                                                                                 c.zero(o0 + 2, g), c.zero(o0 + 3, g))),
                                                          qs)
                                     : _mm512_mullo_epi32(eight, qs);
        const __m512i sum = _mm512_sub_epi32(totals_4x4_epi32(acc), zq);
        total16 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(sw, sx), total16);
      } else if constexpr (kRows4) {
        // The same integers, products and FMA as below, four rows per vector.
        const __m128 sw = _mm_setr_ps(c.w.scales[o0 * c.G + g], c.w.scales[(o0 + 1) * c.G + g], c.w.scales[(o0 + 2) * c.G + g],
                                      c.w.scales[(o0 + 3) * c.G + g]);
        const __m128i z = _mm_setr_epi32(c.zero(o0, g), c.zero(o0 + 1, g), c.zero(o0 + 2, g), c.zero(o0 + 3, g));
        for (int t = 0; t < T; ++t) {
          const __m128i uq = totals_4x1_epi32(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
          const __m128i sum = _mm_sub_epi32(uq, _mm_mullo_epi32(z, _mm_set1_epi32(int(c.code_sum(t0 + t, s0, s1)))));
          const __m128 f = _mm_mul_ps(sw, _mm_set1_ps(c.sx[int64_t(t0 + t) * c.G + g]));
          total4[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(sum), f, total4[t]);
        }
      } else {
        for (int r = 0; r < R; ++r)
          for (int t = 0; t < T; ++t) {
            const uint32_t uq = uint32_t(_mm512_reduce_add_epi32(acc[r][t]));
            const int32_t sum = int32_t(uq - uint32_t(c.zero(o0 + r, g)) * c.code_sum(t0 + t, s0, s1));
            total[r][t] = std::fma(float(sum), c.factor(o0 + r, t0 + t, g), total[r][t]);
          }
      }
    }
  }
  if constexpr (kFull) {
    store_totals_4x4(c, o0, t0, total16);
  } else if constexpr (kRows4) {
    for (int t = 0; t < T; ++t) {
      __m128 q = total4[t];
      if (c.bias) q = _mm_add_ps(q, _mm_loadu_ps(c.bias + o0));
      _mm_storeu_ps(c.y + int64_t(t0 + t) * c.w.rows + o0, q);
    }
  } else {
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) c.store(t0 + t, o0 + r, total[r][t]);
  }
}

// 4 x 4: 16 int32 accumulators, 4 code vectors, 4 weight vectors, 4 zero points and one token's
// codes; 4 x 5 and 4 x 6 measured slower in a prototype (spills).
template <int R, int T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void tokens_i16_avx512(const I16& c, int64_t o0, int t0, int t1) {
  int t = t0;
  for (; t + T <= t1; t += T) tile_i16_avx512<R, T>(c, o0, t);
  if (t + 4 <= t1) tile_i16_avx512<R, 4>(c, o0, t), t += 4;
  switch (t1 - t) {
    case 1: return tile_i16_avx512<R, 1>(c, o0, t);
    case 2: return tile_i16_avx512<R, 2>(c, o0, t);
    case 3: return tile_i16_avx512<R, 3>(c, o0, t);
    default: return;
  }
}


void rows_i16_avx512(const I16& c, int64_t o0, int64_t o1) {
  // Tokens per pass over a row chunk: their codes stay in L2 (1 MB here) while the chunk's rows
  // sweep them; a multiple of the 4-token tile, and at least 16 (at K = 11008, 256 KB gave 11
  // tokens: M = 16 ran as tiles of 4, 4, 3, 4, 1).
  const int tb = int(std::clamp<int64_t>((512 << 10) / (c.K * 2), 16, 128)) / 4 * 4;
  for (int t0 = 0; t0 < c.M; t0 += tb) {
    const int t1 = std::min(c.M, t0 + tb);
    int64_t o = o0;
    for (; o + 4 <= o1; o += 4) tokens_i16_avx512<4, 4>(c, o, t0, t1);
    for (; o < o1; ++o) tokens_i16_avx512<1, 4>(c, o, t0, t1);
  }
}

}  // namespace

void int4_gemm_a16_int16(const Int4Weights& w, const float* x, int rows, const float* bias, float* y, Isa isa) {
  if (w.group_size < w.cols && (w.group_size % kInt4Block != 0 || w.cols % w.group_size != 0))
    throw Error("int4_gemm_a16_int16",
                "group size " + std::to_string(w.group_size) + " must be a multiple of 64 dividing " + std::to_string(w.cols));
  if (rows <= 0 || w.rows == 0) return;
  if (!isa_supported(isa)) isa = best_isa();
  const int64_t K = w.cols_padded(), G = w.groups();
  const int64_t gcols = w.group_size >= w.cols ? w.cols : w.group_size;
  thread_local std::vector<int16_t> xq;
  thread_local std::vector<float> sx;
  xq.assign(std::size_t(int64_t(rows) * K), 0);
  sx.assign(std::size_t(int64_t(rows) * G), 0.f);
  for (int t = 0; t < rows; ++t)
    for (int64_t g = 0; g < G; ++g) {
      // The codes of quarot/act16.hpp (the simulation's rounding too).
      const float* xg = x + int64_t(t) * w.cols + g * gcols;
      const int64_t n = std::min(gcols, w.cols - g * gcols);
      const float m = act16_max_abs(xg, n);
      if (!std::isfinite(m)) return int4_gemm_f32(w, x, rows, bias, y, isa);
      if (m == 0.f) continue;
      const float inv = act16_inverse_scale(m);
      sx[std::size_t(int64_t(t) * G + g)] = act16_scale(m);
      int16_t* q = xq.data() + int64_t(t) * K + g * gcols;
      for (int64_t i = 0; i < n; ++i) q[i] = act16_code(xg[i], inv);
    }
  const int64_t nb = K / kInt4Block;
  thread_local std::vector<uint32_t> xsum;
  xsum.assign(std::size_t(int64_t(rows) * (nb + 1)), 0);
  for (int t = 0; t < rows; ++t) {
    uint32_t* p = xsum.data() + int64_t(t) * (nb + 1);
    const int16_t* q = xq.data() + int64_t(t) * K;
    for (int64_t b = 0; b < nb; ++b) {
      int32_t s = 0;
      for (int i = 0; i < kInt4Block; ++i) s += q[b * kInt4Block + i];
      p[b + 1] = p[b] + uint32_t(s);
    }
  }
  const I16 c{w, xq.data(), sx.data(), xsum.data(), rows, bias, y, K, G, w.blocks_per_group(), nb, K / 2};
  const bool avx512 = isa == Isa::Avx512Vnni;
  // Decode streams the weights once: long runs of rows per thread, as the W4A4 GEMV
  // (int4_gemv.cpp); prefill keeps chunks whose weights stay in L2 across token blocks.
  const int64_t chunk = rows <= 4 ? kDecodeRowChunk : kRowChunk;
  detail::for_fixed_chunks(w.rows, chunk, double(rows) * double(K) * double(w.rows) >= detail::kParallelMacs,
                           [&](int64_t o0, int64_t n) { avx512 ? rows_i16_avx512(c, o0, o0 + n) : rows_i16_scalar(c, o0, o0 + n); });
}

}  // namespace quarot
