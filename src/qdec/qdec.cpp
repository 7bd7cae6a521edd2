// Eigen first: detail/eigen.hpp silences GCC 12 false positives inside it.
#include "quarot/detail/eigen.hpp"
#include "quarot/qdec.hpp"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>

#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"
#include "quarot/quantize.hpp"

namespace quarot {

int ResidualStore::code(int64_t in, int64_t out) const {
  const uint8_t* row = code_data() + in * row_bytes();
  if (bits == 4) {
    const uint8_t b = row[out / 2];
    return int(out % 2 ? b >> 4 : b & 0x0F) - 8;
  }
  return int(row[out]) - 128;
}

ResidualStore make_residual_store(const float* w, const float* wq, int64_t rows, int64_t cols, int bits) {
  if (bits != 4 && bits != 8) throw Error("--qdec-bits", "must be 4 or 8, got " + std::to_string(bits));
  ResidualStore r;
  r.rows = rows;
  r.cols = cols;
  r.bits = bits;
  r.scales.assign(std::size_t(rows), 0.f);
  r.codes.assign(std::size_t(cols * r.row_bytes()), bits == 4 ? 0x88 : 128);
  const int qmax = bits == 4 ? 7 : 127;
  std::vector<float> res(static_cast<std::size_t>(cols));
  for (int64_t o = 0; o < rows; ++o) {
    float amax = 0;
    for (int64_t i = 0; i < cols; ++i) {
      res[std::size_t(i)] = w[o * cols + i] - wq[o * cols + i];
      amax = std::max(amax, std::fabs(res[std::size_t(i)]));
    }
    if (amax == 0) continue;  // scale 0, codes 0: nothing to add back
    // Grid search of the scale: shrink factors 1.0, 0.95, ..., 0.5 of max|R| / qmax, lowest MSE.
    float best_s = amax / float(qmax);
    double best_e = INFINITY;
    for (int k = 0; k <= 10; ++k) {
      const float s = amax / float(qmax) * (1.0f - 0.05f * float(k));
      double e = 0;
      for (float v : res) {
        const float q = std::clamp(std::nearbyint(v / s), float(-qmax), float(qmax));
        e += double(q * s - v) * double(q * s - v);
      }
      if (e < best_e) {
        best_e = e;
        best_s = s;
      }
    }
    r.scales[std::size_t(o)] = best_s;
    for (int64_t i = 0; i < cols; ++i) {
      const int q = int(std::clamp(std::nearbyint(res[std::size_t(i)] / best_s), float(-qmax), float(qmax)));
      uint8_t* row = r.codes.data() + i * r.row_bytes();
      if (bits == 4) {
        const uint8_t u = uint8_t(q + 8);
        row[o / 2] = o % 2 ? uint8_t((row[o / 2] & 0x0F) | (u << 4)) : uint8_t((row[o / 2] & 0xF0) | u);
      } else {
        row[o] = uint8_t(q + 128);
      }
    }
  }
  return r;
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

void top_k_abs(const float* x, int n, int k, std::vector<int>& out) {
  k = std::clamp(k, 0, n);
  out.clear();
  if (k == 0) return;
  auto before = [x](int a, int b) {
    const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
    return fa != fb ? fa > fb : a < b;  // a strict total order: deterministic ties
  };
  bool finite = true;
  if (k < n && isa_supported(Isa::Avx512Vnni) && top_k_blocks_avx512(x, n, k, out)) {
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
      if (isa_supported(Isa::Avx512Vnni)) {
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

void qdec_select(const float* x, int tokens, int cols, int k, std::vector<int>& sel) {
  k = std::clamp(k, 0, cols);
  sel.resize(std::size_t(tokens) * std::size_t(k));
  thread_local std::vector<int> one;
  for (int t = 0; t < tokens; ++t) {
    top_k_abs(x + int64_t(t) * cols, cols, k, one);
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

const char* qdec_kind_name(int kind) {
  static const char* names[] = {"qkv", "o", "gate_up", "down"};
  return kind >= 0 && kind < kQdecKinds ? names[kind] : "?";
}

int qdec_kind_of(LinearModule m) { return linear_spec(m).qdec_kind; }

std::string QdecK::describe() const {
  std::string s;
  for (int i = 0; i < kQdecKinds; ++i)
    s += std::string(i ? "," : "") + qdec_kind_name(i) + "=" + (kind(i) < 0 ? std::string("all") : std::to_string(kind(i)));
  return s;
}

QdecK parse_qdec_k(const std::string& text, QdecK base) {
  auto value = [&](const std::string& v) {
    if (v == "all") return -1;
    std::size_t used = 0;
    int k = -2;
    try {
      k = std::stoi(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != v.size() || v.empty() || k < 0 || k > 1024)
      throw Error("--qdec-k", "'" + v + "' is not a channel count per 1024 inputs (0..1024 or 'all') in '" + text + "'");
    return k;
  };
  if (text.find('=') == std::string::npos) return QdecK::all(value(text));
  QdecK k = base;
  std::size_t at = 0;
  while (at <= text.size()) {
    const std::size_t comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) throw Error("--qdec-k", "expected KIND=K items (qkv, o, gate_up, down) in '" + text + "'");
    const std::string name = item.substr(0, eq);
    int kind = -1;
    for (int i = 0; i < kQdecKinds; ++i)
      if (name == qdec_kind_name(i)) kind = i;
    if (kind < 0) throw Error("--qdec-k", "unknown module kind '" + name + "' (qkv, o, gate_up, down) in '" + text + "'");
    k.kind(kind) = value(item.substr(eq + 1));
    at = comma + 1;
  }
  return k;
}

uint64_t QdecStore::bytes() const {
  uint64_t n = 0;
  for (const auto& r : linears) n += r.bytes();
  return n;
}

namespace {

class QdecSimulationBackend : public LinearBackend {
 public:
  QdecSimulationBackend(const ModelWeights& m, const QdecStore& s, QdecK k, const ActQuantOptions& act)
      : m_(m), s_(s), k_(k), act_(act) {
    if (s.layers() != m.config.n_layers) throw Error("qdec", "the residual store does not match the model's layers");
  }
  void allocate(const ModelConfig& c, int max_context) override {
    kv_ = c.kv_dim();
    k_cache_.assign(std::size_t(c.n_layers), std::vector<float>(std::size_t(max_context) * kv_));
    v_cache_.assign(std::size_t(c.n_layers), std::vector<float>(std::size_t(max_context) * kv_));
  }
  void linear(int layer, LinearModule m, const float* in, int n, int cols, float* out, int rows, bool same_input) override {
    using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    // q/k/v read one input, gate/up another: quantize and select once.
    const bool first = !same_input;
    const float* x = in;
    if (act_.a_bits < 16) {
      if (first) {
        xq_.assign(in, in + std::size_t(n) * std::size_t(cols));
        fake_quant_rows(xq_.data(), n, cols, act_.a_group, Grid{act_.a_bits, true}, act_.a_clip);
      }
      x = xq_.data();
    }
    const Matrix& w = m_.layers[std::size_t(layer)].*linear_member(m);
    Eigen::Map<Mat>(out, n, rows).noalias() =
        Eigen::Map<const Mat>(x, n, cols) * Eigen::Map<const Mat>(w.data.data(), rows, cols).transpose();
    const int k = qdec_k(k_.of(m), cols);
    if (k == 0) return;
    if (first) qdec_select(in, n, cols, k, sel_);
    qdec_apply(s_.at(layer, m), in, n, k, sel_.data(), out);
  }
  void store_and_load_kv(int layer, int pos, int n, const float* k, const float* v, float* k_out, float* v_out) override {
    auto& kc = k_cache_[std::size_t(layer)];
    auto& vc = v_cache_[std::size_t(layer)];
    std::copy(k, k + std::size_t(n) * kv_, kc.begin() + std::ptrdiff_t(pos) * kv_);
    std::copy(v, v + std::size_t(n) * kv_, vc.begin() + std::ptrdiff_t(pos) * kv_);
    std::copy(kc.begin(), kc.begin() + std::ptrdiff_t(pos + n) * kv_, k_out);
    std::copy(vc.begin(), vc.begin() + std::ptrdiff_t(pos + n) * kv_, v_out);
  }

 private:
  const ModelWeights& m_;
  const QdecStore& s_;
  QdecK k_;
  ActQuantOptions act_;
  int kv_ = 0;
  std::vector<float> xq_;
  std::vector<int> sel_;
  std::vector<std::vector<float>> k_cache_, v_cache_;
};

}  // namespace

QdecStore build_qdec_store(const ModelWeights& original, const ModelWeights& quantized, int bits) {
  QdecStore s;
  s.bits = bits;
  for (int l = 0; l < original.config.n_layers; ++l)
    for (LinearModule m : kLinearModules) {
      const Matrix& w = original.layers[std::size_t(l)].*linear_member(m);
      const Matrix& q = quantized.layers[std::size_t(l)].*linear_member(m);
      if (w.rows != q.rows || w.cols != q.cols) throw Error("qdec", "original and quantized models differ in shape");
      s.linears.push_back(make_residual_store(w.data.data(), q.data.data(), w.rows, w.cols, bits));
    }
  return s;
}

std::unique_ptr<LinearBackend> make_qdec_simulation_backend(const ModelWeights& quantized, const QdecStore& store, QdecK k,
                                                            const ActQuantOptions& act) {
  return std::make_unique<QdecSimulationBackend>(quantized, store, k, act);
}

Transformer<float> qdec_simulation_model(const ModelWeights& quantized, const QdecStore& store, QdecK k,
                                         const OnlineTransforms& online, const ActQuantOptions& act, int max_context) {
  ActQuantOptions kv_only = act;
  kv_only.a_bits = 16;  // the backend quantizes the linears' inputs (after selecting on them)
  Transformer<float> t(quantized, max_context, make_qdec_simulation_backend(quantized, store, k, act));
  if (auto hook = quantized_model_hook<float>(online, kv_only, quantized.config.head_dim)) t.set_hook(hook);
  return t;
}

QdecCosts measure_qdec_costs(const QdecStore& store, int repeats, Isa isa) {
  using Clock = std::chrono::steady_clock;
  QdecCosts c;
  const int layers = store.layers();
  if (layers == 0) return c;
  // Decode tokens' inputs: Gaussian (a fixed seed), so the selected rows are spread like real
  // ones; every layer's own store rows are read.
  // Eight different tokens in turn, so that the rows read change from token to token.
  detail::Rng rng(0x71646563);
  constexpr int kTokens = 8;
  const int64_t width = std::max(store.at(0, LinearModule::Q).cols, store.at(0, LinearModule::Down).cols);
  std::vector<float> xs(std::size_t(width * kTokens));
  for (auto& v : xs) v = rng.gaussian();
  int turn = 0;
  // Stores past 64 MB stand for models that do not fit the last-level cache.
  const bool cold = store.bytes() >= (64ull << 20);
  std::vector<uint8_t> evict(cold ? (192ull << 20) : 0, 1);
  std::vector<float> y;
  std::vector<int> sel;
  // The linears of each kind, in forward order (the first one's input is selected on).
  std::vector<LinearModule> kinds[kQdecKinds];
  for (const LinearSpec& s : kLinearSpecs) kinds[s.qdec_kind].push_back(s.module);
  for (int kind = 0; kind < kQdecKinds; ++kind)
    for (std::size_t lv = 1; lv < std::size(kQdecLevels); ++lv) {
      auto one_token = [&] {
        const float* x = xs.data() + int64_t(turn++ % kTokens) * width;
        for (int l = 0; l < layers; ++l) {
          const ResidualStore& first = store.at(l, kinds[kind][0]);
          const int k = qdec_k(kQdecLevels[lv], first.cols);
          qdec_select(x, 1, int(first.cols), k, sel);
          for (LinearModule m : kinds[kind]) {
            const ResidualStore& r = store.at(l, m);
            y.assign(std::size_t(r.rows), 0.f);
            qdec_apply(r, x, 1, k, sel.data(), y.data(), isa);
          }
        }
      };
      if (cold) {
        // A model larger than the cache reads cold rows at every decode step (the whole model
        // passed through the cache since): evict before each timed token, keep the median.
        std::vector<double> ts;
        for (int r = 0; r < 4 * std::max(1, repeats); ++r) {
          for (std::size_t i = 0; i < evict.size(); i += 64) evict[i] = uint8_t(evict[i] + 1);
          const auto t0 = Clock::now();
          one_token();
          ts.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        }
        std::nth_element(ts.begin(), ts.begin() + std::ptrdiff_t(ts.size() / 2), ts.end());
        c.seconds[kind][lv] = ts[ts.size() / 2];
        continue;
      }
      // Enough tokens per timing that the clock's resolution does not matter (>= 2 ms).
      int reps = 1;
      for (;;) {
        const auto t0 = Clock::now();
        for (int i = 0; i < reps; ++i) one_token();
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (s >= 2e-3 || reps >= (1 << 20)) break;
        reps *= 4;
      }
      double best = INFINITY;
      for (int r = 0; r < std::max(1, repeats); ++r) {
        const auto t0 = Clock::now();
        for (int i = 0; i < reps; ++i) one_token();
        best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count() / reps);
      }
      c.seconds[kind][lv] = best;
    }
  return c;
}

QdecTuning tune_qdec(const QdecCosts& costs, double budget_seconds) {
  QdecTuning t;
  t.budget_seconds = budget_seconds;
  std::size_t level[kQdecKinds] = {0, 0, 0, 0};
  for (;;) {
    int pick = -1;
    double pick_delta = INFINITY;
    for (int kind = 0; kind < kQdecKinds; ++kind) {
      const std::size_t next = level[kind] + 1;
      if (next >= std::size(kQdecLevels)) continue;
      const double delta = costs.seconds[kind][next] - costs.seconds[kind][level[kind]];
      if (t.cost_seconds + delta <= budget_seconds && delta < pick_delta) {
        pick = kind;
        pick_delta = delta;
      }
    }
    if (pick < 0) break;
    ++level[pick];
    t.cost_seconds += pick_delta;
    t.k.kind(pick) = kQdecLevels[level[pick]];
    char line[160];
    std::snprintf(line, sizeof line, "%s -> %d (+%.2f us, total %.2f of %.2f us)", qdec_kind_name(pick), t.k.kind(pick),
                  pick_delta * 1e6, t.cost_seconds * 1e6, budget_seconds * 1e6);
    t.steps.push_back(line);
  }
  return t;
}

}  // namespace quarot
