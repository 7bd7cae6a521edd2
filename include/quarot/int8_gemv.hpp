#pragma once
// The INT8 row tables of a packed model (docs/format.md: the embedding table and the
// classifier): int8 codes [rows][cols] with one fp32 scale per row, w[r][c] = codes[r][c] *
// scales[r] (quantize_int8_rows, include/quarot/quant.hpp). The classifier's product keeps fp32
// activations, y = s_r * sum_c codes[r][c] * x[c]: the simulation computes the same logits from
// the dequantized table (to fp32 reassociation), and a decode streams 1 byte per weight
// instead of 4. Embedding rows are dequantized on lookup (exact).
#include <cstdint>

#include "quarot/isa.hpp"

namespace quarot {

struct Int8Rows {
  int64_t rows = 0, cols = 0;
  const int8_t* codes = nullptr;   // [rows][cols], any alignment (used in place from the map)
  const float* scales = nullptr;   // [rows]
};

// y[t * ldy + r] = scales[r] * sum_c codes[r][c] * x[t * cols + c] for t < n and r0 <= r < r1.
// The plain reference sums in double; the AVX2 / AVX-512 paths in fp32 lanes (FMA), so they
// agree with it to fp32 reassociation (|err| <= 1e-5 of sum |codes * x| * scale), not bit for bit.
void int8_gemv_ref(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1, float* y, int64_t ldy);
void int8_gemv(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1, float* y, int64_t ldy, Isa isa);
// The AVX-512 path itself (AVX-512F/BW only, no VNNI needed): int8_gemv runs it for
// Isa::Avx512Vnni; the kernel table test also runs it on CPUs with AVX-512 but no VNNI.
// n <= kInt8GemvTokens.
bool int8_gemv_avx512_supported();
void int8_gemv_avx512(const Int8Rows& w, const float* x, int n, int64_t r0, int64_t r1, float* y, int64_t ldy);

// The whole product y[n][rows] (logits): n <= kInt8GemvTokens runs int8_gemv; more tokens
// dequantize tiles of kOutputChunk rows into fp32 and multiply with Eigen, cut where the float
// forward pass cuts its classifier product, so a prefill's logits are the very bits of the
// float model run on the dequantized table. Rows are split over the OpenMP team when large.
inline constexpr int kInt8GemvTokens = 4;
void int8_matmul(const Int8Rows& w, const float* x, int n, float* y, Isa isa);

// out[c] = codes[r][c] * scales[r] (exact: the scales' 16-bit significands).
void int8_dequantize_row(const Int8Rows& w, int64_t r, float* out);

}  // namespace quarot
