#include "quarot/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <utility>
#include <vector>

#include "quarot/act16.hpp"
#include "quarot/detail/eigen.hpp"
#include "quarot/error.hpp"
#include "quarot/options.hpp"

namespace quarot {

namespace {

// Scales are rounded to fp32, the precision the packed model file stores: the simulation and
// the packed integer model then dequantize to the very same weights (code * fp32 scale is exact
// in double, so rounding it to float equals the fp32 product the integer path computes).
QParams params_from_range(double lo, double hi, const Grid& g) {
  QParams p;
  if (g.symmetric) {
    const double m = std::max(std::fabs(lo), std::fabs(hi));
    p.scale = m > 0 ? double(float(m / g.qmax())) : 1.0;
    if (p.scale == 0) p.scale = 1.0;  // below fp32's range: every value rounds to 0 anyway
    return p;
  }
  lo = std::min(lo, 0.0);  // the range always holds 0, so that 0 is exact
  hi = std::max(hi, 0.0);
  if (hi == lo) return p;  // all zero: scale 1, zero 0
  p.scale = double(float((hi - lo) / g.qmax()));
  if (p.scale == 0) return QParams{};
  p.zero = int(std::nearbyint(-lo / p.scale));
  return p;
}

double exact_clip_error(std::span<const float> x, const QParams& c, const Grid& g) {
  double err = 0;
  for (float v : x) err += std::pow(std::fabs(fake_quant(v, c, g) - v), 2.4);
  return err;
}

// The shrinks tried: p = 1 - i/100 for i < kClipCandidates (the reference's "mse" search: norm
// 2.4, grid 100, max shrink 0.8).
constexpr int kClipCandidates = 80;

// Per-thread scratch of the clip search (a 7B has ~4M groups of 128: no allocation per group),
// and the winner of this thread's previous search, where the next search starts (neighbouring
// rows and groups of one matrix mostly choose the same shrink).
struct ClipScratch {
  Eigen::ArrayXd xd;     // the values
  Eigen::ArrayXf err;    // one candidate's fake-quant errors
  Eigen::ArrayXf terms;  // and its terms |err|^2.4, at the values' positions
  std::vector<std::pair<float, Eigen::Index>> blocks;  // (largest |x|, start), largest first
  int hint = 8;
};

// Candidate c's error terms |q(x) - x|^2.4 over x[k, k + m), stored at their positions in
// s.terms, and their float sum: fake_quant vectorized with the very operations of quantize_code
// and dequantize_code (division, rint = nearbyint in the default rounding mode, clamp, the
// integer-valued difference times the scale: the same bits as the scalar loop), |e|^2.4 =
// exp(2.4 log|e|) with Eigen's vectorized log/exp (libm's pow was 70% of GPTQ's time).
float clip_error_terms(ClipScratch& s, Eigen::Index k, Eigen::Index m, const QParams& c, const Grid& g) {
  const auto xs = s.xd.segment(k, m);
  auto e = s.err.segment(k, m);
  e = ((((xs / c.scale).rint() + double(c.zero)).max(double(g.qmin())).min(double(g.qmax())) - double(c.zero)) * c.scale - xs)
          .cast<float>();
  auto t = s.terms.segment(k, m);
  t = ((e.abs().log()) * 2.4f).exp();
  return t.sum();
}

// Best shrink of [lo, hi] for the values x: the candidate with the least float error sum (the
// sum of the whole row's terms by Eigen's reduction), the lowest i among equal sums (a
// candidate replaces the best only when strictly smaller, in the order i = 0, 1, ...), then
// checked against no clipping with the exact pow, so the search is never worse than no clip.
//
// Early abandon, with the very same winner: candidates are scored nearest-the-hint first, each
// block by block (~n/8 values, whole SIMD vectors), the blocks holding the largest values first
// (clipping error sits in a few large values: a candidate that clips too much is dropped after
// one block), and the partial sum is checked against the best so far. A partial sum of
// nonnegative terms bounds the full one from below up to rounding: summed in any order, the
// float sum of n nonnegative terms is within a factor (1 +- gamma_n), gamma_n <= 1.01 n u for
// n u <= 0.01 (u = 2^-24), of the exact sum. So a candidate whose partial sum (float per block,
// double across blocks) exceeds best * (1 + 4 n u + 1e-5) has a full float sum, in whatever
// order Eigen's reduction adds it, strictly above the best: it can neither win nor tie. A
// candidate that is never abandoned has all its terms stored, and their sum is taken by the
// very reduction the plain 80-pass search ran over the same terms (tests/test_quant.cpp
// checks the choices against that search; the bench too).
QParams clip_searched(std::span<const float> x, double lo, double hi, const Grid& g) {
  thread_local ClipScratch s;
  const QParams full = params_from_range(lo, hi, g);
  const Eigen::Index n = Eigen::Index(x.size());
  if (s.xd.size() < n) {
    s.xd.resize(n);
    s.err.resize(n);
    s.terms.resize(n);
  }
  s.xd.head(n) = Eigen::Map<const Eigen::ArrayXf>(x.data(), n).cast<double>();
  const Eigen::Index block = std::clamp<Eigen::Index>(n / 8 / 16 * 16, 16, 256);
  s.blocks.clear();
  for (Eigen::Index k = 0; k < n; k += block) {
    float m = 0;
    for (Eigen::Index j = k; j < std::min(n, k + block); ++j) m = std::max(m, std::fabs(x[std::size_t(j)]));
    s.blocks.emplace_back(m, k);
  }
  std::stable_sort(s.blocks.begin(), s.blocks.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  const double nu = double(n) * 0x1p-24;
  const bool can_abandon = nu <= 0.01;
  const double margin = 1 + 4 * nu + 1e-5;
  auto candidate = [&](int i) { return params_from_range((1.0 - i / 100.0) * lo, (1.0 - i / 100.0) * hi, g); };
  QParams best = full;
  float best_err = INFINITY;
  int best_i = kClipCandidates;
  double lower_full = 0;  // a lower bound of candidate 0's (no clip's) error, up to rounding
  const int h = std::clamp(s.hint, 0, kClipCandidates - 1);
  for (int step = 0; step < 2 * kClipCandidates; ++step) {
    // h, h+1, h-1, h+2, h-2, ... within [0, kClipCandidates)
    const int i = step % 2 ? h + (step + 1) / 2 : h - step / 2;
    if (i < 0 || i >= kClipCandidates) continue;
    const QParams c = candidate(i);
    const bool check = can_abandon && best_err < INFINITY;
    const double limit = double(best_err) * margin;
    double partial = 0;
    bool abandoned = false;
    for (const auto& [block_max, k] : s.blocks) {
      partial += double(clip_error_terms(s, k, std::min(block, n - k), c, g));
      if (check && partial > limit) {
        abandoned = true;
        break;
      }
    }
    if (i == 0) lower_full = partial;
    if (abandoned) continue;
    const float e = s.terms.head(n).sum();
    if (i == 0) lower_full = e;
    if (e < best_err || (e == best_err && best_i < kClipCandidates && i < best_i)) {
      best_err = e;
      best = c;
      best_i = i;
    }
  }
  if (best_i < kClipCandidates) s.hint = best_i;
  // The check against no clip with libm's pow (2n calls: ~1/5 of the search once candidates
  // are abandoned) decides only when the two are close: the float terms are within 1e-4 of the
  // pow terms (float rounding of the error, Eigen's log/exp within a few ulps over the whole
  // float range; terms below float's range are under 1e-44 each), the sums within the gamma_n
  // above, so when the winner's float sum is below no clip's lower bound by a margin of 1e-3
  // the exact check cannot prefer no clip and is skipped.
  if (best.scale != full.scale) {
    const bool clearly_better = can_abandon && best_err < INFINITY &&
                                double(best_err) * (1 + 8 * nu + 1e-3) + 1e-30 < lower_full / (1 + 4 * nu);
    if (!clearly_better && exact_clip_error(x, best, g) > exact_clip_error(x, full, g)) best = full;
  }
  return best;
}

void range_of(std::span<const float> x, double& lo, double& hi) {
  lo = 0;
  hi = 0;
  if (x.empty()) return;
  lo = hi = x[0];
  for (float v : x) {
    lo = std::min(lo, double(v));
    hi = std::max(hi, double(v));
  }
}

}  // namespace

QParams grid_params(std::span<const float> x, const Grid& g, double clip) {
  double lo, hi;
  range_of(x, lo, hi);
  return params_from_range(lo * clip, hi * clip, g);
}

double fake_quant(double x, const QParams& p, const Grid& g) { return dequantize_code(quantize_code(x, p, g), p); }

void check_weight_options(const WeightQuantOptions& o, int64_t cols, const std::string& what) {
  if (o.grid.bits < 2 || o.grid.bits > 8)
    throw Error(what, "weight bits must be 2..8, got " + std::to_string(o.grid.bits));
  if (o.group_size < 0 || (o.group_size > 0 && cols % o.group_size != 0))
    throw Error(what, "group size " + std::to_string(o.group_size) + " does not divide the input width " + std::to_string(cols));
}

QuantizedMatrix quantize_rtn(const float* w, int64_t rows, int64_t cols, const WeightQuantOptions& o) {
  check_weight_options(o, cols, "rtn");
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.grid = o.grid;
  q.group_size = o.group_size ? o.group_size : int(cols);
  const int64_t groups = cols / q.group_size;
  q.codes.resize(std::size_t(rows * cols));
  q.params.resize(std::size_t(rows * groups));
  q.dequantized.resize(std::size_t(rows * cols));
  // Rows are independent: the same result on any number of threads.
#pragma omp parallel for schedule(dynamic, 16) if (rows >= 64)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t gi = 0; gi < groups; ++gi) {
      const std::span<const float> x(w + r * cols + gi * q.group_size, std::size_t(q.group_size));
      double lo, hi;
      range_of(x, lo, hi);
      const QParams p = o.clip_search ? clip_searched(x, lo, hi, o.grid) : params_from_range(lo, hi, o.grid);
      q.params[std::size_t(r * groups + gi)] = p;
      for (int64_t c = 0; c < q.group_size; ++c) {
        const std::size_t at = std::size_t(r * cols + gi * q.group_size + c);
        const int code = quantize_code(w[at], p, o.grid);
        q.codes[at] = int8_t(code - (o.grid.symmetric ? 0 : 128));  // asym codes stored offset by 128
        q.dequantized[at] = float(dequantize_code(code, p));
      }
    }
  return q;
}

// The ranges are the option table's rows (options.hpp), the one place they are written.
void check_act_options(const ActQuantOptions& o) {
  check_option_value("a-bits", o.a_bits);
  check_option_value("k-bits", o.k_bits);
  check_option_value("v-bits", o.v_bits);
  check_option_value("a-clip", o.a_clip);
  check_option_value("kv-clip", o.kv_clip);
  check_option_value("a-group", o.a_group);
  if (o.a16_group < -1 || (o.a16_group >= 0 && o.a_bits < 16))
    throw Error("a16_group", "16-bit activation codes are for 16-bit activations (a_bits " + std::to_string(o.a_bits) + "), group " +
                                 std::to_string(o.a16_group));
  // The planner's per-layer values obey the rows of the options they refine.
  for (std::size_t l = 0; l < o.layers.size(); ++l) {
    const auto& x = o.layers[l];
    const std::pair<const char*, const char*> rows[] = {
        {"k_bits", "k-bits"}, {"v_bits", "v-bits"}, {"a_clip", "a-clip"}, {"k_clip", "kv-clip"}, {"v_clip", "kv-clip"}};
    const double values[] = {double(x.k_bits), double(x.v_bits), x.a_clip, x.k_clip, x.v_clip};
    for (std::size_t i = 0; i < std::size(rows); ++i)
      if (auto problem = option_value_problem(*find_option_spec(rows[i].second), values[i]))
        throw Error("--budget-kv-bits", "layer " + std::to_string(l) + " " + rows[i].first + ": " + *problem);
    if (x.a_bits != 0)  // 0: the model's
      if (auto problem = option_value_problem(*find_option_spec("a-bits"), double(x.a_bits)))
        throw Error("--budget-act-bits", "layer " + std::to_string(l) + " a_bits: " + *problem);
  }
}

KvCacheBits kv_cache_bits(const ActQuantOptions& o, int head_dim) {
  KvCacheBits b;
  auto stored = [head_dim](int bits) {
    if (bits >= 16) return 32.0;
    const int bytes = bits <= 4 ? (head_dim + 1) / 2 : head_dim;  // kv_slot_bytes
    return (8.0 * bytes + 32 + 8) / head_dim;
  };
  if (head_dim <= 0) return b;
  auto codes = [](int bits) { return bits >= 16 ? 16.0 : double(bits); };
  if (o.layers.empty()) {
    b.k_codes = codes(o.k_bits);
    b.v_codes = codes(o.v_bits);
    b.k_stored = stored(o.k_bits);
    b.v_stored = stored(o.v_bits);
    return b;
  }
  b = {0, 0, 0, 0};
  for (const auto& l : o.layers) {
    b.k_codes += codes(l.k_bits);
    b.v_codes += codes(l.v_bits);
    b.k_stored += stored(l.k_bits);
    b.v_stored += stored(l.v_bits);
  }
  const double n = double(o.layers.size());
  b.k_codes /= n;
  b.v_codes /= n;
  b.k_stored /= n;
  b.v_stored /= n;
  return b;
}

template <class T>
void fake_quant_rows(T* x, int rows, int cols, int group, const Grid& g, double clip) {
  const int gs = group > 0 ? group : cols;
  for (int r = 0; r < rows; ++r)
    for (int c0 = 0; c0 < cols; c0 += gs) {
      T* v = x + int64_t(r) * cols + c0;
      const int n = std::min(gs, cols - c0);  // the tail group, when gs does not divide cols
      double lo = v[0], hi = v[0];
      for (int i = 0; i < n; ++i) {
        lo = std::min(lo, double(v[i]));
        hi = std::max(hi, double(v[i]));
      }
      const QParams p = params_from_range(lo * clip, hi * clip, g);
      for (int i = 0; i < n; ++i) v[i] = T(fake_quant(double(v[i]), p, g));
    }
}
template void fake_quant_rows<float>(float*, int, int, int, const Grid&, double);
template void fake_quant_rows<double>(double*, int, int, int, const Grid&, double);

template <class T>
ForwardHook<T> act_quant_hook(const ActQuantOptions& o, int head_dim, ForwardHook<T> next) {
  check_act_options(o);
  return [o, head_dim, next](HookPoint p, int layer, const ActivationView<T>& v) {
    const LayerActQuant l = o.layer(layer);  // the layer's own bits and clips (the planner's), else the model's
    switch (p) {
      case HookPoint::QkvInput:
      case HookPoint::OProjInput:
      case HookPoint::GateUpInput:
      case HookPoint::DownProjInput:
        if (l.a_bits < 16)
          fake_quant_rows(v.data, v.rows, v.cols, o.a_group, Grid{l.a_bits, true}, l.a_clip);
        else if (o.a16_group >= 0)
          act16_fake_quant_rows(v.data, v.rows, v.cols, o.a16_group);
        break;
      case HookPoint::KeyAfterRope:
        if (l.k_bits < 16) fake_quant_rows(v.data, v.rows, v.cols, head_dim, Grid{l.k_bits, !o.kv_asym}, l.k_clip);
        break;
      case HookPoint::ValueAfterProj:
        if (l.v_bits < 16) fake_quant_rows(v.data, v.rows, v.cols, head_dim, Grid{l.v_bits, !o.kv_asym}, l.v_clip);
        break;
      default:
        break;
    }
    if (next) next(p, layer, v);
  };
}
template ForwardHook<float> act_quant_hook(const ActQuantOptions&, int, ForwardHook<float>);
template ForwardHook<double> act_quant_hook(const ActQuantOptions&, int, ForwardHook<double>);

Int8RowTable quantize_int8_rows(const float* w, int64_t rows, int64_t cols, int bits) {
  if (bits < 2 || bits > 8) throw Error("--classifier-bits", "row tables are 2..8-bit, got " + std::to_string(bits));
  const double qmax = double((1 << (bits - 1)) - 1);
  Int8RowTable t;
  t.rows = rows;
  t.cols = cols;
  t.codes.resize(std::size_t(rows * cols));
  t.scales.resize(std::size_t(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = w + r * cols;
    double m = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::fabs(double(x[c])));
    float s = 1.f;  // an all-zero row: codes 0 under any scale
    if (m > 0) {
      // Round the significand to 16 bits (ties away from zero): code * s is then exact in fp32.
      uint32_t u;
      const float f = float(m / qmax);
      std::memcpy(&u, &f, 4);
      u = (u + 0x80u) & ~0xFFu;
      std::memcpy(&s, &u, 4);
    }
    t.scales[std::size_t(r)] = s;
    for (int64_t c = 0; c < cols; ++c)
      t.codes[std::size_t(r * cols + c)] = int8_t(std::clamp(std::nearbyint(double(x[c]) / s), -qmax, qmax));
  }
  return t;
}

void Int8RowTable::dequantize_into(float* out) const {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = float(codes[std::size_t(r * cols + c)]) * scales[std::size_t(r)];
}

}  // namespace quarot
