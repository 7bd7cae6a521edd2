// INT4 kernels: a scalar reference and AVX2 / AVX-512-VNNI paths (compiled for those targets
// with function attributes and chosen at run time, so the library runs on any x86-64).
// This file is compiled with -ffp-contract=off (see src/CMakeLists.txt): the fp32 epilogue must
// round the same way in every path.
#include "quarot/int4.hpp"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/fixed_chunks.hpp"
#include "quarot/error.hpp"
#include "int4_internal.hpp"

namespace quarot {

void pack_int4_row(const uint8_t* u, int64_t cols, uint8_t pad, uint8_t* out) {
  const int64_t padded = int4_padded_cols(cols);
  for (int64_t b = 0; b < padded / kInt4Block; ++b)
    for (int j = 0; j < 32; ++j) {
      const int64_t lo = b * kInt4Block + j, hi = lo + 32;
      const uint8_t a = lo < cols ? u[lo] : pad, c = hi < cols ? u[hi] : pad;
      out[b * 32 + j] = uint8_t((a & 0x0F) | ((c & 0x0F) << 4));
    }
}

float Int4Weights::weight(int64_t r, int64_t c) const {
  const int64_t g = group_size >= cols ? 0 : c / group_size;
  const int z = zeros ? zeros[r * groups() + g] : 8;
  return float(int(int4_at(packed + r * (cols_padded() / 2), c)) - z) * scales[r * groups() + g];
}

// ---------------------------------------------------------------- activation quantization

namespace {

// Per-row parameters exactly as the fake quantizer computes them (quant.cpp: params_from_range
// on [clip*lo, clip*hi], symmetric: scale = clip*max|x| / qmax rounded to fp32).
double act_scale(const float* x, int64_t cols, int bits, double clip) {
  double lo = x[0], hi = x[0];
  for (int64_t i = 0; i < cols; ++i) {
    lo = std::min(lo, double(x[i]));
    hi = std::max(hi, double(x[i]));
  }
  const double m = std::max(std::fabs(lo * clip), std::fabs(hi * clip));
  const int qmax = (1 << (bits - 1)) - 1;
  double s = m > 0 ? double(float(m / qmax)) : 1.0;
  return s == 0 ? 1.0 : s;
}

void quantize_row_scalar(const float* x, int64_t cols, double scale, int qmin, int qmax, int8_t* q) {
  for (int64_t i = 0; i < cols; ++i) {
    double v = __builtin_nearbyint(double(x[i]) / scale);
    v = std::min(std::max(v, double(qmin)), double(qmax));
    q[i] = int8_t(v);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void quantize_row_avx512(const float* x, int64_t cols, double scale,
                                                                              int qmin, int qmax, int8_t* q) {
  const __m512d s = _mm512_set1_pd(scale), lo = _mm512_set1_pd(qmin), hi = _mm512_set1_pd(qmax);
  int64_t i = 0;
  for (; i + 8 <= cols; i += 8) {
    const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
    __m512d r = _mm512_roundscale_pd(_mm512_div_pd(v, s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_min_pd(_mm512_max_pd(r, lo), hi);
    const __m256i i32 = _mm512_cvtpd_epi32(r);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm256_cvtepi32_epi8(i32));
  }
  quantize_row_scalar(x + i, cols - i, scale, qmin, qmax, q + i);
}

}  // namespace

void quantize_activations(const float* x, int rows, int64_t cols, int bits, double clip, int64_t group, Int8Activations& out,
                          Isa isa) {
  if (bits < 2 || bits > 8) throw Error("int4", "activation bits must be 2..8, got " + std::to_string(bits));
  if (group < 0) throw Error("int4", "activation group must be >= 0, got " + std::to_string(group));
  out.rows = rows;
  out.cols = cols;
  out.cols_padded = int4_padded_cols(cols);
  out.group = group >= cols ? 0 : group;
  const int64_t K = out.cols_padded, nb = K / kInt4Block, gs = out.group > 0 ? out.group : std::max<int64_t>(cols, 1),
                GA = out.groups();
  out.q.assign(std::size_t(rows * K), 0);
  out.scale.resize(std::size_t(rows * GA));
  out.block_sums.assign(std::size_t(rows * nb), 0);
  const int qmin = -(1 << (bits - 1)), qmax = (1 << (bits - 1)) - 1;
#pragma omp parallel for schedule(static) if (int64_t(rows) * cols > (1 << 16))
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + int64_t(r) * cols;
    int8_t* qr = out.q.data() + int64_t(r) * K;
    for (int64_t g = 0; g < GA; ++g) {
      const int64_t c0 = g * gs, n = std::min(gs, cols - c0);
      const double s = n > 0 ? act_scale(xr + c0, n, bits, clip) : 1.0;
      out.scale[std::size_t(r * GA + g)] = float(s);
      if (n <= 0) continue;
      if (isa == Isa::Avx512Vnni)
        quantize_row_avx512(xr + c0, n, s, qmin, qmax, qr + c0);
      else
        quantize_row_scalar(xr + c0, n, s, qmin, qmax, qr + c0);
    }
    for (int64_t b = 0; b < nb; ++b) {
      int32_t sum = 0;
      for (int j = 0; j < kInt4Block; ++j) sum += qr[b * kInt4Block + j];
      out.block_sums[std::size_t(int64_t(r) * nb + b)] = sum;
    }
  }
}

// ---------------------------------------------------------------- GEMM

namespace {

// Segments and GemmContext (the epilogue): int4_internal.hpp, shared with int4_gemv.cpp.
using int4_detail::block_mask;
using int4_detail::GemmContext;

void gemm_scalar(const GemmContext& c) {
  const auto& w = c.w;
  const int64_t row_bytes = c.K / 2;
#pragma omp parallel for schedule(static) if (w.rows * c.x.rows * c.K > (1 << 20))
  for (int64_t o = 0; o < w.rows; ++o) {
    const uint8_t* pr = w.packed + o * row_bytes;
    for (int t = 0; t < c.x.rows; ++t) {
      const int8_t* q = c.x.q.data() + int64_t(t) * c.K;
      float acc = 0.f;
      for (std::size_t s = 0; s < c.seg.size(); ++s) {
        int32_t dot = 0;
        for (int64_t i = c.seg[s].c0; i < c.seg[s].c1; ++i) dot += int32_t(int4_at(pr, i)) * q[i];
        c.add(acc, o, s, t, dot);
      }
      c.store(t, o, acc);
    }
  }
}

// Unpacks `nr` packed rows into one byte per code (rows nr..R-1 zero-filled).
__attribute__((target("avx2"))) void unpack_rows(const uint8_t* packed, int64_t row_bytes, int nr, int R, int64_t K,
                                                 uint8_t* out) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (int r = 0; r < nr; ++r) {
    const uint8_t* src = packed + r * row_bytes;
    uint8_t* dst = out + r * K;
    for (int64_t b = 0; b < K / kInt4Block; ++b) {
      const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + b * 32));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + b * 64), _mm256_and_si256(p, mask));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + b * 64 + 32), _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
    }
  }
  if (nr < R) std::memset(out + nr * K, 0, std::size_t((R - nr) * K));
}

constexpr int kTokenBlock = 64;  // tokens whose codes stay in L2 while a row tile sweeps them

template <int R, int T, class TileFn>
void gemm_tiled(const GemmContext& c, TileFn tile) {
  const auto& w = c.w;
  const int M = c.x.rows;
  const int64_t row_bytes = c.K / 2;
  const std::vector<int8_t> zero_row(std::size_t(c.K), 0);
  const bool parallel = w.rows * int64_t(M) * c.K > (1 << 20);
  for (int tb = 0; tb < M; tb += kTokenBlock) {
    const int te = std::min(M, tb + kTokenBlock);
#pragma omp parallel if (parallel)
    {
      std::vector<uint8_t> wu(std::size_t(R * c.K) + 64);
      uint8_t* wa = wu.data() + (64 - reinterpret_cast<uintptr_t>(wu.data()) % 64) % 64;
#pragma omp for schedule(static)
      for (int64_t o0 = 0; o0 < w.rows; o0 += R) {
        const int nr = int(std::min<int64_t>(R, w.rows - o0));
        unpack_rows(w.packed + o0 * row_bytes, row_bytes, nr, R, c.K, wa);
        for (int t0 = tb; t0 < te; t0 += T) {
          const int nt = std::min(T, te - t0);
          const int8_t* xs[T];
          for (int t = 0; t < T; ++t) xs[t] = t < nt ? c.x.q.data() + int64_t(t0 + t) * c.K : zero_row.data();
          float acc[R][T] = {};
          for (std::size_t s = 0; s < c.seg.size(); ++s) {
            int32_t dots[R][T];
            tile(wa, xs, c.seg[s].c0, c.seg[s].c1, c.K, dots);
            for (int r = 0; r < nr; ++r)
              for (int t = 0; t < nt; ++t) c.add(acc[r][t], o0 + r, s, t0 + t, dots[r][t]);
          }
          for (int r = 0; r < nr; ++r)
            for (int t = 0; t < nt; ++t) c.store(t0 + t, o0 + r, acc[r][t]);
        }
      }
    }
  }
}

// 4 rows x 4 tokens of int32 dots over columns [c0, c1): 16 zmm accumulators, vpdpbusd. A block
// the range covers in part (activation groups narrower than a block) loads the codes masked.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void tile_avx512(const uint8_t* wu, const int8_t* const* xs,
                                                                                 int64_t c0, int64_t c1, int64_t K,
                                                                                 int32_t (&dots)[4][4]) {
  __m512i acc[4][4];
  for (auto& r : acc)
    for (auto& a : r) a = _mm512_setzero_si512();
  for (int64_t b = c0 / kInt4Block; b * kInt4Block < c1; ++b) {
    const uint64_t m = block_mask(b, c0, c1);
    __m512i wv[4], xv[4];
    for (int r = 0; r < 4; ++r) wv[r] = _mm512_load_si512(wu + r * K + b * 64);
    for (int t = 0; t < 4; ++t) {
      xv[t] = m == ~0ull ? _mm512_loadu_si512(xs[t] + b * 64) : _mm512_maskz_loadu_epi8(m, xs[t] + b * 64);
      // Keep the codes in a register: folded into vpdpbusd as memory operands they would be
      // loaded 4 times each (20 loads per 16 vpdpbusd; the loop was load-bound).
      asm("" : "+v"(xv[t]));
    }
    for (int r = 0; r < 4; ++r)
      for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], xv[t]);
  }
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < 4; ++t) dots[r][t] = _mm512_reduce_add_epi32(acc[r][t]);
}

// 4 rows x 2 tokens: u8 x s8 -> s16 pairs (no saturation: |15 * 128 * 2| < 2^15) -> s32.
// Columns [c0, c1) as in tile_avx512: a partly covered half-block ANDs the codes with a byte mask.
__attribute__((target("avx2"))) void tile_avx2(const uint8_t* wu, const int8_t* const* xs, int64_t c0, int64_t c1, int64_t K,
                                               int32_t (&dots)[4][2]) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i iota = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
                                        25, 26, 27, 28, 29, 30, 31);
  __m256i acc[4][2];
  for (auto& r : acc)
    for (auto& a : r) a = _mm256_setzero_si256();
  for (int64_t b = c0 / kInt4Block; b * kInt4Block < c1; ++b)
    for (int h = 0; h < 2; ++h) {
      const int64_t off = b * 64 + h * 32;
      __m256i xv[2];
      for (int t = 0; t < 2; ++t) xv[t] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs[t] + off));
      if (off < c0 || off + 32 > c1) {
        const int lo = int(std::clamp<int64_t>(c0 - off, 0, 32)), hi = int(std::clamp<int64_t>(c1 - off, 0, 32));
        const __m256i in = _mm256_and_si256(_mm256_cmpgt_epi8(_mm256_set1_epi8(char(hi)), iota),
                                            _mm256_cmpgt_epi8(iota, _mm256_set1_epi8(char(lo - 1))));
        for (int t = 0; t < 2; ++t) xv[t] = _mm256_and_si256(xv[t], in);
      }
      for (int r = 0; r < 4; ++r) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wu + r * K + off));
        for (int t = 0; t < 2; ++t)
          acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv[t]), ones));
      }
    }
  for (int r = 0; r < 4; ++r)
    for (int t = 0; t < 2; ++t) {
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[r][t]), _mm256_extracti128_si256(acc[r][t], 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
      dots[r][t] = _mm_cvtsi128_si32(s);
    }
}

// Decode shapes (1..3 tokens): every packed byte is unpacked in registers right before use and
// shared by the T tokens; no scratch buffer, one pass over the weights (memory-bound).
template <int T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void gemv_avx512(const GemmContext& c) {
  constexpr int R = 4;
  const auto& w = c.w;
  const int64_t row_bytes = c.K / 2, tiles = (w.rows + R - 1) / R;
  const __m256i mask = _mm256_set1_epi8(0x0F);
#pragma omp parallel for schedule(static) if (w.rows * c.K > (1 << 18))
  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int64_t o0 = tile * R;
    const int nr = int(std::min<int64_t>(R, w.rows - o0));
    const uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = w.packed + (o0 + std::min(r, nr - 1)) * row_bytes;  // spare lanes repeat the last row
    float acc[R][T] = {};
    for (std::size_t s = 0; s < c.seg.size(); ++s) {
      __m512i sum[R][T];
      for (auto& a : sum)
        for (auto& v : a) v = _mm512_setzero_si512();
      const int64_t c0 = c.seg[s].c0, c1 = c.seg[s].c1;
      for (int64_t b = c0 / kInt4Block; b * kInt4Block < c1; ++b) {
        const uint64_t m = block_mask(b, c0, c1);
        __m512i xv[T];
        for (int t = 0; t < T; ++t) {
          const int8_t* xp = c.x.q.data() + int64_t(t) * c.K + b * 64;
          xv[t] = m == ~0ull ? _mm512_loadu_si512(xp) : _mm512_maskz_loadu_epi8(m, xp);
          asm("" : "+v"(xv[t]));  // one load per block, not one per row (see tile_avx512)
        }
        for (int r = 0; r < R; ++r) {
          const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + b * 32));
          const __m256i lo = _mm256_and_si256(p, mask), hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask);
          const __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
          for (int t = 0; t < T; ++t) sum[r][t] = _mm512_dpbusd_epi32(sum[r][t], wv, xv[t]);
        }
      }
      for (int r = 0; r < nr; ++r)
        for (int t = 0; t < T; ++t) c.add(acc[r][t], o0 + r, s, t, _mm512_reduce_add_epi32(sum[r][t]));
    }
    for (int r = 0; r < nr; ++r)
      for (int t = 0; t < T; ++t) c.store(t, o0 + r, acc[r][t]);
  }
}

// out[d] lane j = in[j] lane d, for 16 vectors of 16 dwords.
__attribute__((target("avx512f"))) inline void transpose16(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // u[4i + m], 128-bit lane L: dword 4L + m of in[4i .. 4i + 3]
    u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int m = 0; m < 4; ++m) {  // a 4 x 4 transpose of 128-bit lanes
    const __m512i p = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x44), q = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x44);
    const __m512i hp = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xEE), hq = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xEE);
    r[m] = _mm512_shuffle_i32x4(p, q, 0x88);
    r[4 + m] = _mm512_shuffle_i32x4(p, q, 0xDD);
    r[8 + m] = _mm512_shuffle_i32x4(hp, hq, 0x88);
    r[12 + m] = _mm512_shuffle_i32x4(hp, hq, 0xDD);
  }
}

// 16 lanes added pairwise (lane i + lane i + 8, then + 4, + 2, + 1): the previous grouped order.
__attribute__((target("avx512f"))) inline float lane_total(__m512 f) {
  const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(f), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)));
  const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 d = _mm_add_ps(b, _mm_movehl_ps(b, b));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

// 4 rows x 4 tokens of int32 lane dots over `steps` interleaved steps of 64 codes (the loop of
// tile_avx512 without the horizontal sums; a function of its own keeps its 16 accumulators in
// registers).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), noinline)) void lane_dots_avx512(
    const uint8_t* w, int64_t w_stride, const int8_t* x, int64_t x_stride, int64_t steps, __m512i (&acc)[4][4]) {
  for (auto& r : acc)
    for (auto& a : r) a = _mm512_setzero_si512();
  for (int64_t k = 0; k < steps; ++k) {
    __m512i wv[4], xv[4];
    for (int r = 0; r < 4; ++r) wv[r] = _mm512_load_si512(w + r * w_stride + k * 64);
    for (int t = 0; t < 4; ++t) {
      xv[t] = _mm512_loadu_si512(x + t * x_stride + k * 64);
      asm("" : "+v"(xv[t]));  // see tile_avx512
    }
    for (int r = 0; r < 4; ++r)
      for (int t = 0; t < 4; ++t) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], xv[t]);
  }
}

// The previous grouped prefill GEMM (int4_gemm_previous, the benches' baseline; int4_gemm runs
// gemm_rows_avx512): its fp32 sums add in the earlier defined order (a group's term s_x * d into
// lane g % 16, the lanes pairwise at the end), not GemmContext::add's.
// Activation groups of whole blocks with per-channel weights, at least 4 tokens: one group per
// int32 lane, so a group's dot needs no horizontal sum. The codes of 16 groups (a super-block)
// are interleaved dword by dword (step k, lane j = codes 4k..4k+3 of group 16 sb + j; the weights
// by a 16 x 16 dword transpose of their unpacked blocks), the int32 lanes are the 16 groups' dots
// after a super-block, and the epilogue runs once per super-block in vector lanes -- the same fp32
// operations, per lane, as that order. A last super-block of n < 16 groups
// spreads each group over L = 2, 4, .. lanes (parts of bpg / L blocks; lane j = group j % (16 / L),
// part j / (16 / L)) and adds the parts before the epilogue: 4096 x 11008 (86 groups of 128)
// would otherwise multiply 10 empty groups.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void gemm_grouped_avx512(const GemmContext& c) {
  constexpr int R = 4, T = 4, kBlockTokens = kTokenBlock;
  const auto& w = c.w;
  const auto& x = c.x;
  const int M = x.rows, Mp = (M + T - 1) / T * T;
  const int64_t K = c.K, nb = K / kInt4Block, gs = x.group, bpg = gs / kInt4Block, GA = c.GA, NSB = (GA + 15) / 16,
                S = int64_t(c.seg.size()), row_bytes = K / 2;
  std::vector<int64_t> lanes(std::size_t(NSB), 1), off(std::size_t(NSB + 1), 0);  // lanes per group; byte offsets
  for (int64_t sb = 0; sb < NSB; ++sb) {
    const int64_t n = std::min<int64_t>(16, GA - sb * 16);
    int64_t L = 1;
    while (n * L * 2 <= 16 && bpg % (L * 2) == 0) L *= 2;
    lanes[std::size_t(sb)] = L;
    off[std::size_t(sb + 1)] = off[std::size_t(sb)] + bpg / L * kInt4Block * 16;
  }
  const int64_t KI = off[std::size_t(NSB)];
  const bool sym = w.zeros == nullptr;
  std::vector<int8_t> xi(std::size_t(Mp * KI), 0);
  std::vector<int32_t> xs(std::size_t(Mp * NSB * 16), 0);  // 8 * xsum when symmetric, else xsum
  std::vector<float> sx(std::size_t(Mp * NSB * 16), 0.f);
#pragma omp parallel for schedule(static) if (int64_t(M) * K > (1 << 16))
  for (int t = 0; t < M; ++t)
    for (int64_t g = 0; g < GA; ++g) {
      const int64_t sb = g / 16, slot = g % 16, L = lanes[std::size_t(sb)], part_dw = bpg / L * 16,
                    n_dw = std::min(gs, K - g * gs) / 4;
      const int8_t* src = x.q.data() + t * K + g * gs;
      int8_t* dst = xi.data() + t * KI + off[std::size_t(sb)] + slot * 4;
      for (int64_t p = 0, dw = 0; p < L; ++p)
        for (int64_t k = 0; k < part_dw && dw < n_dw; ++k, ++dw) std::memcpy(dst + k * 64 + p * (16 / L) * 4, src + 4 * dw, 4);
      xs[std::size_t((t * NSB + sb) * 16 + slot)] = (sym ? 8 : 1) * c.xsum[std::size_t(t * S + g)];
      sx[std::size_t((t * NSB + sb) * 16 + slot)] = x.scale[std::size_t(t * GA + g)];
    }
  const bool parallel = w.rows * int64_t(M) * K > (1 << 20);
  for (int tb = 0; tb < M; tb += kBlockTokens) {
    const int te = std::min(M, tb + kBlockTokens);
#pragma omp parallel if (parallel)
    {
      std::vector<uint8_t> wu(std::size_t(R * K) + 64), wiv(std::size_t(R * KI) + 64);
      uint8_t* wa = wu.data() + (64 - reinterpret_cast<uintptr_t>(wu.data()) % 64) % 64;
      uint8_t* wi = wiv.data() + (64 - reinterpret_cast<uintptr_t>(wiv.data()) % 64) % 64;
#pragma omp for schedule(static)
      for (int64_t o0 = 0; o0 < w.rows; o0 += R) {
        const int nr = int(std::min<int64_t>(R, w.rows - o0));
        unpack_rows(w.packed + o0 * row_bytes, row_bytes, nr, R, K, wa);
        for (int r = 0; r < R; ++r)
          for (int64_t sb = 0; sb < NSB; ++sb) {
            const int64_t L = lanes[std::size_t(sb)], slots = 16 / L, part_blocks = bpg / L;
            for (int64_t h = 0; h < part_blocks; ++h) {
              __m512i v[16];
              for (int j = 0; j < 16; ++j) {
                const int64_t g = sb * 16 + j % slots, b = g * bpg + (j / slots) * part_blocks + h;
                v[j] = g < GA && b < nb ? _mm512_load_si512(wa + r * K + b * 64) : _mm512_setzero_si512();
              }
              transpose16(v);
              for (int d = 0; d < 16; ++d) _mm512_store_si512(wi + r * KI + off[std::size_t(sb)] + (h * 16 + d) * 64, v[d]);
            }
          }
        __m512i zr[R];
        for (int r = 0; r < R; ++r) zr[r] = _mm512_set1_epi32(sym ? 0 : w.zeros[o0 + std::min(r, nr - 1)]);
        for (int t0 = tb; t0 < te; t0 += T) {
          const int nt = std::min(T, te - t0);
          // The lane sums stay in memory: 16 more zmm beside the 16 accumulators and 8 operands
          // would spill inside the dot loop.
          alignas(64) float f[R][T][16] = {};
          for (int64_t sb = 0; sb < NSB; ++sb) {
            const int64_t L = lanes[std::size_t(sb)], steps = bpg / L * 16, o = off[std::size_t(sb)];
            __m512i acc[R][T];
            lane_dots_avx512(wi + o, KI, xi.data() + t0 * KI + o, KI, steps, acc);
            if (L > 1)  // a group's parts into its lane: lane j + lane j ^ 8, then ^ 4, ^ 2, ^ 1
              for (auto& a : acc)
                for (auto& v : a) {
                  v = _mm512_add_epi32(v, _mm512_shuffle_i32x4(v, v, 0x4E));
                  if (L > 2) v = _mm512_add_epi32(v, _mm512_shuffle_i32x4(v, v, 0xB1));
                  if (L > 4) v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_BADC));
                  if (L > 8) v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, _MM_PERM_CDAB));
                }
            for (int t = 0; t < T; ++t) {
              const std::size_t at = std::size_t(((t0 + t) * NSB + sb) * 16);
              const __m512i xst = _mm512_loadu_si512(xs.data() + at);
              const __m512 sxt = _mm512_loadu_ps(sx.data() + at);
              for (int r = 0; r < R; ++r) {
                const __m512i zx = sym ? xst : _mm512_mullo_epi32(zr[r], xst);
                const __m512 d = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][t], zx));
                _mm512_store_ps(f[r][t], _mm512_add_ps(_mm512_load_ps(f[r][t]), _mm512_mul_ps(sxt, d)));
              }
            }
          }
          for (int r = 0; r < nr; ++r)
            for (int t = 0; t < nt; ++t) c.store(t0 + t, o0 + r, lane_total(_mm512_load_ps(f[r][t])));
        }
      }
    }
  }
}


// The row-interleaved prefill GEMM: per-channel weights (G == 1), segments of whole 4-column
// steps (activation groups a multiple of 4 wide, or per token), at least 4 tokens. 16 output rows
// share one zmm: step k holds the codes 4k..4k+3 of each of the 16 rows, one dword per lane (a
// 16 x 16 dword transpose of 16 unpacked blocks, once per row tile for all tokens), so vpdpbusd
// against a token's 4 codes broadcast to every lane accumulates 16 outputs' dots, lane = row: no
// horizontal sums, and per step R weight loads and T broadcasts feed R * T vpdpbusd (the 4 x 4
// tile needs 8 full loads per 16). A segment's dots start at -z * xsum (exact int32, as
// GemmContext::add), and at its end one vcvtdq2ps and one vfmadd by the token's group scale add
// it to the 16 fp32 sums (GemmContext::add's order). A token's outputs are 16 consecutive floats
// of y: one (masked) store.
template <int R, int T, bool kGrouped>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void rows_tile(const GemmContext& c, const uint8_t* wi,
                                                                               int64_t o0, int t0, const __m512i (&zv)[R],
                                                                               const __m512 (&swv)[R], const __m512 (&bv)[R],
                                                                               const __mmask16 (&keep)[R]) {
  const int M = c.x.rows, nt = std::min(T, M - t0);
  const int64_t K = c.K, r_stride = K * 16;  // bytes of one register row's interleaved steps
  const std::size_t S = c.seg.size();
  const bool sym = c.w.zeros == nullptr;
  const int8_t* xs[T];
  for (int t = 0; t < T; ++t) xs[t] = c.x.q.data() + int64_t(t0 + std::min(t, nt - 1)) * K;  // spare lanes: the last token again
  __m512 f[R][T];
  for (auto& a : f)
    for (auto& v : a) v = _mm512_setzero_ps();
  for (std::size_t s = 0; s < S; ++s) {
    const int64_t k0 = c.seg[s].c0 / 4, k1 = c.seg[s].c1 / 4;
    __m512i acc[R][T];
    for (int t = 0; t < T; ++t) {
      const int32_t xsum = c.xsum[std::size_t(t0 + std::min(t, nt - 1)) * S + s];
      for (int r = 0; r < R; ++r)
        acc[r][t] = sym ? _mm512_set1_epi32(-8 * xsum) : _mm512_mullo_epi32(zv[r], _mm512_set1_epi32(-xsum));
    }
    for (int64_t k = k0; k < k1; ++k) {
      __m512i wv[R];
      for (int r = 0; r < R; ++r) wv[r] = _mm512_load_si512(wi + r * r_stride + k * 64);
      for (int t = 0; t < T; ++t) {
        int32_t q4;
        std::memcpy(&q4, xs[t] + 4 * k, 4);
        const __m512i xb = _mm512_set1_epi32(q4);
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], wv[r], xb);
      }
    }
    for (int t = 0; t < T; ++t) {
      if constexpr (kGrouped) {
        const __m512 sx = _mm512_set1_ps(c.x.scale[std::size_t(int64_t(t0 + std::min(t, nt - 1)) * c.GA + c.seg[s].ag)]);
        for (int r = 0; r < R; ++r) f[r][t] = _mm512_fmadd_ps(sx, _mm512_cvtepi32_ps(acc[r][t]), f[r][t]);
      } else {
        for (int r = 0; r < R; ++r) f[r][t] = _mm512_add_ps(f[r][t], _mm512_mul_ps(swv[r], _mm512_cvtepi32_ps(acc[r][t])));
      }
    }
  }
  for (int t = 0; t < nt; ++t) {
    const __m512 sx = _mm512_set1_ps(kGrouped ? 0.f : c.x.scale[std::size_t(t0 + t)]);
    for (int r = 0; r < R; ++r) {
      __m512 v = kGrouped ? _mm512_mul_ps(swv[r], f[r][t]) : _mm512_mul_ps(f[r][t], sx);
      if (c.bias) v = _mm512_add_ps(v, bv[r]);
      _mm512_mask_storeu_ps(c.y + int64_t(t0 + t) * c.w.rows + o0 + 16 * r, keep[r], v);
    }
  }
}

template <int R, int T, bool kGrouped>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void gemm_rows_avx512(const GemmContext& c) {
  constexpr int RT = 16 * R;  // output rows per tile
  const auto& w = c.w;
  const int M = c.x.rows;
  const int64_t K = c.K, nb = K / kInt4Block, row_bytes = K / 2, tiles = (w.rows + RT - 1) / RT;
  const bool parallel = w.rows * int64_t(M) * K > (1 << 20);
#pragma omp parallel if (parallel)
  {
    std::vector<uint8_t> wu(std::size_t(16 * K) + 64), wiv(std::size_t(R * 16 * K) + 64);
    uint8_t* wa = wu.data() + (64 - reinterpret_cast<uintptr_t>(wu.data()) % 64) % 64;
    uint8_t* wi = wiv.data() + (64 - reinterpret_cast<uintptr_t>(wiv.data()) % 64) % 64;
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < tiles; ++tile) {
      const int64_t o0 = tile * RT;
      __m512i zv[R];
      __m512 swv[R], bv[R];
      __mmask16 keep[R];
      for (int r = 0; r < R; ++r) {
        const int64_t first = o0 + 16 * r, n = std::clamp<int64_t>(w.rows - first, 0, 16);
        keep[r] = __mmask16((1u << n) - 1);
        zv[r] = _mm512_setzero_si512();
        swv[r] = bv[r] = _mm512_setzero_ps();
        if (n > 0) {
          swv[r] = _mm512_maskz_loadu_ps(keep[r], w.scales + first);
          if (c.bias) bv[r] = _mm512_maskz_loadu_ps(keep[r], c.bias + first);
          if (w.zeros) zv[r] = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(keep[r], w.zeros + first));
        }
        // Interleave: v[j] = block b of row j; after the transpose v[d] = dword d of the 16 rows.
        unpack_rows(w.packed + std::min(first, w.rows) * row_bytes, row_bytes, int(n), 16, K, wa);
        for (int64_t b = 0; b < nb; ++b) {
          __m512i v[16];
          for (int j = 0; j < 16; ++j) v[j] = _mm512_load_si512(wa + j * K + b * 64);
          transpose16(v);
          for (int d = 0; d < 16; ++d) _mm512_store_si512(wi + r * K * 16 + (b * 16 + d) * 64, v[d]);
        }
      }
      for (int t0 = 0; t0 < M; t0 += T) rows_tile<R, T, kGrouped>(c, wi, o0, t0, zv, swv, bv, keep);
    }
  }
}

// Whether gemm_rows_avx512 takes these segments: per-channel weights, every segment whole 4-column steps.
bool rows_kernel_fits(const GemmContext& c) {
  if (c.G != 1) return false;
  for (const auto& s : c.seg)
    if (s.c0 % 4 != 0 || s.c1 % 4 != 0) return false;
  return true;
}

}  // namespace

void int4_gemm_previous(const Int4Weights& w, const Int8Activations& x, const float* bias, float* y) {
  if (!isa_supported(Isa::Avx512Vnni) || x.rows < 4) return int4_gemm(w, x, bias, y);
  const GemmContext c(w, x, bias, y);
  if (c.grouped && c.G == 1 && x.group % kInt4Block == 0) return gemm_grouped_avx512(c);
  gemm_tiled<4, 4>(c, [](const uint8_t* wu, const int8_t* const* xs, int64_t c0, int64_t c1, int64_t K, int32_t(&d)[4][4]) {
    tile_avx512(wu, xs, c0, c1, K, d);
  });
}

void int4_gemm(const Int4Weights& w, const Int8Activations& x, const float* bias, float* y, Isa isa) {
  if (x.cols != w.cols) throw Error("int4_gemm", "activation width " + std::to_string(x.cols) + " != weight width " + std::to_string(w.cols));
  if (w.group_size < w.cols && (w.group_size % kInt4Block != 0 || w.cols % w.group_size != 0))
    throw Error("int4_gemm", "group size " + std::to_string(w.group_size) + " must be a multiple of 64 dividing " + std::to_string(w.cols));
  if (x.rows == 0 || w.rows == 0) return;
  if (!isa_supported(isa)) isa = best_isa();
  const GemmContext c(w, x, bias, y);
  switch (isa) {
    case Isa::Avx512Vnni:
      if (x.rows >= 4 && rows_kernel_fits(c))
        // Measured (quarot-bench-int4 --a-group, M = 512): per token 2 x 8 (16 accumulators, 2 + 8
        // loads per 16 vpdpbusd) beat 4 x 6, 3 x 4, 2 x 6 and 4 x 3; grouped 2 x 6 (12 int32 and 12
        // fp32 accumulators) beat 3 x 4, 4 x 3 and 2 x 4.
        return c.grouped ? gemm_rows_avx512<2, 6, true>(c) : gemm_rows_avx512<2, 8, false>(c);
      // Decode: the streaming GEMV (int4_gemv.cpp) when the segments are whole blocks.
      if (x.rows <= 3 && int4_detail::gemv_stream_avx512(c)) return;
      if (x.rows == 1) return gemv_avx512<1>(c);
      if (x.rows == 2) return gemv_avx512<2>(c);
      if (x.rows == 3) return gemv_avx512<3>(c);
      gemm_tiled<4, 4>(c, [](const uint8_t* wu, const int8_t* const* xs, int64_t c0, int64_t c1, int64_t K, int32_t(&d)[4][4]) {
        tile_avx512(wu, xs, c0, c1, K, d);
      });
      break;
    case Isa::Avx2:
      gemm_tiled<4, 2>(c, [](const uint8_t* wu, const int8_t* const* xs, int64_t c0, int64_t c1, int64_t K, int32_t(&d)[4][2]) {
        tile_avx2(wu, xs, c0, c1, K, d);
      });
      break;
    case Isa::Scalar:
      gemm_scalar(c);
      break;
  }
}

namespace {

// W4A16 decode: per output row, unpack 64 codes per block to fp32 and multiply-add with up to
// 8 tokens; the zero point comes out of the sum (sum (u - z) x = sum u x - z sum x) and the
// group's scale multiplies the group's sum.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void gemv_f32_avx512(const Int4Weights& w, const float* xp, int rows,
                                                                           int64_t K, const float* xsum, float* y) {
  const int64_t G = w.groups(), bpg = w.blocks_per_group(), row_bytes = K / 2;
#pragma omp parallel for schedule(static)
  for (int64_t o = 0; o < w.rows; ++o) {
    const uint8_t* row = w.packed + o * row_bytes;
    float out[8] = {};
    for (int64_t g = 0; g < G; ++g) {
      __m512 acc[8];
      for (int t = 0; t < rows; ++t) acc[t] = _mm512_setzero_ps();
      const int64_t b0 = g * bpg, b1 = std::min(K / kInt4Block, b0 + bpg);
      for (int64_t b = b0; b < b1; ++b) {
        const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
        const __m256i mask = _mm256_set1_epi8(0x0F);
        const __m256i lo = _mm256_and_si256(bytes, mask), hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
        const __m512 u0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(lo)));
        const __m512 u1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(lo, 1)));
        const __m512 u2 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(hi)));
        const __m512 u3 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(hi, 1)));
        for (int t = 0; t < rows; ++t) {
          const float* xt = xp + t * K + b * kInt4Block;
          acc[t] = _mm512_fmadd_ps(u0, _mm512_loadu_ps(xt), acc[t]);
          acc[t] = _mm512_fmadd_ps(u1, _mm512_loadu_ps(xt + 16), acc[t]);
          acc[t] = _mm512_fmadd_ps(u2, _mm512_loadu_ps(xt + 32), acc[t]);
          acc[t] = _mm512_fmadd_ps(u3, _mm512_loadu_ps(xt + 48), acc[t]);
        }
      }
      const float sc = w.scales[o * G + g];
      const float z = w.zeros ? float(w.zeros[o * G + g]) : 8.f;
      for (int t = 0; t < rows; ++t) out[t] += sc * (_mm512_reduce_add_ps(acc[t]) - z * xsum[t * G + g]);
    }
    for (int t = 0; t < rows; ++t) y[t * w.rows + o] = out[t];
  }
}

}  // namespace

void int4_gemm_f32_tiled(const Int4Weights& w, const float* x, int rows, const float* bias, float* y) {
  if (rows <= 8 && isa_supported(Isa::Avx512Vnni) && best_isa() == Isa::Avx512Vnni) {
    const int64_t K = w.cols_padded(), G = w.groups(), bpg = w.blocks_per_group();
    thread_local std::vector<float> xp, xsum;
    xp.assign(std::size_t(rows * K), 0.f);
    xsum.assign(std::size_t(rows * G), 0.f);
    for (int t = 0; t < rows; ++t) {
      std::copy(x + t * w.cols, x + (t + 1) * w.cols, xp.begin() + t * K);
      for (int64_t i = 0; i < w.cols; ++i) xsum[std::size_t(t * G + std::min(G - 1, i / (bpg * kInt4Block)))] += x[t * w.cols + i];
    }
    gemv_f32_avx512(w, xp.data(), rows, K, xsum.data(), y);
    if (bias)
      for (int t = 0; t < rows; ++t)
        for (int64_t o = 0; o < w.rows; ++o) y[t * w.rows + o] += bias[o];
    return;
  }
  using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  constexpr int64_t kTile = 64;
  const Eigen::Map<const MatF> X(x, rows, w.cols);
  Eigen::Map<MatF> Y(y, rows, w.rows);
  // Each tile of 64 output rows is dequantized and multiplied by one thread (the tiles do not
  // depend on the thread count, so neither do the sums: see fixed_chunks.hpp).
  const bool parallel = double(rows) * double(w.cols) * double(w.rows) >= detail::kParallelMacs;
#pragma omp parallel if (parallel && w.rows > kTile && !omp_in_parallel())
  {
    MatF tile(kTile, w.cols);
#pragma omp for schedule(dynamic, 1)
    for (int64_t o0 = 0; o0 < w.rows; o0 += kTile) {
      const int64_t nr = std::min(kTile, w.rows - o0);
      for (int64_t r = 0; r < nr; ++r)
        for (int64_t c = 0; c < w.cols; ++c) tile(r, c) = w.weight(o0 + r, c);
      Y.middleCols(o0, nr).noalias() = X * tile.topRows(nr).transpose();
    }
  }
  if (bias)
    for (int t = 0; t < rows; ++t)
      for (int64_t o = 0; o < w.rows; ++o) Y(t, o) += bias[o];
}

}  // namespace quarot
