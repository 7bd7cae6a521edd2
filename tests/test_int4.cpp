// Integer kernels: every optimized path against the scalar reference, exactly (the int32 sums
// are exact and the fp32 epilogue runs the same operations in the same order), and the scalar
// reference against a plain fp64 product of the dequantized operands (tolerance 1e-5 relative:
// only the fp32 epilogue rounds).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>

#include "quarot/act16.hpp"
#include "quarot/detail/rng.hpp"
#include "quarot/error.hpp"
#include "quarot/int4.hpp"
#include "quarot/int4_a16.hpp"
#include "quarot/quant.hpp"
#include "test_support.hpp"

using namespace quarot;
using quarot::test::gaussian;

namespace {

struct PackedMatrix {
  int64_t rows, cols, group;
  std::vector<uint8_t> u;  // unsigned codes [rows][cols]
  std::vector<uint8_t> packed;
  std::vector<float> scales;
  std::vector<uint8_t> zeros;
  Int4Weights view() const {
    Int4Weights w;
    w.rows = rows;
    w.cols = cols;
    w.group_size = group;
    w.packed = packed.data();
    w.scales = scales.data();
    w.zeros = zeros.empty() ? nullptr : zeros.data();
    return w;
  }
};

// fill: -1 random codes; else every code = fill.
PackedMatrix make_weights(int64_t rows, int64_t cols, int64_t group, bool asym, uint64_t seed, int fill = -1) {
  detail::Rng rng(seed);
  PackedMatrix m{rows, cols, group ? group : cols, {}, {}, {}, {}};
  const int64_t G = group ? cols / group : 1, K = int4_padded_cols(cols);
  m.u.resize(std::size_t(rows * cols));
  for (auto& v : m.u) v = uint8_t(fill >= 0 ? fill : int(rng.next() % 16));
  m.scales.resize(std::size_t(rows * G));
  for (auto& s : m.scales) s = 0.001f + float(rng.next() % 1000) * 1e-5f;
  if (asym) {
    m.zeros.resize(std::size_t(rows * G));
    for (auto& z : m.zeros) z = uint8_t(rng.next() % 16);
  }
  m.packed.resize(std::size_t(rows * K / 2));
  for (int64_t r = 0; r < rows; ++r)
    pack_int4_row(m.u.data() + r * cols, cols, asym ? m.zeros[std::size_t(r * G)] : 8, m.packed.data() + r * K / 2);
  return m;
}

std::vector<Isa> fast_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Avx2, Isa::Avx512Vnni})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

}  // namespace

TEST(Int4Pack, NibbleLayoutAndPadding) {
  // 100 columns -> padded to 128: two blocks of 32 bytes; byte j of a block = col j | col j+32 << 4.
  std::vector<uint8_t> u(100);
  for (int i = 0; i < 100; ++i) u[i] = uint8_t(i % 16);
  std::vector<uint8_t> out(64);
  pack_int4_row(u.data(), 100, 8, out.data());
  EXPECT_EQ(out[0], uint8_t(0 | (0 << 4)));            // cols 0 and 32
  EXPECT_EQ(out[5], uint8_t(5 | ((37 % 16) << 4)));    // cols 5 and 37
  EXPECT_EQ(out[32 + 3], uint8_t(67 % 16 | ((99 % 16) << 4)));  // cols 67 and 99 (the last real one)
  EXPECT_EQ(out[32 + 31], uint8_t(95 % 16 | (8 << 4)));  // col 95 and padding (pad 8)
  for (int i = 0; i < 100; ++i) EXPECT_EQ(int4_at(out.data(), i), u[i]) << i;
  for (int i = 100; i < 128; ++i) EXPECT_EQ(int4_at(out.data(), i), 8) << i;
}

TEST(Int4Activations, EqualTheFakeQuantizer) {
  for (int bits : {4, 8, 3})
    for (int64_t cols : {64, 100, 172, 4096}) {
      auto x = gaussian(std::size_t(5 * cols), uint64_t(cols + bits));
      x[3] = 40.f;  // an outlier
      std::fill(x.begin() + 2 * cols, x.begin() + 3 * cols, 0.f);  // an all-zero token
      Int8Activations ref;
      quantize_activations(x.data(), 5, cols, bits, 0.9, ref, Isa::Scalar);
      auto fq = x;
      fake_quant_rows(fq.data(), 5, int(cols), 0, Grid{bits, true}, 0.9);
      for (int r = 0; r < 5; ++r)
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(float(ref.q[std::size_t(r * ref.cols_padded + c)]) * ref.scale[std::size_t(r)], fq[std::size_t(r * cols + c)])
              << "bits " << bits << " cols " << cols << " at " << r << "," << c;
      for (int r = 0; r < 5; ++r)
        for (int64_t c = cols; c < ref.cols_padded; ++c) ASSERT_EQ(ref.q[std::size_t(r * ref.cols_padded + c)], 0);
      // Every other ISA against this reference: test_ops.cpp's kernel x ISA table.
    }
  Int8Activations o;
  EXPECT_THROW(quantize_activations(nullptr, 1, 64, 9, 1.0, o), Error);
}

TEST(Int4Gemm, ScalarReferenceEqualsFp64OverTheDequantizedOperands) {
  struct Case {
    int64_t rows, cols, group;
    int tokens, a_bits;
    bool asym, bias;
  };
  const Case cases[] = {{7, 64, 0, 1, 4, false, false},   {33, 100, 0, 3, 4, false, true}, {17, 172, 0, 5, 8, true, false},
                        {12, 256, 64, 33, 4, false, true}, {9, 256, 128, 2, 8, true, true}, {64, 512, 0, 70, 4, false, false},
                        {5, 192, 64, 4, 2, true, false}};
  for (const auto& k : cases) {
    const auto w = make_weights(k.rows, k.cols, k.group, k.asym, uint64_t(k.rows * 31 + k.cols));
    const auto x = gaussian(std::size_t(k.tokens * k.cols), uint64_t(k.tokens + 7));
    const auto bias = gaussian(std::size_t(k.rows), 99);
    Int8Activations a;
    quantize_activations(x.data(), k.tokens, k.cols, k.a_bits, 1.0, a);
    std::vector<float> ref(std::size_t(k.tokens * k.rows));
    int4_gemm(w.view(), a, k.bias ? bias.data() : nullptr, ref.data(), Isa::Scalar);
    // The scalar reference against fp64 over the dequantized operands.
    for (int t = 0; t < k.tokens; ++t)
      for (int64_t o = 0; o < k.rows; ++o) {
        double e = k.bias ? bias[std::size_t(o)] : 0.0, mag = std::fabs(e);
        for (int64_t i = 0; i < k.cols; ++i) {
          const double p = double(a.q[std::size_t(t * a.cols_padded + i)]) * a.scale[std::size_t(t)] * w.view().weight(o, i);
          e += p;
          mag += std::fabs(p);
        }
        ASSERT_NEAR(ref[std::size_t(t * k.rows + o)], e, 1e-5 * mag + 1e-7) << k.rows << "x" << k.cols << " t" << t << " o" << o;
      }
    // The vector paths against this reference, exactly: test_ops.cpp's kernel x ISA table.
  }
}

// Per-group activation scales (issue 17): codes * the group's scale equal the fake quantizer
// with the same group (the tail group, when the group does not divide the width, on its own), and
// the scalar GEMM reference equals fp64 over those dequantized activations.
TEST(Int4Activations, GroupsEqualTheFakeQuantizerAndTheGemm) {
  for (auto [cols, group] : {std::pair<int64_t, int64_t>{64, 16}, {172, 16}, {172, 32}, {256, 128}, {100, 7}}) {
    const int tokens = 3;
    auto x = gaussian(std::size_t(tokens * cols), uint64_t(cols + group));
    x[5] = 30.f;  // an outlier: only its own group's scale grows
    Int8Activations a;
    quantize_activations(x.data(), tokens, cols, 4, 0.9, group, a, Isa::Scalar);
    const int64_t GA = (cols + group - 1) / group;
    ASSERT_EQ(a.groups(), GA);
    ASSERT_EQ(a.scale.size(), std::size_t(tokens * GA));
    EXPECT_LT(a.scale[1], a.scale[0]) << "the outlier's group has the larger scale";
    auto fq = x;
    fake_quant_rows(fq.data(), tokens, int(cols), int(group), Grid{4, true}, 0.9);
    for (int r = 0; r < tokens; ++r)
      for (int64_t c = 0; c < cols; ++c)
        ASSERT_EQ(float(a.q[std::size_t(r * a.cols_padded + c)]) * a.scale[std::size_t(r * GA + c / group)], fq[std::size_t(r * cols + c)])
            << "cols " << cols << " group " << group << " at " << r << "," << c;
    for (int64_t wg : {int64_t(0), int64_t(64)}) {
      if (wg && cols % wg) continue;
      const auto w = make_weights(9, cols, wg, wg != 0, uint64_t(cols * 3 + wg));
      const auto bias = gaussian(9, 5);
      std::vector<float> y(std::size_t(tokens * 9));
      int4_gemm(w.view(), a, bias.data(), y.data(), Isa::Scalar);
      for (int t = 0; t < tokens; ++t)
        for (int64_t o = 0; o < 9; ++o) {
          double e = bias[std::size_t(o)], mag = std::fabs(e);
          for (int64_t i = 0; i < cols; ++i) {
            const double p = double(fq[std::size_t(t * cols + i)]) * w.view().weight(o, i);
            e += p;
            mag += std::fabs(p);
          }
          ASSERT_NEAR(y[std::size_t(t * 9 + o)], e, 1e-5 * mag + 1e-7) << cols << "/" << group << " w_group " << wg << " t" << t << " o" << o;
        }
    }
  }
  // A group at least as wide as the row is one scale per token, exactly as group 0.
  const auto x = gaussian(2 * 100, 3);
  Int8Activations g0, gw;
  quantize_activations(x.data(), 2, 100, 4, 1.0, 0, g0, Isa::Scalar);
  quantize_activations(x.data(), 2, 100, 4, 1.0, 128, gw, Isa::Scalar);
  EXPECT_EQ(gw.group, 0);
  EXPECT_EQ(gw.scale, g0.scale);
  EXPECT_THROW(quantize_activations(x.data(), 2, 100, 4, 1.0, -1, gw), Error);
}

TEST(Int4GemmF32, ATokensOutputDoesNotDependOnItsBatchOrTheThreads) {
  // Prefill and decode give the same bits for a token: its sum runs in the same order whichever
  // register block (or thread) it falls into; and the previous path (tiles for Eigen) agrees to
  // fp32 rounding.
  const int64_t rows = 203, cols = 4096;
  const int tokens = 21;
  const auto w = make_weights(rows, cols, 128, true, 11);
  const auto x = gaussian(std::size_t(tokens * cols), 12);
  std::vector<float> all(static_cast<std::size_t>(tokens * rows)), one(static_cast<std::size_t>(rows)), two(all.size()), tiled(all.size());
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) continue;
    int4_gemm_f32(w.view(), x.data(), tokens, nullptr, all.data(), isa);
    for (int t : {0, 4, 5, 20}) {
      int4_gemm_f32(w.view(), x.data() + t * cols, 1, nullptr, one.data(), isa);
      EXPECT_EQ(0, std::memcmp(one.data(), all.data() + t * rows, one.size() * sizeof(float))) << isa_name(isa) << " token " << t;
    }
    const int threads = omp_get_max_threads();
    omp_set_num_threads(threads == 1 ? 2 : 1);
    int4_gemm_f32(w.view(), x.data(), tokens, nullptr, two.data(), isa);
    omp_set_num_threads(threads);
    EXPECT_EQ(two, all) << isa_name(isa);
  }
  int4_gemm_f32_tiled(w.view(), x.data(), tokens, nullptr, tiled.data());
  for (std::size_t i = 0; i < all.size(); ++i) EXPECT_NEAR(tiled[i], all[i], 1e-4 * (1 + std::fabs(all[i]))) << i;
}

TEST(Int4Gemm, ExtremeCodesAreExact) {
  // Weights all -8 (u = 0) or all 7 (u = 15) against activation codes all at -128 or 127 (8-bit).
  for (int fill : {0, 15})
    for (float xv : {-1.f, 1.f}) {
      const int64_t rows = 8, cols = 4096;
      auto w = make_weights(rows, cols, 0, false, 3, fill);
      std::fill(w.scales.begin(), w.scales.end(), 0.5f);
      std::vector<float> x(std::size_t(2 * cols), xv);
      Int8Activations a;
      quantize_activations(x.data(), 2, cols, 8, 1.0, a);
      ASSERT_EQ(a.q[0], xv > 0 ? 127 : -127);  // symmetric: -1 maps to -127 (scale = 1/127)
      std::vector<float> ref(std::size_t(2 * rows)), got(ref.size());
      int4_gemm(w.view(), a, nullptr, ref.data(), Isa::Scalar);
      const double expect = double(fill - 8) * 0.5 * a.q[0] * cols * a.scale[0];
      EXPECT_NEAR(ref[0], expect, std::fabs(expect) * 1e-6);
      for (Isa isa : fast_isas()) {
        int4_gemm(w.view(), a, nullptr, got.data(), isa);
        EXPECT_EQ(got, ref) << isa_name(isa);
      }
    }
  // -128 itself: a hand-made code row (the quantizer never emits it for symmetric x, the kernel must take it).
  auto w = make_weights(4, 64, 0, false, 4, 15);
  Int8Activations a;
  std::vector<float> x(64, 1.f);
  quantize_activations(x.data(), 1, 64, 8, 1.0, a);
  std::fill(a.q.begin(), a.q.end(), int8_t(-128));
  std::fill(a.block_sums.begin(), a.block_sums.end(), -128 * 64);
  std::vector<float> ref(4), got(4);
  int4_gemm(w.view(), a, nullptr, ref.data(), Isa::Scalar);
  for (Isa isa : fast_isas()) {
    int4_gemm(w.view(), a, nullptr, got.data(), isa);
    EXPECT_EQ(got, ref) << isa_name(isa);
  }
}

// W4A16's simulation (act16_fake_quant_rows, the fake-quant forward's rounding) against the
// kernel (int4_gemm_a16_int16): the kernel's output is the fp64 product of the rounded
// activations with the dequantized weights, up to fp32 rounding only (the bound of the test
// below); the unrounded activations miss it by far more (so a simulation that skipped or changed
// the rounding fails here). Per channel, grouped, asymmetric, a token alone, an outlier, an
// all-zero group; and a NaN leaves the simulation's input as it is and the kernel in fp32.
TEST(Int4GemmA16, SimulationRoundsAsTheKernelDoes) {
  struct Case {
    int64_t rows, cols, group;
    bool asym;
    int tokens;
  };
  for (const Case k : {Case{20, 172, 0, true, 3}, Case{9, 172, 0, false, 1}, Case{33, 256, 64, true, 2}, Case{7, 192, 64, false, 8},
                       Case{5, 256, 128, true, 9}}) {
    const auto w = make_weights(k.rows, k.cols, k.group, k.asym, 8);
    auto x = gaussian(std::size_t(k.tokens * k.cols), 5);
    x[std::size_t(k.cols / 3)] = 40.f;                                            // an outlier: coarse codes in its group
    std::fill(x.end() - std::ptrdiff_t(std::min<int64_t>(64, k.cols)), x.end(), 0.f);  // an all-zero group (or its tail)
    std::vector<float> y(std::size_t(k.tokens * k.rows));
    int4_gemm_a16_int16_ref(w.view(), x.data(), k.tokens, nullptr, y.data());
    auto xs = x;
    ASSERT_TRUE(act16_fake_quant_rows(xs.data(), k.tokens, k.cols, k.group));
    double worst_sim = 0, worst_raw = 0;  // in units of the bound
    for (int t = 0; t < k.tokens; ++t)
      for (int64_t o = 0; o < k.rows; ++o) {
        double sim = 0, raw = 0, mag = 0;
        for (int64_t i = 0; i < k.cols; ++i) {
          const double wi = w.view().weight(o, i);
          sim += double(xs[std::size_t(t * k.cols + i)]) * wi;
          raw += double(x[std::size_t(t * k.cols + i)]) * wi;
          mag += std::fabs(double(xs[std::size_t(t * k.cols + i)]) * wi);
        }
        const double bound = 1e-5 * mag + 1e-6, got = y[std::size_t(t * k.rows + o)];
        worst_sim = std::max(worst_sim, std::fabs(got - sim) / bound);
        worst_raw = std::max(worst_raw, std::fabs(got - raw) / bound);
      }
    EXPECT_LT(worst_sim, 1.0) << k.rows << "x" << k.cols << " group " << k.group;
    EXPECT_GT(worst_raw, 3.0) << k.rows << "x" << k.cols << " group " << k.group;  // the rounding is visible
  }
  // A NaN anywhere: the simulation leaves the call as it is, the kernel runs it in fp32.
  const auto w = make_weights(6, 128, 64, true, 3);
  auto x = gaussian(3 * 128, 9);
  x[200] = std::nanf("");
  auto xs = x;
  EXPECT_FALSE(act16_fake_quant_rows(xs.data(), 3, 128, 64));
  EXPECT_EQ(0, std::memcmp(xs.data(), x.data(), x.size() * sizeof(float)));
  std::vector<float> a(18), b(18);
  for (Isa isa : kAllIsas) {
    if (!isa_supported(isa)) continue;
    int4_gemm_a16_int16(w.view(), x.data(), 3, nullptr, a.data(), isa);
    int4_gemm_f32(w.view(), x.data(), 3, nullptr, b.data(), isa);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << isa_name(isa);
  }
}

TEST(Int4Gemm, FloatActivationsAndBadShapes) {
  // The W4A16 reference (the vector paths equal it bit for bit: test_ops), per channel and grouped
  // asymmetric, against an fp64 sum of the dequantized weights: only fp32 rounding (1e-5 of the
  // sum of magnitudes; the 16-lane FMA sums of up to 256 terms round to ~1e-6 of it).
  struct Case {
    int64_t rows, cols, group;
    bool asym;
    int tokens;
  };
  for (const Case k : {Case{20, 172, 0, true, 3}, Case{20, 172, 0, false, 1}, Case{33, 256, 64, true, 2}, Case{7, 192, 64, false, 8},
                       Case{9, 172, 0, false, 12}, Case{5, 256, 128, true, 9}}) {
    const auto w = make_weights(k.rows, k.cols, k.group, k.asym, 8);
    const auto x = gaussian(std::size_t(k.tokens * k.cols), 5);
    std::vector<float> y(std::size_t(k.tokens * k.rows));
    int4_gemm_f32_ref(w.view(), x.data(), k.tokens, nullptr, y.data());
    for (int t = 0; t < k.tokens; ++t)
      for (int64_t o = 0; o < k.rows; ++o) {
        double e = 0, mag = 0;
        for (int64_t i = 0; i < k.cols; ++i) {
          e += double(x[std::size_t(t * k.cols + i)]) * w.view().weight(o, i);
          mag += std::fabs(double(x[std::size_t(t * k.cols + i)]) * w.view().weight(o, i));
        }
        EXPECT_NEAR(y[std::size_t(t * k.rows + o)], e, 1e-5 * mag + 1e-6) << k.rows << "x" << k.cols << " t" << k.tokens;
      }
  }
  const auto w = make_weights(20, 172, 0, true, 8);
  const auto x = gaussian(3 * 172, 5);
  std::vector<float> y(60);
  Int8Activations a;
  quantize_activations(x.data(), 3, 100, 4, 1.0, a);
  EXPECT_THROW(int4_gemm(w.view(), a, nullptr, y.data()), Error);  // width 100 vs 172
  auto g = make_weights(4, 192, 0, false, 1);
  g.group = 96;  // not a multiple of 64
  quantize_activations(x.data(), 1, 192, 4, 1.0, a);
  EXPECT_THROW(int4_gemm(g.view(), a, nullptr, y.data()), Error);
}
