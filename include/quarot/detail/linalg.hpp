#pragma once
// Dense fp64 factorizations GPTQ needs, on Eigen matrices (include quarot/detail/eigen.hpp first;
// for .cpp files only, like that header).
#include <Eigen/Core>

namespace quarot::detail {

using MatrixRowMajorD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Inverts a lower-triangular matrix in place (the strict upper triangle is ignored and left
// zero). Recursive 2x2 blocking, so that almost all of the n^3/3 flops are dense GEMMs, run in
// fixed column chunks on the OpenMP team (the same bits for any thread count).
void invert_lower_triangular(Eigen::Ref<MatrixRowMajorD> l);

// The upper Cholesky factor U of H^-1 (H^-1 = U^T U) of a symmetric positive definite H,
// without forming H^-1: with J the reversal permutation and J H J = M M^T (M lower),
// H = (J M J)(J M J)^T, so U = (J M J)^-1 = J M^-1 J. One Cholesky and one triangular inverse
// (n^3 flops in all) instead of Cholesky, inverse and a second Cholesky (~3n^3).
// Takes H by value (pass an rvalue to save a copy: it becomes the workspace). Returns false,
// leaving `u` untouched, when H is not numerically positive definite.
bool upper_cholesky_of_inverse(MatrixRowMajorD h, MatrixRowMajorD& u);

}  // namespace quarot::detail
