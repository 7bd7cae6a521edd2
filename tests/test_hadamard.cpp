// Hadamard matrices of every size QuaRot needs, and the fast transform against the dense one.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "quarot/detail/rng.hpp"
#include "quarot/hadamard.hpp"

using namespace quarot;

TEST(Hadamard, BaseConstructionsAreHadamard) {
  // Paley I: 12, 20, 44, 60, 108, 140; Paley II: 28, 36, 76, 148; Goethals-Seidel with
  // cyclotomic sequences: 52, 68, 124, 164, 172.
  for (int k : {2, 12, 20, 28, 36, 44, 52, 60, 68, 76, 108, 124, 140, 148, 164, 172}) {
    const auto h = hadamard_base_matrix(k);
    ASSERT_EQ(h.size(), std::size_t(k) * k) << k;
    for (int v : h) ASSERT_TRUE(v == 1 || v == -1) << k;
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) {
        int dot = 0;
        for (int c = 0; c < k; ++c) dot += h[std::size_t(i) * k + c] * h[std::size_t(j) * k + c];
        ASSERT_EQ(dot, i == j ? k : 0) << "order " << k << " rows " << i << "," << j;
      }
  }
  // No construction in quarot (156 = 4 * 39, 39 not prime; 4 * 23 and 4 * 29: no cyclotomic
  // solution with at most 8 classes): the fallback is used.
  for (int k : {92, 116, 156}) EXPECT_TRUE(hadamard_base_matrix(k).empty()) << k;
}

TEST(Hadamard, SizesThatMatterFactorAsExpected) {
  struct Case {
    int n;
    int k;
    bool hadamard;
  };
  for (const Case c : {Case{8, 1, true}, Case{16, 1, true}, Case{128, 1, true}, Case{192, 12, true},
                       Case{172, 172, true}, Case{11008, 172, true}, Case{13824, 108, true}, Case{14336, 28, true},
                       Case{28672, 28, true}, Case{18944, 148, true}, Case{4864, 76, true}, Case{896, 28, true},
                       Case{14, 7, false}}) {
    const auto h = Hadamard::make(c.n, 5);
    EXPECT_EQ(h.size(), c.n);
    EXPECT_EQ(h.base_size(), c.k) << c.n << ": " << h.construction();
    EXPECT_EQ(h.base_size() * h.pow2(), c.n);
    EXPECT_EQ(h.is_hadamard(), c.hadamard) << h.construction();
  }
  EXPECT_EQ(Hadamard::make(14336).construction(), "paley2(q=13) x sylvester(512)");
  EXPECT_EQ(Hadamard::make(11008).construction(), "goethals-seidel(p=43) x sylvester(64)");
  EXPECT_EQ(Hadamard::make(172).construction(), "goethals-seidel(p=43)");
  EXPECT_EQ(Hadamard::make(11008).base(), Hadamard::make(11008, 99).base());  // no randomness in it
}

TEST(Hadamard, DenseIsOrthogonalAndScaledHadamard) {
  for (int n : {1, 2, 8, 12, 16, 24, 28, 172, 192}) {
    const auto h = Hadamard::make(n, 1);
    const auto q = h.dense();
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        double dot = 0;
        for (int c = 0; c < n; ++c) dot += q[std::size_t(i) * n + c] * q[std::size_t(j) * n + c];
        ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-12) << n;
      }
    if (h.is_hadamard()) {
      for (double v : q) ASSERT_NEAR(std::fabs(v) * std::sqrt(double(n)), 1.0, 1e-12) << n;
    }
  }
}

TEST(Hadamard, FastTransformEqualsKroneckerDefinitionAtLargeSizes) {
  // y[c*m + e] = sum_{a,b} x[a*m + b] * B[a][c] * (-1)^popcount(b & e) / sqrt(m), B = H_K/sqrt(K).
  detail::Rng rng(3);
  for (int n : {11008, 14336, 4864}) {
    const auto h = Hadamard::make(n, 9);
    const int K = h.base_size(), m = h.pow2();
    std::vector<double> x(n);
    for (auto& v : x) v = rng.gaussian();
    auto y = x;
    h.right(y.data(), 1, n);
    for (int out : {0, 1, n / 3, n - 1}) {
      const int c = out / m, e = out % m;
      double ref = 0;
      for (int a = 0; a < K; ++a)
        for (int b = 0; b < m; ++b)
          ref += x[std::size_t(a) * m + b] * h.base()[std::size_t(a) * K + c] * ((std::popcount(unsigned(b & e)) & 1) ? -1 : 1);
      ASSERT_NEAR(y[out], ref / std::sqrt(double(m)), 1e-9) << n << " @" << out;
    }
    auto back = y;
    h.right_transpose(back.data(), 1, n);
    for (int i = 0; i < n; ++i) ASSERT_NEAR(back[i], x[i], 1e-10);
  }
}

TEST(Hadamard, FloatAndDoublePathsAgree) {
  const auto h = Hadamard::make(192, 2);
  detail::Rng rng(4);
  std::vector<float> xf(3 * 192);
  for (auto& v : xf) v = rng.gaussian();
  std::vector<double> xd(xf.begin(), xf.end());
  h.right(xf.data(), 3, 192);
  h.right(xd.data(), 3, 192);
  for (std::size_t i = 0; i < xf.size(); ++i) ASSERT_NEAR(xf[i], xd[i], 1e-5);
}

TEST(Fwht, SimdPathIsBitIdenticalToTheReference) {
  detail::Rng rng(5);
  for (int n = 1; n <= 16384; n *= 2) {
    std::vector<float> a(n);
    for (auto& v : a) v = rng.gaussian();
    auto b = a;
    fwht(a.data(), n);
    fwht_ref(b.data(), n);
    ASSERT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * n), 0) << "n=" << n << " isa=" << fwht_isa();
  }
  // Edge values: H_n applied twice is n * I.
  std::vector<float> ones(64, 1.f);
  fwht(ones.data(), 64);
  EXPECT_EQ(ones[0], 64.f);
  for (int i = 1; i < 64; ++i) EXPECT_EQ(ones[i], 0.f);
  std::printf("fwht path here: %s\n", fwht_isa());
}

TEST(Hadamard, LeftTransposeOnColumnsEqualsDense) {
  detail::Rng rng(6);
  for (int n : {1, 8, 12, 14, 24, 28, 52, 172, 192}) {
    const auto h = Hadamard::make(n, 3);
    const auto q = h.dense();
    const int cols = 5;
    std::vector<double> x(std::size_t(n) * cols);
    for (auto& v : x) v = rng.gaussian();
    auto y = x;
    h.left_transpose(y.data(), cols);
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < cols; ++c) {
        double ref = 0;
        for (int k = 0; k < n; ++k) ref += q[std::size_t(k) * n + i] * x[std::size_t(k) * cols + c];  // (Q^T X)[i][c]
        ASSERT_NEAR(y[std::size_t(i) * cols + c], ref, 1e-12) << n;
      }
  }
}

namespace {

// x <- x Q (or x Q^T) for `rows` rows at `stride`, in fp64 from the dense matrix.
std::vector<double> dense_product(const std::vector<double>& q, int n, const std::vector<double>& x, int rows, int64_t stride,
                                  bool transpose) {
  std::vector<double> y = x;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < n; ++c) {
      double s = 0;
      for (int a = 0; a < n; ++a)
        s += x[std::size_t(r * stride + a)] * (transpose ? q[std::size_t(c) * n + a] : q[std::size_t(a) * n + c]);
      y[std::size_t(r * stride + c)] = s;
    }
  return y;
}

// The largest relative 2-norm error of a row against the reference.
template <class T>
double worst_row_error(const std::vector<T>& y, const std::vector<double>& ref, int n, int rows, int64_t stride) {
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    double e = 0, s = 0;
    for (int c = 0; c < n; ++c) {
      const double d = double(y[std::size_t(r * stride + c)]) - ref[std::size_t(r * stride + c)];
      e += d * d;
      s += ref[std::size_t(r * stride + c)] * ref[std::size_t(r * stride + c)];
    }
    worst = std::max(worst, std::sqrt(e / s));
  }
  return worst;
}

}  // namespace

TEST(Hadamard, BatchedPathEqualsDenseForEveryConstruction) {
  // Sylvester only (16), Paley I (12, 24 = 12 x 2), Paley II (28), Goethals-Seidel (52, 68, 124,
  // 164, 172, 344 = 172 x 2), random orthogonal (14 = 7 x 2, 39). Rows: one, a few, and enough for
  // several GEMM blocks and the parallel path; strides with and without padding; fp32 to 1e-6 and
  // fp64 to 1e-12, relative per row.
  detail::Rng rng(7);
  for (int n : {16, 12, 24, 28, 52, 68, 124, 164, 172, 344, 14, 39}) {
    const auto h = Hadamard::make(n, 11);
    const auto q = h.dense();
    for (int rows : {1, 3, 300})
      for (int64_t stride : {int64_t(n), int64_t(n) + 5}) {
        std::vector<double> x(std::size_t(rows * stride));
        for (auto& v : x) v = rng.gaussian();
        for (auto& v : x) v = double(float(v));  // exactly representable in fp32
        for (bool transpose : {false, true}) {
          const auto ref = dense_product(q, n, x, rows, stride, transpose);
          std::vector<double> yd = x;
          std::vector<float> yf(x.begin(), x.end());
          if (transpose) {
            h.right_transpose(yd.data(), rows, stride);
            h.right_transpose(yf.data(), rows, stride);
          } else {
            h.right(yd.data(), rows, stride);
            h.right(yf.data(), rows, stride);
          }
          const std::string what = h.construction() + " rows " + std::to_string(rows) + " stride " + std::to_string(stride) +
                                   (transpose ? " transpose" : "");
          ASSERT_LT(worst_row_error(yd, ref, n, rows, stride), 1e-12) << what;
          ASSERT_LT(worst_row_error(yf, ref, n, rows, stride), 1e-6) << what;
          for (int r = 0; r < rows; ++r)  // the padding is left alone
            for (int64_t c = n; c < stride; ++c) ASSERT_EQ(yd[std::size_t(r * stride + c)], x[std::size_t(r * stride + c)]) << what;
        }
      }
  }
}

TEST(Hadamard, BatchedPathAtLlamaSizesEqualsTheReferenceLoop) {
  // 11008 = goethals-seidel(43) x sylvester(64), 14336 = paley2(13) x sylvester(512): the dense
  // matrix is too big to test against; the per-row reference loop is checked against the
  // Kronecker definition above.
  detail::Rng rng(8);
  for (int n : {11008, 14336}) {
    const auto h = Hadamard::make(n, 0);
    const int rows = 5;
    std::vector<double> x(std::size_t(rows) * n);
    for (auto& v : x) v = double(float(rng.gaussian()));
    for (bool transpose : {false, true}) {
      auto ref = x;
      h.apply_reference(ref.data(), rows, n, transpose);
      std::vector<double> yd = x;
      std::vector<float> yf(x.begin(), x.end());
      if (transpose) {
        h.right_transpose(yd.data(), rows, n);
        h.right_transpose(yf.data(), rows, n);
      } else {
        h.right(yd.data(), rows, n);
        h.right(yf.data(), rows, n);
      }
      ASSERT_LT(worst_row_error(yd, ref, n, rows, n), 1e-12) << n;
      ASSERT_LT(worst_row_error(yf, ref, n, rows, n), 1e-6) << n;
    }
  }
}

TEST(Hadamard, BatchedPathIsTheSameOnAnyNumberOfThreads) {
  // Blocks of rows are fixed by the call, not by the threads: bit-identical results. The call is
  // big enough to take the parallel path; the caller's thread count is left as it was.
  const auto h = Hadamard::make(172);
  detail::Rng rng(9);
  std::vector<float> x(std::size_t(600) * 172);
  for (auto& v : x) v = rng.gaussian();
  const int threads = omp_get_max_threads();
  auto one = x, two = x;
  omp_set_num_threads(1);
  h.right(one.data(), 600, 172);
  omp_set_num_threads(2);
  h.right(two.data(), 600, 172);
  EXPECT_EQ(omp_get_max_threads(), 2);
  omp_set_num_threads(threads);
  EXPECT_EQ(std::memcmp(one.data(), two.data(), sizeof(float) * one.size()), 0);
}
