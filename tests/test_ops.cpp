// The hot kernels (src/ops), one table: every kernel on every ISA this CPU supports against its
// plain *_ref. INT4 GEMM and activation quantization must match exactly (int32 sums, the same
// fp32 epilogue); W4A16 exactly (one fixed order of fp32 FMAs on every path); top-k exactly (it
// is a selection); QDEC's apply within fp32 reassociation; the KV cache's dequantization (INT8
// and INT4 codes) exactly; the INT8 tables' GEMV (fp32 activations, FMA lanes) within fp32
// reassociation of the ref's double sum; the FWHT exactly (the same adds on the same operands,
// stage by stage); a Hadamard rotation (FWHT butterflies, then the K x K base's GEMM) within
// fp32 reassociation of the base's K products.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "quarot/detail/rng.hpp"
#include "quarot/fwht.hpp"
#include "quarot/hadamard.hpp"
#include "quarot/int4.hpp"
#include "quarot/int4_a16.hpp"
#include "quarot/int8_gemv.hpp"
#include "quarot/isa.hpp"
#include "quarot/kv_kernels.hpp"
#include "quarot/qdec.hpp"
#include "quarot/qdec_kernels.hpp"
#include "quarot/quant.hpp"
#include "test_support.hpp"

using namespace quarot;
using quarot::test::gaussian;

namespace {

// A packed INT4 matrix with random codes, scales and (asym) zero points.
struct Weights {
  std::vector<uint8_t> packed, zeros;
  std::vector<float> scales;
  Int4Weights view;
};
Weights random_weights(int64_t rows, int64_t cols, int64_t group, bool asym, uint64_t seed) {
  detail::Rng rng(seed);
  Weights w;
  const int64_t g = group ? group : cols, G = cols / g, K = int4_padded_cols(cols);
  w.scales.resize(std::size_t(rows * G));
  for (auto& s : w.scales) s = 0.001f + float(rng.next() % 1000) * 1e-5f;
  if (asym) {
    w.zeros.resize(std::size_t(rows * G));
    for (auto& z : w.zeros) z = uint8_t(rng.next() % 16);
  }
  w.packed.resize(std::size_t(rows * K / 2));
  std::vector<uint8_t> u(static_cast<std::size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : u) v = uint8_t(rng.next() % 16);
    pack_int4_row(u.data(), cols, asym ? w.zeros[std::size_t(r * G)] : 8, w.packed.data() + r * K / 2);
  }
  w.view = {rows, cols, g, w.packed.data(), w.scales.data(), asym ? w.zeros.data() : nullptr};
  return w;
}

// One row of the table: runs the kernel on `isa` and returns "" when it equals its ref.
// The W4A16 kernels' cases: per channel and grouped, symmetric and asymmetric, widths not a
// multiple of 64 (padded), rows not a multiple of the register block (4), tokens around it (5) and
// past a token block (64 at width 4096).
struct A16Case {
  int64_t rows, cols, group;
  int tokens;
  bool asym, bias;
};
constexpr A16Case kA16Cases[] = {{7, 64, 0, 1, false, false},    {33, 100, 0, 3, false, true},  {17, 172, 0, 5, true, false},
                                 {12, 256, 64, 13, false, true}, {9, 256, 128, 2, true, true},  {66, 512, 0, 70, false, false},
                                 {5, 192, 64, 4, true, false},   {130, 512, 128, 9, true, true}, {17, 1000, 0, 6, false, false},
                                 {6, 4096, 128, 67, true, true}};

struct Kernel {
  const char* name;
  std::function<std::string(Isa)> check;
};

const std::vector<Kernel>& kernels() {
  static const std::vector<Kernel> table = {
      {"quantize_activations",
       [](Isa isa) -> std::string {
         for (int bits : {4, 8, 3, 2})
           for (int64_t cols : {1, 64, 100, 172, 4096}) {
             auto x = gaussian(std::size_t(5 * cols), uint64_t(cols + bits));
             x[0] = 40.f;                                                      // an outlier
             std::fill(x.begin() + 2 * cols, x.begin() + 3 * cols, 0.f);  // an all-zero token
             Int8Activations ref, got;
             quantize_activations_ref(x.data(), 5, cols, bits, 0.9, ref);
             quantize_activations(x.data(), 5, cols, bits, 0.9, got, isa);
             if (got.q != ref.q || got.scale != ref.scale || got.block_sums != ref.block_sums)
               return "cols " + std::to_string(cols) + " bits " + std::to_string(bits);
           }
         return "";
       }},
      {"int4_gemm",
       [](Isa isa) -> std::string {
         struct Case {
           int64_t rows, cols, group;
           int tokens, a_bits;
           bool asym, bias;
         };
         const Case cases[] = {{7, 64, 0, 1, 4, false, false},    {33, 100, 0, 3, 4, false, true},  {17, 172, 0, 5, 8, true, false},
                               {12, 256, 64, 33, 4, false, true}, {9, 256, 128, 2, 8, true, true},  {64, 512, 0, 70, 4, false, false},
                               {5, 192, 64, 4, 2, true, false},   {130, 512, 128, 9, 4, false, true}, {17, 1000, 0, 2, 4, false, false},
                               // AVX-512's row-interleaved GEMM per token: rows not filling a tile of
                               // 64, tokens not filling one of 6, zero points, bias
                               {100, 320, 0, 13, 4, true, true},
                               // W4A8 (the planner's 8-bit layers): 8-bit codes on every path, GEMV,
                               // tiles and the row-interleaved GEMM, a wide row (int32 sums of
                               // 15 x 127 products over 11008 columns stay exact)
                               {100, 320, 0, 13, 8, true, true}, {70, 11008, 0, 7, 8, false, true}, {9, 4096, 128, 1, 8, true, false},
                               {64, 512, 0, 70, 8, false, false}};
         for (const Case& c : cases) {
           const auto w = random_weights(c.rows, c.cols, c.group, c.asym, uint64_t(c.rows * 31 + c.cols));
           const auto x = gaussian(std::size_t(c.tokens * c.cols), uint64_t(c.tokens + 7));
           const auto bias = gaussian(std::size_t(c.rows), 99);
           Int8Activations a;
           quantize_activations_ref(x.data(), c.tokens, c.cols, c.a_bits, 1.0, a);
           std::vector<float> ref(std::size_t(c.tokens * c.rows)), got(ref.size(), -1.f);
           int4_gemm_ref(w.view, a, c.bias ? bias.data() : nullptr, ref.data());
           int4_gemm(w.view, a, c.bias ? bias.data() : nullptr, got.data(), isa);
           if (std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) != 0)
             return std::to_string(c.rows) + "x" + std::to_string(c.cols) + " group " + std::to_string(c.group) + " tokens " +
                    std::to_string(c.tokens);
         }
         return "";
       }},
      {"int4_gemm_f32",
       [](Isa isa) -> std::string {
         // W4A16: the shared cases (kA16Cases).
         for (const A16Case& c : kA16Cases) {
           const auto w = random_weights(c.rows, c.cols, c.group, c.asym, uint64_t(c.rows * 31 + c.cols));
           const auto x = gaussian(std::size_t(c.tokens * c.cols), uint64_t(c.tokens + 7));
           const auto bias = gaussian(std::size_t(c.rows), 99);
           std::vector<float> ref(std::size_t(c.tokens * c.rows)), got(ref.size(), -1.f);
           int4_gemm_f32_ref(w.view, x.data(), c.tokens, c.bias ? bias.data() : nullptr, ref.data());
           int4_gemm_f32(w.view, x.data(), c.tokens, c.bias ? bias.data() : nullptr, got.data(), isa);
           if (std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) != 0)
             return std::to_string(c.rows) + "x" + std::to_string(c.cols) + " group " + std::to_string(c.group) + " tokens " +
                    std::to_string(c.tokens);
         }
         return "";
       }},
      {"int4_gemm_a16_int16",
       [](Isa isa) -> std::string {
         // W4A16 with 16-bit integer activations: the int4_gemm_f32 cases plus a per-channel row
         // longer than one span (1024 blocks) and an outlier column; bit for bit the scalar
         // reference, and within the header's bound of int4_gemm_f32 (the activations' rounding).
         std::vector<A16Case> cases(std::begin(kA16Cases), std::end(kA16Cases));
         cases.push_back({5, 66000, 0, 5, true, false});
         cases.push_back({9, 320, 64, 1, true, true});  // decode (M = 1) with groups, rows past a 4 x 4 tile
         for (const A16Case& c : cases) {
           const auto w = random_weights(c.rows, c.cols, c.group, c.asym, uint64_t(c.rows * 31 + c.cols));
           auto x = gaussian(std::size_t(c.tokens * c.cols), uint64_t(c.tokens + 7));
           x[std::size_t(c.cols / 2)] = 300.f;  // an outlier: its group's other codes get coarser
           if (c.tokens > 1)  // an all-zero group (scale 0) in the last token
             std::fill(x.end() - std::ptrdiff_t(std::min<int64_t>(64, c.cols)), x.end(), 0.f);
           const auto bias = gaussian(std::size_t(c.rows), 99);
           const std::string name = std::to_string(c.rows) + "x" + std::to_string(c.cols) + " group " + std::to_string(c.group) +
                                    " tokens " + std::to_string(c.tokens);
           std::vector<float> ref(std::size_t(c.tokens * c.rows)), got(ref.size(), -1.f), f32(ref.size());
           int4_gemm_a16_int16_ref(w.view, x.data(), c.tokens, c.bias ? bias.data() : nullptr, ref.data());
           int4_gemm_a16_int16(w.view, x.data(), c.tokens, c.bias ? bias.data() : nullptr, got.data(), isa);
           if (std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) != 0) return name;
           for (int t = 0; t < std::min(c.tokens, 5); ++t) {  // a token's output does not depend on its batch
             std::vector<float> one(std::size_t(c.rows));
             int4_gemm_a16_int16(w.view, x.data() + int64_t(t) * c.cols, 1, c.bias ? bias.data() : nullptr, one.data(), isa);
             if (std::memcmp(one.data(), got.data() + int64_t(t) * c.rows, one.size() * sizeof(float)) != 0) return name + ": alone";
           }
           int4_gemm_f32_ref(w.view, x.data(), c.tokens, c.bias ? bias.data() : nullptr, f32.data());
           const int64_t gc = c.group > 0 && c.group < c.cols ? c.group : c.cols;
           for (int t = 0; t < c.tokens; ++t)
             for (int64_t o = 0; o < c.rows; ++o) {
               double bound = 0, mag = 0;
               for (int64_t g0 = 0; g0 < c.cols; g0 += gc) {
                 double m = 0, wsum = 0;
                 for (int64_t i = g0; i < std::min(c.cols, g0 + gc); ++i) {
                   m = std::max(m, double(std::fabs(x[std::size_t(t * c.cols + i)])));
                   wsum += std::fabs(w.view.weight(o, i));
                   mag += std::fabs(double(w.view.weight(o, i)) * x[std::size_t(t * c.cols + i)]);
                 }
                 bound += m / 32767 / 2 * wsum;
               }
               bound += 1e-5 * mag;  // both sides' fp32 rounding
               const std::size_t k = std::size_t(int64_t(t) * c.rows + o);
               if (std::fabs(double(got[k]) - double(f32[k])) > bound) return name + ": off int4_gemm_f32 by more than the bound";
             }
         }
         return "";
       }},
      {"quantize_activations (groups)",
       [](Isa isa) -> std::string {
         for (int bits : {4, 8})
           for (auto [cols, group] : {std::pair<int64_t, int64_t>{64, 16}, {172, 16}, {172, 32}, {100, 64}, {4096, 128}, {70, 200}}) {
             auto x = gaussian(std::size_t(5 * cols), uint64_t(cols + group + bits));
             x[0] = 40.f;
             std::fill(x.begin() + 2 * cols, x.begin() + 3 * cols, 0.f);
             std::fill(x.begin() + 4 * cols, x.begin() + 4 * cols + std::min(group, cols), 0.f);  // one all-zero group
             Int8Activations ref, got;
             quantize_activations_ref(x.data(), 5, cols, bits, 0.9, group, ref);
             quantize_activations(x.data(), 5, cols, bits, 0.9, group, got, isa);
             if (got.q != ref.q || got.scale != ref.scale || got.block_sums != ref.block_sums)
               return "cols " + std::to_string(cols) + " group " + std::to_string(group) + " bits " + std::to_string(bits);
           }
         return "";
       }},
      {"int4_gemm (activation groups)",
       [](Isa isa) -> std::string {
         struct Case {
           int64_t rows, cols, w_group, a_group;
           int tokens, a_bits;
           bool asym, bias;
         };
         // Groups narrower than a block and not dividing the width (stories260K: 64 and 172 wide,
         // groups of 16/32), block-aligned groups with and without weight groups, GEMV (1..3
         // tokens) and GEMM shapes.
         const Case cases[] = {{7, 64, 0, 16, 1, 4, false, false},     {33, 172, 0, 16, 3, 4, false, true},
                               {17, 172, 0, 32, 5, 8, true, false},    {12, 256, 64, 128, 33, 4, false, true},
                               {9, 256, 128, 64, 2, 8, true, true},    {64, 512, 0, 128, 70, 4, false, false},
                               {5, 192, 64, 48, 4, 4, true, false},    {130, 512, 128, 32, 9, 4, false, true},
                               {17, 1000, 0, 128, 2, 4, false, false}, {20, 100, 0, 7, 6, 4, true, true},
                               // AVX-512's row-interleaved GEMM (per-channel weights, groups of whole
                               // 4-column steps, >= 4 tokens): many groups, a short tail group, zero
                               // points, rows not filling a tile of 48 and tokens not filling one of
                               // 4, groups of 48 and 20 (not whole blocks), the threads.
                               {33, 2176, 0, 64, 9, 4, true, true},    {10, 1000, 0, 128, 5, 8, false, true},
                               {6, 4160, 0, 192, 4, 4, true, false},   {131, 1024, 0, 128, 130, 4, false, false},
                               {9, 1536, 0, 512, 6, 4, true, true},    {5, 9216, 0, 512, 5, 4, true, false},
                               {3, 17408, 0, 1024, 4, 4, false, false}, {49, 1000, 0, 48, 7, 4, true, true},
                               {97, 300, 0, 20, 11, 8, false, true}};
         for (const Case& c : cases) {
           const auto w = random_weights(c.rows, c.cols, c.w_group, c.asym, uint64_t(c.rows * 31 + c.cols));
           const auto x = gaussian(std::size_t(c.tokens * c.cols), uint64_t(c.tokens + 7));
           const auto bias = gaussian(std::size_t(c.rows), 99);
           Int8Activations a;
           quantize_activations_ref(x.data(), c.tokens, c.cols, c.a_bits, 1.0, c.a_group, a);
           std::vector<float> ref(std::size_t(c.tokens * c.rows)), got(ref.size(), -1.f);
           int4_gemm_ref(w.view, a, c.bias ? bias.data() : nullptr, ref.data());
           int4_gemm(w.view, a, c.bias ? bias.data() : nullptr, got.data(), isa);
           if (std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) != 0)
             return std::to_string(c.rows) + "x" + std::to_string(c.cols) + " a_group " + std::to_string(c.a_group) + " tokens " +
                    std::to_string(c.tokens);
         }
         return "";
       }},
      {"int4_gemm (decode GEMV)",
       [](Isa isa) -> std::string {
         struct Case {
           int64_t rows, cols, w_group, a_group;
           int tokens;
           bool asym, bias;
         };
         // The streaming GEMV (int4_gemv.cpp, 1..3 tokens, segments of whole blocks): blocks in
         // pairs and a lone first / last block of a segment (3, 5, 1 blocks per group), weight
         // groups of 64, 128, 192 with zero points, block-aligned activation groups (with and
         // without weight groups), rows not filling a work chunk, the 7B widths, and enough
         // rows x width to run on the threads.
         const Case cases[] = {{5, 64, 0, 0, 1, false, false},       {37, 192, 0, 0, 2, true, true},     {19, 320, 64, 0, 3, true, false},
                               {23, 576, 192, 0, 1, true, true},     {17, 1024, 128, 0, 2, false, true}, {9, 576, 0, 192, 1, true, true},
                               {11, 1024, 128, 128, 3, true, false}, {13, 960, 0, 64, 2, false, true},   {70, 4096, 0, 0, 1, false, true},
                               {33, 11008, 0, 0, 3, true, false},    {100, 4096, 128, 0, 1, true, true}, {7, 4096, 0, 96, 1, false, false}};
         for (const Case& c : cases) {
           const auto w = random_weights(c.rows, c.cols, c.w_group, c.asym, uint64_t(c.rows * 13 + c.cols));
           const auto x = gaussian(std::size_t(c.tokens * c.cols), uint64_t(c.tokens + c.cols));
           const auto bias = gaussian(std::size_t(c.rows), 98);
           Int8Activations a;
           quantize_activations_ref(x.data(), c.tokens, c.cols, 4, 1.0, c.a_group, a);
           std::vector<float> ref(std::size_t(c.tokens * c.rows)), got(ref.size(), -1.f);
           int4_gemm_ref(w.view, a, c.bias ? bias.data() : nullptr, ref.data());
           int4_gemm(w.view, a, c.bias ? bias.data() : nullptr, got.data(), isa);
           if (std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) != 0)
             return std::to_string(c.rows) + "x" + std::to_string(c.cols) + " w_group " + std::to_string(c.w_group) + " a_group " +
                    std::to_string(c.a_group) + " tokens " + std::to_string(c.tokens);
         }
         return "";
       }},
      {"top_k_abs",
       [](Isa isa) -> std::string {
         for (int n : {1, 7, 64, 100, 1000, 11008})
           for (int k : {0, 1, 3, 16, 64, 2000}) {
             auto x = gaussian(std::size_t(n), uint64_t(n * 7 + k));
             for (int i = 0; i < n; i += 5) x[std::size_t(i)] = x[std::size_t(i / 2)];  // ties
             std::vector<int> ref, got;
             top_k_abs_ref(x.data(), n, k, ref);
             top_k_abs(x.data(), n, k, got, isa);
             if (got != ref) return "n " + std::to_string(n) + " k " + std::to_string(k);
           }
         return "";
       }},
      {"qdec_apply",
       [](Isa isa) -> std::string {
         for (int bits : {4, 8})
           for (int64_t rows : {1, 15, 16, 33, 200}) {
             const int64_t cols = 70;
             const auto w = gaussian(std::size_t(rows * cols), uint64_t(rows + bits));
             const auto q = quantize_rtn(w.data(), rows, cols, {{3, true}, 0, true});
             const auto r = make_residual_store(w.data(), q.dequantized.data(), rows, cols, bits);
             const int tokens = 3, k = 9;
             const auto x = gaussian(std::size_t(tokens * cols), 77);
             std::vector<int> sel;
             qdec_select(x.data(), tokens, int(cols), k, sel, Isa::Scalar);
             if (sel.size() != std::size_t(tokens * k)) return "selection size";
             const auto y0 = gaussian(std::size_t(tokens * rows), 5);
             auto ref = y0, got = y0;
             qdec_apply_reference(r, x.data(), tokens, k, sel.data(), ref.data());
             qdec_apply(r, x.data(), tokens, k, sel.data(), got.data(), isa);
             // Within fp32 reassociation of the k products.
             for (int t = 0; t < tokens; ++t)
               for (int64_t o = 0; o < rows; ++o) {
                 double mag = std::fabs(y0[std::size_t(t * rows + o)]);
                 for (int j = 0; j < k; ++j) {
                   const int i = sel[std::size_t(t * k + j)];
                   mag += std::fabs(r.residual(i, o) * x[std::size_t(t * cols + i)]);
                 }
                 const std::size_t at = std::size_t(t * rows + o);
                 if (std::fabs(got[at] - ref[at]) > 1e-5 * mag + 1e-30)
                   return "bits " + std::to_string(bits) + " rows " + std::to_string(rows);
               }
           }
         return "";
       }},
      {"int8_gemv",
       [](Isa isa) -> std::string {
         // Widths with every tail (16- and 32-code blocks, the scalar rest) and 1..9 tokens (the
         // 4-token register blocks and their remainder); int8_matmul's Eigen tiles past 4 tokens.
         for (int64_t cols : {1, 7, 16, 33, 64, 100, 288})
           for (int n : {1, 2, 3, 4, 5, 9}) {
             detail::Rng rng(uint64_t(cols * 100 + n));
             const int64_t rows = 203;
             std::vector<int8_t> codes(static_cast<std::size_t>(rows * cols));
             std::vector<float> scales(static_cast<std::size_t>(rows)), x(static_cast<std::size_t>(n * cols));
             for (auto& c : codes) c = int8_t(int(rng.next() % 255) - 127);
             for (auto& s : scales) s = float(rng.next() % 100000) * 1e-7f + 1e-6f;
             for (auto& v : x) v = float(int(rng.next() % 20001) - 10000) * 1e-3f;
             const Int8Rows w{rows, cols, codes.data(), scales.data()};
             std::vector<float> ref(static_cast<std::size_t>(n * rows)), got(ref.size(), -1.f), mm(ref.size(), -1.f);
             int8_gemv_ref(w, x.data(), n, 0, rows, ref.data(), rows);
             int8_gemv(w, x.data(), n, 0, rows, got.data(), rows, isa);
             int8_matmul(w, x.data(), n, mm.data(), isa);
             // The AVX-512 code on a CPU with AVX-512 but no VNNI (Isa::Avx512Vnni unsupported there).
             std::vector<float> z512 = ref;
             if (isa == Isa::Avx2 && n <= kInt8GemvTokens && int8_gemv_avx512_supported() && !isa_supported(Isa::Avx512Vnni))
               int8_gemv_avx512(w, x.data(), n, 0, rows, z512.data(), rows);
             for (int t = 0; t < n; ++t)
               for (int64_t r = 0; r < rows; ++r) {
                 double bound = 0;  // fp32 reassociation of sum |code * x|, times the scale
                 for (int64_t c = 0; c < cols; ++c) bound += std::fabs(double(codes[std::size_t(r * cols + c)]) * x[std::size_t(t * cols + c)]);
                 bound = 1e-5 * bound * scales[std::size_t(r)] + 1e-30;
                 const std::size_t i = std::size_t(t * rows + r);
                 if (std::fabs(double(got[i]) - ref[i]) > bound || std::fabs(double(mm[i]) - ref[i]) > bound ||
                     std::fabs(double(z512[i]) - ref[i]) > bound)
                   return "cols " + std::to_string(cols) + " n " + std::to_string(n) + " row " + std::to_string(r) + ": ref " +
                          std::to_string(ref[i]) + " gemv " + std::to_string(got[i]) + " matmul " + std::to_string(mm[i]) +
                          " avx512 " + std::to_string(z512[i]);
               }
             std::vector<float> row(static_cast<std::size_t>(cols));
             int8_dequantize_row(w, rows - 1, row.data());
             for (int64_t c = 0; c < cols; ++c)
               if (row[std::size_t(c)] != float(codes[std::size_t((rows - 1) * cols + c)]) * scales[std::size_t(rows - 1)]) return "dequantize_row";
           }
         return "";
       }},
      {"kv_dequantize",
       [](Isa isa) -> std::string {
         // Key and value widths (INT8 keys beside INT4 values), head dims of the real models (8,
         // 16, 64, 128) and odd ones that leave every tail path something to do.
         for (int bits : {8, 4, 3, 6})
           for (int dim : {1, 7, 8, 16, 24, 33, 64, 128})
             for (int64_t slots : {1, 5, 300}) {
               detail::Rng rng(uint64_t(bits * 1000 + dim * 10) + uint64_t(slots));
               const int sb = kv_slot_bytes(bits, dim);
               std::vector<uint8_t> codes(static_cast<std::size_t>(slots * sb)), zero(static_cast<std::size_t>(slots));
               std::vector<float> scale(static_cast<std::size_t>(slots));
               for (int64_t s = 0; s < slots; ++s) {
                 scale[std::size_t(s)] = float(rng.next() % 100000) * 1e-6f + 1e-7f;
                 zero[std::size_t(s)] = uint8_t(rng.next() % (1u << bits));
                 uint8_t* c = codes.data() + s * sb;
                 for (int i = 0; i < dim; ++i) {
                   const auto u = uint8_t(rng.next() % (1u << bits));
                   if (bits <= 4)
                     c[i / 2] = uint8_t(c[i / 2] | (i % 2 ? u << 4 : u));
                   else
                     c[i] = u;
                 }
               }
               std::vector<float> ref(std::size_t(slots * dim)), got(ref.size(), -1.f);
               kv_dequantize_ref(codes.data(), scale.data(), zero.data(), slots, dim, bits, ref.data());
               kv_dequantize(codes.data(), scale.data(), zero.data(), slots, dim, bits, got.data(), isa);
               if (std::memcmp(got.data(), ref.data(), ref.size() * sizeof(float)) != 0)
                 return "bits " + std::to_string(bits) + " dim " + std::to_string(dim) + " slots " + std::to_string(slots);
             }
         return "";
       }},
      {"fwht",
       [](Isa isa) -> std::string {
         // Every power of two to 16384 (the per-head sizes 8, 16, 64, 128 among them: below,
         // at and past each vector width), at an address one float off a vector boundary.
         for (int n = 1; n <= 16384; n *= 2) {
           auto x = gaussian(std::size_t(n) + 1, uint64_t(n));
           auto ref = x;
           fwht_ref(ref.data() + 1, n);
           fwht(x.data() + 1, n, isa);
           if (std::memcmp(x.data(), ref.data(), x.size() * sizeof(float)) != 0) return "n " + std::to_string(n);
         }
         return "";
       }},
      {"hadamard_right",
       [](Isa isa) -> std::string {
         // Hadamard::right / right_transpose (butterflies on `isa`, the base as one GEMM per block
         // of rows, OpenMP past a size) against apply_reference (the plain per-row loop): Paley I
         // bases (12 x 2^k), Goethals-Seidel's 172 alone and under 64-wide butterflies (11008,
         // LLaMA-2's FFN), Sylvester alone (4096), a random orthogonal base (14 = 7 x 2); one
         // row, a few, and enough for several blocks and the threads; strides n and past n.
         for (int n : {12, 96, 192, 12288, 172, 11008, 4096, 14}) {
           const auto h = Hadamard::make(n, 3);
           const int k = h.base_size(), m = h.pow2();
           for (int rows : {1, 5, 33})
             for (int64_t stride : {int64_t(n), int64_t(n) + 7})
               for (bool transpose : {false, true}) {
                 const auto x = gaussian(std::size_t(rows * stride), uint64_t(n + rows + stride));
                 auto ref = x, got = x;
                 h.apply_reference(ref.data(), rows, stride, transpose);
                 if (transpose)
                   h.right_transpose(got.data(), rows, stride, isa);
                 else
                   h.right(got.data(), rows, stride, isa);
                 // Both paths run the same butterflies (bit for bit: the fwht row) and then sum K
                 // products z[a] * w[a][c] in fp32, in different orders (Eigen's blocking, FMA)
                 // and with w rounded once (the fast path's base / sqrt(m)) or twice (the ref's
                 // base, then times 1/sqrt(m)). Each is within (K + 2) u sum_a |z[a] w[a][c]| of
                 // the exact sum (u = 2^-24), so they differ by at most 2 (K + 2) u of that sum.
                 std::vector<double> z(x.begin(), x.end());
                 for (int r = 0; r < rows; ++r)
                   for (int a = 0; a < k && m > 1; ++a) fwht_ref(z.data() + r * stride + int64_t(a) * m, m);
                 for (int r = 0; r < rows; ++r)
                   for (int c = 0; c < k; ++c)
                     for (int j = 0; j < m; ++j) {
                       double mag = 0;
                       for (int a = 0; a < k; ++a)
                         mag += std::fabs(z[std::size_t(r * stride + int64_t(a) * m + j)] *
                                          (transpose ? h.base()[std::size_t(c * k + a)] : h.base()[std::size_t(a * k + c)]));
                       mag /= std::sqrt(double(m));
                       const std::size_t at = std::size_t(r * stride + int64_t(c) * m + j);
                       if (std::fabs(double(got[at]) - ref[at]) > 2.0 * (k + 2) * (FLT_EPSILON / 2) * mag)
                         return "n " + std::to_string(n) + " rows " + std::to_string(rows) + " stride " + std::to_string(stride) +
                                (transpose ? " transposed" : "") + ": at " + std::to_string(at) + " ref " + std::to_string(ref[at]) +
                                " got " + std::to_string(got[at]);
                     }
                 // The padding past each row is left alone.
                 for (int r = 0; r < rows; ++r)
                   for (int64_t i = n; i < stride; ++i)
                     if (got[std::size_t(r * stride + i)] != x[std::size_t(r * stride + i)]) return "padding written";
               }
         }
         return "";
       }},
  };
  return table;
}

TEST(Ops, EveryKernelOnEverySupportedIsaEqualsItsRef) {
  int runs = 0;
  for (const Kernel& k : kernels())
    for (Isa isa : kAllIsas) {
      if (!isa_supported(isa)) continue;
      EXPECT_EQ(k.check(isa), "") << k.name << " on " << isa_name(isa);
      ++runs;
    }
  EXPECT_GE(runs, int(kernels().size()) * 2) << "this machine should run AVX2 at least";
}

}  // namespace
