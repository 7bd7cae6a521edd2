#include "quarot/hadamard.hpp"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <unordered_map>
#include <type_traits>
#include <utility>

#include "quarot/detail/eigen.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"

namespace quarot {

bool is_prime(int q) {
  if (q < 2) return false;
  for (int d = 2; d * d <= q; ++d)
    if (q % d == 0) return false;
  return true;
}

namespace {

// Quadratic character of a mod q (q prime): 0, +1 or -1.
int chi(int a, int q) {
  a = ((a % q) + q) % q;
  if (a == 0) return 0;
  long long r = 1, b = a;
  for (int e = (q - 1) / 2; e; e >>= 1) {  // Euler's criterion: a^((q-1)/2) mod q
    if (e & 1) r = r * b % q;
    b = b * b % q;
  }
  return r == 1 ? 1 : -1;
}

// Jacobsthal-based conference core: C[i][j] for the (q+1) x (q+1) matrix with a bordered
// first row/column; `skew` selects Paley I's antisymmetric form.
std::vector<int> conference(int q, bool skew) {
  const int s = q + 1;
  std::vector<int> c(std::size_t(s) * s, 0);
  for (int j = 1; j < s; ++j) {
    c[j] = 1;
    c[std::size_t(j) * s] = skew ? -1 : 1;
  }
  for (int i = 1; i < s; ++i)
    for (int j = 1; j < s; ++j) c[std::size_t(i) * s + j] = chi(j - i, q);
  return c;
}


int pow_mod(int b, int e, int p) {
  long long r = 1, x = b % p;
  for (; e; e >>= 1) {
    if (e & 1) r = r * x % p;
    x = x * x % p;
  }
  return int(r);
}

int primitive_root(int p) {  // p prime
  for (int g = 2; g < p; ++g) {
    bool generates = true;
    for (int q = 2; q < p && generates; ++q)
      if ((p - 1) % q == 0 && is_prime(q) && pow_mod(g, (p - 1) / q, p) == 1) generates = false;
    if (generates) return g;
  }
  return 1;  // p = 2
}

// Goethals-Seidel (1967): with A, B, C, D circulant +-1 matrices of order p whose periodic
// autocorrelations add up to 0 at every nonzero shift, and R the back-diagonal identity,
//   [  A     BR     CR     DR   ]
//   [ -BR    A      D^T R -C^T R ]
//   [ -CR   -D^T R  A      B^T R ]
//   [ -DR    C^T R -B^T R  A     ]
// is Hadamard of order 4p. `seq` holds the first rows of A, B, C, D.
std::vector<int> goethals_seidel_array(const std::array<std::vector<int>, 4>& seq) {
  const int p = int(seq[0].size()), k = 4 * p;
  // Per block of the array: which sequence, its sign, and whether it is transposed.
  static constexpr int kWhich[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
  static constexpr int kSign[4][4] = {{1, 1, 1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}, {-1, 1, -1, 1}};
  std::vector<int> h(std::size_t(k) * k);
  for (int bi = 0; bi < 4; ++bi)
    for (int bj = 0; bj < 4; ++bj) {
      const auto& s = seq[std::size_t(kWhich[bi][bj])];
      const bool transposed = bi != 0 && bj != 0;
      for (int i = 0; i < p; ++i)
        for (int j = 0; j < p; ++j) {
          // circ(s)[i][j] = s[j - i]; (circ(s) R)[i][j] = s[p-1-j-i]; (circ(s)^T R)[i][j] = s[i+j+1] (mod p).
          const int x = bi == bj ? j - i : transposed ? i + j + 1 : p - 1 - j - i;
          h[std::size_t(bi * p + i) * k + std::size_t(bj * p + j)] = kSign[bi][bj] * s[std::size_t(((x % p) + p) % p)];
        }
    }
  return h;
}

// Four sequences for the array above, for p prime: the candidates are the sequences constant on
// the cyclotomic classes of order e (the cosets of the e-th powers in Z_p^*, and 0 on its own):
// their autocorrelation is constant on each class too, so the condition is e equations, and a
// meet in the middle over pairs of sequences settles it in milliseconds (e <= 8: at most 512
// sequences). This finds the orders 52, 68, 124, 164 and 172 (11008 = 172 * 64, LLaMA-2's FFN;
// stories260K's FFN is 172 itself) that the Paley constructions miss; the first solution in a
// fixed search order is taken, so the matrix is the same on every run.
std::vector<int> goethals_seidel_cyclotomic(int p) {
  if (p < 3 || p > 63 || !is_prime(p)) return {};  // pair sums of autocorrelations fit in int8
  const int g = primitive_root(p);
  constexpr int kMaxClasses = 8;
  for (int e = 1; e <= kMaxClasses; ++e) {
    if ((p - 1) % e) continue;
    std::vector<int> cls(static_cast<std::size_t>(p), -1);
    for (int i = 0; i < e; ++i)
      for (int j = 0; j < (p - 1) / e; ++j) cls[std::size_t(pow_mod(g, e * j + i, p))] = i;
    const int count = 1 << (e + 1);  // bit 0: the value at 0; bit i+1: the value on class i
    const auto sequence = [&](int bits) {
      std::vector<int> s(static_cast<std::size_t>(p));
      for (int x = 0; x < p; ++x) s[std::size_t(x)] = ((x == 0 ? bits : bits >> (cls[std::size_t(x)] + 1)) & 1) ? 1 : -1;
      return s;
    };
    std::vector<std::array<int, kMaxClasses>> paf(static_cast<std::size_t>(count));
    for (int b = 0; b < count; ++b) {
      const auto s = sequence(b);
      for (int i = 0; i < e; ++i) {
        const int shift = pow_mod(g, i, p);
        int sum = 0;
        for (int x = 0; x < p; ++x) sum += s[std::size_t(x)] * s[std::size_t((x + shift) % p)];
        paf[std::size_t(b)][std::size_t(i)] = sum;
      }
    }
    const auto key = [&](int a, int b, int sign) {
      uint64_t k = 0;
      for (int i = 0; i < e; ++i)
        k |= uint64_t(uint8_t(int8_t(sign * (paf[std::size_t(a)][std::size_t(i)] + paf[std::size_t(b)][std::size_t(i)])))) << (8 * i);
      return k;
    };
    std::unordered_map<uint64_t, std::pair<int, int>> first_pair;
    for (int a = 0; a < count; ++a)
      for (int b = a; b < count; ++b) first_pair.emplace(key(a, b, 1), std::pair{a, b});
    for (int a = 0; a < count; ++a)
      for (int b = a; b < count; ++b)
        if (const auto it = first_pair.find(key(a, b, -1)); it != first_pair.end())
          return goethals_seidel_array({sequence(a), sequence(b), sequence(it->second.first), sequence(it->second.second)});
  }
  return {};
}

// A +-1 base matrix of order k with the name its construction goes by ("" for 1 and 2, which
// are Sylvester's); an empty matrix when quarot has none.
struct NamedBase {
  std::vector<int> matrix;
  std::string name;
};

NamedBase base_construction(int k, bool goethals_seidel) {
  if (k == 1) return {{1}, ""};
  if (k == 2) return {{1, 1, 1, -1}, ""};
  // Paley I: q = k - 1 prime, q = 3 mod 4. H = I + S with S the skew conference matrix.
  if (is_prime(k - 1) && (k - 1) % 4 == 3) {
    auto h = conference(k - 1, true);
    for (int i = 0; i < k; ++i) h[std::size_t(i) * k + i] += 1;
    return {std::move(h), "paley1(q=" + std::to_string(k - 1) + ")"};
  }
  // Paley II: q = k/2 - 1 prime, q = 1 mod 4. H = C (x) [[1,1],[1,-1]] + I (x) [[1,-1],[-1,-1]].
  if (k % 2 == 0 && is_prime(k / 2 - 1) && (k / 2 - 1) % 4 == 1) {
    const int s = k / 2;
    const auto c = conference(s - 1, false);
    std::vector<int> h(std::size_t(k) * k);
    const int a[2][2] = {{1, 1}, {1, -1}}, b[2][2] = {{1, -1}, {-1, -1}};
    for (int i = 0; i < s; ++i)
      for (int j = 0; j < s; ++j)
        for (int u = 0; u < 2; ++u)
          for (int v = 0; v < 2; ++v)
            h[std::size_t(2 * i + u) * k + 2 * j + v] = c[std::size_t(i) * s + j] * a[u][v] + (i == j ? b[u][v] : 0);
    return {std::move(h), "paley2(q=" + std::to_string(s - 1) + ")"};
  }
  if (goethals_seidel && k % 4 == 0) return {goethals_seidel_cyclotomic(k / 4), "goethals-seidel(p=" + std::to_string(k / 4) + ")"};
  return {};
}

}  // namespace

std::vector<int> hadamard_base_matrix(int k, bool goethals_seidel) { return base_construction(k, goethals_seidel).matrix; }

std::vector<double> random_orthogonal(int k, uint64_t seed) {
  uint64_t st = seed ^ 0x726f746174696f6eull;  // "rotation"
  detail::Rng rng(detail::splitmix64(st));
  std::vector<double> a(std::size_t(k) * k);
  for (auto& v : a) v = rng.gaussian();
  for (int pass = 0; pass < 2; ++pass)
    for (int i = 0; i < k; ++i) {
      double* ri = a.data() + std::size_t(i) * k;
      for (int j = 0; j < i; ++j) {
        const double* rj = a.data() + std::size_t(j) * k;
        double d = 0;
        for (int c = 0; c < k; ++c) d += ri[c] * rj[c];
        for (int c = 0; c < k; ++c) ri[c] -= d * rj[c];
      }
      double nrm = 0;
      for (int c = 0; c < k; ++c) nrm += ri[c] * ri[c];
      nrm = std::sqrt(nrm);
      for (int c = 0; c < k; ++c) ri[c] /= nrm;
    }
  return a;
}

Hadamard Hadamard::make(int n, uint64_t fallback_seed, bool goethals_seidel) {
  if (n < 1) throw Error("hadamard", "size must be positive, got " + std::to_string(n));
  Hadamard h;
  h.n_ = n;
  int odd = n, m = 1;
  while (odd % 2 == 0) {
    odd /= 2;
    m *= 2;
  }
  // The smallest K = odd * 2^j (dividing n) with a known construction. K is mixed densely
  // (K^2 * m operations per row against m log m for the butterflies), so bases beyond
  // kMaxBase are not used even when a construction exists (11008 = 5504 * 2 has Paley I
  // with q = 5503): the random orthogonal fallback on the odd part is far cheaper.
  constexpr int kMaxBase = 256;
  for (int k = odd; k <= n && k <= kMaxBase; k *= 2) {
    const auto [base, name] = base_construction(k, goethals_seidel);
    if (base.empty()) continue;
    h.k_ = k;
    h.m_ = n / k;
    h.base_.resize(base.size());
    const double s = 1.0 / std::sqrt(double(k));
    for (std::size_t i = 0; i < base.size(); ++i) h.base_[i] = base[i] * s;
    h.construction_ = name.empty() ? "sylvester(" + std::to_string(n) + ")"
                                   : name + (h.m_ > 1 ? " x sylvester(" + std::to_string(h.m_) + ")" : "");
    h.set_mix();
    return h;
  }
  h.k_ = odd;
  h.m_ = m;
  h.hadamard_ = false;
  h.base_ = random_orthogonal(odd, fallback_seed ^ uint64_t(odd));
  h.construction_ = "random-orthogonal(" + std::to_string(odd) + ", seed " + std::to_string(fallback_seed) + ")" +
                    (m > 1 ? " x sylvester(" + std::to_string(m) + ")" : "") +
                    " [no Hadamard construction for " + std::to_string(odd) + " in quarot]";
  h.set_mix();
  return h;
}

// --- The full transform: (H_K (x) H_m) / sqrt(n) --------------------------------------------

void Hadamard::set_mix() {
  const double scale = 1.0 / std::sqrt(double(m_));
  mix_.resize(base_.size());
  mix_f_.resize(base_.size());
  for (std::size_t i = 0; i < base_.size(); ++i) {
    mix_[i] = base_[i] * scale;
    mix_f_[i] = float(mix_[i]);
  }
}

template <class T>
void Hadamard::apply_reference(T* x, int rows, int64_t stride, bool transpose) const {
  // Row vector y = x Q with Q = (B (x) H_m)/sqrt(m), B = H_K/sqrt(K) orthonormal. Viewing x as
  // [K][m]: y[c][:] = sum_a B[a][c] * (H_m x[a][:]) / sqrt(m) (H_m is symmetric). For Q^T use
  // B^T, i.e. B[c][a].
  const T scale = T(1.0 / std::sqrt(double(m_)));
  std::vector<T> tmp(k_ > 1 ? std::size_t(n_) : 0);
  for (int r = 0; r < rows; ++r) {
    T* row = x + int64_t(r) * stride;
    if (m_ > 1)
      for (int a = 0; a < k_; ++a) fwht_ref(row + int64_t(a) * m_, m_);
    if (k_ == 1) {
      for (int i = 0; i < n_; ++i) row[i] *= scale;
      continue;
    }
    std::fill(tmp.begin(), tmp.end(), T(0));
    for (int a = 0; a < k_; ++a) {
      const T* src = row + int64_t(a) * m_;
      for (int c = 0; c < k_; ++c) {
        const T w = T(transpose ? base_[std::size_t(c) * k_ + a] : base_[std::size_t(a) * k_ + c]) * scale;
        if (w == T(0)) continue;
        T* dst = tmp.data() + int64_t(c) * m_;
        for (int i = 0; i < m_; ++i) dst[i] += w * src[i];
      }
    }
    std::copy(tmp.begin(), tmp.end(), row);
  }
}
template void Hadamard::apply_reference(float*, int, int64_t, bool) const;
template void Hadamard::apply_reference(double*, int, int64_t, bool) const;

namespace {

template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

// The GEMMs of one block want about this many columns (rows * m): enough for Eigen's kernel to
// run at speed, few enough that a block (2 * K * kBlockColumns values) stays in L2.
constexpr int kBlockColumns = 128;
// Below this many flops a call stays on the calling thread: waking a second one costs more
// (stories260K's per-head transforms, every decode step of a small model).
constexpr double kParallelFlops = 2e6;

}  // namespace

template <class T>
void Hadamard::apply(T* x, int rows, int64_t stride, bool transpose, Isa isa) const {
  // Per row, x viewed as [K][m]: y = B^T (H_m x-rows) / sqrt(m) (see apply_reference). The
  // butterflies run per sub-row; the base mixes the K sub-rows of every row of a block in one
  // GEMM: Z[(r, j)][a] = x[r][a*m + j] (rows r of the block, j < m), Y = Z * mix (Z * mix^T for
  // Q^T), scattered back. For m = 1, Z is the rows themselves (no copy).
  if (rows <= 0) return;
  const int k = k_, m = m_;
  const int block = std::clamp(kBlockColumns / m, 1, rows);
  const int blocks = (rows + block - 1) / block;
  const double flops = double(rows) * n_ * (k + std::log2(double(m)));
  const T* mix = nullptr;
  if constexpr (std::is_same_v<T, float>)
    mix = mix_f_.data();
  else
    mix = mix_.data();
  const T scale = T(1.0 / std::sqrt(double(m)));
  const std::size_t buf_size = k > 1 ? std::size_t(n_) * block * (m > 1 ? 2 : 1) : 0;
  const auto run_block = [&](int b, std::vector<T>& buf) {
    const int r0 = b * block, nr = std::min(block, rows - r0);
    T* xb = x + int64_t(r0) * stride;
    // Below 16 values every path's butterflies are the scalar ones (fwht.cpp): fwht_ref inlined
    // here, without a call per sub-row (per-head transforms of 8 values are millions of calls).
    // Doubles have the scalar path only.
    const auto butterflies = [&](T* sub) {
      if constexpr (std::is_same_v<T, float>)
        if (m >= 16) return fwht(sub, m, isa);
      fwht_ref(sub, m);
    };
    if (m > 1)
      for (int r = 0; r < nr; ++r)
        for (int a = 0; a < k; ++a) butterflies(xb + int64_t(r) * stride + int64_t(a) * m);
    if (k == 1) {
      for (int r = 0; r < nr; ++r) {
        T* row = xb + int64_t(r) * stride;
        for (int i = 0; i < n_; ++i) row[i] *= scale;
      }
      return;
    }
    const Eigen::Map<const RowMajor<T>> B(mix, k, k);
    if (m == 1) {
      Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>> X(xb, nr, k, Eigen::OuterStride<>(stride));
      Eigen::Map<RowMajor<T>> Y(buf.data(), nr, k);
      if (transpose)
        Y.noalias() = X * B.transpose();
      else
        Y.noalias() = X * B;
      X = Y;
      return;
    }
    const int64_t cols = int64_t(nr) * m;  // rows of Z
    T* z = buf.data();
    T* y = z + cols * k;
    for (int r = 0; r < nr; ++r)
      for (int a = 0; a < k; ++a) std::copy_n(xb + int64_t(r) * stride + int64_t(a) * m, m, z + int64_t(a) * cols + int64_t(r) * m);
    Eigen::Map<const ColMajor<T>> Z(z, cols, k);
    Eigen::Map<ColMajor<T>> Y(y, cols, k);
    if (transpose)
      Y.noalias() = Z * B.transpose();
    else
      Y.noalias() = Z * B;
    for (int r = 0; r < nr; ++r)
      for (int c = 0; c < k; ++c) std::copy_n(y + int64_t(c) * cols + int64_t(r) * m, m, xb + int64_t(r) * stride + int64_t(c) * m);
  };
  if (blocks > 1 && flops > kParallelFlops) {
#pragma omp parallel
    {
      omp_set_num_threads(1);  // Eigen's GEMM inside: no nested threads (this region's own setting)
      std::vector<T> buf(buf_size);
#pragma omp for schedule(dynamic, 1)
      for (int b = 0; b < blocks; ++b) run_block(b, buf);
    }
    return;
  }
  // Serial: no OpenMP region at all for the many tiny calls (per-head transforms, decode), and
  // Eigen's GEMM held to this thread.
  std::vector<T> buf(buf_size);
  const int threads = k > 1 ? omp_get_max_threads() : 1;
  if (threads > 1) omp_set_num_threads(1);
  for (int b = 0; b < blocks; ++b) run_block(b, buf);
  if (threads > 1) omp_set_num_threads(threads);
}

void Hadamard::right(float* x, int rows, int64_t stride, Isa isa) const { apply(x, rows, stride, false, isa); }
void Hadamard::right(double* x, int rows, int64_t stride) const { apply(x, rows, stride, false, Isa::Scalar); }
void Hadamard::right_transpose(float* x, int rows, int64_t stride, Isa isa) const { apply(x, rows, stride, true, isa); }
void Hadamard::right_transpose(double* x, int rows, int64_t stride) const { apply(x, rows, stride, true, Isa::Scalar); }

void Hadamard::left_transpose(double* x, int64_t cols) const {
  // (Q^T X)[c*m + e] = sum_a B[a][c] sum_b H_m[b][e] X[a*m + b] / sqrt(m).
  const std::size_t row = std::size_t(cols);
  for (int a = 0; a < k_; ++a) {
    double* blk = x + std::size_t(a) * m_ * row;
    for (int h = 1; h < m_; h *= 2)
      for (int i = 0; i < m_; i += 2 * h)
        for (int j = i; j < i + h; ++j) {
          double* p = blk + std::size_t(j) * row;
          double* q = blk + std::size_t(j + h) * row;
          for (std::size_t t = 0; t < row; ++t) {
            const double u = p[t], v = q[t];
            p[t] = u + v;
            q[t] = u - v;
          }
        }
  }
  const double scale = 1.0 / std::sqrt(double(m_));
  const std::size_t block = std::size_t(m_) * row;
  if (k_ == 1) {
    for (std::size_t t = 0; t < block; ++t) x[t] *= scale;
    return;
  }
  std::vector<double> tmp(std::size_t(k_) * block, 0.0);
  for (int a = 0; a < k_; ++a)
    for (int c = 0; c < k_; ++c) {
      const double w = base_[std::size_t(a) * k_ + c] * scale;
      if (w == 0.0) continue;
      const double* src = x + std::size_t(a) * block;
      double* dst = tmp.data() + std::size_t(c) * block;
      for (std::size_t t = 0; t < block; ++t) dst[t] += w * src[t];
    }
  std::copy(tmp.begin(), tmp.end(), x);
}

std::vector<double> Hadamard::dense() const {
  std::vector<double> q(std::size_t(n_) * n_, 0.0);
  for (int i = 0; i < n_; ++i) q[std::size_t(i) * n_ + i] = 1.0;
  apply_reference(q.data(), n_, n_, false);  // rows of I times Q = Q
  return q;
}

}  // namespace quarot
