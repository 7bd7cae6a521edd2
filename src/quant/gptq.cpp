// GPTQ (Frantar et al., 2022), following the reference implementation used by QuaRot: Cholesky
// of the damped inverse Hessian, blocks of columns with lazy updates, dynamic or static groups,
// optional act-order.
#include "quarot/detail/eigen.hpp"  // first: its diagnostics pragma must precede Eigen

#include <chrono>
#include <cmath>
#include <numeric>
#include <utility>
#include "quarot/detail/fixed_chunks.hpp"
#include "quarot/detail/gptq_factor.hpp"
#include "quarot/detail/linalg.hpp"
#include "quarot/error.hpp"
#include "quarot/quant.hpp"

namespace quarot {

namespace {
using MatRM = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatCM = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

QParams params_for(const MatCM& w, int64_t row, int64_t c0, int64_t n, const WeightQuantOptions& o) {
  std::vector<float> x(static_cast<std::size_t>(n));
  for (int64_t i = 0; i < n; ++i) x[std::size_t(i)] = float(w(row, c0 + i));
  const auto q = quantize_rtn(x.data(), 1, n, WeightQuantOptions{o.grid, 0, o.clip_search});
  return q.params[0];
}
}  // namespace

using detail::GptqHessianFactor;

namespace {
// The Hessian's part (see GptqHessianFactor).
GptqHessianFactor make_factor(std::vector<double> hessian, int64_t cols, const GptqOptions& o) {
  if (int64_t(hessian.size()) != cols * cols) throw Error("gptq", "Hessian size does not match the input width");
  GptqHessianFactor f;
  f.cols = cols;
  f.act_order = o.act_order;
  f.damp = o.damp;
  MatRM H = Eigen::Map<MatRM>(hessian.data(), cols, cols);
  std::vector<double>().swap(hessian);  // 1 GB at width 11008
  f.dead.assign(std::size_t(cols), 0);
  for (int64_t i = 0; i < cols; ++i)
    if (H(i, i) == 0) {  // a dead input: nothing to compensate with
      H(i, i) = 1;
      f.dead[std::size_t(i)] = 1;
      ++f.dead_inputs;
    }
  f.perm.resize(static_cast<std::size_t>(cols));
  std::iota(f.perm.begin(), f.perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(f.perm.begin(), f.perm.end(), [&](int64_t a, int64_t b) { return H(a, a) > H(b, b); });
    MatRM Hp(cols, cols);
    for (int64_t i = 0; i < cols; ++i)
      for (int64_t j = 0; j < cols; ++j) Hp(i, j) = H(f.perm[std::size_t(i)], f.perm[std::size_t(j)]);
    H.swap(Hp);
  }
  // Damped inverse Hessian, as the upper Cholesky factor.
  const double mean_diag = H.diagonal().mean();
  MatRM Hinv;
  double damp = o.damp;
  for (int attempt = 0;; ++attempt) {
    MatRM Hd = H;
    Hd.diagonal().array() += damp * mean_diag;
    if (detail::upper_cholesky_of_inverse(std::move(Hd), Hinv)) break;
    if (attempt == 3)
      throw Error("gptq", "the Hessian is not positive definite even with damping " + std::to_string(damp) +
                              " (calibration data too small or degenerate?)");
    damp *= 10;
  }
  f.damp_used = damp;
  MatRM().swap(H);  // before the copy: two width-11008 matrices at a time, not three
  f.hinv_u.assign(Hinv.data(), Hinv.data() + Hinv.size());
  return f;
}

// GPTQ proper; `round` (optional) replaces o.weights' grid by a grid fixed per weight beforehand.
GptqResult gptq_core(const float* w_in, int64_t rows, int64_t cols, const GptqHessianFactor& f, const GptqOptions& o,
                     const GridRounder* round) {
  const auto t0 = std::chrono::steady_clock::now();
  if (!round) check_weight_options(o.weights, cols, "gptq");
  if (f.cols != cols || int64_t(f.hinv_u.size()) != cols * cols)
    throw Error("gptq", "Hessian size does not match the input width");
  if (f.act_order != o.act_order || f.damp != o.damp) throw Error("gptq", "the Hessian factor was made for other options");
  GptqResult res;
  const Grid& g = o.weights.grid;
  const int64_t gs = !round && o.weights.group_size ? o.weights.group_size : cols;
  const std::vector<int64_t>& perm = f.perm;
  const Eigen::Map<const MatRM> Hinv(f.hinv_u.data(), cols, cols);
  res.dead_inputs = f.dead_inputs;
  res.damp_used = f.damp_used;

  MatCM W(rows, cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) W(r, c) = w_in[r * cols + c];
  for (int64_t i = 0; i < cols; ++i)
    if (f.dead[std::size_t(i)]) W.col(i).setZero();

  // Static groups: parameters from the original weights, in the original column order.
  std::vector<QParams> static_params;
  const int64_t n_groups = cols / gs;
  if (!round && o.weights.group_size && o.static_groups) {
    static_params.resize(std::size_t(rows * n_groups));
#pragma omp parallel for schedule(dynamic, 16) if (rows >= 64)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t gi = 0; gi < n_groups; ++gi) static_params[std::size_t(r * n_groups + gi)] = params_for(W, r, gi * gs, gs, o.weights);
  }

  if (o.act_order) {
    MatCM Wp(rows, cols);
    for (int64_t j = 0; j < cols; ++j) Wp.col(j) = W.col(perm[std::size_t(j)]);
    W.swap(Wp);
  }

  // Per-row parameters without groups: from the whole (permuted) row, before any update.
  std::vector<QParams> row_params;
  if (!round && !o.weights.group_size) {
    row_params.resize(std::size_t(rows));
#pragma omp parallel for schedule(dynamic, 16) if (rows >= 64)
    for (int64_t r = 0; r < rows; ++r) row_params[std::size_t(r)] = params_for(W, r, 0, cols, o.weights);
  }
  std::vector<QParams> current(static_cast<std::size_t>(rows));
  MatCM Q(rows, cols);
  std::vector<int> codes(static_cast<std::size_t>(rows * cols));
  std::vector<QParams> out_params(static_cast<std::size_t>(rows * n_groups));
  double loss = 0;
  const int64_t bs = std::max(1, o.block_size);
  for (int64_t i1 = 0; i1 < cols; i1 += bs) {
    const int64_t i2 = std::min(i1 + bs, cols), count = i2 - i1;
    MatCM W1 = W.middleCols(i1, count);
    MatCM Err1(rows, count);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i, orig = perm[std::size_t(col)];
      if (round) {
        // the grid is fixed per weight: nothing to choose per group
      } else if (o.weights.group_size) {
        if (o.static_groups) {
          for (int64_t r = 0; r < rows; ++r) current[std::size_t(r)] = static_params[std::size_t(r * n_groups + orig / gs)];
        } else if (col % gs == 0) {
          // As the reference: parameters from the (lazily updated) weights of the next group:
          // its columns inside this block come from W1, the rest from W.
          const int64_t width = std::min(gs, cols - col);
          MatCM grp(rows, width);
          for (int64_t j = 0; j < width; ++j) grp.col(j) = col + j < i2 ? W1.col(col + j - i1) : W.col(col + j);
#pragma omp parallel for schedule(dynamic, 16) if (rows >= 64)
          for (int64_t r = 0; r < rows; ++r) current[std::size_t(r)] = params_for(grp, r, 0, width, o.weights);
        }
      } else {
        current = row_params;
      }
      const double d = Hinv(col, col);
      for (int64_t r = 0; r < rows; ++r) {
        const double wv = W1(r, i);
        int code = 0;
        double qv = 0;
        if (round) {
          qv = (*round)(r, orig, wv, &code);
        } else {
          code = quantize_code(wv, current[std::size_t(r)], g);
          qv = dequantize_code(code, current[std::size_t(r)]);
        }
        Q(r, col) = qv;
        codes[std::size_t(r * cols + orig)] = code;
        if (!round) out_params[std::size_t(r * n_groups + (o.weights.group_size ? orig / gs : 0))] = current[std::size_t(r)];
        loss += (wv - qv) * (wv - qv) / (d * d) / 2;
        Err1(r, i) = (wv - qv) / d;
      }
      W1.rightCols(count - i).noalias() -= Err1.col(i) * Hinv.block(col, col, 1, count - i);
    }
    // The lazy update of the columns after the block, in fixed chunks of columns (the same sums
    // for any thread count: see fixed_chunks.hpp).
    const bool parallel = double(rows) * double(count) * double(cols - i2) >= detail::kParallelMacs;
    detail::for_fixed_chunks(cols - i2, detail::kOutputChunk, parallel, [&](int64_t c0, int64_t n) {
      W.middleCols(i2 + c0, n).noalias() -= Err1 * Hinv.block(i1, i2 + c0, count, n);
    });
  }

  QuantizedMatrix& q = res.q;
  q.rows = rows;
  q.cols = cols;
  q.grid = g;
  q.group_size = int(gs);
  q.codes.resize(std::size_t(rows * cols));
  q.dequantized.resize(std::size_t(rows * cols));
  if (!round) q.params = std::move(out_params);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t orig = perm[std::size_t(j)];
      q.dequantized[std::size_t(r * cols + orig)] = float(Q(r, j));
      const int code = codes[std::size_t(r * cols + orig)];
      q.codes[std::size_t(r * cols + orig)] = int8_t(round ? code : code - (g.symmetric ? 0 : 128));
    }
  res.loss = loss;
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}
}  // namespace

namespace detail {
GptqHessianFactor gptq_factor(std::vector<double> hessian, int64_t cols, const GptqOptions& o) {
  return make_factor(std::move(hessian), cols, o);
}

GptqResult gptq_quantize(const float* w, int64_t rows, int64_t cols, const GptqHessianFactor& f, const GptqOptions& o) {
  return gptq_core(w, rows, cols, f, o, nullptr);
}

GptqResult gptq_quantize_onto(const float* w, int64_t rows, int64_t cols, const GptqHessianFactor& f, const GptqOptions& o,
                              const GridRounder& round) {
  if (!round) throw Error("gptq", "no grid to quantize onto");
  return gptq_core(w, rows, cols, f, o, &round);
}
}  // namespace detail

GptqResult gptq_quantize(const float* w, int64_t rows, int64_t cols, std::vector<double> hessian, const GptqOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  if (int64_t(hessian.size()) != cols * cols) throw Error("gptq", "Hessian size does not match the input width");
  check_weight_options(o.weights, cols, "gptq");
  GptqResult r = gptq_core(w, rows, cols, make_factor(std::move(hessian), cols, o), o, nullptr);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

GptqResult gptq_quantize_onto(const float* w, int64_t rows, int64_t cols, std::vector<double> hessian, const GptqOptions& o,
                              const GridRounder& round) {
  if (!round) throw Error("gptq", "no grid to quantize onto");
  const auto t0 = std::chrono::steady_clock::now();
  GptqResult r = gptq_core(w, rows, cols, make_factor(std::move(hessian), cols, o), o, &round);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

QuantizedMatrix quantize_onto(const float* w, int64_t rows, int64_t cols, const GridRounder& round) {
  QuantizedMatrix q;
  q.rows = rows;
  q.cols = cols;
  q.group_size = int(cols);
  q.codes.resize(std::size_t(rows * cols));
  q.dequantized.resize(std::size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      int code = 0;
      q.dequantized[std::size_t(r * cols + c)] = float(round(r, c, w[r * cols + c], &code));
      q.codes[std::size_t(r * cols + c)] = int8_t(code);
    }
  return q;
}

}  // namespace quarot
