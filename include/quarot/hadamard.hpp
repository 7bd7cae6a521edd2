#pragma once
// Orthonormal Hadamard transforms of any useful size n = K * 2^k:
//   Q = (H_K (x) H_m) / sqrt(n),  m = 2^k,
// with H_m Sylvester's and H_K a base matrix built in code by a published construction:
//   Paley I   (K = q + 1,   q prime, q = 3 mod 4): 12, 20, 44, 60, 108, 140, ...
//   Paley II  (K = 2(q + 1), q prime, q = 1 mod 4): 28, 36, 76, 148, ...
//   Goethals-Seidel (K = 4p, p prime, from cyclotomic sequences): 52, 68, 124, 164, 172, ...
// Bases are at most 256 (a K x K factor costs K^2 per group of m values). When no construction
// of such a size is known to the code (e.g. 156 = 4 * 39, 92, 116), the K x K factor is a
// seeded random orthogonal matrix instead: still orthogonal (so every rotation stays exact) but
// not a Hadamard matrix; `is_hadamard()` says so and callers log and report it.
// The transform of a call runs on all its rows at once: the butterflies per K sub-rows, then the
// K x K base as one small GEMM per block of rows (OpenMP over blocks when the call is big enough).
// The butterflies are src/ops' FWHT (quarot/fwht.hpp), on the Isa the float calls are given; the
// base's GEMM is Eigen's, compiled for the build's target (QUAROT_NATIVE), not dispatched.
#include <cstdint>
#include <string>
#include <vector>

#include "quarot/fwht.hpp"
#include "quarot/isa.hpp"

namespace quarot {

class Hadamard {
 public:
  // Throws quarot::Error for n < 1.
  // goethals_seidel = false: the bases quarot used before the Goethals-Seidel orders (52, 68, 124,
  // 164, 172) were added, to rebuild the transforms of files rotated then.
  static Hadamard make(int n, uint64_t fallback_seed = 0, bool goethals_seidel = true);

  int size() const { return n_; }
  int base_size() const { return k_; }  // K
  int pow2() const { return m_; }       // m = 2^k
  bool is_hadamard() const { return hadamard_; }
  const std::string& construction() const { return construction_; }  // e.g. "paley2(q=13) x sylvester(512)"

  // x[r] <- x[r] * Q for each of `rows` rows of length n (row r at x + r * stride). `isa` picks
  // the float butterflies' path (every path gives the same bits); the double ones are scalar.
  void right(float* x, int rows, int64_t stride, Isa isa = best_isa()) const;
  void right(double* x, int rows, int64_t stride) const;
  // x[r] <- x[r] * Q^T (the inverse).
  void right_transpose(float* x, int rows, int64_t stride, Isa isa = best_isa()) const;
  void right_transpose(double* x, int rows, int64_t stride) const;
  // The plain per-row loop (butterflies, then the base one product at a time), serial: the
  // reference the fast path is checked and benchmarked against.
  template <class T>
  void apply_reference(T* x, int rows, int64_t stride, bool transpose) const;

  // X <- Q^T X for X with n rows of `cols` values (row-major): the transform applied to every
  // column at once, with whole-row butterflies (no transpose).
  void left_transpose(double* x, int64_t cols) const;

  std::vector<double> dense() const;                // Q, n x n row-major (by the reference path)
  const std::vector<double>& base() const { return base_; }  // H_K / sqrt(K), K x K row-major

 private:
  template <class T>
  void apply(T* x, int rows, int64_t stride, bool transpose, Isa isa) const;
  void set_mix();
  int n_ = 1, k_ = 1, m_ = 1;
  bool hadamard_ = true;
  std::string construction_;
  std::vector<double> base_;  // orthonormal K x K
  std::vector<double> mix_;   // base_ / sqrt(m): the base and the butterflies' scale in one product
  std::vector<float> mix_f_;  // mix_ rounded to fp32 for the float path
};

// The +-1 base matrices, unnormalized (tests check H H^T = K I); empty if unknown.
std::vector<int> hadamard_base_matrix(int k, bool goethals_seidel = true);
// A seeded random orthogonal k x k matrix (row-major, fp64): Gaussian entries from the project's
// PRNG, orthonormalized by modified Gram-Schmidt, twice.
std::vector<double> random_orthogonal(int k, uint64_t seed);
bool is_prime(int q);

}  // namespace quarot
