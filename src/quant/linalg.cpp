#include "quarot/detail/eigen.hpp"  // first: its diagnostics pragma must precede Eigen

#include "quarot/detail/linalg.hpp"
#include "quarot/detail/fixed_chunks.hpp"

#include <Eigen/Cholesky>
#include <algorithm>
#include <cmath>

namespace quarot::detail {

void invert_lower_triangular(Eigen::Ref<MatrixRowMajorD> l) {
  const Eigen::Index n = l.rows();
  if (n <= 96) {
    MatrixRowMajorD x = MatrixRowMajorD::Identity(n, n);
    l.triangularView<Eigen::Lower>().solveInPlace(x);
    l = x.triangularView<Eigen::Lower>();
    return;
  }
  // [A 0; B C]^-1 = [A^-1 0; -C^-1 B A^-1  C^-1]; split on a multiple of 64 for the GEMM kernels.
  const Eigen::Index h = std::max<Eigen::Index>(64, (n / 2) / 64 * 64);
  auto a = l.topLeftCorner(h, h);
  auto b = l.bottomLeftCorner(n - h, h);
  auto c = l.bottomRightCorner(n - h, n - h);
  l.topRightCorner(h, n - h).setZero();
  invert_lower_triangular(a);
  invert_lower_triangular(c);
  // The inverses are dense here with exact zeros above the diagonal: plain GEMMs beat Eigen's
  // triangular products. Eigen's own threading is off (fixed_chunks.hpp), so the two products go
  // to the OpenMP team in fixed chunks of output columns: the same bits for any thread count
  // (and, at kOutputChunk, the unchunked product's).
  const bool parallel = double(n - h) * double(h) * double(std::max(h, n - h)) >= kParallelMacs;
  MatrixRowMajorD ba(n - h, h);
  for_fixed_chunks(h, kOutputChunk, parallel, [&](int64_t c0, int64_t m) { ba.middleCols(c0, m).noalias() = b * a.middleCols(c0, m); });
  for_fixed_chunks(h, kOutputChunk, parallel, [&](int64_t c0, int64_t m) { b.middleCols(c0, m).noalias() = -(c * ba.middleCols(c0, m)); });
}

bool upper_cholesky_of_inverse(MatrixRowMajorD m, MatrixRowMajorD& u) {
  const Eigen::Index n = m.rows();
  m.reverseInPlace();                                              // J H J
  Eigen::LLT<Eigen::Ref<MatrixRowMajorD>, Eigen::Lower> llt(m);  // in place: the lower triangle becomes M
  if (llt.info() != Eigen::Success) return false;
  for (Eigen::Index i = 0; i + 1 < n; ++i) m.row(i).tail(n - i - 1).setZero();
  invert_lower_triangular(m);
  m.reverseInPlace();  // J M^-1 J: upper triangular
  for (Eigen::Index i = 0; i < n; ++i)
    if (!(m(i, i) > 0) || !std::isfinite(m(i, i))) return false;
  u.swap(m);
  return true;
}

}  // namespace quarot::detail
