#pragma once
// Integer kernels of the packed model: per-token activation quantization (INT2..INT8 codes in
// int8 lanes) and INT4-weight x INT8-lane GEMM with int32 accumulation and fp32 dequantization.
//
// Packed INT4 weights (the layout of docs/format.md): each row of `cols` inputs is padded with
// zero-valued codes to a multiple of 64 columns and split into blocks of 64 columns = 32 bytes;
// byte j of a block holds column j in its low nibble and column j + 32 in its high nibble. A
// nibble is an unsigned code u in 0..15; the weight is (u - z) * scale with z the group's zero
// point (8 for a symmetric grid, so u = signed code + 8).
//
// So with x = s_x * q (q the activation codes of one token):
//   y[o] = s_x * sum_g s_w[o][g] * (sum_{i in g} u[o][i] q[i] - z[o][g] * sum_{i in g} q[i])
// which is what every path computes: the int32 sums are exact, and the fp32 epilogue runs the
// same operations in the same order (this file is compiled without FMA contraction), so the
// vector paths equal the scalar reference bit for bit. Padded columns have q = 0 and add nothing.
#include <cstdint>
#include <vector>

#include "quarot/isa.hpp"

namespace quarot {

inline constexpr int kInt4Block = 64;  // input columns per packed block (32 bytes)

inline int64_t int4_padded_cols(int64_t cols) { return (cols + kInt4Block - 1) / kInt4Block * kInt4Block; }

// Packs one row of unsigned codes u[cols] (0..15) into int4_padded_cols(cols) / 2 bytes;
// padding columns get `pad` (the row's zero point, so they dequantize to 0).
void pack_int4_row(const uint8_t* u, int64_t cols, uint8_t pad, uint8_t* out);
// The unsigned code of column `col` of a packed row.
inline uint8_t int4_at(const uint8_t* row, int64_t col) {
  const int64_t b = col / kInt4Block, j = col % kInt4Block;
  const uint8_t byte = row[b * (kInt4Block / 2) + (j % 32)];
  return j < 32 ? uint8_t(byte & 0x0F) : uint8_t(byte >> 4);
}

// A view of one packed linear layer [rows][cols] (memory owned elsewhere, e.g. a mapped file).
struct Int4Weights {
  int64_t rows = 0, cols = 0;
  int64_t group_size = 0;          // columns per group: a multiple of 64, or cols (per channel)
  const uint8_t* packed = nullptr;  // rows * int4_padded_cols(cols) / 2
  const float* scales = nullptr;    // rows * groups()
  const uint8_t* zeros = nullptr;   // rows * groups(); nullptr: symmetric (every zero point is 8)
  int64_t cols_padded() const { return int4_padded_cols(cols); }
  int64_t groups() const { return group_size >= cols ? 1 : cols / group_size; }
  // Columns of group g in the padded row: [g * group_size, ...), the last group running to the padding.
  int64_t blocks_per_group() const { return group_size >= cols ? cols_padded() / kInt4Block : group_size / kInt4Block; }
  float weight(int64_t r, int64_t c) const;  // dequantized, for tests and the A16 path
};

// Activations of `rows` tokens quantized per token, or per group of `group` input columns (the
// last group of a row may be shorter: cols need not be a multiple of group): symmetric, `bits`
// 2..8, scale = clip * max|x| / (2^(bits-1) - 1) over the token (or group) (1 when all zero),
// codes = round-half-even(x / scale) clamped to [-2^(bits-1), 2^(bits-1) - 1] -- the arithmetic
// of the fake quantizer (quant.hpp, fake_quant_rows).
struct Int8Activations {
  int rows = 0;
  int64_t cols = 0, cols_padded = 0;
  int64_t group = 0;                // columns per scale group; 0: one scale per token
  std::vector<int8_t> q;            // rows * cols_padded (padding 0), 64-byte aligned rows
  std::vector<float> scale;         // rows * groups()
  std::vector<int32_t> block_sums;  // rows * (cols_padded / 64): sum of the codes of each block
  int64_t groups() const { return group > 0 ? (cols + group - 1) / group : 1; }
};
// `group` 0, or at least cols, quantizes per token.
void quantize_activations(const float* x, int rows, int64_t cols, int bits, double clip, int64_t group, Int8Activations& out,
                          Isa isa = best_isa());
inline void quantize_activations(const float* x, int rows, int64_t cols, int bits, double clip, Int8Activations& out,
                                 Isa isa = best_isa()) {
  quantize_activations(x, rows, cols, bits, clip, 0, out, isa);
}

// y[t][o] (row-major [x.rows][w.rows]) as in the header comment, plus bias[o] when given. With
// activation groups the sums run over segments (the columns shared by one weight group and one
// activation group, in column order) and each segment's term is scaled by its own s_x:
//   y[o] = sum_seg s_x[seg] * (s_w[o][seg] * (sum_{i in seg} u[o][i] q[i] - z[o][seg] * sum_{i in seg} q[i]))
// summed in fp32 as acc = fma(m, d, acc) segment by segment (d the bracket, m = s_x[seg], or
// s_x[seg] * s_w[o][seg] with weight groups; per-channel weights multiply by s_w[o] at the end).
// Multi-threaded (OpenMP) over output rows; the same result on any number of threads.
// Throws quarot::Error when the widths differ or the group size is not a multiple of 64.
void int4_gemm(const Int4Weights& w, const Int8Activations& x, const float* bias, float* y, Isa isa = best_isa());

// The AVX-512 prefill paths before the row-interleaved GEMM, kept as the baseline of
// quarot-bench-int4: 4 x 4 tiles with one horizontal sum per token, row and segment; with
// activation groups of whole blocks and per-channel weights the lane-per-group GEMM, whose fp32
// sums ran in the earlier order (16 lanes, then pairwise), so its outputs differ from int4_gemm's
// in the last bits. int4_gemm itself without AVX-512 VNNI or below 4 tokens.
void int4_gemm_previous(const Int4Weights& w, const Int8Activations& x, const float* bias, float* y);

// The plain references the vector paths equal bit for bit (the scalar path).
inline void quantize_activations_ref(const float* x, int rows, int64_t cols, int bits, double clip, Int8Activations& out) {
  quantize_activations(x, rows, cols, bits, clip, 0, out, Isa::Scalar);
}
inline void quantize_activations_ref(const float* x, int rows, int64_t cols, int bits, double clip, int64_t group,
                                     Int8Activations& out) {
  quantize_activations(x, rows, cols, bits, clip, group, out, Isa::Scalar);
}
inline void int4_gemm_ref(const Int4Weights& w, const Int8Activations& x, const float* bias, float* y) {
  int4_gemm(w, x, bias, y, Isa::Scalar);
}

// y[t][o] = sum_i x[t][i] * weight(o, i) (+ bias[o]) for float activations (W4A16), x row-major
// [rows][w.cols]: the weights are dequantized in registers (src/ops/int4_a16.cpp), each output
// summed in one fixed fp32 order (16 FMA lanes, then pairwise) on every path, so the vector paths
// equal the scalar reference bit for bit, whatever the thread count or the number of tokens.
// Multi-threaded (OpenMP, dynamic chunks of output rows). Throws quarot::Error when the group
// size is not a multiple of 64 dividing the width.
void int4_gemm_f32(const Int4Weights& w, const float* x, int rows, const float* bias, float* y, Isa isa = best_isa());
inline void int4_gemm_f32_ref(const Int4Weights& w, const float* x, int rows, const float* bias, float* y) {
  int4_gemm_f32(w, x, rows, bias, y, Isa::Scalar);
}
// The previous W4A16 path, kept as the baseline of quarot-bench-int4 --a16: up to 8 tokens a
// GEMV with AVX-512, else rows dequantized to fp32 tiles of 64 rows and multiplied by Eigen.
void int4_gemm_f32_tiled(const Int4Weights& w, const float* x, int rows, const float* bias, float* y);

}  // namespace quarot
