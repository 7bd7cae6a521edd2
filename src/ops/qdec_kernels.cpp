// QDEC's hot kernels (include/quarot/qdec_kernels.hpp): exact top-k of |x| and the
// application of the selected residual rows, a scalar reference and AVX-512 paths.
// GCC 12's avx512fintrin.h trips -W(maybe-)uninitialized on its own undefined-vector idiom
// (`__m512 __Y = __Y;`), reported where the intrinsics are inlined: off for this file (as
// detail/eigen.hpp does for the files that include Eigen).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "quarot/qdec_kernels.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace quarot {

int ResidualStore::code(int64_t in, int64_t out) const {
  const uint8_t* row = code_data() + in * row_bytes();
  if (bits == 4) {
    const uint8_t b = row[out / 2];
    return int(out % 2 ? b >> 4 : b & 0x0F) - 8;
  }
  return int(row[out]) - 128;
}

namespace {

// The running k best (|x|, index) as a heap whose top is the worst of them. Scanning indices in
// increasing order, a later equal |x| never displaces an earlier one, so only |x| > top enters.
struct TopK {
  std::vector<std::pair<float, int>> heap;
  static bool worse(const std::pair<float, int>& a, const std::pair<float, int>& b) {  // heap order
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  }
  float threshold() const { return heap.front().first; }
  void push(float v, int i) {
    heap.front() = {v, i};
    std::pop_heap(heap.begin(), heap.end(), worse);
    std::push_heap(heap.begin(), heap.end(), worse);
  }
};

// Candidates are rare once the heap is full: compare 16 |x| at a time against its threshold.
__attribute__((target("avx512f"))) void scan_avx512(const float* x, int from, int n, TopK& h) {
  int i = from;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_abs_ps(_mm512_loadu_ps(x + i));
    __mmask16 m = _mm512_cmp_ps_mask(v, _mm512_set1_ps(h.threshold()), _CMP_GT_OQ);
    while (m) {
      const int j = __builtin_ctz(m);
      m = __mmask16(m & (m - 1));
      const float a = std::fabs(x[i + j]);
      if (a > h.threshold()) h.push(a, i + j);
    }
  }
  for (; i < n; ++i)
    if (const float a = std::fabs(x[i]); a > h.threshold()) h.push(a, i);
}

// For k much smaller than n: the k-th largest of the 16-wide block maxima is a threshold T with
// at least k elements |x| >= T, so the top k are among the (few) elements >= T. Returns false
// (nothing done) when x has NaN/inf or too few blocks.
__attribute__((target("avx512f"))) bool top_k_blocks_avx512(const float* x, int n, int k, std::vector<int>& cand) {
  const int nb = n / 16;
  if (k * 4 > nb) return false;
  thread_local std::vector<float> bm;
  bm.resize(std::size_t(nb));
  for (int b = 0; b < nb; ++b) {
    const __m512 v = _mm512_abs_ps(_mm512_loadu_ps(x + 16 * b));
    bm[std::size_t(b)] = _mm512_reduce_max_ps(v);
  }
  for (int i = 16 * nb; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  for (float v : bm)
    if (!std::isfinite(v)) return false;
  std::nth_element(bm.begin(), bm.begin() + (k - 1), bm.end(), std::greater<float>());
  const __m512 t = _mm512_set1_ps(bm[std::size_t(k - 1)]);
  const float tf = bm[std::size_t(k - 1)];
  cand.clear();
  for (int b = 0; b < nb; ++b) {
    __mmask16 m = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(x + 16 * b)), t, _CMP_GE_OQ);
    while (m) {
      cand.push_back(16 * b + __builtin_ctz(m));
      m = __mmask16(m & (m - 1));
    }
  }
  for (int i = 16 * nb; i < n; ++i)
    if (std::fabs(x[i]) >= tf) cand.push_back(i);
  return true;
}

}  // namespace

void top_k_abs_ref(const float* x, int n, int k, std::vector<int>& out) {
  k = std::clamp(k, 0, n);
  out.resize(std::size_t(n));
  for (int i = 0; i < n; ++i) out[std::size_t(i)] = i;
  std::stable_sort(out.begin(), out.end(), [x](int a, int b) { return std::fabs(x[a]) > std::fabs(x[b]); });
  out.resize(std::size_t(k));
}

void top_k_abs(const float* x, int n, int k, std::vector<int>& out, Isa isa) {
  const bool avx512 = isa == Isa::Avx512Vnni && isa_supported(Isa::Avx512Vnni);
  k = std::clamp(k, 0, n);
  out.clear();
  if (k == 0) return;
  auto before = [x](int a, int b) {
    const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
    return fa != fb ? fa > fb : a < b;  // a strict total order: deterministic ties
  };
  bool finite = true;
  if (k < n && avx512 && top_k_blocks_avx512(x, n, k, out)) {
    std::partial_sort(out.begin(), out.begin() + k, out.end(), before);
    out.resize(std::size_t(k));
    return;
  }
  if (k < n && k * 64 > n) {
    // Many channels: the k-th largest |x| by selection (O(n)), then every |x| above it and the
    // ties in index order.
    thread_local std::vector<float> a;
    a.resize(std::size_t(n));
    for (int i = 0; i < n; ++i) {
      a[std::size_t(i)] = std::fabs(x[i]);
      finite = finite && std::isfinite(x[i]);
    }
    if (finite) {
      std::nth_element(a.begin(), a.begin() + (k - 1), a.end(), std::greater<float>());
      const float v = a[std::size_t(k - 1)];
      for (int i = 0; i < n; ++i)
        if (std::fabs(x[i]) > v) out.push_back(i);
      for (int i = 0; i < n && int(out.size()) < k; ++i)
        if (std::fabs(x[i]) == v) out.push_back(i);
      std::sort(out.begin(), out.end(), before);
      return;
    }
  }
  if (k < n && finite) {
    thread_local TopK h;
    h.heap.clear();
    for (int i = 0; i < k; ++i) {
      h.heap.emplace_back(std::fabs(x[i]), i);
      finite = finite && std::isfinite(x[i]);
    }
    std::make_heap(h.heap.begin(), h.heap.end(), TopK::worse);
    if (finite) {
      if (avx512) {
        scan_avx512(x, k, n, h);
      } else {
        for (int i = k; i < n; ++i)
          if (const float a = std::fabs(x[i]); a > h.threshold()) h.push(a, i);
      }
      for (const auto& e : h.heap) {
        finite = finite && std::isfinite(e.first);
        out.push_back(e.second);
      }
    }
  }
  if (k == n || !finite) {  // everything, or NaN/inf in play: a plain full sort
    out.resize(std::size_t(n));
    for (int i = 0; i < n; ++i) out[std::size_t(i)] = i;
    std::partial_sort(out.begin(), out.begin() + k, out.end(), before);
    out.resize(std::size_t(k));
    return;
  }
  std::sort(out.begin(), out.end(), before);
}

int qdec_k(int k_chunk, int64_t cols) {
  if (k_chunk < 0) return int(cols);
  return int(std::min<int64_t>(cols, (int64_t(k_chunk) * cols + 1023) / 1024));
}

void qdec_select(const float* x, int tokens, int cols, int k, std::vector<int>& sel, Isa isa) {
  k = std::clamp(k, 0, cols);
  sel.resize(std::size_t(tokens) * std::size_t(k));
  thread_local std::vector<int> one;
  for (int t = 0; t < tokens; ++t) {
    top_k_abs(x + int64_t(t) * cols, cols, k, one, isa);
    std::copy(one.begin(), one.end(), sel.begin() + std::ptrdiff_t(t) * k);
  }
}

void qdec_apply_reference(const ResidualStore& r, const float* x, int tokens, int k, const int* sel, float* y) {
  std::vector<float> acc(std::size_t(r.rows));
  const uint8_t* codes = r.code_data();
  for (int t = 0; t < tokens; ++t) {
    const float* xt = x + int64_t(t) * r.cols;
    std::fill(acc.begin(), acc.end(), 0.f);
    // The selected residual rows weighted by x, then one multiply by the per-output scale (it
    // factors out of the sum).
    for (int j = 0; j < k; ++j) {
      const int i = sel[std::size_t(t) * k + j];
      const float xi = xt[i];
      const uint8_t* row = codes + int64_t(i) * r.row_bytes();
      for (int64_t o = 0; o < r.rows; ++o) {
        const int q = r.bits == 4 ? int(o % 2 ? row[o / 2] >> 4 : row[o / 2] & 0x0F) - 8 : int(row[o]) - 128;
        acc[std::size_t(o)] += float(q) * xi;
      }
    }
    float* yt = y + int64_t(t) * r.rows;
    for (int64_t o = 0; o < r.rows; ++o) yt[o] += r.scales[std::size_t(o)] * acc[std::size_t(o)];
  }
}

namespace {

// acc_even[j] / acc_odd[j] hold outputs 2j / 2j + 1 (4-bit), acc_even[o] output o (8-bit).
// Up to four selected rows at a time, so the accumulators are loaded and stored once per four.
__attribute__((target("avx512f,avx512bw,avx512vl"))) void apply_rows_avx512(const uint8_t* const* rows, const float* xs, int nr,
                                                                             int64_t row_bytes, int bits, float* acc_even,
                                                                             float* acc_odd) {
  __m512 vx[4];
  for (int r = 0; r < 4; ++r) vx[r] = _mm512_set1_ps(r < nr ? xs[r] : 0.f);
  if (bits == 4) {
    const __m512 eight = _mm512_set1_ps(8.f);
    const __m128i lo_mask = _mm_set1_epi8(0x0F);
    for (int64_t j = 0; j < row_bytes; j += 16) {
      const int64_t left = row_bytes - j;
      const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      __m512 ae = _mm512_maskz_loadu_ps(m, acc_even + j), ao = _mm512_maskz_loadu_ps(m, acc_odd + j);
      for (int r = 0; r < nr; ++r) {
        const __m128i b = _mm_maskz_loadu_epi8(m, rows[r] + j);
        const __m128i lo = _mm_and_si128(b, lo_mask), hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo_mask);
        ae = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), eight), vx[r], ae);
        ao = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), eight), vx[r], ao);
      }
      _mm512_mask_storeu_ps(acc_even + j, m, ae);
      _mm512_mask_storeu_ps(acc_odd + j, m, ao);
    }
  } else {
    const __m512 off = _mm512_set1_ps(128.f);
    for (int64_t j = 0; j < row_bytes; j += 16) {
      const int64_t left = row_bytes - j;
      const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      __m512 a = _mm512_maskz_loadu_ps(m, acc_even + j);
      for (int r = 0; r < nr; ++r) {
        const __m512 q = _mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, rows[r] + j))), off);
        a = _mm512_fmadd_ps(q, vx[r], a);
      }
      _mm512_mask_storeu_ps(acc_even + j, m, a);
    }
  }
}

// y[2j] += s[2j] * even[j], y[2j + 1] += s[2j + 1] * odd[j]: interleave 16 + 16 into 32 outputs.
__attribute__((target("avx512f"))) int64_t epilogue4_avx512(const float* even, const float* odd, const float* s, int64_t rows, float* y) {
  const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  int64_t o = 0;
  for (; o + 32 <= rows; o += 32) {
    const __m512 e = _mm512_loadu_ps(even + o / 2), d = _mm512_loadu_ps(odd + o / 2);
    const __m512 a = _mm512_permutex2var_ps(e, lo_idx, d), b = _mm512_permutex2var_ps(e, hi_idx, d);
    _mm512_storeu_ps(y + o, _mm512_fmadd_ps(_mm512_loadu_ps(s + o), a, _mm512_loadu_ps(y + o)));
    _mm512_storeu_ps(y + o + 16, _mm512_fmadd_ps(_mm512_loadu_ps(s + o + 16), b, _mm512_loadu_ps(y + o + 16)));
  }
  return o;  // the rest is done by the caller
}

void apply_row_scalar(const uint8_t* row, int64_t row_bytes, int bits, float xi, float* acc_even, float* acc_odd) {
  if (bits == 4) {
    for (int64_t j = 0; j < row_bytes; ++j) {
      acc_even[j] += float(int(row[j] & 0x0F) - 8) * xi;
      acc_odd[j] += float(int(row[j] >> 4) - 8) * xi;
    }
  } else {
    for (int64_t j = 0; j < row_bytes; ++j) acc_even[j] += float(int(row[j]) - 128) * xi;
  }
}

}  // namespace

void qdec_apply(const ResidualStore& r, const float* x, int tokens, int k, const int* sel, float* y, Isa isa) {
  if (k <= 0) return;
  const bool avx512 = isa == Isa::Avx512Vnni && isa_supported(Isa::Avx512Vnni);
  const int64_t rb = r.row_bytes();
  thread_local std::vector<float> even, odd;
  even.resize(std::size_t(rb));
  odd.resize(std::size_t(rb));
  const uint8_t* codes = r.code_data();
  const float* s = r.scales.data();
  for (int t = 0; t < tokens; ++t) {
    const float* xt = x + int64_t(t) * r.cols;
    const int* st = sel + std::size_t(t) * k;
    std::fill(even.begin(), even.end(), 0.f);
    std::fill(odd.begin(), odd.end(), 0.f);
    if (avx512) {
      for (int j = 0; j < k; j += 4) {
        const int nr = std::min(4, k - j);
        // The rows are scattered over the store (cold in a large model): fetch the next four
        // while these four are summed.
        for (int q = j + 4; q < std::min(k, j + 8); ++q) {
          const char* p = reinterpret_cast<const char*>(codes + int64_t(st[q]) * rb);
          for (int64_t off = 0; off < rb; off += 64) __builtin_prefetch(p + off);
        }
        const uint8_t* rows[4];
        float xs[4];
        for (int q = 0; q < nr; ++q) {
          rows[q] = codes + int64_t(st[j + q]) * rb;
          xs[q] = xt[st[j + q]];
        }
        apply_rows_avx512(rows, xs, nr, rb, r.bits, even.data(), odd.data());
      }
    } else {
      for (int j = 0; j < k; ++j) apply_row_scalar(codes + int64_t(st[j]) * rb, rb, r.bits, xt[st[j]], even.data(), odd.data());
    }
    float* yt = y + int64_t(t) * r.rows;
    if (r.bits == 4) {
      int64_t o = avx512 ? epilogue4_avx512(even.data(), odd.data(), s, r.rows, yt) : 0;
      for (; o < r.rows; ++o) yt[o] += s[o] * (o % 2 ? odd[std::size_t(o / 2)] : even[std::size_t(o / 2)]);
    } else {
      for (int64_t o = 0; o < r.rows; ++o) yt[o] += s[o] * even[std::size_t(o)];
    }
  }
}

void qdec_compensate(const ResidualStore& r, const float* x, int tokens, int k, float* y) {
  if (k <= 0) return;
  std::vector<int> sel;
  qdec_select(x, tokens, int(r.cols), k, sel);
  qdec_apply(r, x, tokens, std::min<int>(k, int(r.cols)), sel.data(), y);
}

}  // namespace quarot
