// GPTQ's factorizations against the textbook route: the upper Cholesky factor of the inverse
// Hessian computed directly (one Cholesky, one blocked triangular inverse) must equal
// chol(inv(H)) to fp64 rounding.
#include "quarot/detail/eigen.hpp"  // first: its diagnostics pragma must precede Eigen

#include <gtest/gtest.h>

#include <Eigen/Cholesky>
#include <omp.h>

#include <cstring>

#include "quarot/detail/linalg.hpp"
#include "quarot/detail/rng.hpp"

using quarot::detail::MatrixRowMajorD;

namespace {

// A Hessian like GPTQ's: X^T X of correlated, unevenly scaled inputs, plus 1% damping.
MatrixRowMajorD hessian(Eigen::Index n, uint64_t seed) {
  quarot::detail::Rng rng(seed);
  MatrixRowMajorD x(2 * n, n);
  for (Eigen::Index t = 0; t < x.rows(); ++t)
    for (Eigen::Index c = 0; c < n; ++c) x(t, c) = rng.gaussian() * (c % 17 == 3 ? 10.0 : 1.0) + (c ? 0.5 * x(t, c - 1) : 0.0);
  MatrixRowMajorD h = x.transpose() * x / double(x.rows());
  h.diagonal().array() += 0.01 * h.diagonal().mean();
  return h;
}

}  // namespace

TEST(LinAlg, LowerTriangularInverseAcrossBlockSizes) {
  // 1 and 96: the unblocked base case; 97, 300, 1000: one and several levels of 64-aligned splits.
  for (Eigen::Index n : {1, 96, 97, 300, 1000}) {
    const MatrixRowMajorD h = hessian(n, uint64_t(n));
    const MatrixRowMajorD l = Eigen::LLT<MatrixRowMajorD>(h).matrixL();
    MatrixRowMajorD inv = l;
    quarot::detail::invert_lower_triangular(inv);
    const MatrixRowMajorD upper = inv.triangularView<Eigen::StrictlyUpper>();
    EXPECT_EQ(upper.norm(), 0.0) << "n " << n;
    const double err = (l * inv - MatrixRowMajorD::Identity(n, n)).norm() / std::sqrt(double(n));
    EXPECT_LT(err, 1e-12) << "n " << n;
  }
}

// The recursion with whole (unchunked, serial) products: what invert_lower_triangular computed
// before its products were cut into column chunks for the OpenMP team.
static void invert_lower_triangular_unchunked(Eigen::Ref<MatrixRowMajorD> l) {
  const Eigen::Index n = l.rows();
  if (n <= 96) {
    MatrixRowMajorD x = MatrixRowMajorD::Identity(n, n);
    l.triangularView<Eigen::Lower>().solveInPlace(x);
    l = x.triangularView<Eigen::Lower>();
    return;
  }
  const Eigen::Index h = std::max<Eigen::Index>(64, (n / 2) / 64 * 64);
  auto a = l.topLeftCorner(h, h);
  auto b = l.bottomLeftCorner(n - h, h);
  auto c = l.bottomRightCorner(n - h, n - h);
  l.topRightCorner(h, n - h).setZero();
  invert_lower_triangular_unchunked(a);
  invert_lower_triangular_unchunked(c);
  const MatrixRowMajorD ba = b * a;
  b.noalias() = -(c * ba);
}

TEST(LinAlg, LowerTriangularInverseSameBitsForAnyThreadCount) {
  const Eigen::Index n = 1000;
  const MatrixRowMajorD l = Eigen::LLT<MatrixRowMajorD>(hessian(n, 77)).matrixL();
  MatrixRowMajorD one = l, two = l, whole = l;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  quarot::detail::invert_lower_triangular(one);
  omp_set_num_threads(2);
  quarot::detail::invert_lower_triangular(two);
  omp_set_num_threads(threads);
  invert_lower_triangular_unchunked(whole);
  EXPECT_EQ(std::memcmp(one.data(), two.data(), sizeof(double) * std::size_t(n * n)), 0);
  EXPECT_EQ(std::memcmp(one.data(), whole.data(), sizeof(double) * std::size_t(n * n)), 0);
}

TEST(LinAlg, UpperCholeskyOfInverseMatchesTheTextbookRoute) {
  for (Eigen::Index n : {1, 64, 97, 300, 700}) {
    const MatrixRowMajorD h = hessian(n, 100 + uint64_t(n));
    const MatrixRowMajorD inv = Eigen::LLT<MatrixRowMajorD>(h).solve(MatrixRowMajorD::Identity(n, n));
    const MatrixRowMajorD expected = Eigen::LLT<MatrixRowMajorD>(inv).matrixU();
    MatrixRowMajorD u;
    ASSERT_TRUE(quarot::detail::upper_cholesky_of_inverse(h, u)) << "n " << n;
    ASSERT_EQ(u.rows(), n);
    EXPECT_LT((u - expected).norm() / expected.norm(), 1e-10) << "n " << n;
    EXPECT_EQ(MatrixRowMajorD(u.triangularView<Eigen::StrictlyLower>()).norm(), 0.0);
    EXPECT_LT((u.transpose() * u * h - MatrixRowMajorD::Identity(n, n)).norm() / std::sqrt(double(n)), 1e-9);
  }
}

TEST(LinAlg, NotPositiveDefiniteIsReportedAndLeavesTheOutputAlone) {
  MatrixRowMajorD h = hessian(50, 7);
  h(20, 20) = -1.0;
  MatrixRowMajorD u = MatrixRowMajorD::Constant(2, 2, 3.0);
  EXPECT_FALSE(quarot::detail::upper_cholesky_of_inverse(h, u));
  EXPECT_EQ(u, MatrixRowMajorD::Constant(2, 2, 3.0));
}
